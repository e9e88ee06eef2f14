"""The one resize, border and intensity chain every path runs (training cache, evaluation,
calibration, serving, Grad-CAM), so they agree.

:func:`prepare` turns radiographs into the graph's input batch and keeps what is needed to put a
heatmap back on the whole film (:class:`Prepared`); ``InputSpec.prepare`` calls it with the
model's own steps."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

from cxrtriage.io.image import Radiograph, to_uint8

INTENSITIES = ("none", "equalise", "clahe")  # per-image intensity normalisation of the model-size image
BORDERS = ("keep", "trim")  # "trim": uniform edge rows/columns (collimation, padding) cut off the model-size image
# "center": the film's central square (side = its shorter side) taken before the resize, so the aspect
# is kept (TorchXRayVision's XRayCenterCrop); "none": the whole film, squashed to a square
CROPS = ("none", "center")
# the resize: "bilinear" (Pillow's); "skimage" (scikit-image's anti-aliased bilinear resize, as TorchXRayVision's
# XRayResizer), rounded to 8 bits
RESAMPLES = ("bilinear", "skimage")

Box = tuple[int, int, int, int]


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
    return np.asarray(Image.fromarray(crop, mode="L").resize(image.shape[::-1], Image.Resampling.BILINEAR))


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
            Image.fromarray(m, mode="F").resize((right - left, bottom - top), Image.Resampling.BILINEAR))
        out[c] = np.asarray(Image.fromarray(canvas, mode="F").resize(m.shape[::-1], Image.Resampling.BILINEAR))
    return out


def apply_intensity(images: np.ndarray, intensity: str = "none") -> np.ndarray:
    """``images`` after the model's intensity normalisation (one of ``INTENSITIES``)."""
    if intensity == "none":
        return images
    if intensity == "equalise":
        return equalise(images)
    if intensity == "clahe":
        return clahe(images)
    raise ValueError(f"unknown intensity normalisation {intensity!r}; known: {', '.join(INTENSITIES)}")


def to_model_input(rg: Radiograph | np.ndarray, size: int, resample: str = "bilinear") -> np.ndarray:
    """Square ``size`` x ``size`` uint8 image (aspect not kept, as in the Kermany-224 set): the
    resize step of :func:`prepare` (``resample``: one of ``RESAMPLES``)."""
    arr = rg.to_uint8() if isinstance(rg, Radiograph) else rg
    if arr.dtype != np.uint8:
        arr = to_uint8(arr)
    if arr.shape == (size, size):
        return arr
    if resample == "skimage":
        from skimage.transform import resize

        out = resize(arr.astype(np.float32), (size, size), mode="constant", preserve_range=True)
        return np.clip(np.rint(out), 0, 255).astype(np.uint8)
    if resample != "bilinear":
        raise ValueError(f"unknown resize {resample!r}; known: {', '.join(RESAMPLES)}")
    return np.asarray(Image.fromarray(arr, mode="L").resize((size, size), Image.Resampling.BILINEAR))


@dataclass(frozen=True)
class Prepared:
    """A batch as the graph takes it, with the inverse mapping back to the films.

    ``images``: (N, S, S) uint8 after resize, border and intensity steps; ``boxes``: per film the
    crop (top, bottom, left, right) its border step cut, or None."""

    images: np.ndarray
    boxes: tuple[Box | None, ...]

    @property
    def size(self) -> int:
        return int(self.images.shape[-1])

    def restore(self, maps: np.ndarray) -> np.ndarray:
        """Maps computed on the batch ((N, C, g, g) or (N, g, g)) put back where each film lay
        (the inverse of the border step); unchanged for films with no crop."""
        maps = np.asarray(maps)
        if not any(self.boxes):
            return maps
        flat = maps.ndim == 3
        each = maps[:, None] if flat else maps
        out = np.stack([m if b is None else uncrop_maps(m, b, self.size) for m, b in zip(each, self.boxes)])
        return out[:, 0] if flat else out


def prepare_resized(images: np.ndarray, intensity: str = "none", border: str = "keep") -> Prepared:
    """The border and intensity steps on already resized uint8 images ((N, S, S)); each film's
    frame is found once and used for the crop and for :meth:`Prepared.restore`."""
    arr = np.asarray(images, dtype=np.uint8)
    if border not in BORDERS:
        raise ValueError(f"unknown border step {border!r}; known: {', '.join(BORDERS)}")
    if border == "keep" and intensity == "none":
        return Prepared(arr, (None,) * len(arr))
    boxes = tuple(border_box(a) if border == "trim" else None for a in arr)
    if len(arr) == 0:
        return Prepared(arr.copy(), ())
    out = np.stack([apply_intensity(crop_to_box(a, b), intensity) for a, b in zip(arr, boxes)])
    return Prepared(out, boxes)


def center_square(image: np.ndarray) -> np.ndarray:
    """The central square of a 2-D image, its side the shorter side (TorchXRayVision's crop_center)."""
    h, w = image.shape
    side = min(h, w)
    top, left = h // 2 - side // 2, w // 2 - side // 2
    return image[top:top + side, left:left + side]


def center_box(shape: tuple[int, int], size: int) -> Box | None:
    """Where :func:`center_square` of a film of ``shape`` lies on that film squashed to ``size`` x
    ``size`` (top, bottom, left, right), for :meth:`Prepared.restore`; None for a square film."""
    h, w = shape
    if h == w:
        return None
    side = min(h, w)
    top, left = h // 2 - side // 2, w // 2 - side // 2
    return (round(top * size / h), round((top + side) * size / h),
            round(left * size / w), round((left + side) * size / w))


def _prepare_center(radiographs: Sequence[Radiograph | np.ndarray], size: int, intensity: str,
                    border: str, resample: str) -> Prepared:
    """:func:`prepare` with the center crop: each film's central square, resized, then the intensity step."""
    if border != "keep":
        raise ValueError("the center crop and the border trim do not combine")
    films = [rg.to_uint8() if isinstance(rg, Radiograph) else np.asarray(rg) for rg in radiographs]
    films = [f if f.dtype == np.uint8 else to_uint8(f) for f in films]
    resized = [to_model_input(np.ascontiguousarray(center_square(f)), size, resample) for f in films]
    stack = np.stack(resized) if resized else np.zeros((0, size, size), np.uint8)
    return Prepared(apply_intensity(stack, intensity) if len(stack) else stack,
                    tuple(center_box(f.shape, size) for f in films))


def prepare(radiographs: Sequence[Radiograph | np.ndarray], size: int, intensity: str = "none",
            border: str = "keep", crop: str = "none", resample: str = "bilinear") -> Prepared:
    """Radiographs (or 2-D arrays) to the graph's input: the crop step (none or the central
    square), square ``size`` resize (``resample``), then the border and intensity steps."""
    if crop not in CROPS:
        raise ValueError(f"unknown crop step {crop!r}; known: {', '.join(CROPS)}")
    if crop == "center":
        return _prepare_center(radiographs, size, intensity, border, resample)
    resized = [to_model_input(rg, size, resample) for rg in radiographs]
    stack = np.stack(resized) if resized else np.zeros((0, size, size), np.uint8)
    return prepare_resized(stack, intensity, border)
