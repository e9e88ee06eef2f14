"""Heatmaps computed in torch: class activation maps for CAM-ready networks and Grad-CAM
for the others (used for networks whose ONNX graph cannot carry the map)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from cxrtriage.models.archs import CamNet


def _last_conv(model: nn.Module) -> nn.Module:
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise TypeError("the network has no convolution layer to explain")
    return convs[-1]


def cam_torch(model: CamNet, x: torch.Tensor, target: int) -> np.ndarray:
    """Class activation maps (N, h, w) of class ``target``, ReLU'd and scaled to [0, 1] per image."""
    with torch.no_grad():
        f = model.forward_features(x)
        cam = torch.einsum("nchw,c->nhw", f, model.head.weight[target]) + model.head.bias[target]
    return _scale(cam)


def gradcam(model: nn.Module, x: torch.Tensor, target: int, layer: nn.Module | None = None) -> np.ndarray:
    """Grad-CAM (Selvaraju et al. 2017) of class ``target`` at ``layer`` (default: the last conv)."""
    layer = layer or _last_conv(model)
    store: dict[str, torch.Tensor] = {}
    # an in-place ReLU after the layer would overwrite the hooked output: run them out of place
    inplace = [m for m in model.modules() if getattr(m, "inplace", False)]
    for m in inplace:
        m.inplace = False
    h1 = layer.register_forward_hook(lambda m, i, o: store.__setitem__("act", o))
    h2 = layer.register_full_backward_hook(lambda m, gi, go: store.__setitem__("grad", go[0]))
    try:
        model.eval()
        x = x.clone().requires_grad_(True)
        logits = model(x)
        model.zero_grad(set_to_none=True)
        logits[:, target].sum().backward()
    finally:
        h1.remove()
        h2.remove()
        for m in inplace:
            m.inplace = True
    weights = store["grad"].mean(dim=(2, 3), keepdim=True)
    cam = (weights * store["act"]).sum(dim=1).detach()
    return _scale(cam)


def _scale(cam: torch.Tensor) -> np.ndarray:
    cam = torch.relu(cam)
    peak = cam.flatten(1).max(dim=1).values.clamp_min(1e-12).view(-1, 1, 1)
    return (cam / peak).numpy().astype(np.float32)


def randomise_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Re-initialise every weight in place (the model-randomisation sanity check)."""
    torch.manual_seed(seed)
    for m in model.modules():
        if hasattr(m, "reset_parameters") and m is not model:
            m.reset_parameters()
    return model
