"""One call from a file (or bytes) to a canonical :class:`Radiograph`."""

from __future__ import annotations

from pathlib import Path

from cxrtriage.io.dicom import looks_like_dicom, looks_like_raw_dicom, read_dicom
from cxrtriage.io.errors import CorruptImageError, ImageTooSmallError, NotAnImageError
from cxrtriage.io.image import MIN_SIDE, Radiograph
from cxrtriage.io.raster import looks_like_raster, read_raster

DICOM_SUFFIXES = (".dcm", ".dicom", ".dic")

# Common non-image files, named in the error so the user sees what they uploaded.
_KNOWN_SIGNATURES = (
    (b"PK\x03\x04", "a ZIP archive"),
    (b"PK\x05\x06", "an empty ZIP archive"),
    (b"%PDF", "a PDF document"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"),
    (b"Rar!", "a RAR archive"),
    (b"\xd0\xcf\x11\xe0", "an MS Office document"),
)


def _describe(data: bytes) -> str:
    for sig, what in _KNOWN_SIGNATURES:
        if data.startswith(sig):
            return f" (it looks like {what})"
    head = data[:512]
    if head and all(32 <= b < 127 or b in (9, 10, 13) for b in head):
        return " (it looks like a text file)"
    return ""


def read_radiograph_bytes(data: bytes, name: str = "<bytes>", min_side: int = MIN_SIDE,
                          max_pixels: int | None = None) -> Radiograph:
    """Decode bytes of a DICOM, JPEG or PNG file into a :class:`Radiograph`.

    An image declaring more than ``max_pixels`` (default: :func:`cxrtriage.io.default_max_pixels`,
    60 Mpx or ``$CXR_MAX_PIXELS``) is refused from its header with :class:`ImageTooLargeError`."""
    if not data:
        raise NotAnImageError(f"{name}: file is empty")
    if not data.strip(b"\x00"):
        raise CorruptImageError(f"{name}: file holds only zero bytes (truncated or blank)")
    dataset = None
    if looks_like_dicom(data):
        pixels, meta, dataset = read_dicom(data, name, max_pixels)
    elif looks_like_raster(data):
        pixels, meta = read_raster(data, name, max_pixels)
    elif looks_like_raw_dicom(data):
        # A DICOM dataset without the Part-10 preamble and header.
        pixels, meta, dataset = read_dicom(data, name, max_pixels)
    elif name.lower().endswith(DICOM_SUFFIXES):
        raise NotAnImageError(
            f"{name}: not a DICOM file (no DICM header and no DICOM data elements)"
            f"{_describe(data)}"
        )
    else:
        try:  # let Pillow try the formats it knows beyond the signatures above
            pixels, meta = read_raster(data, name, max_pixels)
        except NotAnImageError as exc:
            raise NotAnImageError(f"{exc}{_describe(data)}") from exc
    h, w = pixels.shape
    if min(h, w) < min_side:
        raise ImageTooSmallError(
            f"{name}: image is {w}x{h} px; at least {min_side} px a side is needed"
        )
    meta["width"], meta["height"] = w, h
    return Radiograph(pixels=pixels, source=name, meta=meta, dicom=dataset)


def read_radiograph(path: str | Path, min_side: int = MIN_SIDE, max_pixels: int | None = None) -> Radiograph:
    """Read a DICOM, JPEG or PNG radiograph from disk.

    Raises a subclass of :class:`cxrtriage.io.ImageReadError` with a message a person
    can act on when the file is not usable.
    """
    p = Path(path)
    if p.is_dir():
        raise NotAnImageError(f"{p}: is a folder, not a file")
    try:
        data = p.read_bytes()
    except IsADirectoryError as exc:
        raise NotAnImageError(f"{p}: is a folder, not a file") from exc
    rg = read_radiograph_bytes(data, p.name, min_side=min_side, max_pixels=max_pixels)
    rg.source = str(p)
    return rg
