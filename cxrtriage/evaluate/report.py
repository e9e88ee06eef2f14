"""Self-contained HTML evaluation report (inline CSS, plots embedded as base64 data URIs)."""

from __future__ import annotations

import base64
import datetime as _dt
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from cxrtriage.about import DISCLAIMER

__all__ = ["write_report", "PLOT_CAPTIONS"]

TEMPLATES = Path(__file__).with_name("templates")

#: Caption per plot key; unknown keys are shown with a title-cased key.
PLOT_CAPTIONS = {
    "roc": "ROC curve of the triage score (abnormal vs normal); dot = operating threshold.",
    "pr": "Precision–recall curve; dashed line = prevalence, dot = operating threshold.",
    "reliability": "Calibration: observed abnormal rate per score bin, with the score distribution below.",
    "confusion": "Triage confusion matrix at the operating threshold (row % = share of each true class).",
    "roc_per_class": "One-vs-rest ROC curve per class.",
    "confusion_multiclass": "Arg-max class confusion matrix (independent of the triage threshold).",
    "label_auc": "ROC AUC per finding with 95% CI; findings absent from this split are named, not scored.",
}

_PROPORTIONS = {"accuracy", "sensitivity", "specificity", "ppv", "npv"}
_METRICS = (
    ("roc_auc", "ROC AUC", "Ranking of abnormal above normal across all thresholds (0.5 = chance)."),
    ("sensitivity", "Sensitivity", "Abnormal images that are flagged (recall)."),
    ("specificity", "Specificity", "Normal images that are not flagged."),
    ("ppv", "PPV", "Flagged images that are truly abnormal (depends on prevalence)."),
    ("npv", "NPV", "Unflagged images that are truly normal (depends on prevalence)."),
    ("accuracy", "Accuracy", "Images classified correctly as abnormal / normal."),
    ("f1", "F1", "Harmonic mean of PPV and sensitivity."),
    ("pr_auc", "PR AUC (average precision)", "Area under the precision–recall curve."),
    ("brier", "Brier score", "Mean squared error of the score as a probability (lower is better)."),
    ("ece", "ECE", "Expected calibration error, 10 equal-width bins (lower is better)."),
)


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:.1f}%"


def _num(v: float | None) -> str:
    return "—" if v is None else f"{v:.3f}"


def _ci(ci: Sequence[float] | None, proportion: bool) -> str | None:
    if not ci:
        return None
    if proportion:
        return f"{100 * ci[0]:.1f}–{100 * ci[1]:.1f}%"
    return f"{ci[0]:.3f}–{ci[1]:.3f}"


def _fmt(key: str, v: float | None) -> str:
    return _pct(v) if key in _PROPORTIONS else _num(v)


def _count_of(num: int, den: int, what: str) -> str:
    return f"{num:,} of {den:,} {what}" if den else f"no {what}"


def _cards(result: dict[str, Any]) -> list[dict[str, Any]]:
    b = result["binary"]
    (tn, fp), (fn, tp) = b["confusion_matrix"]
    ci = b["ci"]
    hints = {
        "roc_auc": "Abnormal ranked above normal, over all thresholds; 0.5 is chance.",
        "sensitivity": _count_of(tp, tp + fn, "abnormal images flagged"),
        "specificity": _count_of(tn, tn + fp, "normal images not flagged"),
        "ppv": _count_of(tp, tp + fp, "flagged images abnormal") + f" (prevalence {_pct(b['prevalence'])})",
        "npv": _count_of(tn, tn + fn, "unflagged images normal"),
    }
    labels = {
        "roc_auc": "ROC AUC",
        "sensitivity": "Sensitivity",
        "specificity": "Specificity",
        "ppv": "PPV",
        "npv": "NPV",
    }
    cards = [
        {
            "label": labels[k],
            "value": _fmt(k, b[k]),
            "ci": _ci(ci.get(k), k in _PROPORTIONS),
            "hint": hints[k],
        }
        for k in labels
    ]
    ml = result.get("multilabel")
    if ml:
        cards.insert(1, {
            "label": "Mean AUC",
            "value": _num(ml["mean_auc"]),
            "ci": _ci(ml.get("mean_auc_ci"), False),
            "hint": f"Per-finding ROC AUC averaged over {ml['n_labels_scored']} of {len(ml['labels'])} findings"
                    + (f" ({len(ml['labels_absent'])} absent)" if ml["labels_absent"] else "") + ".",
        })
    mc = result.get("multiclass")
    if mc:
        cards.insert(
            1,
            {
                "label": "Macro AUC",
                "value": _num(mc["macro_auc"]),
                "ci": _ci(mc["ci"].get("macro_auc"), False),
                "hint": f"One-vs-rest ROC AUC averaged over {len(mc['classes'])} classes.",
            },
        )
    return cards


