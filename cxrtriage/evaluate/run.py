"""Evaluate saved softmax predictions: metrics dict, and optionally metrics.json, plots and report.html."""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import classification_report

from cxrtriage.about import DISCLAIMER
from cxrtriage.contract import flagged, triage_score, triage_target
from cxrtriage.evaluate.metrics import binary_metrics, calibration_curve_data, jsonable, multiclass_metrics
from cxrtriage.evaluate.multilabel import evaluate_multilabel
from cxrtriage.evaluate.plots import confusion_plot, multiclass_roc_plot, pr_plot, reliability_plot, roc_plot
from cxrtriage.evaluate.report import write_report

__all__ = ["evaluate_predictions", "triage_score"]

_HEADLINE = ("accuracy", "sensitivity", "specificity", "ppv", "npv", "f1", "roc_auc", "pr_auc", "brier", "ece")


def evaluate_predictions(
    task_name: str,
    classes: list[str],
    y_true_idx: np.ndarray,
    probs: np.ndarray,
    threshold: float,
    out_dir: Path | None,
    meta: dict[str, Any],
    n_boot: int = 1000,
    seed: int = 0,
    label_thresholds: dict[str, float | None] | None = None,
    groups: np.ndarray | None = None,
) -> dict[str, Any]:
    """Evaluate softmax ``probs`` (N, C) against class indices; class 0 is "normal".

    Multi-label: pass 0/1 targets of shape (N, C) instead of indices, sigmoid ``probs`` and
    the per-label ``label_thresholds``; see :func:`cxrtriage.evaluate.multilabel.evaluate_multilabel`.

    The triage score ``1 - probs[:, 0]`` is scored against ``y_true_idx != 0`` at ``threshold``.
    With 3+ classes the class-level metrics are added (and ``macro_auc`` at top level).
    ``meta`` may hold model, model_version, data, split, date, task_description and
    threshold_method (how the threshold was chosen). When ``out_dir`` is given, writes
    metrics.json, the PNG plots and report.html there. ``groups`` (one patient id per image)
    makes the bootstrap CIs resample whole patients. Returns a JSON-serialisable dict.
    """
    if np.asarray(y_true_idx).ndim == 2:
        return evaluate_multilabel(task_name, list(classes), y_true_idx, probs, threshold, out_dir, meta,
                                   label_thresholds, n_boot=n_boot, seed=seed, groups=groups)
    y, p = _checked(y_true_idx, probs, classes)
    y_bin = triage_target(y).astype(np.int64)
    score = triage_score(p)
    binary = binary_metrics(y_bin, score, threshold, n_boot=n_boot, seed=seed, groups=groups)
    positive_name = classes[1] if len(classes) == 2 else "abnormal"
    result: dict[str, Any] = {
        "task": task_name,
        "classes": list(classes),
        "n": binary["n"],
        "n_pos": binary["n_pos"],
        "n_neg": binary["n_neg"],
        "threshold": float(threshold),
        "threshold_method": meta.get("threshold_method", "given"),
        **{k: binary[k] for k in _HEADLINE},
        "roc_auc_ci": binary["ci"]["roc_auc"],
        "ci_resampling": binary["ci_resampling"],
    }
    if len(classes) > 2:
        result.update(_class_level(y, p, classes, n_boot, seed, groups))
    else:
        result.update(_decision_report(y_bin, score, threshold, classes[0], positive_name))
    result.update(
        {
            "positive": f"any class other than {classes[0]!r}",
            "score": f"1 - P({classes[0]})",
            "binary": binary,
            "calibration": calibration_curve_data(y_bin, score),
            "meta": dict(meta),
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "disclaimer": DISCLAIMER,
        }
    )
    result = jsonable(result)
    if out_dir is not None:
        plots = _write_plots(Path(out_dir), result, y, y_bin, score, p, classes, threshold, positive_name)
        _write_outputs(Path(out_dir), result, plots)
    return result


