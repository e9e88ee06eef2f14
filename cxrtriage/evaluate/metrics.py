"""Discrimination, operating-point and calibration metrics with stratified bootstrap CIs.

Point estimates come from scikit-learn. Bootstrap replicates are computed for all resamples at
once: a resample is a vector of per-image multiplicities (a multinomial draw within each class),
and every metric is evaluated as its sample-weighted form, which equals the metric on the
resampled images. Undefined values are ``None``; every returned value is a plain Python type.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    brier_score_loss,
    classification_report,
    confusion_matrix,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

from cxrtriage.contract import Kind, flagged, triage_score, triage_target
from cxrtriage.evaluate.thresholds import validate_binary

__all__ = [
    "BINARY_CI_METRICS",
    "macro_auc",
    "triage_auc",
    "binary_metrics",
    "multiclass_metrics",
    "calibration_curve_data",
    "expected_calibration_error",
    "jsonable",
]

#: Metrics of ``binary_metrics`` that carry a bootstrap confidence interval.
BINARY_CI_METRICS = (
    "accuracy",
    "sensitivity",
    "specificity",
    "ppv",
    "npv",
    "f1",
    "roc_auc",
    "pr_auc",
    "brier",
    "ece",
)

CI_LEVEL = 0.95
_CHUNK = 250  # resamples evaluated together; bounds memory at about _CHUNK x N floats per array


# --------------------------------------------------------------------------- helpers


def jsonable(obj: Any) -> Any:
    """Convert numpy scalars/arrays, tuples and paths to plain JSON types; NaN/inf become None."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return [jsonable(v) for v in obj.tolist()]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        value = float(obj)
        return value if math.isfinite(value) else None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _opt(value: float | None) -> float | None:
    """A float, or None when undefined (None/NaN/inf)."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num = np.asarray(num, dtype=float)
    den = np.asarray(den, dtype=float)
    out = np.full(np.broadcast(num, den).shape, np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


def _check_binary(y_true: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y, s = validate_binary(y_true, score)
    if s.min() < -1e-6 or s.max() > 1 + 1e-6:
        raise ValueError("score must be a probability in [0, 1]")
    return y, np.clip(s, 0.0, 1.0)


def _bin_ids(score: np.ndarray, n_bins: int) -> np.ndarray:
    """Equal-width bin index per score; bins are (a, b] except the first, [0, b] (as scikit-learn)."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return np.searchsorted(edges[1:-1], score)


def _weights(strata: list[np.ndarray], n: int, n_boot: int, seed: int) -> Iterator[np.ndarray]:
    """Yield (chunk, n) arrays of bootstrap multiplicities, resampling within each stratum."""
    rng = np.random.default_rng(seed)
    done = 0
    while done < n_boot:
        b = min(_CHUNK, n_boot - done)
        w = np.zeros((b, n), dtype=float)
        for idx in strata:
            if idx.size:
                w[:, idx] = rng.multinomial(idx.size, np.full(idx.size, 1.0 / idx.size), size=b)
        yield w
        done += b


def _group_weights(groups: np.ndarray, n_boot: int, seed: int) -> Iterator[np.ndarray]:
    """Yield (chunk, n) arrays of multiplicities from a cluster bootstrap: whole groups (patients)
    are drawn with replacement, each image weighted by its group's draws."""
    codes = np.unique(np.asarray(groups).astype(str), return_inverse=True)[1].ravel()
    n_groups = int(codes.max()) + 1 if codes.size else 0
    rng = np.random.default_rng(seed)
    done = 0
    while done < n_boot:
        b = min(_CHUNK, n_boot - done)
        drawn = np.stack([np.bincount(rng.integers(0, n_groups, n_groups), minlength=n_groups) for _ in range(b)])
        yield drawn[:, codes].astype(float)
        done += b


def patient_weights(patients: np.ndarray, n_boot: int, seed: int = 0) -> np.ndarray:
    """(n_boot, n) image weights of a cluster bootstrap that draws whole patients with replacement
    (one patient id per image), for statistics computed from weights (``weighted_roc_auc``)."""
    chunks = list(_group_weights(patients, n_boot, seed))
    return np.concatenate(chunks) if chunks else np.zeros((0, len(patients)))


