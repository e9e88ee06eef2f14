"""Patient-wise, stratified, seeded train/validation splits."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from cxrtriage.data.samples import Sample


def patient_split(samples: list[Sample], val_fraction: float = 0.2, seed: int = 0) -> list[Sample]:
    """Return the samples with ``split`` set to 'train' or 'val'.

    No patient appears on both sides; class proportions are kept close to the whole.
    """
    if not 0.0 < val_fraction < 0.5:
        raise ValueError("val_fraction must be between 0 and 0.5")
    from sklearn.model_selection import StratifiedGroupKFold

    n_folds = max(2, round(1.0 / val_fraction))
    labels = np.array([s.label for s in samples])
    groups = np.array([s.patient_id for s in samples])
    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    _, val_idx = next(splitter.split(np.zeros(len(samples)), labels, groups))
    val = set(val_idx.tolist())
    return [replace(s, split="val" if i in val else "train") for i, s in enumerate(samples)]
