"""JPEG / PNG / other Pillow-readable rasters in 8 or 16 bits, grayscale or colour."""

from __future__ import annotations

import io as _io
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from cxrtriage.io.errors import CorruptImageError, NotAnImageError

Image.MAX_IMAGE_PIXELS = 200_000_000  # radiographs are large, but refuse decompression bombs

_STRONG_SIGNATURES = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"II*\x00", b"MM\x00*", b"GIF8")


def read_raster(data: bytes, name: str) -> tuple[np.ndarray, dict]:
    """Decode raster bytes to float32 grayscale in [0, 1] plus metadata."""
    try:
        img = Image.open(_io.BytesIO(data))
        fmt = img.format
        img.load()
    except UnidentifiedImageError as exc:
        if data.startswith(_STRONG_SIGNATURES):  # a known image format, damaged header
            kind = fmt_name(data)
            raise CorruptImageError(f"{name}: {kind} header is truncated or corrupt") from exc
        raise NotAnImageError(f"{name}: not a recognised image or DICOM file") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise CorruptImageError(f"{name}: image data is truncated or corrupt ({exc})") from exc
    except Image.DecompressionBombError as exc:
        raise CorruptImageError(f"{name}: image is implausibly large ({exc})") from exc
    if getattr(img, "n_frames", 1) > 1:
        img.seek(0)
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        bits = 16
        peak = 65535.0 if arr.max() > 255 or mode.startswith("I;16") else 255.0
        arr = arr / peak
    elif mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
        bits = 32
    else:
        if mode not in ("L", "LA"):
            img = img.convert("RGB").convert("L")
        else:
            img = img.convert("L")
        arr = np.asarray(img, dtype=np.float64) / 255.0
        bits = 8
    meta = {"format": (fmt or "raster").lower(), "bits": bits, "mode": mode}
    return np.clip(arr, 0.0, 1.0).astype(np.float32), meta


def fmt_name(data: bytes) -> str:
    """Name of the raster format a signature announces ('image' when unknown)."""
    for sig, kind in ((b"\x89PNG", "PNG"), (b"\xff\xd8", "JPEG"), (b"II*", "TIFF"),
                      (b"MM\x00*", "TIFF"), (b"GIF8", "GIF"), (b"BM", "BMP")):
        if data.startswith(sig):
            return kind
    return "image"


def looks_like_raster(data: bytes) -> bool:
    """Cheap signature check for PNG / JPEG / BMP / TIFF / GIF."""
    sigs = (b"\x89PNG", b"\xff\xd8\xff", b"BM", b"II*\x00", b"MM\x00*", b"GIF8")
    return any(data.startswith(s) for s in sigs)


def read_raster_path(path: str | Path) -> tuple[np.ndarray, dict]:
    p = Path(path)
    return read_raster(p.read_bytes(), p.name)
