"""Site calibration: refused samples, and calibrating on one half of test-dev, checked on the other."""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cxrtriage.calibrate import CalibrationError, calibrate
from cxrtriage.calibrate.head import (SiteHead, fit_site_head, has_site_head, network_engine, without_site_head,
                                      write_graph_with_head)
from cxrtriage.calibrate.temperature import fit_temperature, fit_temperature_bias
from cxrtriage.cli.main import app
from cxrtriage.contract import ModelSpec, apply_temperature
from cxrtriage.data import kermany_samples, patient_split
from cxrtriage.infer import DEFAULT_MODEL, Engine

runner = CliRunner()


def _csv(path: Path, rows: list[tuple[str, str, str]]) -> Path:
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "patient_id"])
        w.writerows(rows)
    return path


def test_a_class_with_fewer_than_30_films_is_refused(tmp_path, samples_dir):
    rows = [(str(p), "normal" if p.name.startswith("IM-") else "pneumonia", p.stem)
            for p in sorted(samples_dir.glob("*.jpeg"))] * 5
    res = runner.invoke(app, ["calibrate", "--data", str(_csv(tmp_path / "s.csv", rows)), "--out",
                              str(tmp_path / "out")])
    assert res.exit_code == 2
    assert "at least 30 films of every class" in res.output
    assert not (tmp_path / "out").exists()


def test_a_label_the_model_does_not_know_is_refused(tmp_path, samples_dir):
    rows = [(str(p), "tuberculosis", p.stem) for p in sorted(samples_dir.glob("*.jpeg"))]
    with pytest.raises(CalibrationError, match="unknown class 'tuberculosis'"):
        calibrate(None, _csv(tmp_path / "s.csv", rows), tmp_path / "out")


def test_temperature_recovers_a_known_one():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, size=(4000, 2))
    true = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    y = (rng.random(4000) < true[:, 1]).astype(int)
    sharpened = apply_temperature(true, 0.5)  # an over-confident model: T = 2 undoes it
    assert fit_temperature(sharpened, y) == pytest.approx(2.0, rel=0.15)


def test_class_offsets_recover_a_known_shift_of_class_mix():
    """Three Gaussian classes; the model knows the training mix, the site's differs (more normals).
    The fitted offsets are the log ratio of the two mixes, the temperature stays 1."""
    rng = np.random.default_rng(0)
    means, train_mix, site_mix = np.array([-2.0, 0.0, 2.0]), np.array([0.25, 0.5, 0.25]), np.array([0.5, 0.3, 0.2])
    y = rng.choice(3, size=20000, p=site_mix)
    x = rng.normal(means[y], 1.0)
    lik = np.exp(-0.5 * (x[:, None] - means[None]) ** 2)
    model = lik * train_mix / (lik * train_mix).sum(1, keepdims=True)  # calibrated for training, not the site
    t, bias = fit_temperature_bias(model, y)
    expected = np.log(site_mix / train_mix) - np.log(site_mix[0] / train_mix[0])
    assert t == pytest.approx(1.0, abs=0.05)
    assert np.allclose(bias, expected, atol=0.1), (bias, expected)
    shifted = apply_temperature(model, t, bias=bias)
    assert (shifted.argmax(1) == y).mean() > (model.argmax(1) == y).mean()


@pytest.fixture(scope="module")
def halves(shared_root, tmp_path_factory):
    """test-dev split by patient into two halves, as CSVs."""
    films = patient_split(kermany_samples(shared_root, "test-dev"), 0.49, seed=1)  # two folds
    out = tmp_path_factory.mktemp("halves")
    a = _csv(out / "a.csv", [(s.path, s.label, s.patient_id) for s in films if s.split == "train"])
    b = [s for s in films if s.split == "val"]
    return a, b


def _as_trained(model: str | None) -> Engine:
    """The bundled model with its own site calibration and site head (on all of test-dev, half B
    included) undone."""
    engine = network_engine(Engine(model, gate=False))
    prev = engine.spec.provenance.get("calibration", {}).get("previous")
    if prev:
        engine.spec = replace(engine.spec.with_decision(threshold=prev["threshold"], threshold_high=prev["threshold_high"]),
                              temperature=prev["temperature"], class_bias=prev.get("class_bias"))
    return engine


def _sens_spec(engine: Engine, films) -> tuple[float, float]:
    preds = engine.predict_files([s.path for s in films])
    y = np.array([s.label != "normal" for s in films])
    flagged = np.array([p.label != "normal" for p in preds])
    return float(flagged[y].mean()), float((~flagged[~y]).mean())


