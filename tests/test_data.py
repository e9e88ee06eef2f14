"""Kermany adapter, tasks, patient-wise split, manifest and image cache."""

from __future__ import annotations

import os
from collections import Counter

import numpy as np
import pytest

from cxrtriage.data import (
    get_task, kermany_samples, load_cached, patient_id, patient_split, read_manifest, write_manifest,
)
from cxrtriage.data.kermany import label_for
from cxrtriage.data.samples import Sample


@pytest.mark.parametrize("name,pid", [
    ("person1000_bacteria_2931.jpeg", "person1000"),
    ("person1000_virus_1681.jpeg", "person1000"),
    ("IM-0115-0001.jpeg", "IM-0115"),
    ("NORMAL2-IM-1018-0001.jpeg", "NORMAL2-IM-1018"),
    ("weird.png", "weird"),
])
def test_patient_id_from_file_name(name, pid):
    assert patient_id(name) == pid


def test_labels_for_both_tasks():
    assert label_for("PNEUMONIA", "person1_bacteria_1.jpeg", "pneumonia") == "pneumonia"
    assert label_for("PNEUMONIA", "person1_bacteria_1.jpeg", "pneumonia3") == "bacterial"
    assert label_for("PNEUMONIA", "person1_virus_7.jpeg", "pneumonia3") == "viral"
    assert label_for("NORMAL", "IM-0001-0001.jpeg", "pneumonia3") == "normal"
    with pytest.raises(ValueError, match="bacterial from viral"):
        label_for("PNEUMONIA", "mystery.jpeg", "pneumonia3")


def test_unknown_task_and_class_are_clear_errors():
    with pytest.raises(ValueError, match="unknown task 'covid'.*pneumonia"):
        get_task("covid")
    with pytest.raises(ValueError, match="unknown class 'effusion'"):
        get_task("pneumonia").index("effusion")
    # a fine label is accepted by the coarser task
    assert get_task("pneumonia").index("viral") == 1


def _synthetic(n_pat: int = 60) -> list[Sample]:
    rng = np.random.default_rng(1)
    out = []
    for p in range(n_pat):
        label = "normal" if p % 3 == 0 else "pneumonia"
        for k in range(int(rng.integers(1, 4))):
            out.append(Sample(f"/x/{p}_{k}.jpeg", label, f"person{p}"))
    return out


def test_split_is_patient_wise_stratified_and_seeded():
    samples = _synthetic()
    a = patient_split(samples, 0.2, seed=3)
    b = patient_split(samples, 0.2, seed=3)
    c = patient_split(samples, 0.2, seed=4)
    assert [s.split for s in a] == [s.split for s in b]
    assert [s.split for s in a] != [s.split for s in c]
    train = {s.patient_id for s in a if s.split == "train"}
    val = {s.patient_id for s in a if s.split == "val"}
    assert val and not (train & val)
    frac = Counter(s.label for s in a if s.split == "val")["normal"] / sum(s.split == "val" for s in a)
    whole = Counter(s.label for s in a)["normal"] / len(a)
    assert abs(frac - whole) < 0.12
    assert 0.1 < sum(s.split == "val" for s in a) / len(a) < 0.32


def test_manifest_round_trip(tmp_path):
    samples = patient_split(_synthetic(), 0.2, 0)
    path = write_manifest(samples, tmp_path / "m.csv")
    assert read_manifest(path) == samples
    (tmp_path / "bad.csv").write_text("file,cls\na,b\n")
    with pytest.raises(ValueError, match="lacks column"):
        read_manifest(tmp_path / "bad.csv")


def test_kermany_adapter_on_shared(shared_root):
    samples = kermany_samples(shared_root, "train", "pneumonia3")
    counts = Counter(s.label for s in samples)
    assert counts == {"normal": 1341, "bacterial": 2530, "viral": 1345}
    assert all(os.path.isabs(s.path) for s in samples)


def test_kermany_layout_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="Kermany layout"):
        kermany_samples(tmp_path, "train")


def test_cache_decodes_once_and_tracks_changes(tmp_path, samples_dir):
    paths = sorted(str(p) for p in samples_dir.glob("*.jpeg"))[:4]
    assert len(paths) == 4
    a = load_cached(paths, 64, tmp_path, progress=False)
    assert a.shape == (4, 64, 64) and a.dtype == np.uint8 and a.std() > 5
    files = sorted(tmp_path.glob("*.u8"))
    assert len(files) == 1
    mtime = files[0].stat().st_mtime_ns
    b = load_cached(paths, 64, tmp_path, progress=False)
    assert np.array_equal(a, b) and files[0].stat().st_mtime_ns == mtime  # not rewritten
    load_cached(paths, 32, tmp_path, progress=False)
    assert len(list(tmp_path.glob("*.u8"))) == 2  # another size, another cache


def test_equalisation_spreads_a_narrow_histogram_and_keeps_grey_order():
    from cxrtriage.data import apply_intensity

    rng = np.random.default_rng(0)
    narrow = (rng.random((2, 64, 64)) * 60 + 90).astype(np.uint8)  # grey levels 90..149
    out = apply_intensity(narrow, "equalise")
    assert out.shape == narrow.shape and out.dtype == np.uint8
    assert out.min() < 10 and out.max() == 255
    # a monotone map per image: a darker pixel never ends up brighter
    for a, b in zip(narrow, out):
        order = np.argsort(a.ravel(), kind="stable")
        assert np.all(np.diff(b.ravel()[order].astype(int)) >= 0)
    assert apply_intensity(narrow, "none") is narrow


def test_clahe_raises_local_contrast_in_dark_and_bright_regions_alike():
    from cxrtriage.data import apply_intensity

    rng = np.random.default_rng(0)
    film = np.empty((128, 128), dtype=np.uint8)  # a dark half and a bright half, each of low contrast
    film[:, :64] = 40 + rng.integers(-4, 5, (128, 64))
    film[:, 64:] = 200 + rng.integers(-4, 5, (128, 64))
    out = apply_intensity(np.stack([film, film]), "clahe")
    assert out.shape == (2, 128, 128) and out.dtype == np.uint8
    assert np.array_equal(out[0], out[1])  # the same film, the same result
    for half in (np.s_[16:112, 8:56], np.s_[16:112, 72:120]):  # inside each half, away from the edge
        assert out[0][half].std() > 1.8 * film[half].std()
    assert out[0][:, :64].mean() < out[0][:, 64:].mean()  # dark stays darker than bright


def test_an_unknown_intensity_normalisation_is_refused():
    from cxrtriage.data import apply_intensity

    with pytest.raises(ValueError, match="unknown intensity"):
        apply_intensity(np.zeros((8, 8), np.uint8), "clahe-ish")


def test_cxr_train_refuses_an_unknown_intensity_before_reading_data(tmp_path):
    from typer.testing import CliRunner

    from cxrtriage.cli.main import app

    r = CliRunner().invoke(app, ["train", "--out", str(tmp_path / "r"), "--data", str(tmp_path), "--intensity", "x"])
    assert r.exit_code != 0 and "unknown --intensity" in r.output
    r = CliRunner().invoke(app, ["train", "--out", str(tmp_path / "r"), "--data", str(tmp_path), "--population", "kids"])
    assert r.exit_code != 0 and "unknown --population" in r.output
    assert not (tmp_path / "r").exists()
