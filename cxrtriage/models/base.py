"""What every architecture shares: the CAM-ready network shape (:class:`CamNet`) and the registry
entry describing how an architecture is built and trained by default (:class:`ArchSpec`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn


class CamNet(nn.Module):
    """A feature extractor, global average pooling and a linear head.

    ``forward_features`` returns the last feature map; the class activation map of
    class c is ``head.weight[c] @ features + head.bias[c]`` at every position.
    """

    def __init__(self, features: nn.Module, channels: int, num_classes: int, dropout: float = 0.2):
        super().__init__()
        self.features = features
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(channels, num_classes)
        self.num_features = channels

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x).mean(dim=(2, 3))
        return self.head(self.dropout(f))

    def serving_outputs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(logits, class activation maps in logit units, gate embedding) of normalised input ``x``."""
        f = self.forward_features(x)
        logits = self.head(f.mean(dim=(2, 3)))
        cam = torch.einsum("nchw,kc->nkhw", f, self.head.weight) + self.head.bias.view(1, -1, 1, 1)
        return logits, cam, self.embed(f)

    @staticmethod
    def embed(features: torch.Tensor) -> torch.Tensor:
        """Quality-gate embedding: features pooled on a 2x2 grid, so layout (orientation) counts.

        The cells are those of ``adaptive_avg_pool2d(features, 2)`` (overlapping by the middle row or
        column of an odd-sized map), written out so that odd sizes export to ONNX too."""
        h, w = features.shape[-2], features.shape[-1]
        rows = ((0, (h + 1) // 2), (h // 2, h))
        cols = ((0, (w + 1) // 2), (w // 2, w))
        cells = [features[:, :, r0:r1, c0:c1].mean(dim=(2, 3)) for r0, r1 in rows for c0, c1 in cols]
        return torch.stack(cells, dim=2).flatten(1)


@dataclass(frozen=True)
class ArchSpec:
    """How to build an architecture and how it is trained by default."""

    build: Callable[[int], nn.Module]
    image_size: int
    optimizer: str  # "adamw", "adam" or "sgd"
    lr: float
    description: str
    linear_probe: bool = False  # trained by cxrtriage.train.probe (frozen trunk, fitted head)
