"""Miniature copies of the three COVID-19 folders (``covid-multisource``, ``covid-hannover``, ``nih-cxr14``):
their ``labels.csv`` columns and label spellings, with real radiographs (the package's samples, varied)."""

from __future__ import annotations

import csv
from pathlib import Path

from dataset_fixtures import variant

MULTI = [  # (label, patient_id, source, site, file extension)
    ("COVID-19", "ieee8023-1", "ieee8023", "Spain", "png"),
    ("COVID-19", "ieee8023-1", "ieee8023", "Spain", "png"),
    ("COVID-19", "ieee8023-2", "ieee8023", "Italy", "png"),
    ("other_pneumonia", "ieee8023-3", "ieee8023", "Milan, Italy", "png"),
    ("other_pneumonia", "ieee8023-4", "ieee8023", "Melbourne, Australia", "png"),
    ("normal", "ieee8023-5", "ieee8023", "Hannover Medical School, Hannover, Germany", "png"),
    ("COVID-19", "hannover-abc", "covid-cxnet", "Hannover Medical School, Hannover, Germany", "jpg"),
    ("COVID-19", "cxnet-pt1", "covid-cxnet", "Spain", "jpg"),
    ("COVID-19", "cxnet-pt2", "covid-cxnet", "unknown", "jpg"),
    ("COVID-19", "figure1-1", "figure1", "unknown", "jpg"),
    ("normal", "figure1-2", "figure1", "", "jpg"),
]
HANNOVER = [("mhh-abc", "F"), ("mhh-abc", "F"), ("mhh-def", "M")]
NIH = [  # (findings, patient, age)
    ("No Finding", "nih-00000001", "45"), ("Pneumonia", "nih-00000002", "60"),
    ("Infiltration|Pneumonia", "nih-00000002", "61"), ("Effusion", "nih-00000003", "50"),  # not a covid3 label
    ("No Finding", "nih-00000004", "9"),  # a child: left out
    ("Consolidation", "nih-00000005", "40"),  # not Pneumonia: left out
    ("No Finding", "nih-00000006", "33"),
]


def _write(root: Path, header: list[str], rows: list[list[str]]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    with (root / "labels.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)


def make_covid_folders(data: Path, start: int = 300) -> Path:
    """``data/{covid-multisource,covid-hannover,nih-cxr14}`` with :data:`MULTI`, :data:`HANNOVER`, :data:`NIH`."""
    k = start
    rows = []
    for i, (label, pid, source, site, ext) in enumerate(MULTI):
        rel = f"images/{source}_{i:03d}.{ext}"
        (data / "covid-multisource" / "images").mkdir(parents=True, exist_ok=True)
        variant(k).save(data / "covid-multisource" / rel, format="PNG" if ext == "png" else "JPEG")
        k += 1
        rows.append([rel, label, pid, source, site, "PA", "CC BY 4.0", "M", "50", label])
    _write(data / "covid-multisource",
           ["path", "label", "patient_id", "source", "site", "view", "license", "sex", "age", "finding"], rows)
    rows = []
    for i, (pid, sex) in enumerate(HANNOVER):
        rel = f"images/h{i:03d}.jpg"
        (data / "covid-hannover" / "images").mkdir(parents=True, exist_ok=True)
        variant(k).save(data / "covid-hannover" / rel, format="JPEG")
        k += 1
        rows.append([rel, "COVID-19", pid, "", sex, "AP"])
    _write(data / "covid-hannover", ["path", "label", "patient_id", "age", "sex", "view"], rows)
    rows = []
    for i, (findings, pid, age) in enumerate(NIH):
        rel = f"images/{pid[4:]}_{i:03d}.jpg"
        (data / "nih-cxr14" / "images").mkdir(parents=True, exist_ok=True)
        variant(k).save(data / "nih-cxr14" / rel, format="JPEG")
        k += 1
        rows.append([rel, findings, pid, age, "F", "PA"])
    _write(data / "nih-cxr14", ["path", "label", "patient_id", "age", "sex", "view"], rows)
    return data
