"""Reading radiographs: DICOM, JPEG and PNG into one canonical grayscale image."""

from cxrtriage.io.errors import (
    CorruptImageError,
    ImageReadError,
    ImageTooSmallError,
    NotAnImageError,
    UnsupportedDicomError,
    WrongModalityError,
)
from cxrtriage.io.image import Radiograph, to_uint8
from cxrtriage.io.reader import MIN_SIDE, read_radiograph, read_radiograph_bytes

IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png", ".dcm", ".dicom", ".tif", ".tiff", ".bmp")

__all__ = [
    "CorruptImageError",
    "IMAGE_SUFFIXES",
    "ImageReadError",
    "ImageTooSmallError",
    "MIN_SIDE",
    "NotAnImageError",
    "Radiograph",
    "UnsupportedDicomError",
    "WrongModalityError",
    "read_radiograph",
    "read_radiograph_bytes",
    "to_uint8",
]
