#!/usr/bin/env python
"""Regenerate cxrtriage/assets/samples/ from the shared Kermany radiographs.

Copies eight JPEGs (4 normal, 2 bacterial and 2 viral pneumonia) unchanged, converts
two of them to DICOM with :func:`testkit.make_dicom.radiograph_to_dicom` and
writes the folder's README with the CC BY 4.0 attribution.

Usage::

    .venv/bin/python scripts/make_samples.py [--shared DIR] [--out DIR]

``--shared`` defaults to $CXR_SHARED_DIR, else the shared data folder beside the
checkout. Re-running gives the same files (UIDs are derived from the file names).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.uid import JPEG2000Lossless, generate_uid

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from testkit.make_dicom import radiograph_to_dicom  # noqa: E402

DEFAULT_SHARED = ROOT / ".." / "shared" / "data" / "kermany-224"
DEFAULT_OUT = ROOT / "cxrtriage" / "assets" / "samples"
MAX_TOTAL_BYTES = 1_000_000

# (folder in train/, file name, label shown in the README)
SAMPLES = [
    ("NORMAL", "IM-0115-0001.jpeg", "normal"),
    ("NORMAL", "IM-0117-0001.jpeg", "normal"),
    ("NORMAL", "IM-0119-0001.jpeg", "normal"),
    ("NORMAL", "IM-0122-0001.jpeg", "normal"),
    ("PNEUMONIA", "person1_bacteria_1.jpeg", "pneumonia (bacterial)"),
    ("PNEUMONIA", "person2_bacteria_3.jpeg", "pneumonia (bacterial)"),
    ("PNEUMONIA", "person80_virus_150.jpeg", "pneumonia (viral)"),
    ("PNEUMONIA", "person81_virus_152.jpeg", "pneumonia (viral)"),
]

# (output name, source JPEG, description, radiograph_to_dicom arguments)
DICOMS = [
    (
        "IM-0115-0001_DX.dcm",
        "IM-0115-0001.jpeg",
        "DX, MONOCHROME2, 12 bits stored in 16, Window Center/Width 2048/4096, "
        "Explicit VR Little Endian",
        dict(
            modality="DX",
            photometric="MONOCHROME2",
            bits_stored=12,
            window="full",
            patient_name="Sample^Normal",
            patient_id="SAMPLE-001",
        ),
    ),
    (
        "person1_bacteria_1_CR.dcm",
        "person1_bacteria_1.jpeg",
        "CR, MONOCHROME1 (stored values inverted), 12 bits stored in 16, "
        "Window Center/Width 2048/4096, JPEG 2000 Lossless",
        dict(
            modality="CR",
            photometric="MONOCHROME1",
            bits_stored=12,
            window="full",
            transfer_syntax=JPEG2000Lossless,
            patient_name="Sample^Pneumonia",
            patient_id="SAMPLE-002",
        ),
    ),
]

README = """\
# Sample chest radiographs

Eight chest radiographs and two DICOM files made from them, for demos, the CLI and
tests that must run without the full data set. Regenerate with
`scripts/make_samples.py` (this README is written by that script).

## Source and licence

The images come from the "Chest X-Ray Images (Pneumonia)" set published with
Kermany D.S. et al., "Identifying Medical Diagnoses and Treatable Diseases by
Image-Based Deep Learning", *Cell* 172(5), 2018, Mendeley Data,
doi:[10.17632/rscbjbr9sj.2](https://doi.org/10.17632/rscbjbr9sj.2), licensed under
[CC BY 4.0](https://creativecommons.org/licenses/by/4.0/). They are the project's
224x224 RGB copies of the release's `train/` split (resized, aspect ratio not kept);
the JPEGs here are byte-for-byte copies of those. The DICOM files are derived works
(converted to DICOM; pixel values rescaled to 12 bits).

Pediatric patients (1-5 years, Guangzhou). These are examples, not a validation set,
and this software is a decision aid, not a diagnostic device.

## Files

Labels are those of the data set: the folder a file sits in (`NORMAL` or `PNEUMONIA`),
and for pneumonia the `bacteria` / `virus` part of the file name. They were not
re-read by a radiologist.

| File | Source (in `train/`) | Label |
|---|---|---|
{jpeg_rows}

| File | Made from | Encoding |
|---|---|---|
{dicom_rows}

The DICOM files carry synthetic identities only: PatientName `Sample^Normal` /
`Sample^Pneumonia`, PatientID `SAMPLE-001` / `SAMPLE-002`, no dates, ViewPosition
`PA`, BodyPartExamined `CHEST`, and UIDs made with `pydicom.uid.generate_uid` (derived
from the file name, so regenerating gives the same UIDs). SOP classes: Digital X-Ray
Image Storage - For Presentation (DX) and Computed Radiography Image Storage (CR).
"""


def _gray_u8(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("L"), dtype=np.uint8)


def _uid(*parts: str):
    return generate_uid(entropy_srcs=["cxrtriage-samples", *parts])


def make_samples(shared: Path, out: Path) -> list[Path]:
    train = shared / "train"
    if not train.is_dir():
        raise SystemExit(f"{train} not found: pass --shared or set CXR_SHARED_DIR")
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    sources: dict[str, Path] = {}
    for folder, name, _ in SAMPLES:
        src = train / folder / name
        shutil.copyfile(src, out / name)
        sources[name] = src
        written.append(out / name)
    for out_name, src_name, _, kwargs in DICOMS:
        pixels = _gray_u8(sources[src_name])
        radiograph_to_dicom(
            pixels,
            out / out_name,
            study_uid=_uid(out_name, "study"),
            series_uid=_uid(out_name, "series"),
            sop_instance_uid=_uid(out_name, "instance"),
            study_date="",
            study_time="",
            view_position="PA",
            body_part="CHEST",
            study_description="Chest radiograph (sample)",
            **kwargs,
        )
        written.append(out / out_name)
    jpeg_rows = "\n".join(f"| `{n}` | `{f}/{n}` | {label} |" for f, n, label in SAMPLES)
    dicom_rows = "\n".join(f"| `{o}` | `{s}` | {d} |" for o, s, d, _ in DICOMS)
    readme = out / "README.md"
    readme.write_text(README.format(jpeg_rows=jpeg_rows, dicom_rows=dicom_rows))
    written.append(readme)
    total = sum(p.stat().st_size for p in written)
    if total > MAX_TOTAL_BYTES:
        raise SystemExit(f"samples take {total} bytes, over the {MAX_TOTAL_BYTES} limit")
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shared", type=Path,
                        default=Path(os.environ.get("CXR_SHARED_DIR") or DEFAULT_SHARED))
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    written = make_samples(args.shared.resolve(), args.out)
    total = sum(p.stat().st_size for p in written)
    for p in written:
        print(f"{p.stat().st_size:>8}  {p}")
    print(f"{total:>8}  bytes in total")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
