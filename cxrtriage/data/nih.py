"""Adapter for NIH ChestX-ray14 (Wang et al., CVPR 2017), as released.

Layout: ``<root>/Data_Entry_2017.csv`` (or ``Data_Entry_2017_v2020.csv``) with the
columns ``Image Index``, ``Finding Labels`` (findings joined by '|', or ``No Finding``),
``Patient ID`` and ``View Position``; ``<root>/train_val_list.txt`` and
``<root>/test_list.txt`` (one image name per line, the official patient-wise split); the
PNGs in ``<root>/images*/`` (``images/`` from the tarballs, or ``images_001/images/`` ...
as mirrored), searched recursively.

Task ``nih14``: multi-label over the 14 findings. The official test list stays 'test';
validation is carved out of ``train_val`` by patient (stratified on each image's rarest
finding). Images named in the CSV but not downloaded are left out with a warning, so a
partial download works.

Data: Wang X. et al., "ChestX-ray8", CVPR 2017; NIH Clinical Center, nihcc.app.box.com.
"""

from __future__ import annotations

import csv
import warnings
from pathlib import Path

from cxrtriage.data.samples import Sample
from cxrtriage.data.split import carve_validation
from cxrtriage.data.tasks import get_task

ENTRY_FILES = ("Data_Entry_2017.csv", "Data_Entry_2017_v2020.csv")
COLUMNS = ("Image Index", "Finding Labels", "Patient ID", "View Position")


def _entry_file(root: Path) -> Path:
    for name in ENTRY_FILES:
        if (root / name).is_file():
            return root / name
    raise FileNotFoundError(f"{root}: no {ENTRY_FILES[0]} (the NIH ChestX-ray14 layout expected)")


def _read_list(path: Path) -> set[str]:
    if not path.is_file():
        raise FileNotFoundError(f"{path.parent}: no {path.name} (the release's official split list)")
    return {line.strip() for line in path.read_text().splitlines() if line.strip()}


def image_index(root: str | Path) -> dict[str, Path]:
    """Image file name -> path, over every ``images*`` folder of the release."""
    index: dict[str, Path] = {}
    for d in sorted(Path(root).glob("images*")):
        if d.is_dir():
            for p in d.rglob("*.png"):
                index.setdefault(p.name, p)
    return index


def nih_samples(root: str | Path, task: str = "nih14", val_fraction: float = 0.1, seed: int = 0,
                views: tuple[str, ...] = ("PA", "AP")) -> list[Sample]:
    """All downloaded images with split 'train', 'val' (carved by patient) or 'test' (official)."""
    task_ = get_task(task)
    if task_.kind != "multilabel":
        raise ValueError(f"NIH ChestX-ray14 maps to a multi-label task such as 'nih14', not {task!r}")
    root = Path(root)
    entry = _entry_file(root)
    train_val, test = _read_list(root / "train_val_list.txt"), _read_list(root / "test_list.txt")
    index = image_index(root)
    if not index:
        raise FileNotFoundError(f"{root}: no PNG images under images*/")
    wanted = {v.upper() for v in views}
    samples, not_downloaded = [], 0
    with entry.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or ())]
        if missing:
            raise ValueError(f"{entry}: lacks column(s) {missing}")
        for n, row in enumerate(reader, start=2):
            name = row["Image Index"].strip()
            if row["View Position"].strip().upper() not in wanted:
                continue
            split = "test" if name in test else "train" if name in train_val else None
            if split is None:
                continue
            path = index.get(name)
            if path is None:
                not_downloaded += 1
                continue
            try:
                label = task_.canonical(row["Finding Labels"])
            except ValueError as exc:
                raise ValueError(f"{entry}, line {n}: {exc}") from None
            samples.append(Sample(str(path.resolve()), label, f"nih:{row['Patient ID'].strip()}", split))
    if not samples:
        raise FileNotFoundError(f"{root}: none of the images in {entry.name} were found under images*/")
    if not_downloaded:
        warnings.warn(f"{root}: {not_downloaded} image(s) listed in {entry.name} are not downloaded; left out",
                      stacklevel=2)
    return carve_validation(samples, task_, val_fraction, seed)


__all__ = ["COLUMNS", "ENTRY_FILES", "image_index", "nih_samples"]
