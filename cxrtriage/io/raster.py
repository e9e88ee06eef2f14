"""JPEG / PNG / other Pillow-readable rasters in 8 or 16 bits, grayscale or colour."""

from __future__ import annotations

import io as _io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from cxrtriage.io.errors import CorruptImageError, ImageTooLargeError, NotAnImageError
from cxrtriage.io.limits import DEFAULT_MAX_PIXELS, check_pixel_budget, default_max_pixels

# Pillow's own check stands behind the budget of cxrtriage.io.limits (checked first, from the header).
Image.MAX_IMAGE_PIXELS = max(DEFAULT_MAX_PIXELS, default_max_pixels())
# Pillow only warns between MAX_IMAGE_PIXELS and twice that; a bomb is an error here, never a warning.
warnings.filterwarnings("error", category=Image.DecompressionBombWarning)

_STRONG_SIGNATURES = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"II*\x00", b"MM\x00*", b"GIF8")


def _open(data: bytes, name: str, max_pixels: int | None) -> Image.Image:
    """Open (header only) and check the declared size against the pixel budget, then decode."""
    try:
        img = Image.open(_io.BytesIO(data))
        w, h = img.size
        bits = 16 if img.mode.startswith("I") else 32 if img.mode == "F" else 8
        if w * h > (Image.MAX_IMAGE_PIXELS or w * h):  # Pillow warned (filter not in force): refuse all the same
            raise Image.DecompressionBombError(f"Image size ({w * h} pixels) exceeds limit of "
                                               f"{Image.MAX_IMAGE_PIXELS} pixels")
        check_pixel_budget(name, w, h, bits=bits, max_pixels=max_pixels)
        img.load()
    except UnidentifiedImageError as exc:
        if data.startswith(_STRONG_SIGNATURES):  # a known image format, damaged header
            kind = fmt_name(data)
            raise CorruptImageError(f"{name}: {kind} header is truncated or corrupt") from exc
        raise NotAnImageError(f"{name}: not a recognised image or DICOM file") from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLargeError(f"{name}: image is implausibly large ({exc}); it is not decoded") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        if isinstance(exc, ImageTooLargeError):
            raise
        raise CorruptImageError(f"{name}: image data is truncated or corrupt ({exc})") from exc
    return img


def read_raster(data: bytes, name: str, max_pixels: int | None = None) -> tuple[np.ndarray, dict]:
    """Decode raster bytes to float32 grayscale in [0, 1] plus metadata (refusing images over
    ``max_pixels``, default :func:`cxrtriage.io.limits.default_max_pixels`, before decoding)."""
    img = _open(data, name, max_pixels)
    fmt = img.format
    if getattr(img, "n_frames", 1) > 1:
        img.seek(0)
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float32)
        bits = 16
        peak = 65535.0 if arr.max() > 255 or mode.startswith("I;16") else 255.0
        arr = arr / np.float32(peak)
    elif mode == "F":
        arr = np.asarray(img, dtype=np.float32)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
        bits = 32
    else:
        if mode not in ("L", "LA"):
            img = img.convert("RGB").convert("L")
        else:
            img = img.convert("L")
        arr = np.asarray(img, dtype=np.float32) / np.float32(255.0)
        bits = 8
    meta = {"format": (fmt or "raster").lower(), "bits": bits, "mode": mode}
    return np.clip(arr, 0.0, 1.0).astype(np.float32, copy=False), meta


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


def read_raster_path(path: str | Path, max_pixels: int | None = None) -> tuple[np.ndarray, dict]:
    p = Path(path)
    return read_raster(p.read_bytes(), p.name, max_pixels)
