"""Format-true miniature releases built from the bundled sample radiographs.

Each builder writes, under a folder it is given, the public release's own file names,
column names and folder layout, with real chest radiographs (the package's samples, copied
and varied by flips, crops and small rotations so no two files are identical):

* :func:`make_kermany`: ``train/{NORMAL,PNEUMONIA}/*.jpeg`` with Kermany file names.
* :func:`make_covid_collection`: ``metadata.csv`` (the collection's columns) + ``images/``.
* :func:`make_nih`: ``Data_Entry_2017.csv`` (the release's header, trailing comma included),
  ``train_val_list.txt``, ``test_list.txt`` and PNGs in ``images_001/images/``,
  ``images_002/images/``.

Used as plain functions (``from dataset_fixtures import make_nih``).
"""

from __future__ import annotations

import csv
from pathlib import Path

from PIL import Image

SAMPLES = Path(__file__).resolve().parents[1] / "cxrtriage" / "assets" / "samples"


def sources() -> list[Path]:
    return sorted(SAMPLES.glob("*.jpeg"))


def variant(k: int) -> Image.Image:
    """The k-th distinct real radiograph: a sample, flipped / cropped / rotated by k."""
    src = sources()
    img = Image.open(src[k % len(src)]).convert("L")
    v = k // len(src)
    if v % 2:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    if v:
        w, h = img.size
        c = 2 * (v % 5)
        img = img.crop((c, c, w - c, h - c)).rotate((v % 7) - 3, resample=Image.BILINEAR, fillcolor=0)
    return img


def make_kermany(root: Path, n_normal: int = 16, n_pneumonia: int = 16) -> Path:
    """``root/train/{NORMAL,PNEUMONIA}`` with Kermany names (several images per patient)."""
    k = 0
    for i in range(n_normal):
        d = root / "train" / "NORMAL"
        d.mkdir(parents=True, exist_ok=True)
        variant(k).convert("RGB").save(d / f"IM-{1000 + i // 2:04d}-{i % 2 + 1:04d}.jpeg", quality=92)
        k += 1
    for i in range(n_pneumonia):
        d = root / "train" / "PNEUMONIA"
        d.mkdir(parents=True, exist_ok=True)
        kind = "bacteria" if i % 2 else "virus"
        variant(k).convert("RGB").save(d / f"person{500 + i // 2}_{kind}_{i}.jpeg", quality=92)
        k += 1
    return root


# The collection's metadata.csv header (its columns in their order).
COVID_COLUMNS = [
    "patientid", "offset", "sex", "age", "finding", "RT_PCR_positive", "survival", "intubated",
    "intubation_present", "went_icu", "in_icu", "needed_supplemental_O2", "extubated", "temperature",
    "pO2_saturation", "leukocyte_count", "neutrophil_count", "lymphocyte_count", "view", "modality", "date",
    "location", "folder", "filename", "doi", "url", "license", "clinical_notes", "other_notes", "Unnamed: 29",
]

# (patientid, finding, view, modality, filename) as the collection spells them.
COVID_ROWS = [
    ("2", "Pneumonia/Viral/COVID-19", "PA", "X-ray", "nejmc2001573_f1a.jpeg"),
    ("2", "Pneumonia/Viral/COVID-19", "PA", "X-ray", "nejmc2001573_f1b.jpeg"),
    ("3", "Pneumonia/Viral/COVID-19", "AP Supine", "X-ray", "lancet-case2a.jpg"),
    ("4", "COVID-19, ARDS", "AP", "X-ray", "ryct.2020200034.fig2.jpeg"),
    ("5", "Pneumonia/Viral/COVID-19", "L", "X-ray", "covid-19-pneumonia-7-L.jpg"),  # lateral: out
    ("6", "Pneumonia/Viral/COVID-19", "Axial", "CT", "covid-19-ct-1.jpg"),  # CT: out
    ("7", "Pneumonia/Viral/COVID-19", "PA", "X-ray", "covid-19-pneumonia-15-PA.jpg"),
    ("8", "Pneumonia/Viral/COVID-19", "AP", "X-ray", "covid-19-pneumonia-20.jpg"),
    ("9", "Pneumonia/Viral/COVID-19", "PA", "X-ray", "covid-19-pneumonia-22-day1-pa.png"),
    ("10", "Pneumonia/Bacterial/Streptococcus", "PA", "X-ray", "streptococcus-pneumoniae-pneumonia-1.jpg"),
    ("11", "Pneumonia/Fungal/Pneumocystis", "PA", "X-ray", "pneumocystis-jirovecii-pneumonia-3-1.jpg"),
    ("12", "Pneumonia/Viral/SARS", "AP", "X-ray", "SARS-10.1148rg.242035193-g04mr34g0-Fig8a-day0.jpeg"),
    ("13", "Pneumonia/Bacterial/Klebsiella", "AP Supine", "X-ray", "klebsiella-pneumonia-1.jpg"),
    ("14", "Streptococcus", "PA", "X-ray", "streptococcus-pneumoniae-pneumonia-temporal-evolution-1-day0.jpg"),
    ("15", "Tuberculosis", "PA", "X-ray", "tuberculosis-1.jpg"),  # not a covid3 finding: out
    ("16", "No Finding", "PA", "X-ray", "normal-1.jpeg"),
    ("17", "todo", "PA", "X-ray", "todo-1.jpeg"),  # out
]