def _confusion(
    cm: Sequence[Sequence[int]],
    names: Sequence[str],
    title: str,
    note: str = "",
    errors: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    rows = []
    for name, counts in zip(names, cm):
        total = int(sum(counts))
        cells = [{"count": int(c), "frac": (c / total if total else 0.0)} for c in counts]
        rows.append({"name": name, "cells": cells, "total": total})
    return {"names": list(names), "rows": rows, "title": title, "note": note, "errors": errors or []}


def _triage_errors(b: dict[str, Any], normal: str, abnormal: str) -> list[dict[str, Any]]:
    (tn, fp), (fn, tp) = b["confusion_matrix"]
    missed = _pct(fn / (fn + tp) if fn + tp else None)
    alarms = _pct(fp / (fp + tn) if fp + tn else None)
    return [
        {"kind": "miss", "count": fn,
         "text": f"{abnormal} images not flagged (false negatives, {missed} of {abnormal})"},
        {"kind": "alarm", "count": fp, "text": f"{normal} images flagged (false positives, {alarms} of {normal})"},
    ]


def _metric_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    b = result["binary"]
    rows = [
        {"label": label, "value": _fmt(k, b[k]), "ci": _ci(b["ci"].get(k), k in _PROPORTIONS), "desc": desc}
        for k, label, desc in _METRICS
    ]
    mc = result.get("multiclass")
    if mc:
        rows.append(
            {
                "label": "Macro AUC (one-vs-rest)",
                "value": _num(mc["macro_auc"]),
                "ci": _ci(mc["ci"].get("macro_auc"), False),
                "desc": f"Mean of the per-class one-vs-rest AUCs over {', '.join(mc['classes'])}.",
            }
        )
        for name, auc in mc["per_class_auc"].items():
            rows.append(
                {
                    "label": f"AUC · {name}",
                    "value": _num(auc),
                    "ci": _ci(mc["per_class_auc_ci"].get(name), False),
                    "desc": f"{name} vs all other classes.",
                    "sub": True,
                }
            )
        rows.append(
            {
                "label": "Class accuracy (arg-max)",
                "value": _pct(mc["accuracy"]),
                "ci": _ci(mc["ci"].get("accuracy"), True),
                "desc": "Images whose most probable class is the true class.",
            }
        )
    return rows


def _label_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per finding of a multi-label result (absent findings say so)."""
    ml = result.get("multilabel")
    if not ml:
        return []
    rows = []
    for name in ml["labels"]:
        e = ml["per_label"][name]
        rows.append({
            "name": name, "n_pos": f"{e['n_pos']:,}", "prevalence": _pct(e["prevalence"]),
            "auc": _num(e["roc_auc"]) if e["roc_auc"] is not None else e["status"],
            "ci": _ci(e.get("roc_auc_ci"), False), "pr_auc": _num(e["pr_auc"]),
            "threshold": _num(e["threshold"]), "sensitivity": _pct(e["sensitivity"]),
            "specificity": _pct(e["specificity"]), "absent": e["roc_auc"] is None,
        })
    return rows


def _report_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for name, entry in report.items():
        if not isinstance(entry, dict):  # the overall "accuracy" entry is a bare number
            blank = {"precision": "", "recall": "", "support": ""}
            rows.append({"name": name, **blank, "f1": _num(entry), "summary": True})
            continue
        support = entry.get("support")
        rows.append(
            {
                "name": name,
                "precision": _num(entry.get("precision")),
                "recall": _num(entry.get("recall")),
                "f1": _num(entry.get("f1-score")),
                "support": "" if support is None else f"{int(support):,}",
                "summary": name.endswith(" avg"),
            }
        )
    return rows


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def write_report(out_dir: Path | str, result: dict[str, Any], plots: dict[str, Path]) -> Path:
    """Write a self-contained ``report.html`` for an ``evaluate_predictions`` result; return its path.

    ``plots`` maps a plot key (see ``PLOT_CAPTIONS``) to a PNG, embedded as a data URI. Confusion
    matrices are drawn as HTML tables from ``result``, so ``confusion*`` PNGs are not embedded.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = result.get("meta") or {}
    b = result["binary"]
    classes = list(result.get("classes") or ["normal", "abnormal"])
    model_name = str(meta.get("model") or meta.get("model_name") or "Model")
    model_version = meta.get("model_version") or meta.get("version")
    created = result.get("created") or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")

    abnormal = "abnormal" if len(classes) > 2 else classes[1]
    confusions = [
        _confusion(
            b["confusion_matrix"],
            [classes[0], abnormal],
            title=f"Triage decision at threshold {b['threshold']:.3f}",
            errors=_triage_errors(b, classes[0], abnormal),
        )
    ]
    mc = result.get("multiclass")
    if mc:
        confusions.append(
            _confusion(
                mc["confusion_matrix"], mc["classes"], title="Most probable class (arg-max)",
                note="Independent of the triage threshold.",
            )
        )

    env = Environment(
        loader=FileSystemLoader(TEMPLATES), autoescape=True, undefined=StrictUndefined,
        trim_blocks=True, lstrip_blocks=True,
    )
    html = env.get_template("report.html.j2").render(
        title=f"{model_name} · {result.get('task', '')}",
        model_name=model_name,
        model_version=model_version,
        task=result.get("task", ""),
        task_description=meta.get("task_description", ""),
        data=meta.get("data", ""),
        split=meta.get("split", ""),
        date=meta.get("date") or created[:10],
        created=created,
        disclaimer=result.get("disclaimer") or DISCLAIMER,
        classes=classes,
        b=b,
        threshold=result.get("threshold", b["threshold"]),
        threshold_method=result.get("threshold_method") or "given",
        flagged_pct=100 * b["n_flagged"] / b["n"] if b["n"] else 0.0,
        cards=_cards(result),
        plots=[
            {"src": _data_uri(p), "caption": PLOT_CAPTIONS.get(k, k.replace("_", " ").capitalize())}
            for k, p in plots.items()
            if not k.startswith("confusion")
        ],
        confusions=confusions,
        metric_rows=_metric_rows(result),
        report_kind=result.get("classification_report_kind", ""),
        report_rows=_report_rows(result.get("classification_report") or {}),
        label_rows=_label_rows(result),
        score_desc=("max over findings of P(finding)" if result.get("multilabel") else f"1 − P({classes[0]})"),
    )
    path = out_dir / "report.html"
    path.write_text(html, encoding="utf-8")
    return path