def percentile_ci(reps: np.ndarray) -> list[float] | None:
    finite = reps[np.isfinite(reps)]
    if finite.size == 0:
        return None
    alpha = (1.0 - CI_LEVEL) / 2.0
    lo, hi = np.percentile(finite, [100 * alpha, 100 * (1 - alpha)])
    return [float(lo), float(hi)]


def _bootstrap(
    strata: list[np.ndarray],
    n: int,
    n_boot: int,
    seed: int,
    stats: Callable[[np.ndarray], dict[str, np.ndarray]],
    groups: np.ndarray | None = None,
) -> dict[str, list[float] | None]:
    """Percentile CIs of each statistic that ``stats`` computes from a (chunk, n) weight array:
    images resampled within each stratum, or, with ``groups`` (one patient id per image), whole
    patients resampled, so several films of one patient count as the one patient they are."""
    if n_boot <= 0:
        return {}
    if groups is not None and len(groups) != n:
        raise ValueError(f"groups has {len(groups)} entries for {n} images")
    parts: dict[str, list[np.ndarray]] = {}
    draws = _weights(strata, n, n_boot, seed) if groups is None else _group_weights(groups, n_boot, seed)
    for w in draws:
        for name, values in stats(w).items():
            parts.setdefault(name, []).append(np.asarray(values, dtype=float))
    return {name: percentile_ci(np.concatenate(chunks)) for name, chunks in parts.items()}


# ---------------------------------------------------------- weighted (vectorised) metrics


def weighted_roc_auc(w: np.ndarray, y: np.ndarray, s: np.ndarray) -> np.ndarray:
    """ROC AUC for each row of sample weights ``w`` (Mann-Whitney form, ties count one half)."""
    pos, neg = y == 1, y == 0
    order = np.argsort(s[neg], kind="stable")
    s_neg = s[neg][order]
    w_neg = w[:, neg][:, order]
    cum = np.concatenate([np.zeros((w.shape[0], 1)), np.cumsum(w_neg, axis=1)], axis=1)
    lo = np.searchsorted(s_neg, s[pos], side="left")
    hi = np.searchsorted(s_neg, s[pos], side="right")
    below, tied = cum[:, lo], cum[:, hi] - cum[:, lo]
    w_pos = w[:, pos]
    num = np.sum(w_pos * (below + 0.5 * tied), axis=1)
    return _ratio(num, w_pos.sum(axis=1) * w_neg.sum(axis=1))


