"""Operating-point selection for a binary triage score.

A case is flagged positive when ``score >= threshold``. Every threshold returned here lies
half-way between two adjacent distinct scores (never on a score itself), so a tiny change in a
score, or a ``>`` versus ``>=`` comparison, cannot flip a case across it.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_curve

from cxrtriage.contract import URGENT_SPECIFICITY

__all__ = ["choose_threshold", "high_priority_threshold", "operating_points", "THRESHOLD_METHODS"]

THRESHOLD_METHODS = ("youden", "youden-plateau", "sensitivity")
PLATEAU_HALF_WIDTH = 1.0  # logits: the window over which youden-plateau averages Youden's J


def validate_binary(y_true: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flatten and check 0/1 labels against finite scores of the same length."""
    y = np.asarray(y_true).ravel()
    s = np.asarray(score, dtype=float).ravel()
    if y.shape != s.shape:
        raise ValueError(f"y_true and score differ in length ({y.size} vs {s.size})")
    if y.size == 0:
        raise ValueError("no samples")
    if not np.all(np.isfinite(s)):
        raise ValueError("score contains NaN or infinite values")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("y_true must contain only 0 and 1")
    return y.astype(np.int64), s


def _check_binary(y_true: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y, s = validate_binary(y_true, score)
    if y.min() == y.max():
        raise ValueError("choosing a threshold needs both positive and negative cases")
    return y, s


def _roc(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC over every distinct score; ``levels`` holds the distinct scores, highest first.

    Entry ``k`` of ``fpr``/``tpr`` is the operating point that flags the ``k`` highest distinct
    score levels (``k = 0`` flags nothing).
    """
    fpr, tpr, thr = roc_curve(y, s, drop_intermediate=False)
    return fpr, tpr, thr[1:]


def _cut(levels: np.ndarray, k: int) -> float:
    """A threshold that flags exactly the ``k`` highest score levels, midway between levels."""
    m = levels.size
    if 0 < k < m:
        return float((levels[k - 1] + levels[k]) / 2.0)
    if k >= m:  # flag everything: go below the lowest score
        lowest = float(levels[-1])
        floor = 0.0 if lowest > 0.0 else lowest - 1.0
        return (lowest + floor) / 2.0
    highest = float(levels[0])  # flag nothing: go above the highest score
    ceiling = 1.0 if highest < 1.0 else highest + 1.0
    return (highest + ceiling) / 2.0


def choose_threshold(
    y_true: np.ndarray,
    score: np.ndarray,
    method: str = "youden",
    target_sensitivity: float | None = None,
) -> float:
    """Pick an operating threshold on validation data.

    ``method="youden"`` maximises sensitivity + specificity - 1 (ties go to the higher threshold).
    ``method="youden-plateau"`` maximises J averaged over +-1 logit around the threshold, which
    puts it in the middle of the flat top of J rather than at its edge, so a shifted score
    distribution (another scanner, another hospital) has room on both sides before calls flip.
    With ``target_sensitivity`` (or ``method="sensitivity"``) it returns the highest threshold
    whose sensitivity is at least the target, i.e. the most specific such operating point.
    """
    y, s = _check_binary(y_true, score)
    fpr, tpr, levels = _roc(y, s)
    if target_sensitivity is not None or method == "sensitivity":
        if target_sensitivity is None:
            raise ValueError("method='sensitivity' needs target_sensitivity")
        if not 0.0 < target_sensitivity <= 1.0:
            raise ValueError("target_sensitivity must be in (0, 1]")
        reached = np.flatnonzero(tpr >= target_sensitivity - 1e-12)
        return _cut(levels, int(reached[0]))
    if method == "youden-plateau":
        return _plateau(y, s)
    if method != "youden":
        raise ValueError(f"unknown method {method!r}; choose one of: {', '.join(THRESHOLD_METHODS)}")
    j = tpr - fpr
    return _cut(levels, int(np.argmax(j)))


def _plateau(y: np.ndarray, s: np.ndarray, half_width: float = PLATEAU_HALF_WIDTH, step: float = 0.01) -> float:
    """The threshold maximising Youden's J averaged over +-``half_width`` in logit units."""
    eps = 1e-7
    z = np.log(np.clip(s, eps, 1 - eps) / np.clip(1 - s, eps, 1 - eps))
    grid = np.arange(z.min() - half_width - step, z.max() + half_width + 2 * step, step)
    pos, neg = np.sort(z[y == 1]), np.sort(z[y == 0])
    tpr = 1.0 - np.searchsorted(pos, grid, side="left") / pos.size  # flagged: z >= threshold
    fpr = 1.0 - np.searchsorted(neg, grid, side="left") / neg.size
    k = int(round(half_width / step))
    j = np.convolve(tpr - fpr, np.ones(2 * k + 1) / (2 * k + 1), mode="same")
    best = np.flatnonzero(j >= j.max() - 1e-12)
    g = grid[best[len(best) // 2]]  # the middle of a tied run
    levels = np.unique(z)
    i = int(np.searchsorted(levels, g))
    if 0 < i < levels.size:  # every threshold in the gap between two scores calls the same: take its middle
        g = (levels[i - 1] + levels[i]) / 2.0
    elif i == 0:
        g = min(g, levels[0] - half_width)
    else:
        g = max(g, levels[-1] + half_width)
    return float(1.0 / (1.0 + np.exp(-g)))


def high_priority_threshold(y_true: np.ndarray, score: np.ndarray, specificity: float = 0.95) -> float:
    """The lowest threshold whose specificity is at least ``specificity`` (for an "urgent" flag).

    Lowest such threshold means the most sensitive operating point that keeps false alarms
    within ``1 - specificity`` of the negatives.
    """
    if not 0.0 < specificity <= 1.0:
        raise ValueError("specificity must be in (0, 1]")
    y, s = _check_binary(y_true, score)
    fpr, _, levels = _roc(y, s)
    allowed = np.flatnonzero(fpr <= 1.0 - specificity + 1e-12)
    return _cut(levels, int(allowed[-1]))


def operating_points(y_true: np.ndarray, score: np.ndarray, method: str = "youden",
                     target_sensitivity: float | None = None,
                     urgent_specificity: float = URGENT_SPECIFICITY) -> tuple[float, float]:
    """(threshold, "urgent" threshold) chosen on validation: the operating threshold of
    :func:`choose_threshold`, and the threshold keeping ``urgent_specificity``, never below it."""
    threshold = choose_threshold(y_true, score, method=method, target_sensitivity=target_sensitivity)
    return threshold, max(threshold, high_priority_threshold(y_true, score, specificity=urgent_specificity))
