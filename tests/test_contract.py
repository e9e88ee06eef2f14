"""The model contract: the bundled sidecar reads and writes back unchanged; bad sidecars are refused."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cxrtriage.contract import Kind, ModelSpec, Priority, SpecError, normalise, triage_score, triage_target
from cxrtriage.infer import DEFAULT_MODEL


def _bundled() -> dict:
    return json.loads(DEFAULT_MODEL.with_suffix(".json").read_text())


def test_bundled_sidecar_round_trips_exactly(tmp_path):
    spec = ModelSpec.load(DEFAULT_MODEL)
    assert spec.to_dict() == _bundled()
    written = spec.save(tmp_path / "copy.onnx")
    assert json.loads(written.read_text()) == _bundled()


@pytest.mark.parametrize("change, message", [
    ({"threshold": 1.5}, "threshold"),
    ({"threshold": 0.6, "threshold_high": 0.5}, "below threshold"),
    ({"classes": ["normal"]}, "at least two classes"),
    ({"outputs": ["cam"]}, "probs"),
    ({"label_thresholds": {"Hernia": 0.3}}, "unknown classes"),
    ({"input": {"size": 128, "mean": 0.5, "std": 0.2, "intensity": "clahe-ish"}}, "intensity"),
    ({"class_bias": [0.0, 1.0, 2.0]}, "one finite offset per class"),
    ({"class_bias": [0.0, float("nan")]}, "one finite offset per class"),
])
def test_bad_sidecars_are_refused(change, message):
    with pytest.raises(SpecError, match=message):
        ModelSpec.from_dict({**_bundled(), **change})


@pytest.mark.parametrize("field", ["input", "classes", "threshold", "threshold_high"])
def test_missing_fields_name_the_problem(field):
    d = _bundled()
    del d[field]
    with pytest.raises(SpecError, match=field):
        ModelSpec.from_dict(d)


def test_decision_and_scoring_rules():
    spec = ModelSpec.from_dict({**_bundled(), "threshold": 0.4, "threshold_high": 0.8})
    assert spec.priority(0.9) is Priority.URGENT and spec.priority(0.5) is Priority.REVIEW
    assert spec.priority(0.1) is Priority.ROUTINE
    probs = np.array([[0.7, 0.3], [0.1, 0.9]])
    assert np.allclose(spec.triage_score(probs), [0.3, 0.9])
    assert [spec.label_for(p) for p in probs] == ["normal", "pneumonia"]
    assert np.allclose(triage_score(np.array([[0.2, 0.6, 0.1]]), Kind.MULTILABEL), [0.6])
    assert triage_target(np.array([0, 2, 1])).tolist() == [0, 1, 1]
    assert triage_target(np.array([[0, 0], [0, 1]]), "multilabel").tolist() == [0, 1]
    assert np.allclose(normalise(np.array([0.0, 255.0]), 0.5, 0.25), [-2.0, 2.0])


def test_multilabel_labels_use_their_own_thresholds():
    d = {**_bundled(), "kind": "multilabel", "classes": ["Effusion", "Mass"],
         "label_thresholds": {"Effusion": 0.3, "Mass": None}}
    spec = ModelSpec.from_dict(d)
    assert spec.label_for(np.array([0.35, 0.45])) == "Effusion"  # Mass has no threshold: 0.5
    assert spec.label_for(np.array([0.1, 0.6])) == "Mass"
    assert spec.label_for(np.array([0.1, 0.1])) == "no finding"


def test_class_offsets_survive_the_sidecar_and_move_the_probabilities(tmp_path):
    spec = ModelSpec.from_dict({**_bundled(), "temperature": 1.0, "class_bias": [0.0, -1.5]})
    again = ModelSpec.load(spec.save(tmp_path / "m.onnx"))
    assert again.class_bias == (0.0, -1.5)
    p = np.array([[0.5, 0.5], [0.2, 0.8]])
    q = again.calibrated(p)
    # softmax(log p + b): the odds of pneumonia fall by e^1.5
    assert q[:, 1] / q[:, 0] == pytest.approx(p[:, 1] / p[:, 0] * np.exp(-1.5), rel=1e-5)
