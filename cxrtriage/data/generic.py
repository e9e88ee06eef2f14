"""Generic adapters (a hospital's own export) and the task-aware patient-wise splits.

* :func:`folder_samples`: ``<root>/<class>/*`` (or ``<root>/<split>/<class>/*``), class
  folders named after the task's classes (case, '-', '_' and spaces ignored).
* :func:`csv_samples`: a CSV with ``path,label[,patient_id][,split]``; paths relative to
  the CSV's folder; multi-label findings joined by '|' ("No Finding" for none).
* :func:`task_split` (from :mod:`cxrtriage.data.split`): patient-wise train/validation(/test)
  split for any task, stratified on the class, or for multi-label tasks on each image's rarest finding.
* :func:`dataset_samples`: one entry point over every adapter, by source name.
"""

from __future__ import annotations

import csv
from pathlib import Path

from cxrtriage.data.covid import covid3_samples
from cxrtriage.data.kermany import kermany_samples
from cxrtriage.data.nih import nih_samples
from cxrtriage.data.samples import Sample
from cxrtriage.data.split import carve_validation, task_split
from cxrtriage.data.tasks import NO_FINDING, Task, get_task

IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png", ".dcm", ".dicom", ".tif", ".tiff", ".bmp")
SOURCES = ("kermany", "covid", "nih", "folder", "csv")


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*")
                  if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))


def folder_samples(root: str | Path, task: str | Task, split: str = "") -> list[Sample]:
    """Images in class folders. With ``split``, ``<root>/<split>/`` is used when it exists.

    Patient id: the file name's stem (one image per patient) unless the file sits in a
    sub-folder of its class folder, whose name is then taken as the patient.
    """
    task = get_task(task) if isinstance(task, str) else task
    root = Path(root)
    base = root / split if split and (root / split).is_dir() else root
    if not base.is_dir():
        raise FileNotFoundError(f"{base}: no such folder")
    folders = sorted(d for d in base.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not folders:
        raise FileNotFoundError(f"{base}: no class folders (expected one folder per class: {', '.join(task.classes)})")
    samples = []
    for d in folders:
        try:
            label = task.canonical(d.name)
        except ValueError:
            raise ValueError(f"{d}: folder name {d.name!r} is not a class of task {task.name!r} "
                             f"(expected one of: {', '.join(task.classes)})") from None
        for p in _images(d):
            rel = p.relative_to(d)
            pid = rel.parts[0] if len(rel.parts) > 1 else p.stem
            samples.append(Sample(str(p.resolve()), label, pid, split if base != root else ""))
    if not samples:
        raise FileNotFoundError(f"{base}: no images in the class folders")
    return samples


def csv_samples(path: str | Path, task: str | Task) -> list[Sample]:
    """Samples from a ``path,label[,patient_id][,split]`` CSV (column names case-insensitive)."""
    task = get_task(task) if isinstance(task, str) else task
    path = Path(path)
    with path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        cols = {c.strip().lower(): c for c in reader.fieldnames or ()}
        missing = [c for c in ("path", "label") if c not in cols]
        if missing:
            raise ValueError(f"{path}: CSV lacks column(s) {missing} (expected path,label[,patient_id][,split])")
        samples = []
        for n, row in enumerate(reader, start=2):
            raw = (row[cols["path"]] or "").strip()
            if not raw:
                continue
            p = Path(raw)
            p = p if p.is_absolute() else (path.parent / p)
            try:
                label = task.canonical(row[cols["label"]] or "")
            except ValueError as exc:
                raise ValueError(f"{path}, line {n}: {exc}") from None
            pid = (row.get(cols.get("patient_id", ""), "") or "").strip() or p.stem
            split = (row.get(cols.get("split", ""), "") or "").strip().lower()
            samples.append(Sample(str(p.resolve()), label, pid, split))
    if not samples:
        raise ValueError(f"{path}: no rows")
    absent = [s.path for s in samples if not Path(s.path).is_file()]
    if absent:
        raise FileNotFoundError(f"{path}: {len(absent)} image(s) not found, e.g. {absent[0]}")
    return samples


def unlabelled_films(path: str | Path) -> list[Sample]:
    """Films without labels (``label`` empty): a folder of images (searched recursively; patient =
    the file's sub-folder under ``path``, else its stem) or a CSV with a ``path`` column (relative
    to the CSV's folder) and an optional ``patient_id``; other columns are ignored."""
    path = Path(path)
    if path.is_dir():
        films = [Sample(str(p.resolve()), "", p.relative_to(path).parts[0] if len(p.relative_to(path).parts) > 1
                        else p.stem) for p in _images(path)]
    elif path.is_file():
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            cols = {c.strip().lower(): c for c in reader.fieldnames or ()}
            if "path" not in cols:
                raise ValueError(f"{path}: CSV lacks a 'path' column")
            films = []
            for row in reader:
                raw = (row[cols["path"]] or "").strip()
                if raw:
                    p = Path(raw) if Path(raw).is_absolute() else path.parent / raw
                    pid = (row.get(cols.get("patient_id", ""), "") or "").strip() or p.stem
                    films.append(Sample(str(p.resolve()), "", pid))
        absent = [s.path for s in films if not Path(s.path).is_file()]
        if absent:
            raise FileNotFoundError(f"{path}: {len(absent)} image(s) not found, e.g. {absent[0]}")
    else:
        raise FileNotFoundError(f"{path}: no such file or folder")
    if not films:
        raise ValueError(f"{path}: no images")
    return films


# ------------------------------------------------------------------- one entry point


def dataset_samples(source: str, root: str | Path, task: str, normals: str | Path | None = None,
                    split: str = "train") -> list[Sample]:
    """Samples of a public release or a local export, by ``source``:

    kermany (``root`` = the release folder, ``split`` one of its folders), covid (``root`` =
    the COVID-19 image data collection, ``normals`` = a Kermany folder whose normals complete
    covid3), nih (``root`` = ChestX-ray14; official test list kept as 'test'), folder, csv.
    """
    if source == "kermany":
        return kermany_samples(root, split, task)
    if source == "covid":
        return covid3_samples(root, normals, task=task)
    if source == "nih":
        return nih_samples(root, task=task)
    if source == "folder":
        return folder_samples(root, task, split)
    if source == "csv":
        return csv_samples(root, task)
    raise ValueError(f"unknown data source {source!r}; choose one of: {', '.join(SOURCES)}")


__all__ = ["NO_FINDING", "SOURCES", "carve_validation", "csv_samples", "dataset_samples", "folder_samples",
           "task_split", "unlabelled_films"]
