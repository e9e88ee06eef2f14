"""The rules every model shares, written once: input normalisation, the triage score and the
triage target. They work on numpy arrays and on torch tensors alike (plain arithmetic)."""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum
from typing import Any

import numpy as np


class Kind(str, Enum):
    """How a model's probabilities are read."""

    SINGLE = "single"          # softmax over classes; classes[0] is normal
    MULTILABEL = "multilabel"  # a sigmoid per finding; no finding = all low


def normalise(x: Any, mean: float, std: float) -> Any:
    """Pixel values in 0..255 to the network's input: ``(x / 255 - mean) / std``."""
    return standardise(x / 255.0, mean, std)


def standardise(x: Any, mean: float, std: float) -> Any:
    """Pixel values already in 0..1 (e.g. an augmented batch) to the network's input: ``(x - mean) / std``."""
    return (x - mean) / std


def triage_score(probs: np.ndarray, kind: Kind | str = Kind.SINGLE) -> np.ndarray:
    """P(abnormal) per image from (N, C) probabilities: ``1 - P(normal)`` for a single-label model,
    the highest finding probability for a multi-label one; clipped to [0, 1]."""
    p = np.asarray(probs, dtype=float)
    if Kind(kind) is Kind.MULTILABEL:
        s = p.max(axis=1) if p.shape[1] else np.zeros(len(p))
    else:
        s = 1.0 - p[:, 0]
    return np.clip(s, 0.0, 1.0)


def triage_target(y: np.ndarray, kind: Kind | str = Kind.SINGLE) -> np.ndarray:
    """0/1 "abnormal" per image: class index != 0, or any finding (multi-hot rows)."""
    y = np.asarray(y)
    if Kind(kind) is Kind.MULTILABEL:
        return y.reshape(len(y), -1).any(axis=1).astype(int)
    return (y != 0).astype(int)


def apply_temperature(probs: np.ndarray, temperature: float, kind: Kind | str = Kind.SINGLE,
                      bias: Sequence[float] | None = None) -> np.ndarray:
    """Probabilities recalibrated by a temperature and optional per-class offsets:
    ``softmax(log p / T + b)`` for a single-label model, ``sigmoid(logit p / T + b)`` per finding
    for a multi-label one. ``T = 1`` with no offsets changes nothing."""
    if temperature == 1.0 and bias is None:  # the engine calls this on every batch: no copy when nothing changes
        return np.asarray(probs)
    p = np.asarray(probs, dtype=np.float64)
    b = np.zeros(p.shape[1]) if bias is None else np.asarray(bias, dtype=np.float64)
    eps = 1e-12
    if Kind(kind) is Kind.MULTILABEL:
        z = np.log(np.clip(p, eps, 1.0)) - np.log(np.clip(1.0 - p, eps, 1.0))
        return (1.0 / (1.0 + np.exp(-(z / temperature + b)))).astype(np.float32)
    z = np.log(np.clip(p, eps, 1.0)) / temperature + b
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
