"""Losses: class-weighted cross-entropy for single-label tasks; for multi-label ones, binary
cross-entropy with per-label positive weights, and focal loss.

With 14 findings of very different frequency (NIH ChestX-ray14: hernia in 0.2% of images,
infiltration in 18%), an unweighted BCE learns to predict "absent" for the rare labels.
``pos_weight[l] = negatives / positives`` of label ``l`` (as the batches will see them, when a
sampler changes the frequencies) balances each label's positives against its negatives.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

LOSSES = ("bce", "focal")


def positive_weights(targets: np.ndarray, sample_probs: np.ndarray | None = None, max_weight: float = 100.0
                     ) -> np.ndarray:
    """Per-label ``negatives / positives`` of multi-hot ``targets`` (N, L), each image weighted by
    its probability of being drawn (uniform when None). Labels without positives get 1; weights
    are capped at ``max_weight``."""
    y = np.asarray(targets, dtype=np.float64)
    w = np.full(len(y), 1.0 / max(1, len(y))) if sample_probs is None else np.asarray(sample_probs, np.float64)
    w = w / w.sum()
    pos = w @ y
    neg = 1.0 - pos
    out = np.ones(y.shape[1])
    ok = pos > 0
    out[ok] = np.minimum(neg[ok] / pos[ok], max_weight)
    return out.astype(np.float32)


def focal_loss(logits: torch.Tensor, targets: torch.Tensor, gamma: float = 2.0,
               pos_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Focal loss (Lin et al. 2017) per element: BCE scaled by ``(1 - p_t) ** gamma``."""
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none", pos_weight=pos_weight)
    p = torch.sigmoid(logits)
    p_t = p * targets + (1 - p) * (1 - targets)
    return bce * (1 - p_t).pow(gamma)


def weighted_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, class_weights: torch.Tensor,
                           label_smoothing: float = 0.0) -> torch.Tensor:
    """Per-image softmax cross-entropy times the weight of the image's class."""
    ce = F.cross_entropy(logits, labels, reduction="none", label_smoothing=label_smoothing)
    return ce * class_weights[labels]


def multilabel_loss(logits: torch.Tensor, targets: torch.Tensor, pos_weight: torch.Tensor | None = None,
                    kind: str = "bce", gamma: float = 2.0, label_smoothing: float = 0.0) -> torch.Tensor:
    """Mean over images of the summed per-label loss, divided by the number of labels."""
    if label_smoothing:
        targets = targets * (1 - label_smoothing) + 0.5 * label_smoothing
    if kind == "bce":
        per = F.binary_cross_entropy_with_logits(logits, targets, reduction="none", pos_weight=pos_weight)
    elif kind == "focal":
        per = focal_loss(logits, targets, gamma, pos_weight)
    else:
        raise ValueError(f"unknown loss {kind!r}; choose one of: {', '.join(LOSSES)}")
    return per.mean()


__all__ = ["LOSSES", "focal_loss", "multilabel_loss", "positive_weights", "weighted_cross_entropy"]
