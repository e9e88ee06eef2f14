"""Evaluation plots saved as PNG (Agg canvas, no pyplot state); each function returns the path."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LinearSegmentedColormap
from matplotlib.figure import Figure
from sklearn.metrics import (
    average_precision_score,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)

from cxrtriage.contract import flagged
from cxrtriage.evaluate.metrics import calibration_curve_data

__all__ = ["roc_plot", "pr_plot", "confusion_plot", "reliability_plot", "multiclass_roc_plot"]

DPI = 110
INK = "#1f2a37"
MUTED = "#6b7280"
GRID = "#e5e7eb"
BLUE = "#2f5d8a"
ACCENT = "#c8553d"
PALETTE = ("#2f5d8a", "#c8553d", "#5b8e7d", "#8e6c8a", "#d4a24c", "#4f6d7a", "#a86f4c")
_CMAP = LinearSegmentedColormap.from_list("cxr_muted", ["#f7f9fc", "#c9d8ea", "#7fa1c6", "#2f5d8a"])

_STYLE: dict[str, Any] = {
    "font.family": "sans-serif",
    "font.sans-serif": ["DejaVu Sans"],
    "font.size": 11,
    "axes.titlesize": 13,
    "axes.titleweight": "bold",
    "axes.titlelocation": "left",
    "axes.titlepad": 10,
    "axes.labelsize": 11,
    "axes.labelcolor": INK,
    "axes.edgecolor": "#9ca3af",
    "axes.linewidth": 0.8,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.color": GRID,
    "grid.linewidth": 0.8,
    "xtick.color": MUTED,
    "ytick.color": MUTED,
    "text.color": INK,
    "legend.fontsize": 9.5,
    "legend.frameon": False,
    "figure.facecolor": "white",
    "savefig.facecolor": "white",
}

F = TypeVar("F", bound=Callable[..., Path])


def _styled(fn: F) -> F:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Path:
        with matplotlib.rc_context(_STYLE):
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def _figure(width: float = 5.4, height: float = 4.6) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: Path | str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, format="png")
    return path


def _ci_text(ci: Sequence[float] | None) -> str:
    return f" (95% CI {ci[0]:.3f}–{ci[1]:.3f})" if ci else ""


def _binary(y_true: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(y_true).ravel().astype(int), np.asarray(score, dtype=float).ravel()


def _unit_axes(ax: Any) -> None:
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.02)
    ax.set_aspect("equal")


@_styled
def roc_plot(
    y_true: np.ndarray,
    score: np.ndarray,
    path: Path | str,
    *,
    threshold: float | None = None,
    ci: Sequence[float] | None = None,
    title: str = "ROC curve",
) -> Path:
    """ROC curve with AUC (and CI) in the legend and the operating point at ``threshold`` marked."""
    y, s = _binary(y_true, score)
    fpr, tpr, _ = roc_curve(y, s)
    auc = roc_auc_score(y, s)
    fig = _figure()
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], ls="--", lw=1, color="#9ca3af", label="Chance")
    ax.fill_between(fpr, tpr, step=None, color=BLUE, alpha=0.07, lw=0)
    ax.plot(fpr, tpr, color=BLUE, lw=2.2, label=f"AUC {auc:.3f}{_ci_text(ci)}")
    if threshold is not None:
        pred = flagged(s, threshold)
        sens = pred[y == 1].mean()
        spec = 1 - pred[y == 0].mean()
        ax.plot(
            1 - spec, sens, "o", ms=9, color=ACCENT, mec="white", mew=1.5, zorder=5,
            label=f"Threshold {threshold:.3f}: sens {sens:.2f}, spec {spec:.2f}",
        )
    _unit_axes(ax)
    ax.set_xlabel("1 − specificity (false-positive rate)")
    ax.set_ylabel("Sensitivity (true-positive rate)")
    ax.set_title(title)
    ax.legend(loc="lower right")
    return _save(fig, path)


@_styled
def pr_plot(
    y_true: np.ndarray,
    score: np.ndarray,
    path: Path | str,
    *,
    threshold: float | None = None,
    ci: Sequence[float] | None = None,
    title: str = "Precision–recall curve",
) -> Path:
    """Precision-recall curve with average precision (and CI), prevalence baseline, operating point."""
    y, s = _binary(y_true, score)
    precision, recall, _ = precision_recall_curve(y, s)
    ap = average_precision_score(y, s)
    prevalence = y.mean()
    fig = _figure()
    ax = fig.add_subplot()
    ax.axhline(prevalence, ls="--", lw=1, color="#9ca3af", label=f"Prevalence {prevalence:.2f}")
    ax.step(recall, precision, where="post", color=BLUE, lw=2.2, label=f"AP {ap:.3f}{_ci_text(ci)}")
    if threshold is not None:
        pred = flagged(s, threshold)
        sens = pred[y == 1].mean()
        ppv = y[pred].mean() if pred.any() else np.nan
        if np.isfinite(ppv):
            ax.plot(
                sens, ppv, "o", ms=9, color=ACCENT, mec="white", mew=1.5, zorder=5,
                label=f"Threshold {threshold:.3f}: sens {sens:.2f}, PPV {ppv:.2f}",
            )
    _unit_axes(ax)
    ax.set_xlabel("Recall (sensitivity)")
    ax.set_ylabel("Precision (PPV)")
    ax.set_title(title)
    ax.legend(loc="lower left")
    return _save(fig, path)


@_styled
def confusion_plot(
    cm: Sequence[Sequence[int]] | np.ndarray,
    class_names: Sequence[str],
    path: Path | str,
    *,
    title: str = "Confusion matrix",
) -> Path:
    """Confusion matrix (rows true, columns predicted) with counts and row percentages."""
    m = np.asarray(cm, dtype=float)
    rows = m.sum(axis=1, keepdims=True)
    pct = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)
    k = m.shape[0]
    side = max(4.4, 1.25 * k + 2.2)
    fig = _figure(side + 0.6, side)
    ax = fig.add_subplot()
    ax.grid(False)
    im = ax.imshow(pct, cmap=_CMAP, vmin=0, vmax=1)
    for i in range(k):
        for j in range(k):
            dark = pct[i, j] > 0.55
            ax.text(
                j, i - 0.09, f"{int(m[i, j]):,}", ha="center", va="center", fontsize=15,
                fontweight="bold", color="white" if dark else INK,
            )
            ax.text(
                j, i + 0.2, f"{100 * pct[i, j]:.1f}% of row", ha="center", va="center", fontsize=9,
                color="#e5edf6" if dark else MUTED,
            )
    ax.set_xticks(range(k), class_names)
    ax.set_yticks(range(k), class_names)
    ax.tick_params(length=0, labelsize=10.5, labelcolor=INK)
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.set_xlabel("Predicted")
    ax.set_ylabel("True")
    ax.set_title(title)
    cbar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
    cbar.set_label("Row fraction", color=MUTED)
    cbar.outline.set_visible(False)
    return _save(fig, path)


@_styled
def reliability_plot(
    y_true: np.ndarray,
    score: np.ndarray,
    path: Path | str,
    *,
    n_bins: int = 10,
    class_names: Sequence[str] = ("normal", "abnormal"),
    title: str = "Calibration (reliability diagram)",
) -> Path:
    """Observed positive rate per score bin against the mean score, with ECE and a score histogram."""
    y, s = _binary(y_true, score)
    cal = calibration_curve_data(y, s, n_bins)
    edges = np.asarray(cal["bin_edges"])
    mids = (edges[:-1] + edges[1:]) / 2
    width = edges[1] - edges[0]
    frac = np.array([np.nan if v is None else v for v in cal["fraction_positive"]])
    mean = np.array([np.nan if v is None else v for v in cal["mean_score"]])
    filled = np.isfinite(frac)

    fig = _figure(5.4, 5.6)
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1.1]})
    top.plot([0, 1], [0, 1], ls="--", lw=1, color="#9ca3af", label="Perfect calibration")
    top.bar(
        mids[filled], frac[filled], width=width * 0.9, color=BLUE, alpha=0.18, edgecolor=BLUE, lw=0.8,
        label="Observed rate per bin",
    )
    top.plot(mean[filled], frac[filled], "o-", color=BLUE, lw=1.8, ms=5.5, label="Mean score vs observed")
    top.set_ylim(0, 1.02)
    top.set_xlim(0, 1)
    top.set_ylabel(f"Observed fraction {class_names[1]}")
    top.set_title(f"{title}\nECE {cal['ece']:.3f}")
    top.legend(loc="upper left")

    bins = np.linspace(0, 1, 2 * n_bins + 1)
    bottom.hist(s[y == 0], bins=bins, color="#9ca3af", alpha=0.75, label=class_names[0])
    bottom.hist(s[y == 1], bins=bins, color=ACCENT, alpha=0.6, label=class_names[1])
    bottom.set_xlabel("Predicted score")
    bottom.set_ylabel("Images")
    bottom.legend(loc="upper center", ncol=2, fontsize=8.5)
    return _save(fig, path)


@_styled
def multiclass_roc_plot(
    y_true_idx: np.ndarray,
    probs: np.ndarray,
    classes: Sequence[str],
    path: Path | str,
    *,
    ci: dict[str, Sequence[float] | None] | None = None,
    title: str = "One-vs-rest ROC per class",
) -> Path:
    """One-vs-rest ROC curve for each class present in ``y_true_idx``, AUC (and CI) in the legend."""
    y = np.asarray(y_true_idx).ravel().astype(int)
    p = np.asarray(probs, dtype=float)
    fig = _figure()
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], ls="--", lw=1, color="#9ca3af", label="Chance")
    for c, name in enumerate(classes):
        target = (y == c).astype(int)
        if 0 < target.sum() < target.size:
            fpr, tpr, _ = roc_curve(target, p[:, c])
            auc = roc_auc_score(target, p[:, c])
            label = f"{name}: AUC {auc:.3f}{_ci_text((ci or {}).get(name))}"
            ax.plot(fpr, tpr, lw=2, color=PALETTE[c % len(PALETTE)], label=label)
    _unit_axes(ax)
    ax.set_xlabel("1 − specificity (false-positive rate)")
    ax.set_ylabel("Sensitivity (true-positive rate)")
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=8.5)
    return _save(fig, path)
