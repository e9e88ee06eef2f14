"""Multi-label evaluation: per-label ROC AUC with bootstrap CIs, their mean, per-label
thresholds and operating points, a per-label plot, and the triage view (max over findings).

A label with no positive (or no negative) image in the evaluated split has no AUC: it is
reported as absent (None), never as 0, and left out of the mean, which says how many labels
it averages.
"""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import average_precision_score, classification_report, roc_auc_score

from cxrtriage.about import DISCLAIMER
from cxrtriage.contract import Kind, flagged, triage_score, triage_target
from cxrtriage.evaluate.metrics import (
    CI_LEVEL,
    _bootstrap,
    _opt,
    _ratio,
    binary_metrics,
    calibration_curve_data,
    jsonable,
    weighted_roc_auc,
)
from cxrtriage.evaluate.plots import (
    ACCENT,
    BLUE,
    INK,
    MUTED,
    _figure,
    _save,
    _styled,
    pr_plot,
    reliability_plot,
    roc_plot,
)
from cxrtriage.evaluate.report import write_report
from cxrtriage.evaluate.thresholds import choose_threshold

__all__ = ["evaluate_multilabel", "label_auc_plot", "label_thresholds", "multilabel_metrics", "specificity_thresholds",
           "validation_summary"]


def _check(y: np.ndarray, p: np.ndarray, labels: list[str]) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y)
    p = np.asarray(p, dtype=float)
    if y.ndim != 2 or p.shape != y.shape or y.shape[1] != len(labels):
        raise ValueError(f"targets and probs must both have shape (N, {len(labels)}); got {y.shape} and {p.shape}")
    if y.shape[0] == 0:
        raise ValueError("no samples")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("targets must be 0/1")
    if not np.all(np.isfinite(p)):
        raise ValueError("probs contains NaN or infinite values")
    return y.astype(np.int64), p


MIN_THRESHOLD_POSITIVES = 10


def label_thresholds(targets: np.ndarray, probs: np.ndarray, labels: list[str], method: str = "youden",
                     target_sensitivity: float | None = None) -> dict[str, float | None]:
    """Per-label operating thresholds chosen on (validation) data; None (the engine then flags at
    0.5) where a label has fewer than ``MIN_THRESHOLD_POSITIVES`` positives or no negatives: a
    threshold fitted to a handful of cases is noise."""
    y, p = _check(targets, probs, labels)
    out: dict[str, float | None] = {}
    for j, name in enumerate(labels):
        if MIN_THRESHOLD_POSITIVES <= y[:, j].sum() < len(y):
            out[name] = float(choose_threshold(y[:, j], p[:, j], method=method,
                                               target_sensitivity=target_sensitivity))
        else:
            out[name] = None
    return out


MIN_SPECIFICITY_NEGATIVES = 20


def specificity_threshold(negative_scores: np.ndarray, specificity: float) -> float:
    """The lowest threshold that leaves at least ``specificity`` of ``negative_scores`` unflagged
    (flagged = score >= threshold), midway between two score levels; ties are never split."""
    if not 0.0 < specificity < 1.0:
        raise ValueError(f"specificity must be in (0, 1), got {specificity}")
    s = np.asarray(negative_scores, dtype=float)
    if s.ndim != 1 or s.size == 0 or not np.all(np.isfinite(s)):
        raise ValueError("negative_scores must be a non-empty 1-D array of finite numbers")
    levels, counts = np.unique(s, return_counts=True)
    levels, counts = levels[::-1], counts[::-1]            # highest first
    allowed = (1.0 - specificity) * s.size + 1e-9          # negatives that may be flagged
    k = int(np.searchsorted(np.cumsum(counts), allowed, side="right"))  # levels flagged
    if k == 0:
        return float(min(1.0, (levels[0] + 1.0) / 2.0)) if levels[0] < 1.0 else 1.0
    if k >= levels.size:
        return float(levels[-1] / 2.0)
    return float((levels[k - 1] + levels[k]) / 2.0)


def specificity_thresholds(targets: np.ndarray, probs: np.ndarray, labels: list[str],
                           specificity: float) -> dict[str, float | None]:
    """Per finding, the lowest threshold keeping ``specificity`` among the films without that finding
    (NaN targets, unknown labels, are left out). It needs negatives only, so rare findings get one
    too; None where fewer than ``MIN_SPECIFICITY_NEGATIVES`` negatives are known."""
    y = np.asarray(targets, dtype=float)
    p = np.asarray(probs, dtype=float)
    if y.ndim != 2 or p.shape != y.shape or y.shape[1] != len(labels):
        raise ValueError(f"targets and probs must both have shape (N, {len(labels)}); got {y.shape} and {p.shape}")
    out: dict[str, float | None] = {}
    for j, name in enumerate(labels):
        neg = p[y[:, j] == 0, j]
        out[name] = specificity_threshold(neg, specificity) if neg.size >= MIN_SPECIFICITY_NEGATIVES else None
    return out