def _checked(y_true_idx: np.ndarray, probs: np.ndarray, classes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Class indices (N,) and probabilities (N, C) as arrays, their shapes checked."""
    y = np.asarray(y_true_idx).ravel().astype(np.int64)
    p = np.asarray(probs, dtype=float)
    if p.ndim != 2 or p.shape != (y.size, len(classes)):
        raise ValueError(f"probs must have shape ({y.size}, {len(classes)}), got {p.shape}")
    if len(classes) < 2:
        raise ValueError("need at least two classes")
    return y, p


def _class_level(y: np.ndarray, p: np.ndarray, classes: list[str], n_boot: int, seed: int,
                 groups: np.ndarray | None = None) -> dict[str, Any]:
    """Entries of a 3+ class model: macro AUC with its CI, the class-level metrics and their report."""
    multi = multiclass_metrics(y, p, classes, n_boot=n_boot, seed=seed, groups=groups)
    return {"macro_auc": multi["macro_auc"], "macro_auc_ci": multi["ci"]["macro_auc"], "multiclass": multi,
            "classification_report": multi["classification_report"],
            "classification_report_kind": "arg-max class per image"}


def _decision_report(y_bin: np.ndarray, score: np.ndarray, threshold: float, normal_name: str,
                     positive_name: str) -> dict[str, Any]:
    """The classification report of a two-class model: the triage decision at ``threshold``."""
    pred = flagged(score, threshold).astype(np.int64)
    report = classification_report(y_bin, pred, labels=[0, 1], target_names=[normal_name, positive_name],
                                   output_dict=True, zero_division=np.nan)
    return {"classification_report": report,
            "classification_report_kind": f"triage decision at threshold {threshold:.3f}"}


def _write_outputs(out: Path, result: dict[str, Any], plots: dict[str, Path]) -> None:
    """metrics.json and report.html beside the plots; ``result`` gets the list of files."""
    result["files"] = {k: v.name for k, v in plots.items()}
    result["files"]["metrics"] = "metrics.json"
    result["files"]["report"] = "report.html"
    (out / "metrics.json").write_text(json.dumps(result, indent=2, allow_nan=False), encoding="utf-8")
    write_report(out, result, plots)


def _write_plots(
    out: Path,
    result: dict[str, Any],
    y: np.ndarray,
    y_bin: np.ndarray,
    score: np.ndarray,
    probs: np.ndarray,
    classes: list[str],
    threshold: float,
    positive_name: str,
) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    ci = result["binary"]["ci"]
    both = 0 < y_bin.sum() < y_bin.size
    plots: dict[str, Path] = {}
    if both:
        plots["roc"] = roc_plot(
            y_bin, score, out / "roc.png", threshold=threshold, ci=ci["roc_auc"],
            title=f"ROC · {positive_name} vs {classes[0]}",
        )
        plots["pr"] = pr_plot(
            y_bin, score, out / "pr.png", threshold=threshold, ci=ci["pr_auc"],
            title=f"Precision–recall · {positive_name}",
        )
    if "multiclass" in result and any(v is not None for v in result["multiclass"]["per_class_auc"].values()):
        plots["roc_per_class"] = multiclass_roc_plot(
            y, probs, classes, out / "roc_per_class.png", ci=result["multiclass"]["per_class_auc_ci"]
        )
    plots["reliability"] = reliability_plot(
        y_bin, score, out / "reliability.png", class_names=(classes[0], positive_name)
    )
    plots["confusion"] = confusion_plot(
        result["binary"]["confusion_matrix"], [classes[0], positive_name], out / "confusion.png",
        title=f"Triage at threshold {threshold:.3f}",
    )
    if "multiclass" in result:
        plots["confusion_multiclass"] = confusion_plot(
            result["multiclass"]["confusion_matrix"], classes, out / "confusion_multiclass.png",
            title="Most probable class (arg-max)",
        )
    return plots
