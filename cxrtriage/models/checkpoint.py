"""Loading trained checkpoints back into torch modules."""

from __future__ import annotations

from pathlib import Path

import torch

from cxrtriage.models.archs import build_model


def load_checkpoint(path: str | Path) -> tuple[torch.nn.Module, dict]:
    """(model in eval mode, metadata) from ``best.pt``/``last.pt`` or a run folder."""
    p = Path(path)
    if p.is_dir():
        p = p / "best.pt"
    if not p.exists():
        raise FileNotFoundError(f"no checkpoint at {p}")
    return model_from_checkpoint(torch.load(p, map_location="cpu", weights_only=False))


def model_from_checkpoint(ck: dict) -> tuple[torch.nn.Module, dict]:
    """(model in eval mode, metadata) from an already-loaded checkpoint dict."""
    model = build_model(ck["arch"], len(ck["classes"]), ck["image_size"])
    model.load_state_dict(ck["model"])
    model.eval()
    meta = {k: ck[k] for k in ("arch", "classes", "image_size", "mean", "std", "task") if k in ck}
    return model, meta
