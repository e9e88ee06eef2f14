"""One call from a file (or bytes) to a canonical :class:`Radiograph`."""

from __future__ import annotations

from pathlib import Path

from cxrtriage.io.dicom import looks_like_dicom, read_dicom
from cxrtriage.io.errors import CorruptImageError, ImageTooSmallError, NotAnImageError
from cxrtriage.io.image import Radiograph
from cxrtriage.io.raster import looks_like_raster, read_raster

MIN_SIDE = 64
DICOM_SUFFIXES = (".dcm", ".dicom", ".dic")


def read_radiograph_bytes(data: bytes, name: str = "<bytes>", min_side: int = MIN_SIDE) -> Radiograph:
    """Decode bytes of a DICOM, JPEG or PNG file into a :class:`Radiograph`."""
    if not data:
        raise NotAnImageError(f"{name}: file is empty")
    dataset = None
    if looks_like_dicom(data):
        pixels, meta, dataset = read_dicom(data, name)
    elif looks_like_raster(data):
        pixels, meta = read_raster(data, name)
    elif name.lower().endswith(DICOM_SUFFIXES):
        # A DICOM without the Part-10 preamble, or something else under a .dcm name.
        try:
            pixels, meta, dataset = read_dicom(data, name)
        except CorruptImageError as exc:
            raise NotAnImageError(f"{name}: not a recognised image or DICOM file") from exc
    else:
        pixels, meta = read_raster(data, name)  # let Pillow try; it raises NotAnImageError
    h, w = pixels.shape
    if min(h, w) < min_side:
        raise ImageTooSmallError(
            f"{name}: image is {w}x{h} px; at least {min_side} px a side is needed"
        )
    meta["width"], meta["height"] = w, h
    return Radiograph(pixels=pixels, source=name, meta=meta, dicom=dataset)


def read_radiograph(path: str | Path, min_side: int = MIN_SIDE) -> Radiograph:
    """Read a DICOM, JPEG or PNG radiograph from disk.

    Raises a subclass of :class:`cxrtriage.io.ImageReadError` with a message a person
    can act on when the file is not usable.
    """
    p = Path(path)
    try:
        data = p.read_bytes()
    except IsADirectoryError as exc:
        raise NotAnImageError(f"{p}: is a folder, not a file") from exc
    rg = read_radiograph_bytes(data, p.name, min_side=min_side)
    rg.source = str(p)
    return rg
