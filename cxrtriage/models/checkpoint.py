"""Loading trained checkpoints back into torch modules."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from cxrtriage.models.archs import CamNet, build_model

_RUN_KEYS = {"arch", "classes", "model"}


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


def is_run_checkpoint(obj: object) -> bool:
    """Whether ``obj`` is a checkpoint written by ``cxr train`` (``best.pt``/``last.pt``)."""
    return isinstance(obj, dict) and _RUN_KEYS <= obj.keys() and isinstance(obj["model"], dict)


def warm_start(model: torch.nn.Module, ck: dict, arch: str, source: str) -> dict:
    """Start ``model`` from a ``cxr train`` checkpoint of the same architecture, at any input size.

    Every tensor is taken over; the output layer too when the class count matches, else it
    keeps its fresh initialisation. Returns a summary (tensors loaded, head tensors skipped).
    """
    if ck["arch"] != arch:
        raise ValueError(f"--weights {source}: a {ck['arch']} checkpoint cannot start a {arch} run")
    target = model.state_dict()
    new, skipped = {}, []
    for key, value in ck["model"].items():
        if key in target and target[key].shape == value.shape:
            new[key] = value
        elif key.startswith("head."):
            skipped.append(key)
        elif key not in target:
            raise ValueError(f"--weights {source}: unexpected tensor {key!r} for {arch}")
        else:
            raise ValueError(f"--weights {source}: {key!r} has shape {tuple(value.shape)}, this {arch} expects "
                             f"{tuple(target[key].shape)} (networks with a flattening classifier fit one input "
                             "size only)")
    missing = [k for k in target if k not in new and not k.startswith("head.")]
    if missing:
        raise ValueError(f"--weights {source}: {len(missing)} tensor(s) missing, e.g. {missing[:3]}")
    model.load_state_dict(new, strict=False)
    return {"loaded": len(new), "skipped_head": len(skipped), "source": str(source)}


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
