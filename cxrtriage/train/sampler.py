"""A sampler that keeps rare labels present in every epoch of multi-label training.

Each image is drawn with probability proportional to ``1 / frequency`` of its rarest label
(images without findings count as the label "no finding"), raised to ``power`` (0 = uniform,
1 = every label about equally often as a rarest label). Draws are with replacement, seeded by
(seed, epoch), so a resumed run sees the same order.
"""

from __future__ import annotations

import numpy as np

SAMPLERS = ("rare", "uniform")


def rare_label_probs(targets: np.ndarray, power: float = 0.5) -> np.ndarray:
    """Drawing probability of each image (N,) for multi-hot ``targets`` (N, L)."""
    y = np.asarray(targets) > 0
    n = len(y)
    if n == 0:
        raise ValueError("no images")
    counts = y.sum(axis=0).astype(np.float64)
    none = ~y.any(axis=1)
    inv = np.where(counts > 0, 1.0 / np.maximum(counts, 1), 0.0)
    rarest = np.where(y, inv[None, :], 0.0).max(axis=1)
    if none.any():
        rarest[none] = 1.0 / none.sum()
    w = rarest ** power
    return w / w.sum()


def epoch_order(probs: np.ndarray, n_draws: int, seed: int, epoch: int) -> np.ndarray:
    """Indices of one epoch's images (with replacement), the same for a given (seed, epoch)."""
    rng = np.random.default_rng([int(seed), int(epoch), 0x5A3])
    return rng.choice(len(probs), size=n_draws, replace=True, p=probs)


def label_presence(targets: np.ndarray, order: np.ndarray, batch_size: int) -> np.ndarray:
    """Fraction of batches holding at least one positive of each label (for checks and logs)."""
    y = np.asarray(targets) > 0
    n_batches = len(order) // batch_size
    if n_batches == 0:
        return np.zeros(y.shape[1])
    hit = np.stack([y[order[b * batch_size:(b + 1) * batch_size]].any(axis=0) for b in range(n_batches)])
    return hit.mean(axis=0)


__all__ = ["SAMPLERS", "epoch_order", "label_presence", "rare_label_probs"]
