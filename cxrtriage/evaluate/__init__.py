"""Evaluation of saved predictions: thresholds, metrics with bootstrap CIs, plots and an HTML report.

Runs on predicted probabilities only (no deep-learning framework needed).
"""

from cxrtriage.evaluate.metrics import (
    binary_metrics,
    calibration_curve_data,
    expected_calibration_error,
    jsonable,
    macro_auc,
    multiclass_metrics,
    triage_auc,
)
from cxrtriage.evaluate.multilabel import evaluate_multilabel, label_thresholds, multilabel_metrics
from cxrtriage.evaluate.plots import confusion_plot, multiclass_roc_plot, pr_plot, reliability_plot, roc_plot
from cxrtriage.evaluate.report import write_report
from cxrtriage.evaluate.run import evaluate_predictions, triage_score
from cxrtriage.evaluate.thresholds import choose_threshold, high_priority_threshold, operating_points

__all__ = [
    "binary_metrics",
    "calibration_curve_data",
    "choose_threshold",
    "confusion_plot",
    "evaluate_multilabel",
    "evaluate_predictions",
    "expected_calibration_error",
    "high_priority_threshold",
    "jsonable",
    "label_thresholds",
    "macro_auc",
    "multiclass_metrics",
    "multiclass_roc_plot",
    "multilabel_metrics",
    "operating_points",
    "pr_plot",
    "reliability_plot",
    "roc_plot",
    "triage_auc",
    "triage_score",
    "write_report",
]
