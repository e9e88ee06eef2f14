"""Several trained CAM-ready networks as one serving graph (a small ensemble).

The graph takes one image at the largest member's input size; a member trained at a smaller
size sees it through a fixed resize matrix equal to Pillow's antialiased bilinear resize (the
one every path uses, :func:`cxrtriage.contract.preprocess.to_model_input`). Probabilities are the
members' mean, the class activation map is the members' mean on the finest member grid (still
in logit units), and the quality-gate embedding is the members' embeddings side by side.
Members trained on finer classes (normal / bacterial / viral) can answer a coarser task (normal /
pneumonia): each coarse class is the sum of its fine classes' probabilities, and its map is their
maps weighted by those probabilities.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from cxrtriage.contract import normalise
from cxrtriage.models.base import CamNet
from cxrtriage.models.export import output_probs


def resize_matrix(src: int, dst: int) -> np.ndarray:
    """The (dst, src) matrix A with A @ x = Pillow's bilinear resize of a length-``src`` signal.

    Pillow's resize is separable, so an image resizes as A @ X @ A.T.
    """
    a = np.zeros((dst, src), dtype=np.float32)
    for i in range(src):
        impulse = np.zeros((1, src), dtype=np.float32)
        impulse[0, i] = 1.0
        a[:, i] = np.asarray(Image.fromarray(impulse, mode="F").resize((dst, 1), Image.BILINEAR))[0]
    return a


class Member(nn.Module):
    """One network of the ensemble with its own normalisation and input size."""

    def __init__(self, net: CamNet, image_size: int, mean: float, std: float, input_size: int):
        super().__init__()
        if not isinstance(net, CamNet):
            raise TypeError("ensemble members must be CAM-ready networks (global pooling + linear head)")
        self.net, self.mean, self.std, self.image_size = net, float(mean), float(std), int(image_size)
        self.resize = image_size != input_size
        if self.resize:
            a = torch.from_numpy(resize_matrix(input_size, image_size))
            self.register_buffer("resize_matrix", a)
            self.register_buffer("resize_matrix_t", a.t().contiguous())  # named, so checks can tell it from weights

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = torch.matmul(torch.matmul(self.resize_matrix, image), self.resize_matrix_t) if self.resize else image
        return self.net.serving_outputs(normalise(x, self.mean, self.std))


class EnsembleGraph(nn.Module):
    """Mean of the members' probabilities; outputs ``probs``, ``cam`` and ``embedding`` like one network.

    ``heatmap_from``: indices of the members whose class activation maps are averaged into the
    heatmap (default: all), for members whose maps do not point at their evidence.
    ``groups``: the members' class indices that make up each output class (default: one each).
    """

    def __init__(self, members: list[Member], input_size: int, multilabel: bool = False,
                 heatmap_from: list[int] | None = None, groups: list[list[int]] | None = None):
        super().__init__()
        if len(members) < 2:
            raise ValueError("an ensemble needs at least two members")
        self.heatmap_from = sorted(set(heatmap_from)) if heatmap_from else list(range(len(members)))
        if not all(0 <= i < len(members) for i in self.heatmap_from):
            raise ValueError(f"heatmap members {heatmap_from} out of range (0..{len(members) - 1})")
        self.members = nn.ModuleList(members)
        with torch.no_grad():
            probe = [m.eval()(torch.zeros(1, 1, input_size, input_size)) for m in members]
        self.grids = [int(cam.shape[-1]) for _, cam, _ in probe]
        self.cam_size, self.multilabel = max(self.grids[i] for i in self.heatmap_from), multilabel
        n_classes = int(probe[0][0].shape[1])
        if groups is not None and (multilabel or not all(groups)
                                   or sorted(i for g in groups for i in g) != list(range(n_classes))):
            raise ValueError(f"class groups {groups} must split the members' {n_classes} classes, each used once")
        self.groups = [list(g) for g in groups] if groups is not None else None

    def forward(self, image: torch.Tensor):
        probs, cams, embs = [], [], []
        for i, (m, grid) in enumerate(zip(self.members, self.grids)):
            logits, cam, emb = m(image)
            probs.append(output_probs(logits, self.multilabel))
            if i in self.heatmap_from:
                if grid != self.cam_size:
                    cam = F.interpolate(cam, size=(self.cam_size, self.cam_size), mode="bilinear",
                                        align_corners=False)
                cams.append(cam)
            embs.append(emb)
        prob, cam = sum(probs) / float(len(probs)), sum(cams) / float(len(cams))
        if self.groups is not None:
            prob, cam = self._grouped(prob, cam)
        return prob, cam, torch.cat(embs, dim=1)

    def _grouped(self, prob: torch.Tensor, cam: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Coarse classes: summed probabilities, probability-weighted maps."""
        probs, cams = [], []
        for g in self.groups:
            p = prob[:, g]
            total = p.sum(dim=1, keepdim=True)
            weights = (p / total.clamp_min(1e-12))[:, :, None, None]
            probs.append(total)
            cams.append((cam[:, g] * weights).sum(dim=1, keepdim=True))
        return torch.cat(probs, dim=1), torch.cat(cams, dim=1)
