"""The one resize and intensity step every path uses (training cache, evaluation, serving), so they agree."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageOps

from cxrtriage.contract import INTENSITIES
from cxrtriage.io.image import Radiograph, to_uint8


def equalise(images: np.ndarray) -> np.ndarray:
    """Global histogram equalisation of each uint8 image ((S, S) or (N, S, S)), with Pillow.

    It maps every film's grey levels to a near-uniform histogram, so exposure, contrast and
    a site's processing curve matter less; the same call runs in training and serving."""
    arr = np.asarray(images, dtype=np.uint8)
    if arr.ndim == 2:
        return np.asarray(ImageOps.equalize(Image.fromarray(arr, mode="L")))
    return np.stack([equalise(a) for a in arr]) if len(arr) else arr.copy()


def apply_intensity(images: np.ndarray, intensity: str = "none") -> np.ndarray:
    """``images`` after the model's intensity normalisation (one of ``INTENSITIES``)."""
    if intensity == "none":
        return images
    if intensity == "equalise":
        return equalise(images)
    raise ValueError(f"unknown intensity normalisation {intensity!r}; known: {', '.join(INTENSITIES)}")


def to_model_input(rg: Radiograph | np.ndarray, size: int, intensity: str = "none") -> np.ndarray:
    """Square ``size`` x ``size`` uint8 image (aspect not kept, as in the Kermany-224 set), then
    the model's intensity normalisation."""
    arr = rg.to_uint8() if isinstance(rg, Radiograph) else rg
    if arr.dtype != np.uint8:
        arr = to_uint8(arr)
    if arr.shape != (size, size):
        arr = np.asarray(Image.fromarray(arr, mode="L").resize((size, size), Image.BILINEAR))
    return apply_intensity(arr, intensity)
