"""Bounded decoding for the service: a process-wide budget of decoded pixels, and reduced decodes.

An upload just under the pixel limit (say a 7740 x 7740 16-bit PNG of 117 KB) decodes to 120 MB
of samples and 240 MB as float32; thirty of them at once would take gigabytes. So every decode
in the service (upload, worker, viewer) first takes a lease on :class:`PixelBudget` for the bytes
it will hold, and waits while others hold the rest; and an image larger than
:data:`REDUCE_SIDE` a side is decoded reduced: JPEG by DCT scaling (Pillow's draft mode, never
at full size), PNG and other rasters resized right after the decoder, DICOM block-averaged from
its stored values and read again at the reduced size (the same modality and VOI steps). Nothing
the service shows or scores needs more: the viewer's rendition is at most 2048 px a side and the
model's input far smaller. Films up to :data:`REDUCE_SIDE` a side are read exactly as
:func:`cxrtriage.io.read_radiograph_bytes` reads them.
"""

from __future__ import annotations

import io
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace

import numpy as np
from PIL import Image

from cxrtriage.io import (
    CorruptImageError,
    ImageReadError,
    ImageTooLargeError,
    NotAnImageError,
    Radiograph,
    check_pixel_budget,
    read_radiograph_bytes,
)
from cxrtriage.io.dicom import check_dicom_budget, header_number, looks_like_dicom, looks_like_raw_dicom, parse_dicom

log = logging.getLogger("cxrtriage.serve.decode")

#: Longest side an image is decoded at in the service (the viewer's rendition side).
REDUCE_SIDE = 2048
#: Longest side of the copy the worker scores for a film that was decoded reduced.
MODEL_SIDE = 1024
#: Bytes one decoded pixel may hold at its peak in the full-size path (decoder output, float32
#: values, and the temporaries of the intensity steps).
FULL_PATH_BYTES_PER_PX = 16
DEFAULT_BUDGET_BYTES = 256 * 1024 * 1024


class DecodeBusyError(RuntimeError):
    """The decode budget stayed full for longer than the caller would wait."""


class PixelBudget:
    """Bytes of decoded pixels the whole process holds at once, across every thread that decodes.

    A lease larger than the budget is clamped to it (such a decode runs alone)."""

    def __init__(self, max_bytes: int = DEFAULT_BUDGET_BYTES, wait_s: float = 120.0):
        self.max_bytes = max(1, int(max_bytes))
        self.wait_s = wait_s
        self.used = 0
        self.peak = 0
        self._cond = threading.Condition()

    @contextmanager
    def lease(self, nbytes: int) -> Iterator[None]:
        n = max(1, min(int(nbytes), self.max_bytes))
        deadline = time.monotonic() + self.wait_s
        with self._cond:
            while self.used + n > self.max_bytes:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise DecodeBusyError("the service is decoding as many images as its memory allows; "
                                          "try again shortly")
                self._cond.wait(left)
            self.used += n
            self.peak = max(self.peak, self.used)
        try:
            yield
        finally:
            with self._cond:
                self.used -= n
                self._cond.notify_all()


def target_size(width: int, height: int, side: int) -> tuple[int, int]:
    """(w, h) scaled down so the longer side is at most ``side``; aspect kept."""
    scale = min(1.0, side / max(width, height, 1))
    return max(1, round(width * scale)), max(1, round(height * scale))


def decode_bounded(data: bytes, name: str, max_pixels: int, budget: PixelBudget,
                   side: int = REDUCE_SIDE) -> Radiograph:
    """Decode ``data`` within ``budget``: reduced to ``side`` px a side when larger, else exactly as
    :func:`cxrtriage.io.read_radiograph_bytes` (same errors, same pixel limit)."""
    try:
        if looks_like_dicom(data):
            rg = _dicom_reduced(data, name, max_pixels, budget, side)
        else:
            rg = _raster_reduced(data, name, max_pixels, budget, side)
            if rg is None and looks_like_raw_dicom(data):
                rg = _dicom_reduced(data, name, max_pixels, budget, side)
    except (ImageReadError, DecodeBusyError):
        raise
    except Exception as exc:  # noqa: BLE001  the reduced path could not handle this file: the exact reader judges it
        log.debug("reduced decode of %s not possible (%s); full decode", name, type(exc).__name__)
        rg = None
    if rg is not None:
        return rg
    cost = _declared_pixels(data) * FULL_PATH_BYTES_PER_PX
    with budget.lease(cost):
        return read_radiograph_bytes(data, name, max_pixels=max_pixels)


