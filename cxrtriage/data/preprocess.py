"""The one resize, border and intensity step every path uses (training cache, evaluation,
serving), so they agree."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageOps

from cxrtriage.contract import BORDERS, INTENSITIES
from cxrtriage.io.image import Radiograph, to_uint8


def _each(step, images: np.ndarray) -> np.ndarray:
    """``step`` (one uint8 (S, S) image to another) on one image or on each of a stack (N, S, S)."""
    arr = np.asarray(images, dtype=np.uint8)
    if arr.ndim == 2:
        return step(arr)
    return np.stack([step(a) for a in arr]) if len(arr) else arr.copy()


def equalise(images: np.ndarray) -> np.ndarray:
    """Global histogram equalisation of each uint8 image ((S, S) or (N, S, S)), with Pillow.

    It maps every film's grey levels to a near-uniform histogram, so exposure, contrast and
    a site's processing curve matter less; the same call runs in training and serving."""
    return _each(lambda a: np.asarray(ImageOps.equalize(Image.fromarray(a, mode="L"))), images)


def clahe(images: np.ndarray, clip_limit: float = 0.01) -> np.ndarray:
    """Contrast-limited adaptive histogram equalisation (CLAHE, scikit-image; tiles of 1/8 of
    the side) of each uint8 image ((S, S) or (N, S, S)).

    Unlike ``equalise`` it works tile by tile, so local contrast (lung markings against the
    mediastinum) is evened out across sites as well as global exposure."""
    from skimage.exposure import equalize_adapthist

    return _each(lambda a: np.clip(np.rint(equalize_adapthist(a, clip_limit=clip_limit) * 255.0), 0, 255)
                 .astype(np.uint8), images)


def border_box(image: np.ndarray, tol: float = 3.0, max_frac: float = 0.3) -> tuple[int, int, int, int] | None:
    """(top, bottom, left, right) of an image inside its uniform edge rows and columns (standard
    deviation below ``tol`` grey levels: a collimator's shadow, a padding frame), at most
    ``max_frac`` of each side; None when there is no such frame."""
    h, w = image.shape
    f = image.astype(np.float32)

    def inner(spread: np.ndarray, n: int) -> tuple[int, int]:
        lo, hi, cap = 0, n, int(n * max_frac)
        while lo < cap and spread[lo] < tol:
            lo += 1
        while n - hi < cap and spread[hi - 1] < tol:
            hi -= 1
        return lo, hi

    (top, bottom), (left, right) = inner(f.std(axis=1), h), inner(f.std(axis=0), w)
    return None if (top, bottom, left, right) == (0, h, 0, w) else (top, bottom, left, right)


def crop_to_box(image: np.ndarray, box: tuple[int, int, int, int] | None) -> np.ndarray:
    """``image`` cut to ``box`` (top, bottom, left, right) and resized back to its size; None keeps it."""
    if box is None:
        return image
    top, bottom, left, right = box
    crop = np.ascontiguousarray(image[top:bottom, left:right])
    return np.asarray(Image.fromarray(crop, mode="L").resize(image.shape[::-1], Image.BILINEAR))


def trim_border(image: np.ndarray) -> np.ndarray:
    """A uint8 image without its uniform frame (:func:`border_box`), resized back to its size."""
    return crop_to_box(image, border_box(image))


def uncrop_maps(maps: np.ndarray, box: tuple[int, int, int, int], size: int) -> np.ndarray:
    """Class activation maps (C, g, g) computed on a trimmed ``size`` image, put back where the
    crop ``box`` lay in the whole image (the frame gets each map's minimum), on the same grid."""
    top, bottom, left, right = box
    out = np.empty_like(maps, dtype=np.float32)
    for c, m in enumerate(np.asarray(maps, dtype=np.float32)):
        canvas = np.full((size, size), float(m.min()), dtype=np.float32)
        canvas[top:bottom, left:right] = np.asarray(
            Image.fromarray(m, mode="F").resize((right - left, bottom - top), Image.BILINEAR))
        out[c] = np.asarray(Image.fromarray(canvas, mode="F").resize(m.shape[::-1], Image.BILINEAR))
    return out


def apply_border(images: np.ndarray, border: str = "keep") -> np.ndarray:
    """``images`` ((S, S) or (N, S, S) uint8) after the model's border step (one of ``BORDERS``)."""
    if border == "keep":
        return images
    if border != "trim":
        raise ValueError(f"unknown border step {border!r}; known: {', '.join(BORDERS)}")
    return _each(trim_border, images)


def apply_intensity(images: np.ndarray, intensity: str = "none") -> np.ndarray:
    """``images`` after the model's intensity normalisation (one of ``INTENSITIES``)."""
    if intensity == "none":
        return images
    if intensity == "equalise":
        return equalise(images)
    if intensity == "clahe":
        return clahe(images)
    raise ValueError(f"unknown intensity normalisation {intensity!r}; known: {', '.join(INTENSITIES)}")


def to_model_input(rg: Radiograph | np.ndarray, size: int, intensity: str = "none",
                   border: str = "keep") -> np.ndarray:
    """Square ``size`` x ``size`` uint8 image (aspect not kept, as in the Kermany-224 set), then
    the model's border step and intensity normalisation."""
    arr = rg.to_uint8() if isinstance(rg, Radiograph) else rg
    if arr.dtype != np.uint8:
        arr = to_uint8(arr)
    if arr.shape != (size, size):
        arr = np.asarray(Image.fromarray(arr, mode="L").resize((size, size), Image.BILINEAR))
    return apply_intensity(apply_border(arr, border), intensity)
