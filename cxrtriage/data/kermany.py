"""Adapter for the public Kermany pediatric chest X-ray release.

Layout: ``<root>/{train,val,test}/{NORMAL,PNEUMONIA}/*.jpeg``. Patient identity is in
the file name: ``personNNN_bacteria_MMM.jpeg`` / ``personNNN_virus_MMM.jpeg`` for
pneumonia, ``IM-XXXX-YYYY.jpeg`` / ``NORMAL2-IM-XXXX-YYYY.jpeg`` for normals (XXXX is
the study, taken as the patient).

Data: Kermany D.S. et al., Cell 172(5), 2018; Mendeley Data doi:10.17632/rscbjbr9sj.2,
CC BY 4.0.
"""

from __future__ import annotations

import re
from pathlib import Path

from cxrtriage.data.samples import Sample
from cxrtriage.data.tasks import get_task

_PERSON = re.compile(r"^(person\d+)_(bacteria|virus)_\d+", re.IGNORECASE)
_NORMAL = re.compile(r"^((?:NORMAL2-)?IM-\d+)-\d+", re.IGNORECASE)
SPLITS = ("train", "val", "test")


def patient_id(filename: str) -> str:
    """Patient id from a Kermany file name (the name itself when it has none)."""
    stem = Path(filename).stem
    m = _PERSON.match(stem) or _NORMAL.match(stem)
    return m.group(1) if m else stem


def label_for(folder: str, filename: str, task: str) -> str:
    """Label of one file for ``task`` ('pneumonia' or 'pneumonia3')."""
    folder = folder.upper()
    if folder == "NORMAL":
        return "normal"
    if folder != "PNEUMONIA":
        raise ValueError(f"unexpected class folder {folder!r} (expected NORMAL or PNEUMONIA)")
    if task == "pneumonia":
        return "pneumonia"
    m = _PERSON.match(Path(filename).stem)
    if not m:
        raise ValueError(f"{filename}: cannot tell bacterial from viral pneumonia by its name")
    return "bacterial" if m.group(2).lower() == "bacteria" else "viral"


def split_dir(root: str | Path, split: str) -> Path:
    """``root/split`` if it exists, else ``root`` itself when it holds the class folders."""
    root = Path(root)
    if (root / split).is_dir():
        return root / split
    if (root / "NORMAL").is_dir() or (root / "PNEUMONIA").is_dir():
        return root
    raise FileNotFoundError(
        f"{root}: no '{split}/' folder and no NORMAL/ or PNEUMONIA/ folders (Kermany layout expected)"
    )


def kermany_samples(root: str | Path, split: str = "train", task: str = "pneumonia") -> list[Sample]:
    """All labelled images of one split of a Kermany-layout folder, sorted by path."""
    get_task(task)
    base = split_dir(root, split)
    samples = []
    for folder in ("NORMAL", "PNEUMONIA"):
        d = base / folder
        if not d.is_dir():
            continue
        for p in sorted(d.iterdir()):
            if p.suffix.lower() in (".jpeg", ".jpg", ".png", ".dcm") and not p.name.startswith("."):
                samples.append(
                    Sample(str(p.resolve()), label_for(folder, p.name, task), patient_id(p.name), split)
                )
    if not samples:
        raise FileNotFoundError(f"{base}: no images found under NORMAL/ or PNEUMONIA/")
    return samples
