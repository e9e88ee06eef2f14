"""The labelled sample a site calibrates on: a Kermany-layout folder or a ``path,label[,patient_id]`` CSV."""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

from cxrtriage.data import Sample, get_task, kermany_samples
from cxrtriage.data.generic import csv_samples, folder_samples

MIN_PER_CLASS = 30  # fewer films of a class than this cannot place an operating point


class SampleError(ValueError):
    """A calibration sample that cannot be used, with the reason."""


def read_sample(path: str | Path, task: str, min_per_class: int = MIN_PER_CLASS) -> list[Sample]:
    """The films of a sample with labels in ``task``'s classes; refuses unknown labels and classes
    with fewer than ``min_per_class`` films."""
    path = Path(path)
    t = get_task(task)
    try:
        if path.is_file():
            samples = csv_samples(path, t)
        elif (path / "NORMAL").is_dir() or (path / "PNEUMONIA").is_dir():
            samples = kermany_samples(path, "", t.name)
        else:
            samples = folder_samples(path, t)
    except (ValueError, FileNotFoundError) as exc:
        raise SampleError(f"calibration sample {path}: {exc}") from None
    counts = Counter(s.label for s in samples)
    short = {c: counts.get(c, 0) for c in t.classes if counts.get(c, 0) < min_per_class}
    if short:
        listed = ", ".join(f"{c}: {n}" for c, n in short.items())
        raise SampleError(f"calibration sample {path}: at least {min_per_class} films of every class are "
                          f"needed; it has {listed}")
    return samples


def counts_of(samples: list[Sample], classes: tuple[str, ...]) -> dict[str, int]:
    counts = Counter(s.label for s in samples)
    return {c: int(counts.get(c, 0)) for c in classes}


def sample_hash(samples: list[Sample]) -> str:
    """SHA-256 of the sorted ``file name, label`` list: names the sample without its pixels or paths."""
    rows = sorted(f"{Path(s.path).name},{s.label}" for s in samples)
    return hashlib.sha256("\n".join(rows).encode("utf-8")).hexdigest()
