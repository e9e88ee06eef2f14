"""Patient-wise, stratified, seeded train/validation(/test) splits, for any task."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import numpy as np

from cxrtriage.data.samples import Sample
from cxrtriage.data.tasks import Task, get_task

DEFAULT_VAL_FRACTION = 0.2  # of patients, held out for validation unless a run says otherwise


def patient_split(samples: list[Sample], val_fraction: float = DEFAULT_VAL_FRACTION, seed: int = 0) -> list[Sample]:
    """Return the samples with ``split`` set to 'train' or 'val'.

    No patient appears on both sides; class proportions are kept close to the whole.
    """
    if not 0.0 < val_fraction < 0.5:
        raise ValueError("val_fraction must be between 0 and 0.5")
    from sklearn.model_selection import StratifiedGroupKFold  # deferred: scikit-learn loads slowly

    n_folds = max(2, round(1.0 / val_fraction))
    labels = np.array([s.label for s in samples])
    groups = np.array([s.patient_id for s in samples])
    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    _, val_idx = next(splitter.split(np.zeros(len(samples)), labels, groups))
    val = set(val_idx.tolist())
    return [replace(s, split="val" if i in val else "train") for i, s in enumerate(samples)]


def _strata(samples: list[Sample], task: Task) -> list[str]:
    """One stratum per image: its class, or for multi-label tasks its rarest finding."""
    if task.kind != "multilabel":
        return [s.label for s in samples]
    parts = [s.label.split("|") for s in samples]
    freq = Counter(f for p in parts for f in p)
    return [min(p, key=lambda f: (freq[f], f)) for p in parts]


def task_split(samples: list[Sample], task: str | Task, val_fraction: float = DEFAULT_VAL_FRACTION, seed: int = 0,
               test_fraction: float = 0.0) -> list[Sample]:
    """Patient-wise split into 'train'/'val' (and 'test' with ``test_fraction``), stratified."""
    task = get_task(task) if isinstance(task, str) else task
    strata = _strata(samples, task)
    tagged = [replace(s, label=k) for s, k in zip(samples, strata)]
    if test_fraction:
        first = patient_split(tagged, test_fraction, seed)
        test = {i for i, s in enumerate(first) if s.split == "val"}
        rest = [i for i in range(len(samples)) if i not in test]
        inner = patient_split([tagged[i] for i in rest], val_fraction / (1.0 - test_fraction), seed)
        splits = {i: "test" for i in test}
        splits.update({i: s.split for i, s in zip(rest, inner)})
    else:
        splits = dict(enumerate(s.split for s in patient_split(tagged, val_fraction, seed)))
    return [replace(s, split=splits[i]) for i, s in enumerate(samples)]


def carve_validation(samples: list[Sample], task: str | Task, val_fraction: float = DEFAULT_VAL_FRACTION,
                     seed: int = 0) -> list[Sample]:
    """Split the 'train' samples into 'train'/'val' by patient; others (e.g. 'test') untouched."""
    train = [i for i, s in enumerate(samples) if s.split in ("train", "")]
    inner = task_split([samples[i] for i in train], task, val_fraction, seed)
    out = list(samples)
    for i, s in zip(train, inner):
        out[i] = s
    return out
