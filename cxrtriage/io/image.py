"""The canonical in-memory radiograph."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cxrtriage.io.errors import ImageTooSmallError, NotAnImageError

MIN_SIDE = 64  # pixels a side below which no radiograph is judged


def to_uint8(pixels: np.ndarray) -> np.ndarray:
    """Values in [0, 1] as uint8 0..255, rounded and clipped."""
    return np.clip(np.rint(np.asarray(pixels) * 255.0), 0, 255).astype(np.uint8)


@dataclass
class Radiograph:
    """A grayscale radiograph, float32 in [0, 1], 0 = black (air), 1 = white (bone).

    ``meta`` carries non-identifying facts about the source (format, bit depth,
    photometric interpretation, modality, view position); ``dicom`` the parsed
    dataset when the source was DICOM, so callers can copy study attributes.
    """

    pixels: np.ndarray
    source: str
    meta: dict[str, Any] = field(default_factory=dict)
    dicom: Any = None

    @property
    def shape(self) -> tuple[int, int]:
        return self.pixels.shape

    def to_uint8(self) -> np.ndarray:
        """Pixels as an 8-bit array for display or caching."""
        return to_uint8(self.pixels)

    @classmethod
    def from_array(cls, array: np.ndarray, source: str = "<array>", min_side: int = MIN_SIDE) -> Radiograph:
        """A radiograph from a 2-D array: uint8 (0..255), uint16 (0..65535) or float in [0, 1]."""
        a = np.asarray(array)
        if a.ndim != 2:
            raise NotAnImageError(f"{source}: a radiograph is a 2-D grayscale array, got shape {a.shape}")
        if a.dtype == np.uint8:
            px = a.astype(np.float32) / 255.0
        elif a.dtype == np.uint16:
            px = a.astype(np.float32) / 65535.0
        elif np.issubdtype(a.dtype, np.floating):
            if not np.all(np.isfinite(a)) or a.min() < 0.0 or a.max() > 1.0:
                raise NotAnImageError(f"{source}: float pixels must be finite and within [0, 1]")
            px = a.astype(np.float32)
        else:
            raise NotAnImageError(f"{source}: unsupported pixel type {a.dtype} (use uint8, uint16 or float)")
        h, w = px.shape
        if min(h, w) < min_side:
            raise ImageTooSmallError(f"{source}: image is {w}x{h} px; at least {min_side} px a side is needed")
        return cls(pixels=px, source=source, meta={"format": "array", "width": w, "height": h})