def weighted_average_precision(w: np.ndarray, y: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Average precision (step-wise PR AUC, as scikit-learn) for each row of sample weights."""
    order = np.argsort(-s, kind="stable")
    s_sorted, y_sorted = s[order], y[order].astype(float)
    ends = np.r_[np.flatnonzero(np.diff(s_sorted) != 0), s_sorted.size - 1]  # last of each tie group
    w_sorted = w[:, order]
    tp = np.cumsum(w_sorted * y_sorted, axis=1)[:, ends]
    fp = np.cumsum(w_sorted * (1.0 - y_sorted), axis=1)[:, ends]
    recall = _ratio(tp, tp[:, -1:])
    precision = np.nan_to_num(_ratio(tp, tp + fp))
    gain = np.diff(np.concatenate([np.zeros((w.shape[0], 1)), recall], axis=1), axis=1)
    return np.sum(gain * precision, axis=1)


def _weighted_ece(w: np.ndarray, y: np.ndarray, s: np.ndarray, n_bins: int = 10) -> np.ndarray:
    onehot = np.zeros((s.size, n_bins))
    onehot[np.arange(s.size), _bin_ids(s, n_bins)] = 1.0
    gap = w @ (onehot * (y - s)[:, None])  # per bin: sum(y) - sum(score)
    return np.abs(gap).sum(axis=1) / w.sum(axis=1)


def expected_calibration_error(y_true: np.ndarray, score: np.ndarray, n_bins: int = 10) -> float:
    """ECE: bin-size-weighted mean of |observed rate - mean score| over equal-width bins."""
    y, s = _check_binary(y_true, score)
    return float(_weighted_ece(np.ones((1, s.size)), y, s, n_bins)[0])


# ------------------------------------------------------------------------ public API


def calibration_curve_data(y_true: np.ndarray, score: np.ndarray, n_bins: int = 10) -> dict[str, Any]:
    """Reliability-diagram data over ``n_bins`` equal-width bins (empty bins give None)."""
    y, s = _check_binary(y_true, score)
    ids = _bin_ids(s, n_bins)
    count = np.bincount(ids, minlength=n_bins)
    mean_score = _ratio(np.bincount(ids, weights=s, minlength=n_bins), count)
    frac_pos = _ratio(np.bincount(ids, weights=y, minlength=n_bins), count)
    return jsonable(
        {
            "n_bins": n_bins,
            "bin_edges": np.linspace(0.0, 1.0, n_bins + 1),
            "count": count,
            "mean_score": mean_score,
            "fraction_positive": frac_pos,
            "ece": expected_calibration_error(y, s, n_bins),
        }
    )


def binary_metrics(
    y_true: np.ndarray, score: np.ndarray, threshold: float, n_boot: int = 1000, seed: int = 0,
    groups: np.ndarray | None = None,
) -> dict[str, Any]:
    """Metrics of a probability score against 0/1 labels; a case is positive when score >= threshold.

    Returns point estimates, the confusion matrix ``[[tn, fp], [fn, tp]]`` and, under ``ci``, 95%
    percentile bootstrap intervals (images resampled within each class; with ``groups``, one
    patient id per image, whole patients resampled).
    """
    y, s = _check_binary(y_true, score)
    pred = flagged(s, threshold).astype(np.int64)
    n_pos, n_neg = int(y.sum()), int(y.size - y.sum())
    both = n_pos > 0 and n_neg > 0
    (tn, fp), (fn, tp) = confusion_matrix(y, pred, labels=[0, 1])
    out: dict[str, Any] = {
        "threshold": float(threshold),
        "n": int(y.size),
        "n_pos": n_pos,
        "n_neg": n_neg,
        "prevalence": n_pos / y.size,
        "accuracy": accuracy_score(y, pred),
        "sensitivity": _opt(recall_score(y, pred, zero_division=np.nan)),
        "specificity": _opt(recall_score(y, pred, pos_label=0, zero_division=np.nan)),
        "ppv": _opt(precision_score(y, pred, zero_division=np.nan)),
        "npv": _opt(precision_score(y, pred, pos_label=0, zero_division=np.nan)),
        "f1": _opt(f1_score(y, pred, zero_division=np.nan)),
        "roc_auc": _opt(roc_auc_score(y, s)) if both else None,
        "pr_auc": _opt(average_precision_score(y, s)) if n_pos else None,
        "brier": _opt(brier_score_loss(y, s, labels=[0, 1])),
        "ece": expected_calibration_error(y, s),
        "confusion_matrix": [[int(tn), int(fp)], [int(fn), int(tp)]],
        "n_flagged": int(pred.sum()),
    }

    yp, yn = (y == 1) & (pred == 1), (y == 0) & (pred == 1)
    fnv, tnv = (y == 1) & (pred == 0), (y == 0) & (pred == 0)

    def stats(w: np.ndarray) -> dict[str, np.ndarray]:
        tp_, fp_, fn_, tn_ = w @ yp, w @ yn, w @ fnv, w @ tnv
        total = w.sum(axis=1)
        res = {
            "accuracy": (tp_ + tn_) / total,
            "sensitivity": _ratio(tp_, tp_ + fn_),
            "specificity": _ratio(tn_, tn_ + fp_),
            "ppv": _ratio(tp_, tp_ + fp_),
            "npv": _ratio(tn_, tn_ + fn_),
            "f1": _ratio(2 * tp_, 2 * tp_ + fp_ + fn_),
            "brier": (w @ (s - y) ** 2) / total,
            "ece": _weighted_ece(w, y, s),
        }
        if both:
            res["roc_auc"] = weighted_roc_auc(w, y, s)
        if n_pos:
            res["pr_auc"] = weighted_average_precision(w, y, s)
        return res

    strata = [np.flatnonzero(y == 1), np.flatnonzero(y == 0)]
    ci = _bootstrap(strata, y.size, n_boot, seed, stats, groups)
    out["ci"] = {m: (ci.get(m) if out[m] is not None else None) for m in BINARY_CI_METRICS}
    out["n_boot"], out["ci_level"], out["seed"] = int(n_boot), CI_LEVEL, int(seed)
    out["ci_resampling"] = _resampling(groups)
    return jsonable(out)


def _resampling(groups: np.ndarray | None) -> str:
    if groups is None:
        return "images, within each class"
    return f"patients ({len(np.unique(np.asarray(groups).astype(str)))}), whole"


def multiclass_metrics(
    y_true_idx: np.ndarray,
    probs: np.ndarray,
    classes: list[str],
    n_boot: int = 1000,
    seed: int = 0,
    groups: np.ndarray | None = None,
) -> dict[str, Any]:
    """Arg-max accuracy, one-vs-rest ROC AUC (macro and per class, with CIs), C x C confusion
    matrix and scikit-learn's classification report. AUCs of classes absent from ``y_true_idx``
    are None, and so is the macro AUC then. ``groups``: one patient id per image, to resample
    whole patients for the CIs."""
    y = np.asarray(y_true_idx).ravel().astype(np.int64)
    p = np.asarray(probs, dtype=float)
    n_cls = len(classes)
    if p.ndim != 2 or p.shape != (y.size, n_cls):
        raise ValueError(f"probs must have shape ({y.size}, {n_cls}), got {p.shape}")
    if y.size == 0:
        raise ValueError("no samples")
    if y.min() < 0 or y.max() >= n_cls:
        raise ValueError(f"y_true_idx must be class indices in [0, {n_cls})")
    if not np.all(np.isfinite(p)):
        raise ValueError("probs contains NaN or infinite values")
    pred = p.argmax(axis=1)
    labels = list(range(n_cls))
    present = [int(np.sum(y == c)) for c in labels]
    defined = [0 < k < y.size for k in present]

    per_class = {
        name: (_opt(roc_auc_score(y == c, p[:, c])) if defined[c] else None) for c, name in enumerate(classes)
    }
    macro = float(np.mean(list(per_class.values()))) if all(defined) else None
    report = classification_report(
        y, pred, labels=labels, target_names=list(classes), output_dict=True, zero_division=np.nan
    )
    out: dict[str, Any] = {
        "classes": list(classes),
        "n": int(y.size),
        "support": dict(zip(classes, present)),
        "accuracy": accuracy_score(y, pred),
        "macro_auc": macro,
        "per_class_auc": per_class,
        "confusion_matrix": confusion_matrix(y, pred, labels=labels),
        "classification_report": report,
    }

    correct = (pred == y).astype(float)

    def stats(w: np.ndarray) -> dict[str, np.ndarray]:
        res = {"accuracy": (w @ correct) / w.sum(axis=1)}
        aucs = []
        for c, name in enumerate(classes):
            if defined[c]:
                res[f"auc:{name}"] = weighted_roc_auc(w, (y == c).astype(np.int64), p[:, c])
                aucs.append(res[f"auc:{name}"])
        if all(defined):
            res["macro_auc"] = np.mean(aucs, axis=0)
        return res

    strata = [np.flatnonzero(y == c) for c in labels]
    ci = _bootstrap(strata, y.size, n_boot, seed, stats, groups)
    out["ci"] = {"accuracy": ci.get("accuracy"), "macro_auc": ci.get("macro_auc")}
    out["per_class_auc_ci"] = {name: ci.get(f"auc:{name}") for name in classes}
    out["n_boot"], out["ci_level"], out["seed"] = int(n_boot), CI_LEVEL, int(seed)
    out["ci_resampling"] = _resampling(groups)
    return jsonable(out)


def triage_auc(y: np.ndarray, probs: np.ndarray, kind: Kind | str = Kind.SINGLE) -> float:
    """ROC AUC of the triage score against "abnormal" (NaN when only one side is present), without CI."""
    pos = triage_target(y, kind)
    if pos.all() or not pos.any():
        return float("nan")
    return float(roc_auc_score(pos, triage_score(probs, kind)))


def macro_auc(y: np.ndarray, probs: np.ndarray) -> float:
    """One-vs-rest macro ROC AUC of class indices ``y`` against (N, C) probabilities (NaN when undefined)."""
    try:
        return float(roc_auc_score(y, probs, multi_class="ovr", average="macro"))
    except ValueError:
        return float("nan")