def multilabel_metrics(targets: np.ndarray, probs: np.ndarray, labels: list[str],
                       thresholds: dict[str, float | None] | None = None, n_boot: int = 1000,
                       seed: int = 0, groups: np.ndarray | None = None) -> dict[str, Any]:
    """Per-label AUC (95% bootstrap CI, images resampled within the label's classes), PR AUC,
    sensitivity/specificity/PPV at the label's threshold, and the mean AUC over scored labels
    (CI from resampling images within strata of their rarest finding). ``groups`` (one patient id
    per image): every CI resamples whole patients instead."""
    y, p = _check(targets, probs, labels)
    n = len(y)
    thresholds = thresholds or {}
    per: dict[str, dict[str, Any]] = {}
    defined = []
    for j, name in enumerate(labels):
        yj, pj = y[:, j], p[:, j]
        n_pos = int(yj.sum())
        entry: dict[str, Any] = {"n_pos": n_pos, "prevalence": n_pos / n, "threshold": thresholds.get(name)}
        if n_pos == 0 or n_pos == n:
            entry.update(status="absent" if n_pos == 0 else "no negatives", roc_auc=None, roc_auc_ci=None,
                         pr_auc=None)
        else:
            defined.append(j)
            entry.update(status="scored", roc_auc=_opt(roc_auc_score(yj, pj)),
                         pr_auc=_opt(average_precision_score(yj, pj)))
            strata = [np.flatnonzero(yj == 1), np.flatnonzero(yj == 0)]
            ci = _bootstrap(strata, n, n_boot, seed + j,
                            lambda w, yj=yj, pj=pj: {"auc": weighted_roc_auc(w, yj, pj)}, groups)
            entry["roc_auc_ci"] = ci.get("auc")
        thr = entry["threshold"]
        if thr is not None:
            pred = flagged(pj, thr)
            tp, fp = int((pred & (yj == 1)).sum()), int((pred & (yj == 0)).sum())
            fn, tn = n_pos - tp, n - n_pos - fp
            entry.update(sensitivity=_opt(_ratio(tp, tp + fn)), specificity=_opt(_ratio(tn, tn + fp)),
                         ppv=_opt(_ratio(tp, tp + fp)), n_flagged=tp + fp)
        else:
            entry.update(sensitivity=None, specificity=None, ppv=None, n_flagged=None)
        per[name] = entry

    mean_auc = float(np.mean([per[labels[j]]["roc_auc"] for j in defined])) if defined else None
    mean_ci = None
    if defined and n_boot > 0:
        freq = y.sum(axis=0)
        rarest = np.where(y.any(axis=1), np.argmin(np.where(y == 1, freq[None, :], n + 1), axis=1), -1)
        strata = [np.flatnonzero(rarest == k) for k in np.unique(rarest)]

        def stats(w: np.ndarray) -> dict[str, np.ndarray]:
            return {"mean": np.mean([weighted_roc_auc(w, y[:, j], p[:, j]) for j in defined], axis=0)}

        mean_ci = _bootstrap(strata, n, n_boot, seed, stats, groups).get("mean")
    return jsonable({
        "labels": list(labels),
        "n": n,
        "per_label": per,
        "mean_auc": mean_auc,
        "mean_auc_ci": mean_ci,
        "n_labels_scored": len(defined),
        "labels_absent": [labels[j] for j in range(len(labels)) if j not in defined],
        "n_boot": int(n_boot), "ci_level": CI_LEVEL, "seed": int(seed),
    })


@_styled
def label_auc_plot(result: dict[str, Any], path: Path | str, title: str = "ROC AUC per finding") -> Path:
    """Forest plot: each label's AUC with its 95% CI; absent labels are named, not drawn as 0."""
    labels = result["labels"]
    per = result["per_label"]
    fig = _figure(6.4, max(3.0, 0.38 * len(labels) + 1.4))
    ax = fig.add_subplot()
    ys = np.arange(len(labels))[::-1]
    for yv, name in zip(ys, labels):
        e = per[name]
        if e["roc_auc"] is None:
            ax.text(0.505, yv, f"{e['status']} in this split", va="center", fontsize=9, color=MUTED, style="italic")
            continue
        ci = e.get("roc_auc_ci")
        if ci:
            ax.plot(ci, [yv, yv], color=BLUE, lw=2, alpha=0.55)
        ax.plot(e["roc_auc"], yv, "o", color=BLUE, ms=7, mec="white", mew=1.2, zorder=4)
        ax.text(1.005, yv, f"{e['roc_auc']:.3f}  (n+={e['n_pos']:,})", va="center", fontsize=8.5, color=INK,
                transform=ax.get_yaxis_transform())
    ax.axvline(0.5, ls="--", lw=1, color="#9ca3af")
    if result.get("mean_auc") is not None:
        ax.axvline(result["mean_auc"], color=ACCENT, lw=1.4)
        title += (f"\nmean {result['mean_auc']:.3f} (red line) over {result['n_labels_scored']} of "
                  f"{len(labels)} findings")
    ax.set_yticks(ys, labels)
    ax.set_ylim(-0.6, len(labels) - 0.4)
    ax.set_xlim(0.5 - 0.02, 1.0)
    ax.set_xlabel("ROC AUC (95% bootstrap CI)")
    ax.set_title(title)
    ax.grid(axis="y", visible=False)
    return _save(fig, path)


