"""The documented Python API: load a bundled model by name and triage paths, bytes, arrays, batches."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import cxrtriage
from cxrtriage.contract import Prediction, Priority
from cxrtriage.infer import ModelNotFoundError


@pytest.fixture(scope="module")
def model():
    return cxrtriage.load_model("cxr-pneumonia")


def test_bundled_models_are_listed_default_first():
    names = cxrtriage.list_models()
    assert names[0] == "cxr-pneumonia"


def test_unknown_model_name_is_a_clear_error():
    with pytest.raises(ModelNotFoundError, match="cxr-pneumonia"):
        cxrtriage.load_model("cxr-no-such-model")


def test_predict_path_bytes_array_agree(model, samples_dir):
    path = samples_dir / "person1_bacteria_1.jpeg"
    by_path = model.predict(path)
    by_bytes = model.predict(path.read_bytes(), name="upload.jpeg")
    gray = np.asarray(Image.open(path).convert("L"))
    by_array = model.predict(gray)
    assert isinstance(by_path, Prediction) and by_path.ok
    assert by_path.label == "pneumonia" and by_path.priority in (Priority.URGENT, Priority.REVIEW)
    assert by_bytes.source == "upload.jpeg"
    assert abs(by_path.score - by_bytes.score) < 1e-6
    assert abs(by_path.score - by_array.score) < 1e-3  # the same pixels, decoded by Pillow either way
    assert by_path.heatmap is not None and by_path.heatmap.ndim == 2
    assert 0.0 <= float(by_path.heatmap.min()) and float(by_path.heatmap.max()) <= 1.0
    d = by_path.to_dict()
    assert d["priority"] == str(by_path.priority) and "disclaimer" in d and "heatmap" not in d


def test_predict_batch_keeps_order_and_turns_bad_input_into_results(model, samples_dir, tmp_path):
    bad = tmp_path / "tiny.png"
    Image.new("L", (1, 1)).save(bad)
    normal = samples_dir / "IM-0115-0001.jpeg"
    out = model.predict_batch([normal, bad, np.zeros((10, 3, 3), np.uint8)])
    assert [p.ok for p in out] == [True, False, False]
    assert out[0].label == "normal"
    assert out[1].error_type == "ImageTooSmallError" and out[1].score is None
    assert out[2].error_type == "NotAnImageError"


def test_the_contract_decides_as_the_engine_does(model, samples_dir):
    spec = model.spec
    for p in model.predict_batch(sorted(samples_dir.glob("*.jpeg"))):
        probs = np.array([[p.probabilities[c] for c in spec.classes]])
        score = float(spec.triage_score(probs)[0])
        assert abs(score - p.score) < 1e-5
        assert spec.priority(score) == p.priority
        assert spec.label_for(probs[0]) == p.label


def test_cxr_models_lists_every_bundled_model_with_its_card():
    import json

    from typer.testing import CliRunner

    from cxrtriage.cli.main import app

    res = CliRunner().invoke(app, ["models", "--json"])
    assert res.exit_code == 0, res.output
    rows = {r["name"]: r for r in json.loads(res.output)}
    assert rows["cxr-pneumonia"]["default"] and rows["cxr-pneumonia"]["classes"] == ["normal", "pneumonia"]
    p3 = rows["cxr-pneumonia3"]
    assert p3["task"] == "pneumonia3" and p3["classes"] == ["normal", "bacterial", "viral"]
    assert p3["size_mb"] <= 30 and not p3["default"]
    for r in rows.values():
        assert r["card"] and "Model card" in open(r["card"]).read()


def test_the_three_class_model_is_selected_by_name(samples_dir):
    import hashlib
    import json

    from typer.testing import CliRunner

    from cxrtriage.cli.main import app
    from cxrtriage.infer import resolve_model

    onnx = resolve_model("cxr-pneumonia3")
    assert hashlib.sha256(onnx.read_bytes()).hexdigest() == cxrtriage.load_model("cxr-pneumonia3").spec.sha256
    films = [str(samples_dir / n) for n in ("person1_bacteria_1.jpeg", "IM-0115-0001.jpeg")]
    res = CliRunner().invoke(app, ["predict", "--model", "cxr-pneumonia3", "--json", *films])
    assert res.exit_code == 0, res.output
    out = [json.loads(line) for line in res.output.splitlines() if line.strip()]  # one JSON object per film
    by_name = {o["source"].rsplit("/", 1)[-1]: o for o in out}
    bact, normal = by_name["person1_bacteria_1.jpeg"], by_name["IM-0115-0001.jpeg"]
    assert set(bact["probabilities"]) == {"normal", "bacterial", "viral"}
    assert bact["label"] in ("bacterial", "viral") and normal["label"] == "normal"
    assert bact["model"]["name"] == "cxr-pneumonia3"
