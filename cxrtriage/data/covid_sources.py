"""COVID-19 / other pneumonia / normal films from several collections, each film with its source and site.

Three folders, as laid out under ``shared/data``:

* ``covid-multisource/labels.csv`` (``path,label,patient_id,source,site,...``): the ieee8023
  collection, COVID-CXNet and Figure1; labels ``COVID-19``, ``other_pneumonia``, ``normal``;
* ``covid-hannover/labels.csv`` (``path,label,patient_id,...``): Hannover Medical School, all COVID-19;
* ``nih-cxr14/labels.csv`` (``path,label,patient_id,age,...``): NIH Clinical Center; ``No Finding``
  -> normal, any film whose NIH labels include ``Pneumonia`` -> other pneumonia, the rest left out.

A film keeps its ``source`` (the collection) and its ``site`` (hospital or country as the
collection records it), so that evaluations can hold a whole source or site out. Patient ids
are kept as given, except that the multisource folder's ``hannover-<id>`` patients are the
Hannover folder's ``mhh-<id>`` (the same patients), so a patient-wise split keeps them together.
"""

from __future__ import annotations

import csv
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from cxrtriage.data.samples import Sample

HANNOVER_SITE = "Hannover Medical School, Hannover, Germany"
NIH_SITE = "NIH Clinical Center, Bethesda, USA"
SOURCES = ("ieee8023", "covid-cxnet", "figure1", "hannover", "nih")
FOLDERS = {"multisource": "covid-multisource", "hannover": "covid-hannover", "nih": "nih-cxr14"}
_LABELS = {"covid-19": "covid19", "covid19": "covid19", "other_pneumonia": "other_pneumonia",
           "normal": "normal"}


@dataclass(frozen=True)
class Film:
    """One labelled film (``label`` in the ``covid3`` task's spelling) and where it came from."""

    path: str
    label: str
    patient_id: str
    source: str
    site: str

    @property
    def covid(self) -> bool:
        return self.label == "covid19"

    def sample(self, split: str = "") -> Sample:
        return Sample(self.path, self.label, self.patient_id, split)


def _rows(csv_path: Path, needed: tuple[str, ...]) -> list[dict[str, str]]:
    if not csv_path.is_file():
        raise FileNotFoundError(f"{csv_path}: not found (a labels.csv with columns {', '.join(needed)} expected)")
    with csv_path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in needed if c not in (reader.fieldnames or ())]
        if missing:
            raise ValueError(f"{csv_path}: lacks column(s) {missing}")
        return list(reader)


def _existing(root: Path, rel: str) -> str:
    path = root / rel
    if not path.is_file():
        raise FileNotFoundError(f"{path}: named in {root / 'labels.csv'} but missing")
    return str(path.resolve())


def multisource_films(root: str | Path) -> list[Film]:
    """The films of ``covid-multisource`` (ieee8023, COVID-CXNet, Figure1)."""
    root = Path(root)
    out = []
    for r in _rows(root / "labels.csv", ("path", "label", "patient_id", "source", "site")):
        label = _LABELS.get(r["label"].strip().lower())
        if label is None:
            raise ValueError(f"{root / 'labels.csv'}: unknown label {r['label']!r} for {r['path']}")
        pid = r["patient_id"].strip()
        if pid.startswith("hannover-"):
            pid = "mhh-" + pid[len("hannover-"):]
        out.append(Film(_existing(root, r["path"]), label, pid, r["source"].strip(), r["site"].strip() or "unknown"))
    return out


def hannover_films(root: str | Path) -> list[Film]:
    """The films of ``covid-hannover`` (every one COVID-19)."""
    root = Path(root)
    return [Film(_existing(root, r["path"]), "covid19", r["patient_id"].strip(), "hannover", HANNOVER_SITE)
            for r in _rows(root / "labels.csv", ("path", "label", "patient_id"))]


def nih_label(findings: str) -> str | None:
    """normal (``No Finding``), other_pneumonia (``Pneumonia`` among the findings) or None."""
    found = {f.strip() for f in findings.split("|")}
    if found == {"No Finding"}:
        return "normal"
    return "other_pneumonia" if "Pneumonia" in found else None


def nih_films(root: str | Path, min_age: float | None = 18) -> list[Film]:
    """Normals and pneumonias of ``nih-cxr14``; patients younger than ``min_age`` left out."""
    root = Path(root)
    out = []
    for r in _rows(root / "labels.csv", ("path", "label", "patient_id", "age")):
        label = nih_label(r["label"])
        if label is None:
            continue
        if min_age is not None and r["age"].strip() and float(r["age"]) < min_age:
            continue
        out.append(Film(_existing(root, r["path"]), label, r["patient_id"].strip(), "nih", NIH_SITE))
    return out


def covid3_films(data_root: str | Path, sources: tuple[str, ...] = SOURCES) -> list[Film]:
    """Every film of the three folders under ``data_root`` (``shared/data``), of the given sources."""
    data_root = Path(data_root)
    unknown = sorted(set(sources) - set(SOURCES))
    if unknown:
        raise ValueError(f"unknown source(s) {unknown}; choose from {', '.join(SOURCES)}")
    films: list[Film] = []
    if {"ieee8023", "covid-cxnet", "figure1"} & set(sources):
        films += [f for f in multisource_films(data_root / FOLDERS["multisource"]) if f.source in sources]
    if "hannover" in sources:
        films += hannover_films(data_root / FOLDERS["hannover"])
    if "nih" in sources:
        films += nih_films(data_root / FOLDERS["nih"])
    return films


def describe(films: list[Film]) -> str:
    """Films / patients per label, e.g. ``covid19 690/449, other_pneumonia 44/23``."""
    n = Counter(f.label for f in films)
    pts = {lab: len({f.patient_id for f in films if f.label == lab}) for lab in n}
    return ", ".join(f"{lab} {n[lab]}/{pts[lab]}" for lab in ("covid19", "other_pneumonia", "normal") if n[lab])


def write_covid3_manifest(films: list[Film], path: str | Path, extra_columns: bool = True) -> Path:
    """A manifest (``path,label,patient_id,split``, plus ``source,site``) of ``films`` with no split."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "patient_id", "split"] + (["source", "site"] if extra_columns else []))
        for f in films:
            w.writerow([f.path, f.label, f.patient_id, ""] + ([f.source, f.site] if extra_columns else []))
    return path


__all__ = ["FOLDERS", "Film", "HANNOVER_SITE", "NIH_SITE", "SOURCES", "covid3_films", "describe",
           "hannover_films", "multisource_films", "nih_films", "nih_label", "write_covid3_manifest"]
