"""A run's images and targets: the split samples, their cached pixels as tensors, the targets."""

from __future__ import annotations

import numpy as np
import torch

from cxrtriage.data import Task, kermany_samples, load_cached, patient_split, read_manifest
from cxrtriage.data.samples import Sample
from cxrtriage.data.split import carve_validation
from cxrtriage.train.config import TrainConfig


def load_samples(cfg: TrainConfig) -> list[Sample]:
    """Samples with split set: from the manifest, or a fresh patient-wise split of ``data``."""
    if cfg.manifest:
        samples = read_manifest(cfg.manifest)
        if not any(s.split == "val" for s in samples):
            samples = carve_validation(samples, cfg.task, cfg.val_fraction, cfg.seed)
        return [s for s in samples if s.split in ("train", "val")]
    if not cfg.data:
        raise ValueError("give --data ROOT (Kermany layout) or --manifest CSV")
    return patient_split(kermany_samples(cfg.data, "train", cfg.task), cfg.val_fraction, cfg.seed)


def split_images(samples: list[Sample], size: int, cache_dir: str | None, progress: bool = False,
                 intensity: str = "none", border: str = "keep") -> tuple[torch.Tensor, torch.Tensor]:
    """(training, validation) uint8 images (N, size, size) of ``samples``, from the image cache,
    after the run's border step and intensity normalisation."""
    arr = load_cached([s.path for s in samples], size, cache_dir, progress=progress, intensity=intensity,
                      border=border)
    is_val = np.array([s.split == "val" for s in samples])
    return (torch.from_numpy(np.ascontiguousarray(arr[~is_val])),
            torch.from_numpy(np.ascontiguousarray(arr[is_val])))


def pixel_stats(x_train: torch.Tensor) -> tuple[float, float]:
    """(mean, std) of the training images in 0..1 units: the normalisation the network is trained with."""
    x = x_train.float()
    return float(x.mean() / 255.0), float(x.std() / 255.0)


def targets(task: Task, samples: list[Sample]) -> np.ndarray:
    """Class indices (N,), or 0/1 multi-hot rows (N, findings) for a multi-label task."""
    if task.kind == "multilabel":
        return np.stack([task.multi_hot(s.label) for s in samples])
    return np.array([task.index(s.label) for s in samples])


def of_split(samples: list[Sample], split: str) -> list[Sample]:
    """The samples of one split ('train' or 'val')."""
    return [s for s in samples if s.split == split]
