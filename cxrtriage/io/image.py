"""The canonical in-memory radiograph."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


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
        return self.pixels.shape  # type: ignore[return-value]

    def to_uint8(self) -> np.ndarray:
        """Pixels as an 8-bit array for display or caching."""
        return np.clip(np.rint(self.pixels * 255.0), 0, 255).astype(np.uint8)
