"""Typed errors raised when a file cannot be turned into a radiograph."""


class ImageReadError(ValueError):
    """Base class: the file could not be used as a radiograph. The message says why."""


class NotAnImageError(ImageReadError):
    """The file is neither a raster image nor a DICOM object."""


class CorruptImageError(ImageReadError):
    """The file looks like an image but is truncated or damaged."""


class ImageTooSmallError(ImageReadError):
    """The image is smaller than the minimum side length."""


class ImageTooLargeError(ImageReadError):
    """The image declares more pixels than the pixel budget allows (refused before decoding)."""


class UnsupportedDicomError(ImageReadError):
    """A valid DICOM that is not a single-frame grayscale projection radiograph."""


class WrongModalityError(UnsupportedDicomError):
    """A DICOM of a modality other than CR/DX/DR (for example CT or MR)."""
