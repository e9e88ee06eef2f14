"""PNG renderings for the viewer: the original (optionally re-windowed), the heatmap overlay, the annotated overlay."""

from __future__ import annotations

import io
import threading
from collections import OrderedDict

import numpy as np
from PIL import Image

from cxrtriage.contract import Prediction
from cxrtriage.explain.overlay import heatmap_rgba, overlay_for
from cxrtriage.io import Radiograph, apply_window, header_number, modality_values, read_radiograph_bytes

DEFAULT_MAX_SIDE = 1024
#: The viewer's images are made from a rendition of at most this many px a side, decoded once
#: (at upload, or on first view) and kept; the full image is not decoded again for each request.
RENDITION_SIDE = 2048
MIN_MAX_SIDE, MAX_MAX_SIDE = 32, RENDITION_SIDE


def display_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """(w, h) scaled down (never up) so the longer side is at most ``max_side``; aspect kept."""
    scale = min(1.0, max_side / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=3)
    return buf.getvalue()


def to_u8(pixels: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(pixels * 255.0), 0, 255).astype(np.uint8)


def gray_image(pixels01: np.ndarray, max_side: int) -> Image.Image:
    img = Image.fromarray(to_u8(pixels01), mode="L")
    size = display_size(img.width, img.height, max_side)
    if size != img.size:
        img = img.resize(size, Image.BILINEAR, reducing_gap=2.0)
    return img


def rendition(pixels01: np.ndarray, side: int = RENDITION_SIDE) -> np.ndarray:
    """The display rendition of a radiograph: uint8, the longer side at most ``side`` px."""
    return np.asarray(gray_image(pixels01, side), dtype=np.uint8)


def downscale_values(values: np.ndarray, side: int = RENDITION_SIDE) -> np.ndarray:
    """Float values (e.g. modality values) resized so the longer side is at most ``side`` px."""
    h, w = values.shape
    size = display_size(w, h, side)
    if size == (w, h):
        return values.astype(np.float32, copy=False)
    img = Image.fromarray(values.astype(np.float32, copy=False), mode="F")
    return np.asarray(img.resize(size, Image.BILINEAR, reducing_gap=2.0), dtype=np.float32)


class WindowSource:
    """Values a window/level applies to: modality values of a DICOM, stored values of a raster."""

    def __init__(self, values: np.ndarray, invert: bool, default: tuple[float, float]):
        self.values = values
        self.invert = invert
        self.default = default
        self.vmin = float(values.min()) if values.size else 0.0
        self.vmax = float(values.max()) if values.size else 0.0

    @property
    def nbytes(self) -> int:
        return int(self.values.nbytes)

    def render(self, center: float, width: float) -> np.ndarray:
        out = apply_window(self.values, float(center), max(float(width), 1.0), "LINEAR")
        return (1.0 - out if self.invert else out).astype(np.float32)


def window_defaults(rg: Radiograph) -> dict[str, float | bool]:
    """Default window (center, width), value range and inversion of a decoded radiograph, without
    building the full value image (for a DICOM: header window, pixel range through the rescale)."""
    if rg.dicom is None:
        bits = int(rg.meta.get("bits") or 8)
        peak = float((1 << (16 if bits > 8 else 8)) - 1)
        return {"center": (peak + 1) / 2.0, "width": peak + 1, "min": 0.0, "max": peak, "invert": False}
    ds = rg.dicom
    raw = ds.pixel_array
    if ds.get("ModalityLUTSequence"):
        values = modality_values(raw, ds, "<study>")
        lo, hi = float(values.min()), float(values.max())
    else:
        slope = header_number(ds.get("RescaleSlope"), 1.0) or 1.0
        intercept = header_number(ds.get("RescaleIntercept"), 0.0) or 0.0
        ends = (float(raw.min()) * slope + intercept, float(raw.max()) * slope + intercept)
        lo, hi = min(ends), max(ends)
    center = header_number(ds.get("WindowCenter"))
    width = header_number(ds.get("WindowWidth"))
    if center is None or width is None or width <= 0:
        center, width = (lo + hi + 1) / 2.0, max(1.0, hi - lo + 1)
    invert = str(rg.meta.get("photometric", "")).upper() == "MONOCHROME1"
    return {"center": float(center), "width": float(width), "min": lo, "max": hi, "invert": invert}


def window_source(data: bytes, rg: Radiograph | None = None, name: str = "<study>") -> WindowSource:
    """Build the window/level source of a stored file (``rg``: its decoded radiograph, if at hand)."""
    if rg is None:
        rg = read_radiograph_bytes(data, name)
    d = window_defaults(rg)
    if rg.dicom is not None:
        values = modality_values(rg.dicom.pixel_array, rg.dicom, name)
    else:
        values = rg.pixels.astype(np.float32) * np.float32(d["max"])
    return WindowSource(downscale_values(values), bool(d["invert"]), (float(d["center"]), float(d["width"])))


class WindowCache:
    """Small LRU (of window sources, or of renditions) so the viewer does not decode the file again
    for each request: dragging a window/level slider, opening a study twice."""

    def __init__(self, max_entries: int = 8, max_bytes: int = 256 * 1024 * 1024):
        self.max_entries, self.max_bytes = max_entries, max_bytes
        self._items: OrderedDict[str, WindowSource] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str):
        with self._lock:
            item = self._items.get(key)
            if item is not None:
                self._items.move_to_end(key)
            return item

    def put(self, key: str, item) -> None:
        with self._lock:
            self._items[key] = item
            self._items.move_to_end(key)
            while self._items and (len(self._items) > self.max_entries
                                   or sum(int(i.nbytes) for i in self._items.values()) > self.max_bytes):
                self._items.popitem(last=False)

    def drop(self, key: str) -> None:
        with self._lock:
            self._items.pop(key, None)


def heatmap_png(heatmap: np.ndarray, width: int, height: int, max_side: int, opacity: float = 1.0) -> bytes:
    w, h = display_size(width, height, max_side)
    return png_bytes(heatmap_rgba(heatmap, w, h, opacity))


def overlay_png(pixels: np.ndarray, pred: Prediction, max_side: int) -> bytes:
    return png_bytes(overlay_for(pixels, pred, max_side=max_side))
