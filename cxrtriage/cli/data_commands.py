"""``cxr data``: patient-wise splits and manifests of the public datasets and of a site's own."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from cxrtriage.cli.common import console, fail
from cxrtriage.data.split import DEFAULT_VAL_FRACTION


def data_split(
    root: Path = typer.Argument(..., help="Dataset root in the Kermany layout (<root>/train/{NORMAL,PNEUMONIA}), "
                                "or the release/folder/CSV that --source names."),
    out: Path = typer.Option(Path("split.csv"), "--out", "-o", help="Manifest CSV to write."),
    task: str = typer.Option("pneumonia", help="pneumonia, pneumonia3, covid3 or nih14."),
    val_fraction: float = typer.Option(DEFAULT_VAL_FRACTION, help="Fraction of patients held out for validation."),
    seed: int = typer.Option(0, help="Random seed of the split."),
    split: str = typer.Option("train", help="Which split folder of the release to divide."),
    source: str = typer.Option("kermany", help="kermany, covid (COVID-19 image data collection), nih "
                               "(ChestX-ray14), folder (one folder per class) or csv (path,label[,patient_id])."),
    normals: Optional[Path] = typer.Option(None, help="covid: a Kermany-layout folder whose NORMAL images "
                                           "complete covid3."),
    max_normals: Optional[int] = typer.Option(None, help="covid: at most this many borrowed normals."),
    test_fraction: float = typer.Option(0.0, help="Also hold out this fraction of patients as 'test' "
                                        "(covid, folder, csv; nih keeps its official test list)."),
) -> None:
    """Make a patient-wise, stratified, seeded train/validation split and write it as a manifest CSV."""
    from collections import Counter

    from cxrtriage.data import kermany_samples, patient_split, write_manifest
    from cxrtriage.data.generic import dataset_samples
    from cxrtriage.data.split import carve_validation, task_split

    try:
        if source == "kermany":
            samples = patient_split(kermany_samples(root, split, task), val_fraction, seed)
        elif source == "nih":
            from cxrtriage.data.nih import nih_samples

            samples = nih_samples(root, task, val_fraction, seed)
        else:
            if source == "covid":
                from cxrtriage.data.covid import covid3_samples

                samples = covid3_samples(root, normals, task, max_normals=max_normals, seed=seed)
            else:
                samples = dataset_samples(source, root, task, split=split)
            if any(s.split for s in samples):  # the export carries its own split: keep it
                samples = carve_validation(samples, task, val_fraction, seed)
            else:
                samples = task_split(samples, task, val_fraction, seed, test_fraction)
    except (FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    write_manifest(samples, out)
    counts = Counter((s.split, lab) for s in samples for lab in s.label.split("|"))  # per finding if multi-label
    pats = {sp: len({s.patient_id for s in samples if s.split == sp}) for sp in ("train", "val", "test")}
    for sp in ("train", "val", "test"):
        if not pats[sp]:
            continue
        per = ", ".join(f"{lab} {n}" for (s, lab), n in sorted(counts.items()) if s == sp)
        n_img = sum(s.split == sp for s in samples)
        console.print(f"{sp}: {n_img} images, {pats[sp]} patients ({per})")
    console.print(f"manifest written to {out}")
