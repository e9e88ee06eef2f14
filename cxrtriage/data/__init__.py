"""Datasets, tasks, patient-wise splits and the preprocessed image cache (torch-free)."""

from cxrtriage.contract.preprocess import apply_intensity, to_model_input
from cxrtriage.data.cache import load_cached
from cxrtriage.data.kermany import kermany_samples, patient_id
from cxrtriage.data.samples import Sample, read_manifest, write_manifest
from cxrtriage.data.split import DEFAULT_VAL_FRACTION, patient_split
from cxrtriage.data.tasks import TASKS, Task, get_task

__all__ = [
    "DEFAULT_VAL_FRACTION", "Sample", "TASKS", "Task", "get_task", "kermany_samples", "load_cached", "patient_id",
    "patient_split", "read_manifest", "apply_intensity", "to_model_input", "write_manifest",
]