def evaluate_multilabel(task_name: str, labels: list[str], targets: np.ndarray, probs: np.ndarray,
                        threshold: float, out_dir: Path | None, meta: dict[str, Any],
                        thresholds: dict[str, float | None] | None = None, n_boot: int = 1000,
                        seed: int = 0, groups: np.ndarray | None = None) -> dict[str, Any]:
    """The multi-label counterpart of :func:`cxrtriage.evaluate.evaluate_predictions`.

    Triage: ``max`` over finding probabilities against "any finding" at ``threshold``;
    per label: AUC with CI, operating point at ``thresholds[label]``. Writes metrics.json,
    plots and report.html to ``out_dir`` when given.
    """
    y, p = _check(targets, probs, labels)
    any_pos = triage_target(y, Kind.MULTILABEL).astype(np.int64)
    score = triage_score(p, Kind.MULTILABEL)
    binary = binary_metrics(any_pos, score, threshold, n_boot=n_boot, seed=seed, groups=groups)
    ml = multilabel_metrics(y, p, labels, thresholds, n_boot=n_boot, seed=seed, groups=groups)
    thr = np.array([np.inf if (thresholds or {}).get(c) is None else thresholds[c] for c in labels])
    report = classification_report(y, flagged(p, thr[None, :]).astype(int), labels=list(range(len(labels))),
                                   target_names=list(labels), output_dict=True, zero_division=np.nan)
    result: dict[str, Any] = {
        "task": task_name, "kind": "multilabel", "classes": ["no finding", "any finding"], "labels": list(labels),
        "n": binary["n"], "n_pos": binary["n_pos"], "n_neg": binary["n_neg"], "threshold": float(threshold),
        "threshold_method": meta.get("threshold_method", "given"),
        **{k: binary[k] for k in ("accuracy", "sensitivity", "specificity", "ppv", "npv", "f1", "roc_auc",
                                  "pr_auc", "brier", "ece")},
        "roc_auc_ci": binary["ci"]["roc_auc"], "ci_resampling": binary["ci_resampling"],
        "mean_auc": ml["mean_auc"], "mean_auc_ci": ml["mean_auc_ci"],
        "multilabel": ml,
        "classification_report": report,
        "classification_report_kind": "each finding at its own threshold (chosen on validation)",
        "positive": "any finding", "score": "max over findings of P(finding)",
        "binary": binary, "calibration": calibration_curve_data(any_pos, score),
        "meta": dict(meta), "disclaimer": DISCLAIMER,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    result = jsonable(result)
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        plots: dict[str, Path] = {"label_auc": label_auc_plot(ml, out / "label_auc.png")}
        if 0 < any_pos.sum() < len(any_pos):
            ci = binary["ci"]
            plots["roc"] = roc_plot(any_pos, score, out / "roc.png", threshold=threshold, ci=ci["roc_auc"],
                                    title="ROC · any finding (max over findings)")
            plots["pr"] = pr_plot(any_pos, score, out / "pr.png", threshold=threshold, ci=ci["pr_auc"],
                                  title="Precision–recall · any finding")
        plots["reliability"] = reliability_plot(any_pos, score, out / "reliability.png",
                                                class_names=("no finding", "any finding"))
        result["files"] = {k: v.name for k, v in plots.items()}
        result["files"].update(metrics="metrics.json", report="report.html")
        (out / "metrics.json").write_text(json.dumps(result, indent=2, allow_nan=False), encoding="utf-8")
        write_report(out, result, plots)
    return result


def validation_summary(targets: np.ndarray, probs: np.ndarray, labels: list[str]) -> dict[str, Any]:
    """Quick per-epoch numbers (no bootstrap): BCE, triage AUC (max vs any finding), per-label
    AUC (None where absent), their mean (None when no label is scored), mean label accuracy at 0.5."""
    y, p = _check(targets, probs, labels)
    q = np.clip(p, 1e-7, 1 - 1e-7)
    bce = float(-(y * np.log(q) + (1 - y) * np.log(1 - q)).mean())
    any_pos = triage_target(y, Kind.MULTILABEL)
    triage = float(roc_auc_score(any_pos, triage_score(p, Kind.MULTILABEL))) if 0 < any_pos.sum() < len(y) else None
    per = {name: (float(roc_auc_score(y[:, j], p[:, j])) if 0 < y[:, j].sum() < len(y) else None)
           for j, name in enumerate(labels)}
    scored = [v for v in per.values() if v is not None]
    return {"loss": bce, "roc_auc": triage, "mean_auc": float(np.mean(scored)) if scored else None,
            "per_label_auc": per, "accuracy": float(((p >= 0.5) == (y == 1)).mean())}
