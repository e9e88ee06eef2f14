"""Real images that are not chest radiographs, for testing the quality gate.

Photographs, text, coins, microscopy... as shipped (offline) by scikit-image, plus
transformed radiographs (inverted, rotated) and synthetic blank / noise images.
"""

from __future__ import annotations

import numpy as np

SKIMAGE_IMAGES = (
    "astronaut", "camera", "coins", "moon", "page", "text", "chelsea", "coffee", "horse", "clock",
    "hubble_deep_field", "immunohistochemistry", "logo", "rocket", "grass", "gravel", "brick",
    "checkerboard", "cell", "shepp_logan_phantom", "colorwheel", "retina", "microaneurysms",
)


def skimage_images() -> dict[str, np.ndarray]:
    """Name -> float32 grayscale image in [0, 1], for every listed image scikit-image has locally."""
    import skimage.data as data
    from skimage.color import rgb2gray

    out = {}
    for name in SKIMAGE_IMAGES:
        try:
            img = np.asarray(getattr(data, name)(), dtype=np.float64)
        except Exception:  # noqa: BLE001 - images that need a download are skipped
            continue
        if img.ndim == 3:
            img = rgb2gray(img[..., :3])
        lo, hi = float(img.min()), float(img.max())
        out[name] = ((img - lo) / (hi - lo if hi > lo else 1.0)).astype(np.float32)
    return out


def transformed(radiographs: np.ndarray) -> dict[str, np.ndarray]:
    """Inverted and rotated versions of uint8 radiographs (N, S, S)."""
    return {
        "inverted": 255 - radiographs,
        "rotated 90": np.rot90(radiographs, 1, axes=(1, 2)).copy(),
        "rotated 180": np.rot90(radiographs, 2, axes=(1, 2)).copy(),
        "rotated 270": np.rot90(radiographs, 3, axes=(1, 2)).copy(),
    }


def synthetic(n: int, size: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "uniform noise": rng.integers(0, 256, (n, size, size)).astype(np.uint8),
        "gaussian noise": np.clip(rng.normal(128, 40, (n, size, size)), 0, 255).astype(np.uint8),
        "gradient": np.repeat(np.linspace(0, 255, size, dtype=np.float32)[None, None, :], n, 0)
        .repeat(size, 1).astype(np.uint8),
    }
