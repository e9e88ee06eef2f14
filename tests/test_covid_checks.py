"""Held-out evaluations and shortcut checks of the COVID-19 recipe (cxrtriage.train.covid_checks), and the
three-class report with patient-grouped CIs (cxrtriage.train.covid_report)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from cxrtriage.contract.preprocess import to_model_input
from cxrtriage.data.covid_sources import Film
from cxrtriage.io import read_radiograph
from cxrtriage.train.covid_checks import (
    CLASSES,
    COVID,
    blank,
    border_mask,
    fit_head,
    held_out_groups,
    internal_cv,
    lung_mask,
    patient_auc,
    predict,
    reencoded,
    source_directions,
    source_probe,
    source_weights,
)
from cxrtriage.train.covid_report import format_report, three_class_report


def _synthetic(n_per: int = 30, seed: int = 0):
    """Films of two sources whose features carry the label on axis 0 and the source on axis 1."""
    rng = np.random.default_rng(seed)
    films, feats = [], []
    for source, offset in (("a", 0.0), ("b", 3.0)):
        for label in CLASSES:
            for i in range(n_per):
                films.append(Film(f"/{source}/{label}/{i}.png", label, f"{source}-{label}-{i // 2}", source, source))
                f = rng.normal(size=6)
                f[0] += 2.0 * CLASSES.index(label)
                f[1] += offset
                feats.append(f)
    return films, np.array(feats)


def test_patient_auc_and_its_patient_bootstrap():
    y = np.array([0, 0, 1, 1])
    assert patient_auc(y, np.array([0.1, 0.2, 0.8, 0.9]), ["a", "b", "c", "d"], n_boot=0) == (1.0, None)
    assert patient_auc(np.ones(3), np.arange(3.0), ["a", "b", "c"]) == (None, None)
    rng = np.random.default_rng(1)
    y = np.repeat([0, 1], 40)
    s = y + np.repeat(rng.normal(scale=1.5, size=8), 10) + rng.normal(scale=0.1, size=80)  # 8 patients of 10 films
    _, ci_films = patient_auc(y, s, [str(i) for i in range(80)], n_boot=400)
    _, ci_patients = patient_auc(y, s, [str(i // 10) for i in range(80)], n_boot=400)
    auc, _ = patient_auc(y, s, [str(i) for i in range(80)], n_boot=0)
    assert ci_films[0] <= auc <= ci_films[1]
    # films of one patient are not independent: resampling patients gives the wider (honest) interval
    assert ci_patients[1] - ci_patients[0] > 1.5 * (ci_films[1] - ci_films[0])


def test_source_weights_balance_sources_within_each_label():
    films = [Film(str(i), lab, str(i), src, src) for i, (lab, src) in
             enumerate([("covid19", "a")] * 6 + [("covid19", "b")] * 2 + [("normal", "c")] * 4)]
    y = np.array([CLASSES.index(f.label) for f in films])
    w = source_weights(films, y)
    assert w[:6].sum() == pytest.approx(w[6:8].sum())
    assert w[:8].sum() == pytest.approx(w[8:].sum())
    assert w.sum() == pytest.approx(len(films))


def test_internal_cv_keeps_patients_together_and_scores_every_film():
    films, f = _synthetic()
    p, heads = internal_cv(films, f, c=1.0, folds=3)
    assert p.shape == (len(films), 3) and np.allclose(p.sum(1), 1)
    held = np.concatenate([te for te, _ in heads])
    assert sorted(held) == list(range(len(films)))
    for te, _ in heads:
        inside = {films[i].patient_id for i in te}
        assert not inside & {films[i].patient_id for i in set(range(len(films))) - set(te)}
    assert patient_auc(p.argmax(1) == COVID, p[:, COVID], [x.patient_id for x in films], n_boot=0)[0] > 0.8


def test_held_out_groups_train_without_the_group_and_its_patients():
    films, f = _synthetic()
    # a patient of source b with a film labelled as source a: holding b out must drop that film too
    films[0] = Film(films[0].path, films[0].label, films[-1].patient_id, "a", "a")
    p, members = held_out_groups(films, f, {"b": lambda x: x.source == "b", "none": lambda x: False}, c=1.0)
    assert set(members) == {"b"}
    assert np.isnan(p[[x.source == "a" for x in films]]).all()
    assert np.isfinite(p[[x.source == "b" for x in films]]).all()
    with pytest.raises(ValueError, match="fewer than two classes"):
        held_out_groups(films, f, {"all but covid": lambda x: x.label != "covid19"}, c=1.0)


def test_source_directions_remove_what_tells_sources_apart():
    films, f = _synthetic()
    y = np.array([CLASSES.index(x.label) for x in films])
    z = (f - f.mean(0)) / f.std(0)
    v = source_directions(z, films, y)
    assert v.shape[1] == 6 and abs(v[0, 1]) > 0.9  # the source axis
    head = fit_head(f, y, 1.0, null_films=films)
    moved = f + 3.0 * head.null[0] * head.scaler.scale_  # every film shifted along the estimated source direction
    assert np.allclose(predict(head, f), predict(head, moved), atol=1e-9)
    plain = fit_head(f, y, 1.0)
    assert not np.allclose(predict(plain, f), predict(plain, moved), atol=0.05)
    folded = head.folded()
    assert np.allclose(folded.coef_ @ v.T, 0, atol=1e-8) and plain.null is None


def test_source_probe_tells_sources_apart_when_the_features_carry_them():
    films, f = _synthetic(n_per=40)
    r = source_probe(films, f, "covid19", min_films=8)
    assert r["sources"] == {"a": 40, "b": 40} and r["mean_auc"] > 0.9
    r0 = source_probe(films, f[:, [0]], "covid19", min_films=8)  # the label axis only: no source in it
    assert r0["mean_auc"] < 0.75
    assert source_probe(films, f, "covid19", min_films=100) is None


def test_masks_and_blanking():
    lungs, frame = lung_mask(64), border_mask(64)
    assert 0.2 < lungs.mean() < 0.4 and not (lungs & frame).any()
    assert frame[0].all() and not frame[32, 32]
    img = np.tile(np.arange(64, dtype=np.uint8) * 4, (2, 64, 1))
    out = blank(img, lungs)
    assert (out[:, lungs] == np.median(img[0])).all() and (out[:, ~lungs] == img[:, ~lungs]).all()


def test_reencoding_png_is_lossless_and_jpeg_is_not(tmp_path, samples_dir):
    path = tmp_path / "film.png"
    Image.open(next(samples_dir.glob("*.jpeg"))).convert("L").save(path)
    direct = to_model_input(read_radiograph(path), 128)
    assert np.array_equal(reencoded(str(path), 128, "PNG"), direct)
    jpeg = reencoded(str(path), 128, "JPEG")
    assert jpeg.shape == direct.shape and 0 < np.abs(jpeg.astype(int) - direct).mean() < 8


def test_three_class_report():
    y = np.array([0, 0, 1, 1, 1, 2, 2])
    p = np.eye(3)[[0, 1, 1, 1, 2, 2, 2]] * 0.8 + 0.2 / 3
    r = three_class_report(y, p, list("aabbccd"), CLASSES, n_boot=200)
    assert r["confusion_matrix"] == [[1, 1, 0], [0, 2, 1], [0, 0, 2]]
    cov = r["per_class"]["covid19"]
    assert cov["sensitivity"] == pytest.approx(2 / 3) and cov["specificity"] == pytest.approx(3 / 4)
    assert cov["ppv"] == pytest.approx(2 / 3) and cov["sensitivity_ci"][0] <= cov["sensitivity"]
    assert r["patients"] == 4 and r["macro_auc"] is not None
    assert "covid19" in format_report(r) and "confusion matrix" in format_report(r)
    with pytest.raises(ValueError, match="one patient per film"):
        three_class_report(y, p, ["a"], CLASSES)