@pytest.mark.shared
def test_calibrated_on_one_half_holds_on_the_other(halves, tmp_path):
    a, b = halves
    res = runner.invoke(app, ["calibrate", "--data", str(a), "--out", str(tmp_path / "site"), "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output)
    spec = ModelSpec.load(tmp_path / "site" / "cxr-pneumonia.json")
    shipped = ModelSpec.load(DEFAULT_MODEL)
    assert spec.sha256 == shipped.sha256  # the same graph, a new sidecar
    assert spec.version.startswith(shipped.version + "-cal") and spec.temperature != 1.0
    cal = spec.provenance["calibration"]
    assert sum(cal["films_per_class"].values()) == summary["films"] > 100
    assert len(cal["sample_sha256"]) == 64 and cal["expected"]["sensitivity"]["value"] >= 0.95
    lo, hi = cal["expected"]["specificity"]["ci95"]
    assert lo <= cal["expected"]["specificity"]["value"] <= hi
    assert (tmp_path / "site" / "calibration.html").read_text().count("data:image/png;base64") == 2

    sens_new, spec_new = _sens_spec(Engine(tmp_path / "site", gate=False), b)
    # against the operating point chosen on validation (the shipped model's own site calibration,
    # on all of test-dev, is undone: half B is part of it)
    sens_old, spec_old = _sens_spec(_as_trained(None), b)
    assert sens_new >= 0.9, sens_new  # chosen for >= 0.95 on half A; half B is unseen
    assert spec_new > spec_old + 0.05, (spec_old, spec_new)


@pytest.mark.shared
def test_the_calibrated_model_works_unchanged_in_predict_and_evaluate(halves, tmp_path, samples_dir):
    a, _ = halves
    calibrate(None, a, tmp_path / "site", n_boot=200)
    res = runner.invoke(app, ["predict", "--model", str(tmp_path / "site"), "--json",
                              str(samples_dir / "person1_bacteria_1.jpeg")])
    assert res.exit_code == 0, res.output
    assert "-cal" in res.output


@pytest.mark.shared
def test_three_class_offsets_fitted_on_one_half_raise_accuracy_on_the_other(shared_root, tmp_path):
    films = patient_split(kermany_samples(shared_root, "test-dev", "pneumonia3"), 0.49, seed=1)
    a = _csv(tmp_path / "a.csv", [(s.path, s.label, s.patient_id) for s in films if s.split == "train"])
    b = [s for s in films if s.split == "val"]
    summary = calibrate("cxr-pneumonia3", a, tmp_path / "site", n_boot=200)
    assert set(summary["class_bias"]) == {"normal", "bacterial", "viral"} and summary["class_bias"]["normal"] == 0

    def accuracy(engine: Engine) -> float:
        preds = engine.predict_files([s.path for s in b])
        classes = engine.spec.classes
        return float(np.mean([classes[int(np.argmax([p.probabilities[c] for c in classes]))] == s.label
                              for s, p in zip(b, preds)]))

    before, after = accuracy(_as_trained("cxr-pneumonia3")), accuracy(Engine(tmp_path / "site", gate=False))
    assert after > before + 0.03, (before, after)


@pytest.mark.shared
def test_no_class_bias_keeps_the_training_mix(halves, tmp_path):
    a, _ = halves
    res = runner.invoke(app, ["calibrate", "--data", str(a), "--out", str(tmp_path / "site"), "--no-class-bias", "--json"])
    assert res.exit_code == 0, res.output
    spec = ModelSpec.load(tmp_path / "site" / "cxr-pneumonia.json")
    assert spec.class_bias is None and json.loads(res.output)["class_bias"] is None
    assert spec.temperature != 1.0


def test_a_site_head_learns_what_the_embedding_adds_and_shrinks_to_nothing():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)

    def films(n):
        y = rng.integers(0, 2, n)
        emb = rng.normal(size=(n, 20))
        emb[:, 3] += 1.5 * y  # the network's features know more than its output says
        logit = 0.3 * (2 * y - 1) + rng.normal(size=n)
        p1 = 1 / (1 + np.exp(-logit))
        return np.c_[1 - p1, p1], emb, y

    p, emb, y = films(400)
    head = fit_site_head(p, emb, y, l2=0.1)
    pt, et, yt = films(2000)  # films the head did not see
    assert roc_auc_score(yt, head.apply(pt, et)[:, 1]) > roc_auc_score(yt, pt[:, 1]) + 0.1
    assert np.allclose(head.apply(pt, et).sum(axis=1), 1.0)
    stiff = fit_site_head(p, emb, y, l2=1e4)
    assert np.linalg.norm(stiff.weights) < 1e-3  # the penalty pulls it back to the model as it was


def test_a_site_head_in_the_graph_matches_numpy_stacks_and_comes_off_again(samples_dir, tmp_path):
    import onnxruntime as ort

    from cxrtriage.io import read_radiograph

    engine = Engine(gate=False)
    x = engine.prepare([read_radiograph(f) for f in sorted(samples_dir.glob("*.jpeg"))]).images

    def run(model) -> dict:
        data = model.SerializeToString() if hasattr(model, "SerializeToString") else str(model)
        sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
        return dict(zip(engine.spec.outputs, sess.run(list(engine.spec.outputs), {"image": x.astype(np.float32)[:, None]})))

    net = run(without_site_head(DEFAULT_MODEL))
    d = net["embedding"].shape[1]
    rng = np.random.default_rng(0)
    heads = [SiteHead(net["embedding"].mean(0), net["embedding"].std(0) + 1.0, rng.normal(0, 0.1, (d, 1)),
                      np.array([b])) for b in (0.7, -0.4)]
    write_graph_with_head(without_site_head(DEFAULT_MODEL), tmp_path / "one.onnx", heads[0])
    write_graph_with_head(tmp_path / "one.onnx", tmp_path / "two.onnx", heads[1])
    one, two = run(tmp_path / "one.onnx"), run(tmp_path / "two.onnx")
    want = heads[0].apply(net["probs"], net["embedding"])
    assert np.abs(want - net["probs"]).max() > 0.05  # the head does change the scores
    assert np.abs(one["probs"] - want).max() < 1e-4
    assert np.abs(two["probs"] - heads[1].apply(want, net["embedding"])).max() < 1e-4
    for k in ("cam", "embedding"):  # heatmap and gate features are the network's
        assert np.array_equal(two[k], net[k])
    stripped = without_site_head(tmp_path / "two.onnx")
    (tmp_path / "stripped.onnx").write_bytes(stripped.SerializeToString())
    assert has_site_head(tmp_path / "two.onnx") and not has_site_head(tmp_path / "stripped.onnx")
    assert np.abs(run(stripped)["probs"] - net["probs"]).max() < 1e-6


@pytest.mark.shared
def test_a_site_head_fitted_on_one_half_ranks_the_other_half_better(halves, tmp_path):
    from sklearn.metrics import roc_auc_score

    a, b = halves
    res = runner.invoke(app, ["calibrate", "--data", str(a), "--out", str(tmp_path / "site"), "--head", "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output)
    spec = ModelSpec.load(tmp_path / "site" / "cxr-pneumonia.json")
    assert "-head-cal" in spec.version and spec.sha256 != ModelSpec.load(DEFAULT_MODEL).sha256
    assert summary["site_head"]["folds"] == 5 and summary["expected"]["sensitivity"]["value"] >= 0.95
    y = np.array([s.label != "normal" for s in b])

    def auc(engine: Engine) -> float:
        return roc_auc_score(y, [p.score for p in engine.predict_files([s.path for s in b])])

    assert auc(Engine(tmp_path / "site", gate=False)) > auc(network_engine(Engine(gate=False))) + 0.002


def test_a_site_head_is_refused_where_it_cannot_be_fitted_or_written(tmp_path):
    import shutil

    with pytest.raises(CalibrationError, match="single-label"):
        calibrate("cxr-adult14", tmp_path / "none.csv", tmp_path / "out", head=True)
    model = tmp_path / "model"
    model.mkdir()
    for f in DEFAULT_MODEL.parent.glob("cxr-pneumonia.*"):
        shutil.copy(f, model / f.name)
    with pytest.raises(CalibrationError, match="needs another folder"):  # it would overwrite its own graph
        calibrate(model / "cxr-pneumonia.onnx", tmp_path / "none.csv", model, head=True)
    spec = ModelSpec.load(model / "cxr-pneumonia.json")
    replace(spec, outputs=("probs",)).save(model / "cxr-pneumonia.onnx")
    with pytest.raises(CalibrationError, match="no embedding output"):
        calibrate(model / "cxr-pneumonia.onnx", tmp_path / "none.csv", tmp_path / "out", head=True)
    assert not (tmp_path / "out").exists()


def test_cross_fitting_folds_do_not_depend_on_how_patients_are_named():
    """A service's pseudonyms and a CSV's names for the same patients, films in the same order,
    give the same cross-fitted scores (so a calibration from reads equals one from the CSV)."""
    import hashlib

    from cxrtriage.calibrate.head import cross_fitted

    rng = np.random.default_rng(0)
    n = 120
    y = rng.integers(0, 2, n)
    emb = rng.normal(size=(n, 16)) + y[:, None] * 0.5
    probs = np.c_[1 - (p := np.clip(0.3 + 0.4 * y + rng.normal(0, 0.1, n), 0.01, 0.99)), p]
    names = [f"person{i // 2}" for i in range(n)]
    pseudonyms = [hashlib.sha256(name.encode()).hexdigest() for name in names]
    a = cross_fitted(probs, emb, y, y, names, folds=5)
    b = cross_fitted(probs, emb, y, y, pseudonyms, folds=5)
    assert np.allclose(a, b)
    other_pairs = cross_fitted(probs, emb, y, y, [f"person{(i + 1) // 2}" for i in range(n)], folds=5)
    assert not np.allclose(a, other_pairs)  # the folds do follow who the patients are
