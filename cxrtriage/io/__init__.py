"""Reading radiographs: DICOM, JPEG and PNG into one canonical grayscale image."""

from cxrtriage.io.dicom import age_in_years, apply_voi_lut_sequence, apply_window, header_number, modality_values
from cxrtriage.io.errors import (
    CorruptImageError,
    ImageReadError,
    ImageTooLargeError,
    ImageTooSmallError,
    NotAnImageError,
    UnsupportedDicomError,
    WrongModalityError,
)
from cxrtriage.io.image import Radiograph, to_uint8
from cxrtriage.io.limits import DEFAULT_MAX_PIXELS, check_pixel_budget, default_max_pixels
from cxrtriage.io.reader import MIN_SIDE, read_radiograph, read_radiograph_bytes

IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png", ".dcm", ".dicom", ".tif", ".tiff", ".bmp")

__all__ = [
    "age_in_years",
    "CorruptImageError",
    "DEFAULT_MAX_PIXELS",
    "IMAGE_SUFFIXES",
    "ImageReadError",
    "ImageTooLargeError",
    "ImageTooSmallError",
    "MIN_SIDE",
    "NotAnImageError",
    "Radiograph",
    "UnsupportedDicomError",
    "WrongModalityError",
    "apply_voi_lut_sequence",
    "apply_window",
    "check_pixel_budget",
    "default_max_pixels",
    "header_number",
    "modality_values",
    "read_radiograph",
    "read_radiograph_bytes",
    "to_uint8",
]
