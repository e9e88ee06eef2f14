"""The adult recipe's parts: films with missing labels masked, probes on cached features, the bundled model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _toy(n: int = 300, d: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    f = rng.normal(size=(n, d))
    y = np.stack([(f[:, 0] + rng.normal(0, 0.5, n)) > 0, (f[:, 1] + rng.normal(0, 0.5, n)) > 0.5], 1).astype(float)
    return f, y


def test_probe_folds_its_scaler_into_raw_feature_logits():
    from cxrtriage.train.adult_probe import fit_findings

    f, y = _toy()
    probe = fit_findings(f, y, C=0.1)
    w, b = probe.coef()
    np.testing.assert_allclose(1 / (1 + np.exp(-(f @ w.T + b))), probe.predict_proba(f), atol=1e-9)


def test_missing_labels_are_masked_not_negative():
    from cxrtriage.train.adult_probe import fit_findings

    f, y = _toy()
    y_masked = y.copy()
    y_masked[150:, 1] = np.nan            # finding 1 unknown for half the films
    as_negative = np.nan_to_num(y_masked)  # what treating them as negatives would do
    a = fit_findings(f, y_masked, C=0.1)
    b = fit_findings(f, as_negative, C=0.1)
    ref = fit_findings(f[:150], y[:150], C=0.1)
    assert a.rates[1] == pytest.approx(y[:150, 1].mean())
    assert b.rates[1] < a.rates[1]
    # masked: finding 1 sees only the 150 known films (features standardised over all films)
    z = a.scaler.transform(f[:150])
    assert np.corrcoef(a.models[1].decision_function(z), ref.models[1].decision_function(
        ref.scaler.transform(f[:150])))[0, 1] > 0.99
    assert np.array_equal(a.models[0].coef_, fit_findings(f, y, C=0.1).models[0].coef_)


def test_label_smoothing_pulls_probabilities_in():
    from cxrtriage.train.adult_probe import fit_findings

    f, y = _toy()
    hard, soft = fit_findings(f, y, C=10.0), fit_findings(f, y, C=10.0, smooth=0.2)
    p_hard, p_soft = hard.predict_proba(f), soft.predict_proba(f)
    assert p_soft.max() < p_hard.max() and p_soft.min() > p_hard.min()
    with pytest.raises(ValueError, match="smoothing"):
        fit_findings(f, y, C=1.0, smooth=0.5)
    with pytest.raises(ValueError, match="must match"):
        fit_findings(f, y[:10], C=1.0)


def test_a_finding_without_positives_gets_its_known_rate():
    from cxrtriage.train.adult_probe import fit_findings

    f, y = _toy()
    y[:, 1] = 0.0
    probe = fit_findings(f, y, C=0.1)
    assert probe.models[1] is None and np.all(probe.predict_proba(f)[:, 1] == 0.0)


def test_trunk_names_parse_or_fail_clearly():
    from cxrtriage.train.adult_probe import parse_trunk

    assert parse_trunk("lite0_probe@320") == ("lite0_probe", 320, "none")
    assert parse_trunk("lite1_probe@384/clahe") == ("lite1_probe", 384, "clahe")
    with pytest.raises(ValueError, match="ARCH@SIZE"):
        parse_trunk("lite0_probe")


@pytest.mark.skipif(not (SHARED / "nih-cxr14" / "labels.csv").is_file(), reason="needs ../shared/data")
def test_every_adult_film_with_pneumonia_evidence_only_from_covid_collections():
    from cxrtriage.data import get_task
    from cxrtriage.train.adult_data import adult_films

    films = adult_films(SHARED)
    classes = list(get_task("nih14").classes)
    nih, covid = films.nih, ~films.nih
    assert nih.sum() == 1163 and covid.sum() == 745 + 243
    assert not np.isnan(films.y[nih]).any()
    known = ~np.isnan(films.y[covid])
    normal = (films.y[covid] == 0).all(1)
    assert known[:, classes.index("Pneumonia")].all()
    assert (known.sum(1)[~normal] == 1).all()                  # pneumonia-like: Pneumonia only, the rest unknown
    assert normal.sum() == 11                                 # covid-multisource's normal films: all negative
    assert not set(films.patients[nih]) & set(films.patients[covid])


def test_bundled_adult_model_says_what_it_is():
    from cxrtriage.infer.bundle import load_spec

    spec = load_spec("cxr-adult14")
    assert spec.kind.value == "multilabel" and spec.population == "adult"
    assert spec.arch.startswith("ensemble(") and spec.provenance["training"]["recipe"]["label_smoothing"] == 0.1
    val = spec.provenance["validation"]
    assert val["n"] == 233 and val["roc_auc"] > 0.858 and val["mean_auc"] > 0.744  # the model it replaced
    card = Path(__file__).resolve().parents[1] / "cxrtriage" / "assets" / "model" / "cxr-adult14.md"
    text = card.read_text()
    assert spec.version in text and "specificity" in text and "lead finding" in text
