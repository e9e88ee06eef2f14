"""Temperature scaling (Guo et al., 2017): the one positive number that makes a model's
probabilities best match a labelled sample (lowest negative log-likelihood); and its
bias-corrected form (BCTS, Alexandari et al., ICML 2020), which also fits one log-odds offset
per class, so a site whose class mix or look differs from training gets its priors back."""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize

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


def fit_temperature_bias(probs: np.ndarray, y: np.ndarray, bounds: tuple[float, float] = (0.05, 20.0),
                         max_offset: float = 10.0) -> tuple[float, tuple[float, ...]]:
    """Bias-corrected temperature scaling for a single-label model: the temperature ``T`` and
    per-class offsets ``b`` (``b[0] = 0``, the others within ``max_offset``) of
    ``softmax(log p / T + b)`` with the lowest NLL on labels ``y``. Starts from the plain
    temperature; the NLL is convex in (1/T, b), so L-BFGS-B finds its minimum."""
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(y)
    n_cls = p.shape[1]
    t0 = fit_temperature(p, y, Kind.SINGLE, bounds)
    logp = np.log(np.clip(p, 1e-12, 1.0))
    onehot = np.eye(n_cls)[y]

    def loss_grad(x: np.ndarray) -> tuple[float, np.ndarray]:
        inv_t, b = np.exp(-x[0]), np.r_[0.0, x[1:]]
        z = logp * inv_t + b
        z -= z.max(axis=1, keepdims=True)
        log_q = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        r = (np.exp(log_q) - onehot) / len(y)  # d loss / d z
        grad_x0 = -inv_t * float((r * logp).sum())
        return float(-(log_q * onehot).sum() / len(y)), np.r_[grad_x0, r.sum(axis=0)[1:]]

    start = np.r_[np.log(t0), np.zeros(n_cls - 1)]
    box = [(np.log(bounds[0]), np.log(bounds[1]))] + [(-max_offset, max_offset)] * (n_cls - 1)
    res = minimize(loss_grad, start, jac=True, method="L-BFGS-B", bounds=box)
    x = res.x if res.fun <= loss_grad(start)[0] else start
    return float(np.exp(x[0])), (0.0, *(float(v) for v in x[1:]))
