"""A watch on drift and performance: each model's reference distributions (stored beside the model),
the drift statistic of recent results against them, and sensitivity / specificity / PPV against
readers' labels. Used by the service (``/api/v1/monitor``) and ``bench/monitor.py``."""

from cxrtriage.monitor.drift import DriftCheck, DriftWatch, drift_check, proportion_ci
from cxrtriage.monitor.reference import Reference, load_reference, reference_from_predictions, reference_path

__all__ = ["DriftCheck", "DriftWatch", "Reference", "drift_check", "load_reference", "proportion_ci",
           "reference_from_predictions", "reference_path"]
