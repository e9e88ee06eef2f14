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
