"""Adapter for the COVID-19 image data collection (Cohen et al.), as released.

Layout: ``<root>/metadata.csv`` and the images under ``<root>/images/`` (the ``folder``
column names the folder when present). Columns used: ``patientid``, ``finding``, ``view``,
``modality``, ``folder``, ``filename``. Kept: X-ray images in a frontal view (PA, AP,
AP Supine). ``finding`` maps to the ``covid3`` task:

* any finding that names COVID-19 (``COVID-19``, ``Pneumonia/Viral/COVID-19``,
  ``COVID-19, ARDS``) -> ``covid19``;
* other pneumonia (``Pneumonia/...``, or an older flat pathogen name such as
  ``Streptococcus``, ``SARS``, ``Pneumocystis``) -> ``other_pneumonia``;
* ``No Finding`` -> ``normal``; everything else (tuberculosis, ARDS alone, "todo",
  unknown) is left out and counted.

The collection holds few normals, so ``covid3`` takes its normal class from a second
source: the NORMAL images of a Kermany-layout folder (:func:`covid3_samples`). Patient ids
are prefixed with their source so the two never collide, and splits are made by patient.
Beware: the two sources differ in more than disease (adult vs. paediatric patients,
hospitals, devices), so a model can learn the source instead of the finding; judge such a
model on external data before trusting it. For COVID-19 / other pneumonia / normal on adult films from
several collections, with each film's source and site, see :mod:`cxrtriage.data.covid_sources`.

Data: Cohen J.P. et al., "COVID-19 image data collection", arXiv:2006.11988,
github.com/ieee8023/covid-chestxray-dataset (licences per image, see its metadata).
"""

from __future__ import annotations

import csv
import random
import warnings
from collections import Counter
from pathlib import Path

from cxrtriage.data.kermany import kermany_samples
from cxrtriage.data.samples import Sample
from cxrtriage.data.tasks import get_task

FRONTAL_VIEWS = ("PA", "AP", "AP Supine")
_PNEUMONIA_CAUSES = {
    "sars", "mers", "mers-cov", "streptococcus", "pneumocystis", "klebsiella", "legionella", "chlamydophila",
    "e.coli", "influenza", "h1n1", "varicella", "herpes pneumonia", "mycoplasma", "mycoplasma bacterial pneumonia",
    "staphylococcus", "nocardia", "aspergillosis", "lipoid", "bacterial", "viral", "fungal", "pneumonia",
    "lobar pneumonia", "multilobar pneumonia", "aspiration pneumonia", "round pneumonia", "klebsiella pneumoniae",
}
METADATA_COLUMNS = ("patientid", "finding", "view", "modality", "filename")


def _norm(s: str) -> str:
    return " ".join(str(s or "").strip().lower().split())


def covid_label(finding: str) -> str | None:
    """``covid19``, ``other_pneumonia``, ``normal`` or None (not used) for a ``finding`` value."""
    f = _norm(finding)
    if not f:
        return None
    if "covid-19" in f or "covid19" in f or "sars-cov-2" in f:
        return "covid19"
    if f in ("no finding", "normal"):
        return "normal"
    parts = {p.strip() for p in f.replace(",", "/").split("/")}
    if f.startswith("pneumonia") or parts & _PNEUMONIA_CAUSES:
        return "other_pneumonia"
    return None


def covid_collection_samples(root: str | Path, views: tuple[str, ...] = FRONTAL_VIEWS,
                             ) -> tuple[list[Sample], Counter]:
    """Frontal X-ray samples of the collection and a count of rows left out, by reason."""
    root = Path(root)
    meta = root / "metadata.csv"
    if not meta.is_file():
        raise FileNotFoundError(f"{root}: no metadata.csv (the COVID-19 image data collection's layout expected)")
    wanted = {_norm(v) for v in views}
    samples, skipped = [], Counter()
    with meta.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in METADATA_COLUMNS if c not in (reader.fieldnames or ())]
        if missing:
            raise ValueError(f"{meta}: lacks column(s) {missing}")
        for row in reader:
            if _norm(row["modality"]) not in ("x-ray", "xray", "cr", "dx"):
                skipped["not X-ray"] += 1
                continue
            if _norm(row["view"]) not in wanted:
                skipped["not a frontal view"] += 1
                continue
            label = covid_label(row["finding"])
            if label is None:
                skipped[f"finding not in covid3: {row['finding'].strip() or '(empty)'}"] += 1
                continue
            path = root / (row.get("folder") or "images").strip() / row["filename"].strip()
            if not path.is_file():
                skipped["image file missing"] += 1
                continue
            samples.append(Sample(str(path.resolve()), label, f"covid:{row['patientid'].strip()}"))
    if skipped["image file missing"]:
        warnings.warn(f"{root}: {skipped['image file missing']} image(s) named in metadata.csv are missing; left out",
                      stacklevel=2)
    if not samples:
        raise ValueError(f"{meta}: no frontal X-ray rows with a covid3 finding ({dict(skipped)})")
    return samples, skipped


def kermany_normals(root: str | Path, split: str = "train") -> list[Sample]:
    """The NORMAL images of a Kermany-layout folder, patient ids prefixed ``kermany:``."""
    return [Sample(s.path, "normal", f"kermany:{s.patient_id}", "")
            for s in kermany_samples(root, split, "pneumonia") if s.label == "normal"]


def covid3_samples(covid_root: str | Path, normals_root: str | Path | None = None, task: str = "covid3",
                   normals_split: str = "train", max_normals: int | None = None, seed: int = 0,
                   views: tuple[str, ...] = FRONTAL_VIEWS) -> list[Sample]:
    """The covid3 set: the collection's frontal X-rays plus normals from a Kermany-layout folder.

    ``max_normals`` caps the borrowed normals (whole patients drawn at random with ``seed``)
    so they do not swamp the few hundred COVID-19 images. Samples have no split yet: use
    :func:`cxrtriage.data.generic.task_split`.
    """
    if get_task(task).name != "covid3":
        raise ValueError(f"the COVID-19 collection maps to task 'covid3', not {task!r}")
    samples, _ = covid_collection_samples(covid_root, views)
    if normals_root is not None:
        normals = kermany_normals(normals_root, normals_split)
        if max_normals is not None and len(normals) > max_normals:
            by_patient: dict[str, list[Sample]] = {}
            for s in normals:
                by_patient.setdefault(s.patient_id, []).append(s)
            pids = sorted(by_patient)
            random.Random(seed).shuffle(pids)
            kept: list[Sample] = []
            for pid in pids:
                if len(kept) >= max_normals:
                    break
                kept += by_patient[pid]
            normals = sorted(kept, key=lambda s: s.path)
        samples += normals
    counts = Counter(s.label for s in samples)
    absent = [c for c in get_task("covid3").classes if not counts[c]]
    if absent:
        hint = " (give a normal source, e.g. the Kermany release's folder)" if "normal" in absent else ""
        raise ValueError(f"covid3 has no images of class(es) {absent}{hint}")
    return samples


__all__ = ["FRONTAL_VIEWS", "covid3_samples", "covid_collection_samples", "covid_label", "kermany_normals"]
