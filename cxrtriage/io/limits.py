"""The pixel budget: how large an image may be before it is decoded.

A few hundred bytes of PNG, JPEG or RLE DICOM can declare an image of billions of pixels
(a "decompression bomb"). Every reader checks the size the header declares against this
budget before it decodes anything; real CR/DX radiographs are under 20 Mpx.
"""

from __future__ import annotations

import os

from cxrtriage.io.errors import ImageTooLargeError

DEFAULT_MAX_PIXELS = 60_000_000
MAX_PIXELS_ENV = "CXR_MAX_PIXELS"


def default_max_pixels() -> int:
    """The budget in pixels: ``$CXR_MAX_PIXELS`` when set to a positive whole number, else 60 Mpx."""
    raw = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if raw:
        try:
            value = int(raw)
        except ValueError:
            value = 0
        if value > 0:
            return value
    return DEFAULT_MAX_PIXELS


def check_pixel_budget(name: str, width: int, height: int, frames: int = 1, bits: int = 8,
                       max_pixels: int | None = None) -> None:
    """Raise :class:`ImageTooLargeError` when the declared image is over the budget.

    The budget is ``max_pixels`` samples of up to 16 bits each; deeper samples count for more."""
    budget = max_pixels or default_max_pixels()
    pixels = max(0, int(width)) * max(0, int(height)) * max(1, int(frames))
    weight = max(1, -(-max(1, int(bits)) // 16))  # 32-bit samples count twice
    if pixels * weight > budget:
        frames_txt = f" x {frames} frames" if frames > 1 else ""
        raise ImageTooLargeError(
            f"{name}: the image declares {width}x{height} px{frames_txt} ({pixels / 1e6:.1f} Mpx at {bits} bits), "
            f"over the limit of {budget / 1e6:g} Mpx; it is not decoded")
