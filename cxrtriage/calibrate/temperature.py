"""Temperature scaling (Guo et al., 2017): the one positive number that makes a model's
probabilities best match a labelled sample (lowest negative log-likelihood)."""

from __future__ import annotations

import numpy as np

from cxrtriage.contract import Kind, apply_temperature


def nll(probs: np.ndarray, y: np.ndarray, kind: Kind) -> float:
    """Mean negative log-likelihood of labels ``y`` (class indices, or multi-hot rows)."""
    p = np.clip(np.asarray(probs, dtype=np.float64), 1e-12, 1 - 1e-12)
    if kind is Kind.MULTILABEL:
        return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))
    return float(-np.mean(np.log(p[np.arange(len(y)), y])))


def fit_temperature(probs: np.ndarray, y: np.ndarray, kind: Kind | str = Kind.SINGLE,
                    bounds: tuple[float, float] = (0.05, 20.0)) -> float:
    """The temperature in ``bounds`` with the lowest NLL: a log-spaced scan, then golden-section
    refinement around the best point (the NLL is convex in 1/T)."""
    kind = Kind(kind)
    lo, hi = np.log(bounds[0]), np.log(bounds[1])
    grid = np.linspace(lo, hi, 121)
    losses = [nll(apply_temperature(probs, float(np.exp(g)), kind), y, kind) for g in grid]
    i = int(np.argmin(losses))
    a, b = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
    ratio = (np.sqrt(5) - 1) / 2
    for _ in range(40):
        c, d = b - ratio * (b - a), a + ratio * (b - a)
        if nll(apply_temperature(probs, float(np.exp(c)), kind), y, kind) <= \
                nll(apply_temperature(probs, float(np.exp(d)), kind), y, kind):
            b = d
        else:
            a = c
    return float(np.exp((a + b) / 2))
