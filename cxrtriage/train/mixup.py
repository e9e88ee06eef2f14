"""Mixup (Zhang et al. 2018): train on convex combinations of image pairs and of their labels.

Each batch is mixed with a shuffled copy of itself, ``x = lam * x + (1 - lam) * x[perm]``,
with ``lam ~ Beta(alpha, alpha)``; the loss is the same mix of the losses against both labels.
The draws come from (run seed, epoch, batch), so a resumed run mixes exactly as an
uninterrupted one.
"""

from __future__ import annotations

import numpy as np
import torch


def check_alpha(alpha: float) -> None:
    """Refuse a Beta parameter that is not positive."""
    if alpha <= 0:
        raise ValueError(f"mixup alpha must be > 0, got {alpha}")


def mix_draw(n: int, alpha: float, seed: int, epoch: int, batch: int) -> tuple[float, torch.Tensor]:
    """``lam`` and a permutation of ``n`` batch positions, reproducible from (seed, epoch, batch)."""
    check_alpha(alpha)
    rng = np.random.default_rng([int(seed), int(epoch), int(batch)])
    lam = float(rng.beta(alpha, alpha))
    return lam, torch.from_numpy(rng.permutation(n))


def mix_images(x: torch.Tensor, lam: float, perm: torch.Tensor) -> torch.Tensor:
    """``lam * x + (1 - lam) * x[perm]`` along the batch axis."""
    return lam * x + (1.0 - lam) * x[perm.to(x.device)]


def mix_targets(y: torch.Tensor, lam: float, perm: torch.Tensor) -> torch.Tensor:
    """Soft multi-hot targets of a mixed batch (multi-label tasks)."""
    y = y.float()
    return lam * y + (1.0 - lam) * y[perm.to(y.device)]


__all__ = ["check_alpha", "mix_draw", "mix_images", "mix_targets"]