def make_covid_collection(root: Path) -> Path:
    """``root/metadata.csv`` + ``root/images/`` with the rows of :data:`COVID_ROWS`."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    with (root / "metadata.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(COVID_COLUMNS)
        for k, (pid, finding, view, modality, name) in enumerate(COVID_ROWS):
            row = dict.fromkeys(COVID_COLUMNS, "")
            row.update(patientid=pid, offset=str(k % 3), sex="M" if k % 2 else "F", age=str(40 + k), finding=finding,
                       view=view, modality=modality, folder="images", filename=name, license="CC BY-NC-SA 4.0")
            w.writerow([row[c] for c in COVID_COLUMNS])
            img = variant(100 + k)
            fmt = "PNG" if name.endswith(".png") else "JPEG"
            img.convert("RGB").save(root / "images" / name, format=fmt)
    return root


NIH_HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
              "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],")

# (patient, findings) per image; patients 1-12 are train_val, 13-16 test (patient-wise, as released).
NIH_IMAGES = [
    (1, "Cardiomegaly"), (1, "Cardiomegaly|Emphysema"), (1, "Cardiomegaly|Effusion"), (2, "No Finding"),
    (3, "Hernia"), (3, "Hernia|Infiltration"), (4, "Mass|Nodule"), (4, "Nodule"), (5, "No Finding"),
    (5, "Effusion|Infiltration"), (6, "Atelectasis"), (6, "Atelectasis|Effusion"), (7, "Pneumothorax"),
    (7, "No Finding"), (8, "Consolidation|Pneumonia"), (8, "Edema|Infiltration"), (9, "Fibrosis"),
    (9, "Pleural_Thickening"), (10, "No Finding"), (10, "Effusion"), (11, "Infiltration"), (11, "No Finding"),
    (12, "Atelectasis|Infiltration"), (12, "Mass"), (2, "Effusion|Pneumothorax"), (3, "No Finding"),
    (4, "Emphysema|Pneumothorax"), (6, "Edema"), (8, "Pneumonia"), (9, "No Finding"), (10, "Consolidation"),
    (11, "Fibrosis|Pleural_Thickening"),
    # test patients: no Hernia, Fibrosis or Pleural_Thickening here (absent labels in evaluation)
    (13, "No Finding"), (13, "Effusion"), (14, "Atelectasis|Effusion"), (14, "No Finding"), (15, "Infiltration"),
    (15, "Cardiomegaly"), (16, "Mass|Nodule"), (16, "No Finding"), (13, "Pneumothorax"), (14, "Consolidation"),
]
NIH_NOT_DOWNLOADED = ("00000099_000.png",)  # listed in the CSV and train_val_list.txt, no file


def make_nih(root: Path) -> Path:
    """A miniature ChestX-ray14: CSV, official split lists and PNGs in two ``images_00N/images`` folders."""
    root.mkdir(parents=True, exist_ok=True)
    follow: dict[int, int] = {}
    rows, train_val, test = [], [], []
    for k, (pid, labels) in enumerate(NIH_IMAGES):
        n = follow.get(pid, 0)
        follow[pid] = n + 1
        name = f"{pid:08d}_{n:03d}.png"
        folder = root / ("images_001" if k % 2 == 0 else "images_002") / "images"
        folder.mkdir(parents=True, exist_ok=True)
        img = variant(200 + k)
        img.save(folder / name)
        view = "AP" if k % 4 == 3 else "PA"
        rows.append(f"{name},{labels},{n},{pid},{30 + pid},{'M' if pid % 2 else 'F'},{view},"
                    f"{img.width},{img.height},0.143,0.143")
        (test if pid >= 13 else train_val).append(name)
    for name in NIH_NOT_DOWNLOADED:
        rows.append(f"{name},Effusion,0,99,50,M,PA,2500,2048,0.168,0.168")
        train_val.append(name)
    (root / "Data_Entry_2017.csv").write_text(NIH_HEADER + "\n" + "\n".join(rows) + "\n")
    (root / "train_val_list.txt").write_text("\n".join(train_val) + "\n")
    (root / "test_list.txt").write_text("\n".join(test) + "\n")
    return root


def nih_counts() -> dict[str, int]:
    """Images per finding in :data:`NIH_IMAGES`."""
    out: dict[str, int] = {}
    for _, labels in NIH_IMAGES:
        for f in labels.split("|"):
            out[f] = out.get(f, 0) + 1
    return out


__all__ = ["COVID_ROWS", "NIH_IMAGES", "make_covid_collection", "make_kermany", "make_nih", "nih_counts",
           "variant"]
