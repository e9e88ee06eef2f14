"""Loading trained checkpoints back into torch modules."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from cxrtriage.models.archs import CamNet, build_model


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


@torch.no_grad()
def embeddings(model: torch.nn.Module, images: torch.Tensor | np.ndarray, mean: float, std: float,
               batch: int = 256) -> np.ndarray:
    """Gate embeddings (last-layer features pooled 2x2) of uint8 images (N, S, S), as used by the quality gate."""
    if not isinstance(model, CamNet):
        raise TypeError("embeddings need a network ending in global pooling + linear (CamNet)")
    images = torch.as_tensor(np.asarray(images))
    model.eval()
    out = []
    for s in range(0, len(images), batch):
        x = images[s:s + batch].float().unsqueeze(1) / 255.0
        out.append(CamNet.embed(model.forward_features((x - mean) / std)))
    return torch.cat(out).numpy()
