"""The input-quality gate refuses what is not a frontal chest radiograph."""

from __future__ import annotations

import numpy as np
import pytest

from cxrtriage.infer import Engine
from testkit.ood_samples import skimage_images, synthetic, transformed
from cxrtriage.io import Radiograph


@pytest.fixture(scope="module")
def engine() -> Engine:
    e = Engine()
    assert e.feature_gate is not None, "the bundled model ships its quality gate"
    return e


def test_real_non_radiographs_are_all_refused(engine):
    images = skimage_images()
    assert len(images) >= 15
    preds = engine.predict_radiographs([Radiograph(v, name) for name, v in images.items()])
    accepted = [p.source for p in preds if p.priority != "refused"]
    assert not accepted, f"accepted as chest radiographs: {accepted}"
    assert all(p.score is None and p.label is None and p.gate["reason"] for p in preds)


def test_noise_and_gradients_are_refused(engine):
    for name, imgs in synthetic(10, 256).items():
        preds = engine.predict_radiographs([Radiograph(i.astype(np.float32) / 255, name) for i in imgs])
        assert all(p.priority == "refused" for p in preds), name


def test_inverted_and_rotated_radiographs_are_refused(engine, val_images):
    images, _ = val_images
    for name, imgs in transformed(images[:200]).items():
        dist = engine.feature_gate.distance(engine.run_arrays(imgs)["embedding"])
        assert (dist > engine.feature_gate.threshold).mean() >= 0.95, name


def test_false_refusals_on_validation_radiographs_are_rare(engine, val_images):
    images, _ = val_images
    dist = engine.feature_gate.distance(engine.run_arrays(images)["embedding"])
    assert (dist > engine.feature_gate.threshold).mean() <= 0.01


def test_films_from_elsewhere_given_to_the_gate_are_accepted_and_checked_on_their_own_held_out_half(tmp_path):
    """--gate-extra: a second source's films join the fit and the threshold; the sidecar entry reports
    refusals on that source's held-out films, which the gate fitted without them mostly refuses."""
    from cxrtriage.infer.gate import FeatureGate
    from cxrtriage.train.export import gate_from_embeddings

    rng = np.random.default_rng(0)
    dim = 16
    train, val = rng.standard_normal((800, dim)), rng.standard_normal((200, dim))
    other = rng.standard_normal((200, dim)) + 3.0  # another hospital: shifted features
    onnx = tmp_path / "m.onnx"
    alone = gate_from_embeddings(onnx, train, val)
    g = FeatureGate.load(tmp_path / "m.gate.npz")
    assert (g.distance(other[100:][1::2]) > g.threshold).mean() > 0.9
    both = gate_from_embeddings(onnx, train, val, extra=(other[:100], other[100:], "site-b"))
    assert both["extra_films"]["source"] == "site-b" and both["extra_films"]["n_heldout"] == 50
    assert both["extra_films"]["false_refusal_rate"] < 0.1
    assert both["val_false_refusal_rate"] <= 0.05 and both["n_fit"] == 900 and alone["n_fit"] == 800
    g = FeatureGate.load(tmp_path / "m.gate.npz")
    assert (g.distance(rng.standard_normal((200, dim)) * 4 + 10) > g.threshold).all()  # far away: still refused


def test_unlabelled_films_from_a_folder_or_a_csv(tmp_path):
    from PIL import Image

    from cxrtriage.data.generic import unlabelled_films

    (tmp_path / "p1").mkdir()
    for name in ("p1/a.png", "p1/b.png", "c.png"):
        Image.fromarray(np.full((8, 8), 100, np.uint8)).save(tmp_path / name)
    films = unlabelled_films(tmp_path)
    assert sorted((f.patient_id, f.label) for f in films) == [("c", ""), ("p1", ""), ("p1", "")]
    (tmp_path / "list.csv").write_text("path,patient_id,extra\np1/a.png,x,1\nc.png,,2\n")
    assert [(f.patient_id, f.path.endswith("a.png")) for f in unlabelled_films(tmp_path / "list.csv")] == [
        ("x", True), ("c", False)]
    (tmp_path / "bad.csv").write_text("path\nmissing.png\n")
    with pytest.raises(FileNotFoundError, match="1 image"):
        unlabelled_films(tmp_path / "bad.csv")
    (tmp_path / "nocol.csv").write_text("file\nc.png\n")
    with pytest.raises(ValueError, match="'path' column"):
        unlabelled_films(tmp_path / "nocol.csv")
