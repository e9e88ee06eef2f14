"""Heatmap overlays: the radiograph with where the model looked, its call and a legend."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

BANNER = "AI TRIAGE - NOT FOR DIAGNOSIS"


@lru_cache(maxsize=4)
def colormap_lut(name: str = "turbo") -> np.ndarray:
    """(256, 3) uint8 lookup table of a matplotlib colour map."""
    import matplotlib

    cmap = matplotlib.colormaps[name]
    return (cmap(np.linspace(0, 1, 256))[:, :3] * 255).astype(np.uint8)


@lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def upsample(heatmap: np.ndarray, width: int, height: int) -> np.ndarray:
    """Bilinear resize of a [0, 1] heatmap to (height, width)."""
    img = Image.fromarray(heatmap.astype(np.float32), mode="F").resize((width, height), Image.BILINEAR)
    return np.clip(np.asarray(img), 0.0, 1.0)


def heatmap_rgba(heatmap: np.ndarray, width: int, height: int, opacity: float = 0.6,
                 cmap: str = "turbo") -> Image.Image:
    """The heatmap alone as a transparent RGBA image (for a viewer's on/off overlay)."""
    h = upsample(heatmap, width, height)
    rgb = colormap_lut(cmap)[(h * 255).astype(np.uint8)]
    alpha = (np.clip(h * 1.4, 0, 1) * opacity * 255).astype(np.uint8)
    return Image.fromarray(np.dstack([rgb, alpha]), mode="RGBA")


def render_overlay(pixels: np.ndarray, heatmap: np.ndarray | None, title: str, subtitle: str = "",
                   max_side: int = 768, opacity: float = 0.5, cmap: str = "turbo") -> Image.Image:
    """Radiograph (float [0,1] or uint8, original aspect) + heatmap + banner + colour legend, as RGB."""
    gray = pixels if pixels.dtype == np.uint8 else np.clip(np.rint(pixels * 255), 0, 255).astype(np.uint8)
    base = Image.fromarray(gray, mode="L")
    scale = min(max_side, max(512, max(base.size))) / max(base.size)
    if scale != 1.0:
        base = base.resize((max(1, round(base.width * scale)), max(1, round(base.height * scale))), Image.BILINEAR)
    w, h = base.size
    img = base.convert("RGB")
    if heatmap is not None:
        img = Image.alpha_composite(img.convert("RGBA"), heatmap_rgba(heatmap, w, h, opacity, cmap)).convert("RGB")
    fs = max(12, w // 40)
    bar_h = 2 * fs + 3 * (fs // 3) + 4
    legend_h = fs + 14 if heatmap is not None else 0
    canvas = Image.new("RGB", (w, h + bar_h + legend_h), (18, 18, 22))
    canvas.paste(img, (0, bar_h))
    d = ImageDraw.Draw(canvas)
    pad = fs // 3 + 2
    d.text((pad, pad), title, fill=(255, 255, 255), font=_font(fs))
    d.text((pad, pad + fs + fs // 3), f"{subtitle}   {BANNER}" if subtitle else BANNER,
           fill=(255, 196, 64), font=_font(max(10, fs * 3 // 4)))
    if heatmap is not None:
        y0 = bar_h + h + 5
        x0, x1 = w // 4, w - w // 4
        ramp = colormap_lut(cmap)[np.linspace(0, 255, max(1, x1 - x0)).astype(np.uint8)]
        strip = Image.fromarray(np.repeat(ramp[None], max(4, fs // 2), axis=0), mode="RGB")
        canvas.paste(strip, (x0, y0))
        small = _font(max(10, fs * 2 // 3))
        d.text((x0 - 6, y0 - 2), "low", fill=(200, 200, 200), font=small, anchor="ra")
        d.text((x1 + 6, y0 - 2), "high model attention", fill=(200, 200, 200), font=small, anchor="la")
    return canvas


def overlay_for(pixels: np.ndarray, pred, **kw) -> Image.Image:
    """Overlay for a :class:`cxrtriage.infer.Prediction` (label, probability, priority in the title)."""
    if pred.error:
        title, sub = f"unreadable: {pred.error_type}", ""
    elif pred.priority == "refused":
        title, sub = "refused by the quality gate", str(pred.gate.get("reason", ""))[:80]
    else:
        title = f"{pred.label}  P(abnormal) {pred.score:.2f}  [{pred.priority}]"
        sub = f"threshold {pred.threshold:.2f}"
    return render_overlay(pixels, pred.heatmap if pred.ok else None, title, sub, **kw)