def _declared_pixels(data: bytes) -> int:
    """Pixels the header declares (a generous guess when it cannot be read cheaply)."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.size[0] * img.size[1]
    except Exception:  # noqa: BLE001  not a raster Pillow reads: the guess below
        pass
    return max(len(data), 1 << 20)  # DICOM and unknown files: at least their own size


def model_copy(rg: Radiograph) -> Radiograph:
    """What the worker keeps to score: the radiograph itself, or for one decoded reduced a copy of
    at most :data:`MODEL_SIDE` px a side (the model's input is far smaller); no DICOM dataset."""
    rg = replace(rg, dicom=None)
    if not rg.meta.get("reduced") or max(rg.pixels.shape) <= MODEL_SIDE:
        return rg
    h, w = rg.pixels.shape
    size = target_size(w, h, MODEL_SIDE)
    img = Image.fromarray(rg.pixels, mode="F").resize(size, Image.BILINEAR, reducing_gap=2.0)
    return replace(rg, pixels=np.clip(np.asarray(img, dtype=np.float32), 0.0, 1.0))


# -- rasters ---------------------------------------------------------------------------------
def _raster_reduced(data: bytes, name: str, max_pixels: int, budget: PixelBudget, side: int) -> Radiograph | None:
    """A raster larger than ``side`` decoded reduced (None: not a raster this path handles, or small)."""
    try:
        img = Image.open(io.BytesIO(data))
    except Exception:  # noqa: BLE001  not a raster Pillow reads: another path judges it
        return None
    w, h = img.size
    if max(w, h) <= side:
        return None
    mode, fmt = img.mode, (img.format or "raster").lower()
    bits = 16 if mode.startswith("I") else 32 if mode == "F" else 8
    if w * h > (Image.MAX_IMAGE_PIXELS or w * h):
        raise ImageTooLargeError(f"{name}: image is implausibly large ({w * h} pixels); it is not decoded")
    check_pixel_budget(name, w, h, bits=bits, max_pixels=max_pixels)
    size = target_size(w, h, side)
    if fmt == "jpeg":
        img.draft("L", size)  # DCT scaling: the decoder itself writes at most 1/8 ... 1/1 of the pixels
    per_px = {"L": 1, "P": 1, "LA": 2, "I;16": 2, "I;16B": 2, "I;16L": 2, "RGB": 3}.get(mode, 4)
    dw, dh = img.size if fmt == "jpeg" else (w, h)
    with budget.lease(dw * dh * per_px * 2 + size[0] * size[1] * 12):
        try:
            if getattr(img, "n_frames", 1) > 1:
                img.seek(0)
            img.load()
        except (OSError, SyntaxError, ValueError) as exc:
            raise CorruptImageError(f"{name}: image data is truncated or corrupt ({exc})") from exc
        small = _resize(img, size)
        img.close()
        del img
        pixels, bits = _to_unit_float(small)
    h2, w2 = pixels.shape
    meta = {"format": fmt, "bits": bits, "mode": mode, "width": w, "height": h, "reduced": True,
            "decoded_width": w2, "decoded_height": h2}
    return Radiograph(pixels=pixels, source=name, meta=meta)


def _resize(img: Image.Image, size: tuple[int, int]) -> Image.Image:
    if img.mode in ("I;16B", "I;16L"):
        img = img.convert("I")
    elif img.mode not in ("L", "I;16", "I", "F"):
        img = img.convert("RGB").convert("L") if img.mode not in ("LA",) else img.convert("L")
    if img.size == size:
        return img
    return img.resize(size, Image.BILINEAR, reducing_gap=2.0)


def _to_unit_float(img: Image.Image) -> tuple[np.ndarray, int]:
    """Pixels in [0, 1] as float32, with the same scaling as :func:`cxrtriage.io.raster.read_raster`."""
    arr = np.asarray(img, dtype=np.float32)
    if img.mode.startswith("I"):
        peak = 65535.0 if arr.max() > 255 or img.mode.startswith("I;16") else 255.0
        return np.clip(arr / np.float32(peak), 0.0, 1.0), 16
    if img.mode == "F":
        lo, hi = float(arr.min()), float(arr.max())
        return (np.clip((arr - lo) / (hi - lo), 0.0, 1.0) if hi > lo else np.zeros_like(arr)), 32
    return np.clip(arr / np.float32(255.0), 0.0, 1.0), 8


# -- DICOM -----------------------------------------------------------------------------------
def _dicom_reduced(data: bytes, name: str, max_pixels: int, budget: PixelBudget, side: int) -> Radiograph | None:
    """A single-frame grayscale DICOM larger than ``side``: its stored values block-averaged (in strips),
    written back as an uncompressed dataset and read by the project's reader (modality and VOI steps,
    photometric, metadata all as for the full image). None: not one this path handles, or small."""
    from pydicom.uid import ExplicitVRLittleEndian

    ds = parse_dicom(data, name)
    rows = int(header_number(ds.get("Rows"), 0) or 0)
    cols = int(header_number(ds.get("Columns"), 0) or 0)
    frames = int(header_number(ds.get("NumberOfFrames"), 1) or 1)
    if max(rows, cols) <= side or frames != 1 or int(header_number(ds.get("SamplesPerPixel"), 1) or 1) != 1:
        return None
    if "PixelData" not in ds:
        return None
    check_dicom_budget(ds, name, frames, max_pixels)
    bits = int(header_number(ds.get("BitsAllocated"), 16) or 16)
    syntax = str(ds.file_meta.get("TransferSyntaxUID", "") or "") if getattr(ds, "file_meta", None) else ""
    with budget.lease(rows * cols * max(1, bits // 8) * 2):
        try:
            raw = ds.pixel_array
        except Exception as exc:
            raise CorruptImageError(f"{name}: cannot decode DICOM pixel data ({exc})") from exc
        if raw.ndim != 2 or raw.dtype.kind not in "ui":
            return None
        small = _block_mean(raw, -(-max(rows, cols) // side))
        del raw
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.Rows, ds.Columns = small.shape
    ds.PixelData = small.tobytes()
    ds["PixelData"].VR = "OW" if small.dtype.itemsize > 1 else "OB"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    rg = read_radiograph_bytes(buf.getvalue(), name, max_pixels=max_pixels)
    h2, w2 = rg.pixels.shape
    rg.meta.update(width=cols, height=rows, reduced=True, decoded_width=w2, decoded_height=h2,
                   transfer_syntax=syntax or rg.meta.get("transfer_syntax"))
    return rg


def _block_mean(raw: np.ndarray, k: int, strip_blocks: int = 64) -> np.ndarray:
    """``raw`` averaged over k x k blocks (edges dropped), strip by strip, in its own dtype."""
    rows, cols = raw.shape[0] // k, raw.shape[1] // k
    if rows < 1 or cols < 1:
        raise NotAnImageError("image too thin to reduce")
    out = np.empty((rows, cols), dtype=raw.dtype)
    for r0 in range(0, rows, strip_blocks):
        r1 = min(rows, r0 + strip_blocks)
        strip = raw[r0 * k:r1 * k, :cols * k].astype(np.float32)
        out[r0:r1] = np.rint(strip.reshape(r1 - r0, k, cols, k).mean(axis=(1, 3)))
    return out
