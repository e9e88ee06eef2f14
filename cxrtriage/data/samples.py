"""Labelled samples and the manifest CSV that records a patient-wise split."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Sample:
    path: str
    label: str
    patient_id: str
    split: str = ""


MANIFEST_FIELDS = ("path", "label", "patient_id", "split")


def write_manifest(samples: list[Sample], path: str | Path) -> Path:
    """Write samples as CSV (paths absolute so the manifest works from anywhere)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(MANIFEST_FIELDS)
        for s in samples:
            writer.writerow([s.path, s.label, s.patient_id, s.split])
    return path


def read_manifest(path: str | Path) -> list[Sample]:
    """Read a manifest written by :func:`write_manifest`."""
    path = Path(path)
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        missing = set(MANIFEST_FIELDS[:3]) - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path}: manifest lacks column(s) {sorted(missing)}")
        return [
            Sample(r["path"], r["label"], r["patient_id"] or r["path"], r.get("split", "") or "")
            for r in reader
        ]
