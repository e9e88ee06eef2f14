"""Test-time augmentation: a few geometric views of each model-size image, scores averaged.

The views stay inside the training augmentation's range (zoom 0.9-1.15, shift up to 6%):
the image itself, zoomed in and out by about 7%, and moved by 3% of its side in four
directions. Borders are filled by repeating the edge, as in training. numpy and Pillow only.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

ZOOMS = (1.08, 0.93)
SHIFT = 0.03  # fraction of the side


def _zoom(img: np.ndarray, zoom: float) -> np.ndarray:
    s = img.shape[0]
    if zoom >= 1.0:
        m = int(round(s * (1 - 1 / zoom) / 2))
        crop = img[m:s - m, m:s - m]
    else:
        m = int(round(s * (1 / zoom - 1) / 2))
        crop = np.pad(img, m, mode="edge")
    return np.asarray(Image.fromarray(crop).resize((s, s), Image.Resampling.BILINEAR))


def _shift(img: np.ndarray, dy: int, dx: int) -> np.ndarray:
    s = img.shape[0]
    p = max(abs(dy), abs(dx))
    padded = np.pad(img, p, mode="edge")
    return padded[p - dy:p - dy + s, p - dx:p - dx + s]


def tta_views(images: np.ndarray) -> list[np.ndarray]:
    """Seven (N, S, S) uint8 stacks: the images, two zooms and four shifts."""
    images = np.asarray(images)
    if images.ndim != 3 or images.shape[1] != images.shape[2]:
        raise ValueError(f"expected square images as (N, S, S), got {images.shape}")
    d = max(1, int(round(images.shape[1] * SHIFT)))
    views = [images]
    views += [np.stack([_zoom(im, z) for im in images]) for z in ZOOMS]
    views += [np.stack([_shift(im, dy, dx) for im in images]) for dy, dx in ((0, d), (0, -d), (d, 0), (-d, 0))]
    return views
