"""Dataset adapters on format-true miniature releases (real radiographs, the releases' own
file names, column names and layout): COVID-19 image data collection, NIH ChestX-ray14,
a folder of class folders and a CSV export; task-aware patient-wise splits."""

from __future__ import annotations

import csv
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from dataset_fixtures import COVID_ROWS, NIH_IMAGES, make_covid_collection, make_kermany, make_nih, variant
from typer.testing import CliRunner

from cxrtriage.cli.main import app
from cxrtriage.data import get_task, read_manifest
from cxrtriage.data.covid import covid3_samples, covid_collection_samples, covid_label
from cxrtriage.data.generic import csv_samples, folder_samples
from cxrtriage.data.split import task_split
from cxrtriage.data.nih import nih_samples
from cxrtriage.io import read_radiograph


@pytest.fixture(scope="module")
def releases(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("releases")
    return {"kermany": make_kermany(root / "chest_xray"),
            "covid": make_covid_collection(root / "covid-chestxray-dataset"),
            "nih": make_nih(root / "ChestX-ray14")}


def _no_patient_across(samples) -> None:
    by_split: dict[str, set[str]] = {}
    for s in samples:
        by_split.setdefault(s.split, set()).add(s.patient_id)
    names = sorted(by_split)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not (by_split[a] & by_split[b]), (a, b)


# ----------------------------------------------------------------- COVID-19 collection


@pytest.mark.parametrize("finding,label", [
    ("Pneumonia/Viral/COVID-19", "covid19"), ("COVID-19", "covid19"), ("COVID-19, ARDS", "covid19"),
    ("Pneumonia/Bacterial/Streptococcus", "other_pneumonia"), ("Streptococcus", "other_pneumonia"),
    ("Pneumonia/Viral/SARS", "other_pneumonia"), ("Pneumocystis", "other_pneumonia"), ("No Finding", "normal"),
    ("Tuberculosis", None), ("ARDS", None), ("todo", None), ("", None),
])
def test_covid_findings_map_to_covid3(finding, label):
    assert covid_label(finding) == label


def test_covid_collection_keeps_frontal_xrays_only(releases):
    samples, skipped = covid_collection_samples(releases["covid"])
    kept = {Path(s.path).name for s in samples}
    for pid, finding, view, modality, name in COVID_ROWS:
        expected = (modality == "X-ray" and view in ("PA", "AP", "AP Supine") and covid_label(finding) is not None)
        assert (name in kept) == expected, name
    assert skipped["not a frontal view"] == 1 and skipped["not X-ray"] == 1
    assert all(s.patient_id.startswith("covid:") for s in samples)
    assert read_radiograph(samples[0].path).pixels.ndim == 2  # real, readable images


def test_covid3_combines_kermany_normals_and_splits_by_patient(releases):
    samples = covid3_samples(releases["covid"], releases["kermany"])
    counts = Counter(s.label for s in samples)
    assert counts["covid19"] == 7 and counts["other_pneumonia"] == 5
    assert counts["normal"] == 1 + 16  # the collection's own "No Finding" + the Kermany normals
    assert {s.patient_id.split(":")[0] for s in samples} == {"covid", "kermany"}
    split = task_split(samples, "covid3", val_fraction=0.25, seed=0, test_fraction=0.2)
    assert {s.split for s in split} == {"train", "val", "test"}
    _no_patient_across(split)
    # capped normals are whole patients
    capped = covid3_samples(releases["covid"], releases["kermany"], max_normals=6, seed=1)
    kermany = [s for s in capped if s.patient_id.startswith("kermany:")]
    assert 6 <= len(kermany) <= 7 and all(Counter(s.patient_id for s in kermany)[p] == 2 for p in
                                          {s.patient_id for s in kermany})


def test_covid3_without_normals_is_a_clear_error(releases, tmp_path):
    meta = (releases["covid"] / "metadata.csv").read_text().splitlines()
    (tmp_path / "images").symlink_to(releases["covid"] / "images")
    (tmp_path / "metadata.csv").write_text("\n".join(line for line in meta if "No Finding" not in line) + "\n")
    with pytest.raises(ValueError, match=r"no images of class\(es\) \['normal'\].*normal source"):
        covid3_samples(tmp_path)
    with pytest.raises(FileNotFoundError, match="metadata.csv"):
        covid3_samples(tmp_path / "nowhere")


# ------------------------------------------------------------------------ NIH ChestX-ray14


def test_nih_reads_the_release_and_keeps_the_official_split(releases):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        samples = nih_samples(releases["nih"], val_fraction=0.25, seed=0)
    assert any("not downloaded" in str(w.message) for w in caught)
    assert len(samples) == len(NIH_IMAGES)  # the listed-but-missing image is left out
    test = {s for s in samples if s.split == "test"}
    assert {s.patient_id for s in test} == {f"nih:{p}" for p in (13, 14, 15, 16)}  # official test list
    assert {s.split for s in samples} == {"train", "val", "test"}
    _no_patient_across(samples)
    assert any("images_002" in s.path for s in samples) and any("images_001" in s.path for s in samples)
    by_name = {Path(s.path).name: s for s in samples}
    assert by_name["00000001_001.png"].label == "Cardiomegaly|Emphysema"
    assert by_name["00000002_000.png"].label == "No Finding"
    task = get_task("nih14")
    y = np.stack([task.multi_hot(s.label) for s in samples])
    assert y.shape == (len(samples), 14) and y[:, task.classes.index("Hernia")].sum() == 2


def test_nih_errors_name_the_missing_piece(releases, tmp_path):
    with pytest.raises(FileNotFoundError, match="Data_Entry_2017.csv"):
        nih_samples(tmp_path)
    (tmp_path / "Data_Entry_2017.csv").write_text((releases["nih"] / "Data_Entry_2017.csv").read_text())
    with pytest.raises(FileNotFoundError, match="train_val_list.txt"):
        nih_samples(tmp_path)
    with pytest.raises(ValueError, match="multi-label task"):
        nih_samples(releases["nih"], task="pneumonia")


def test_multilabel_labels_are_checked():
    task = get_task("nih14")
    assert task.canonical("effusion|CARDIOMEGALY") == "Cardiomegaly|Effusion"
    assert task.canonical("No Finding") == "No Finding" and task.multi_hot("No Finding").sum() == 0
    assert task.canonical("pleural thickening") == "Pleural_Thickening"
    with pytest.raises(ValueError, match="unknown class 'COVID-19' for task 'nih14'"):
        task.canonical("Effusion|COVID-19")


# ------------------------------------------------------------------ generic adapters


def test_folder_adapter_maps_folder_names_and_refuses_unknown(tmp_path):
    for k, folder in enumerate(["Normal"] * 3 + ["COVID-19"] * 3 + ["Pneumonia"] * 3):
        (tmp_path / "export" / folder).mkdir(parents=True, exist_ok=True)
        variant(k).save(tmp_path / "export" / folder / f"img{k}.png")
    samples = folder_samples(tmp_path / "export", "covid3")
    assert Counter(s.label for s in samples) == {"normal": 3, "covid19": 3, "other_pneumonia": 3}
    (tmp_path / "export" / "Tuberculosis").mkdir()
    with pytest.raises(ValueError, match="'Tuberculosis' is not a class of task 'covid3'.*normal, covid19"):
        folder_samples(tmp_path / "export", "covid3")
    # the Kermany layout is a folder of class folders too
    kermany = make_kermany(tmp_path / "k", 4, 4)
    assert Counter(s.label for s in folder_samples(kermany, "pneumonia", split="train")) == {"normal": 4,
                                                                                             "pneumonia": 4}


def test_csv_adapter_single_and_multilabel(tmp_path):
    imgs = []
    for k in range(6):
        p = tmp_path / "png" / f"{k}.png"
        p.parent.mkdir(exist_ok=True)
        variant(k).save(p)
        imgs.append(p)
    rows = [("png/0.png", "Effusion|Mass", "p1"), ("png/1.png", "No Finding", "p1"), (str(imgs[2]), "hernia", ""),
            ("png/3.png", "", "p3")]
    with (tmp_path / "export.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "patient_id"])
        w.writerows(rows)
    samples = csv_samples(tmp_path / "export.csv", "nih14")
    assert [s.label for s in samples] == ["Effusion|Mass", "No Finding", "Hernia", "No Finding"]
    assert [s.patient_id for s in samples] == ["p1", "p1", "2", "p3"]  # file stem when no patient id
    assert all(Path(s.path).is_absolute() and Path(s.path).is_file() for s in samples)
    (tmp_path / "bad.csv").write_text("path,label\npng/4.png,normal\npng/5.png,Lung cancer\n")
    with pytest.raises(ValueError, match=r"bad.csv, line 3: unknown class 'Lung cancer'"):
        csv_samples(tmp_path / "bad.csv", "pneumonia")
    (tmp_path / "nocol.csv").write_text("file,finding\n")
    with pytest.raises(ValueError, match="lacks column"):
        csv_samples(tmp_path / "nocol.csv", "pneumonia")


def test_multilabel_split_keeps_rare_findings_on_both_sides():
    from cxrtriage.data.samples import Sample

    rng = np.random.default_rng(0)
    samples = []
    for p in range(200):
        for k in range(int(rng.integers(1, 3))):
            label = "Hernia" if p % 20 == 0 else ("Effusion|Mass" if p % 3 == 0 else "No Finding")
            samples.append(Sample(f"/x/{p}_{k}.png", label, f"p{p}"))
    split = task_split(samples, "nih14", val_fraction=0.2, seed=0)
    _no_patient_across(split)
    hernia = Counter(s.split for s in split if s.label == "Hernia")
    assert hernia["train"] > 0 and hernia["val"] > 0


# ------------------------------------------------------------------------------- CLI


def test_cli_data_split_for_each_source(releases, tmp_path):
    runner = CliRunner()
    r = runner.invoke(app, ["data", "split", str(releases["nih"]), "--source", "nih", "--task", "nih14",
                            "--val-fraction", "0.25", "-o", str(tmp_path / "nih.csv")])
    assert r.exit_code == 0, r.output
    assert {s.split for s in read_manifest(tmp_path / "nih.csv")} == {"train", "val", "test"}
    assert "Hernia" in r.output and "test:" in r.output
    r = runner.invoke(app, ["data", "split", str(releases["covid"]), "--source", "covid", "--task", "covid3",
                            "--normals", str(releases["kermany"]), "--val-fraction", "0.25", "--test-fraction", "0.2",
                            "-o", str(tmp_path / "covid.csv")])
    assert r.exit_code == 0, r.output
    m = read_manifest(tmp_path / "covid.csv")
    assert {s.label for s in m} == {"normal", "covid19", "other_pneumonia"} and {s.split for s in m} == {
        "train", "val", "test"}
    r = runner.invoke(app, ["data", "split", str(releases["covid"]), "--source", "covid", "--task", "pneumonia",
                            "-o", str(tmp_path / "x.csv")])
    assert r.exit_code != 0 and "maps to task 'covid3'" in r.output
    r = runner.invoke(app, ["data", "split", str(releases["kermany"]), "--source", "dicomdir", "-o",
                            str(tmp_path / "y.csv")])
    assert r.exit_code != 0 and "unknown data source" in r.output
