"""Explanations: where the model looked (class activation maps, Grad-CAM) drawn over the image."""

from cxrtriage.explain.overlay import BANNER, heatmap_rgba, overlay_for, render_overlay

__all__ = ["BANNER", "heatmap_rgba", "overlay_for", "render_overlay"]
