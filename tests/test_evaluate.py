"""Tests for cxrtriage.evaluate, checked against hand-computed values and scikit-learn."""

from __future__ import annotations

import ast
import json
import math
import re
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.calibration import calibration_curve
from sklearn.metrics import (
    average_precision_score,
    brier_score_loss,
    classification_report,
    confusion_matrix,
    roc_auc_score,
)

import cxrtriage
import cxrtriage.evaluate as evaluate_pkg
from cxrtriage.evaluate import (
    binary_metrics,
    calibration_curve_data,
    choose_threshold,
    evaluate_predictions,
    expected_calibration_error,
    high_priority_threshold,
    multiclass_metrics,
)
from cxrtriage.evaluate.metrics import _weights, weighted_average_precision, weighted_roc_auc

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _plain(obj) -> bool:
    """True when obj is built only from JSON types (no numpy scalars, no NaN)."""
    if isinstance(obj, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in obj.items())
    if isinstance(obj, list):
        return all(_plain(v) for v in obj)
    if isinstance(obj, float):
        return math.isfinite(obj)
    return obj is None or type(obj) in (int, bool, str)


def _sens_spec(y: np.ndarray, s: np.ndarray, t: float) -> tuple[float, float]:
    pred = s >= t
    return pred[y == 1].mean(), 1 - pred[y == 0].mean()


def _scores(n: int, seed: int, shift: float = 1.2) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.4).astype(int)
    s = 1 / (1 + np.exp(-(rng.normal(size=n) + shift * (2 * y - 1))))
    return y, s


def _softmax_data(n: int, n_cls: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_cls, n)
    logits = rng.normal(size=(n, n_cls))
    logits[np.arange(n), y] += 1.5
    p = np.exp(logits)
    return y, p / p.sum(axis=1, keepdims=True)


# ------------------------------------------------------------------ binary metrics


def test_binary_metrics_hand_computed():
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
    s = np.array([0.9, 0.8, 0.6, 0.2, 0.7, 0.55, 0.4, 0.3, 0.1, 0.05])
    m = binary_metrics(y, s, threshold=0.5, n_boot=0)
    # flagged: 0.9, 0.8, 0.6 (tp=3), 0.7, 0.55 (fp=2); missed 0.2 (fn=1); tn=4
    assert m["confusion_matrix"] == [[4, 2], [1, 3]]
    assert m["accuracy"] == pytest.approx(0.7)
    assert m["sensitivity"] == pytest.approx(0.75)
    assert m["specificity"] == pytest.approx(4 / 6)
    assert m["ppv"] == pytest.approx(3 / 5)
    assert m["npv"] == pytest.approx(4 / 5)
    assert m["f1"] == pytest.approx(2 * 0.6 * 0.75 / (0.6 + 0.75))
    # AUC by counting pairs: positives 0.9, 0.8, 0.6 beat all 6 negatives except 0.7 for 0.6;
    # 0.2 beats 0.1 and 0.05 -> (6 + 6 + 5 + 2) / 24
    assert m["roc_auc"] == pytest.approx(19 / 24)
    assert m["brier"] == pytest.approx(np.mean((s - y) ** 2))
    assert (m["n"], m["n_pos"], m["n_neg"]) == (10, 4, 6)


def test_binary_metrics_match_sklearn():
    y, s = _scores(500, seed=3)
    m = binary_metrics(y, s, threshold=0.5, n_boot=0)
    assert m["roc_auc"] == pytest.approx(roc_auc_score(y, s))
    assert m["pr_auc"] == pytest.approx(average_precision_score(y, s))
    assert m["brier"] == pytest.approx(brier_score_loss(y, s))
    tn, fp, fn, tp = confusion_matrix(y, s >= 0.5).ravel()
    assert m["confusion_matrix"] == [[tn, fp], [fn, tp]]


def test_threshold_is_inclusive():
    y = np.array([0, 1, 1])
    s = np.array([0.2, 0.5, 0.8])
    assert binary_metrics(y, s, threshold=0.5, n_boot=0)["sensitivity"] == 1.0


def test_weighted_replicates_equal_sklearn_with_sample_weight():
    y, s = _scores(300, seed=5)
    s = np.round(s, 2)  # ties
    strata = [np.flatnonzero(y == 1), np.flatnonzero(y == 0)]
    w = next(_weights(strata, y.size, 6, seed=1))
    assert np.all(w[:, y == 1].sum(axis=1) == (y == 1).sum())  # stratified: class sizes kept
    expected_auc = [roc_auc_score(y, s, sample_weight=row) for row in w]
    expected_ap = [average_precision_score(y, s, sample_weight=row) for row in w]
    np.testing.assert_allclose(weighted_roc_auc(w, y, s), expected_auc, rtol=1e-10)
    np.testing.assert_allclose(weighted_average_precision(w, y, s), expected_ap, rtol=1e-10)


def test_perfect_separation_gives_auc_one_and_ci_in_unit_interval():
    y = np.r_[np.zeros(50, int), np.ones(50, int)]
    s = np.r_[np.linspace(0.0, 0.4, 50), np.linspace(0.6, 1.0, 50)]
    m = binary_metrics(y, s, threshold=0.5, n_boot=300)
    assert m["roc_auc"] == 1.0
    for name in ("roc_auc", "sensitivity", "specificity", "accuracy"):
        lo, hi = m["ci"][name]
        assert 0.0 <= lo <= hi <= 1.0
    assert m["ci"]["roc_auc"] == [1.0, 1.0]


def test_random_scores_ci_contains_chance():
    rng = np.random.default_rng(11)
    y = (rng.random(400) < 0.5).astype(int)
    s = rng.random(400)
    m = binary_metrics(y, s, threshold=0.5, n_boot=1000, seed=0)
    lo, hi = m["ci"]["roc_auc"]
    assert lo < 0.5 < hi
    assert lo <= m["roc_auc"] <= hi
    assert 0.03 < hi - lo < 0.2


def test_bootstrap_reproducible_for_a_seed():
    y, s = _scores(200, seed=2)
    a = binary_metrics(y, s, 0.5, n_boot=200, seed=7)
    b = binary_metrics(y, s, 0.5, n_boot=200, seed=7)
    c = binary_metrics(y, s, 0.5, n_boot=200, seed=8)
    assert a["ci"] == b["ci"]
    assert a["ci"] != c["ci"]


def test_every_headline_metric_has_a_ci():
    y, s = _scores(300, seed=4)
    m = binary_metrics(y, s, 0.5, n_boot=200)
    for name in ("accuracy", "sensitivity", "specificity", "ppv", "npv", "f1", "roc_auc", "pr_auc", "brier", "ece"):
        lo, hi = m["ci"][name]
        assert lo <= m[name] <= hi, name


def test_undefined_metrics_are_none_and_json_clean():
    y = np.zeros(20, int)
    s = np.arange(20) / 20  # 10 scores below 0.5
    m = binary_metrics(y, s, threshold=0.5, n_boot=100)
    assert m["sensitivity"] is None and m["roc_auc"] is None and m["pr_auc"] is None
    assert m["ci"]["sensitivity"] is None and m["ci"]["roc_auc"] is None
    assert m["specificity"] == pytest.approx(10 / 20)
    assert m["npv"] == 1.0
    json.dumps(m, allow_nan=False)
    assert _plain(m)

    y = np.array([0, 1, 0, 1])
    m = binary_metrics(y, np.array([0.1, 0.2, 0.3, 0.4]), threshold=0.9, n_boot=50)
    assert m["ppv"] is None and m["ci"]["ppv"] is None  # nothing flagged
    assert m["sensitivity"] == 0.0
    assert _plain(m)


def test_bootstrap_is_fast():
    y, s = _scores(1000, seed=9)
    t0 = time.perf_counter()
    binary_metrics(y, s, 0.5, n_boot=1000)
    assert time.perf_counter() - t0 < 2.5


def test_rejects_bad_input():
    with pytest.raises(ValueError):
        binary_metrics(np.array([0, 1]), np.array([0.2, 0.3, 0.4]), 0.5)
    with pytest.raises(ValueError):
        binary_metrics(np.array([0, 2]), np.array([0.2, 0.3]), 0.5)
    with pytest.raises(ValueError):
        binary_metrics(np.array([0, 1]), np.array([0.2, np.nan]), 0.5)


# ----------------------------------------------------------------------- thresholds


def test_youden_known_case():
    y = np.array([0, 0, 0, 1, 0, 1, 1, 1, 1])
    s = np.arange(1, 10) / 10
    # flagging >= 0.6 gives sens 4/5, spec 1 (J = 0.8); >= 0.4 gives J = 0.75; >= 0.5 gives 0.55
    assert choose_threshold(y, s) == pytest.approx(0.55)


def test_youden_tie_goes_to_higher_threshold():
    y = np.array([0, 0, 0, 1, 0, 1, 1, 1])
    s = np.arange(1, 9) / 10
    # J = 0.75 both for ">= 0.6" and ">= 0.4"
    assert choose_threshold(y, s) == pytest.approx(0.55)


@pytest.mark.parametrize("target", [0.5, 0.8, 0.9, 0.95, 1.0])
def test_target_sensitivity_is_reached_at_highest_threshold(target):
    y, s = _scores(400, seed=1, shift=0.8)
    t = choose_threshold(y, s, target_sensitivity=target)
    sens, _ = _sens_spec(y, s, t)
    assert sens >= target
    assert not np.any(np.isclose(s, t))  # between scores, not on one
    lowest_flagged = s[s >= t].min()
    assert (s[y == 1] > lowest_flagged).mean() < target  # one step higher misses the target
    assert binary_metrics(y, s, t, n_boot=0)["sensitivity"] >= target


def test_threshold_sits_midway_between_scores():
    y = np.array([0, 0, 1, 1])
    s = np.array([0.1, 0.3, 0.7, 0.9])
    assert choose_threshold(y, s) == pytest.approx(0.5)
    assert choose_threshold(y, s, method="sensitivity", target_sensitivity=0.5) == pytest.approx(0.8)


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-np.asarray(z, dtype=float)))


def test_youden_plateau_sits_in_the_middle_of_the_flat_top():
    # separable: every threshold between the highest normal (logit -4) and the lowest
    # pneumonia (logit +2) gives J = 1; plain Youden halves the gap in probability, not in logits
    y = np.array([0] * 5 + [1] * 5)
    s = _sigmoid([-8, -7, -6, -5, -4, 2, 3, 4, 5, 6])
    t = choose_threshold(y, s, method="youden-plateau")
    assert np.log(t / (1 - t)) == pytest.approx(-1.0, abs=0.05)  # the middle, in logit units
    assert choose_threshold(y, s) == pytest.approx(float(_sigmoid(2) + _sigmoid(-4)) / 2)
    assert _sens_spec(y, s, t) == (1.0, 1.0)


def test_youden_plateau_keeps_a_good_operating_point():
    y, s = _scores(800, seed=3, shift=0.9)
    t = choose_threshold(y, s, method="youden-plateau")
    sens, spec = _sens_spec(y, s, t)
    best = choose_threshold(y, s)
    j_best = sum(_sens_spec(y, s, best)) - 1
    assert sens + spec - 1 >= j_best - 0.05  # near the maximum of J
    assert not np.any(np.isclose(s, t))


def test_high_priority_threshold_reaches_specificity():
    y, s = _scores(600, seed=6, shift=0.7)
    t = high_priority_threshold(y, s, specificity=0.95)
    sens, spec = _sens_spec(y, s, t)
    assert spec >= 0.95
    highest_unflagged = s[s < t].max()
    assert (s[y == 0] < highest_unflagged).mean() < 0.95  # one step lower drops below target
    assert t > choose_threshold(y, s)


def test_threshold_bad_method():
    with pytest.raises(ValueError):
        choose_threshold(np.array([0, 1]), np.array([0.1, 0.9]), method="magic")
    with pytest.raises(ValueError):
        choose_threshold(np.array([1, 1]), np.array([0.1, 0.9]))


# ---------------------------------------------------------------------- calibration


def test_ece_hand_computed():
    y = np.array([0, 1, 1, 1])
    s = np.array([0.05, 0.05, 0.95, 0.95])
    # bin [0, .1]: |0.5 - 0.05| * 2/4; bin (.9, 1]: |1 - 0.95| * 2/4
    assert expected_calibration_error(y, s) == pytest.approx(0.225 + 0.025)


def test_ece_calibrated_small_overconfident_large():
    rng = np.random.default_rng(0)
    s = rng.random(20000)
    y = (rng.random(20000) < s).astype(int)
    assert expected_calibration_error(y, s) < 0.02

    truth = (rng.random(20000) < 0.5).astype(int)
    right = rng.random(20000) < 0.7  # 70% correct but always 99% confident
    said = np.where(right, truth, 1 - truth)
    s_over = np.where(said == 1, 0.99, 0.01)
    assert expected_calibration_error(truth, s_over) == pytest.approx(0.29, abs=0.02)


def test_calibration_curve_matches_sklearn():
    y, s = _scores(500, seed=8)
    data = calibration_curve_data(y, s, n_bins=10)
    prob_true, prob_pred = calibration_curve(y, s, n_bins=10, strategy="uniform")
    filled = [i for i, c in enumerate(data["count"]) if c > 0]
    np.testing.assert_allclose([data["fraction_positive"][i] for i in filled], prob_true)
    np.testing.assert_allclose([data["mean_score"][i] for i in filled], prob_pred)
    assert sum(data["count"]) == 500
    assert data["ece"] == pytest.approx(binary_metrics(y, s, 0.5, n_boot=0)["ece"])


# ----------------------------------------------------------------------- multiclass


def test_multiclass_metrics_against_sklearn():
    classes = ["normal", "bacterial", "viral"]
    y, p = _softmax_data(400, 3, seed=2)
    m = multiclass_metrics(y, p, classes, n_boot=200)
    assert m["macro_auc"] == pytest.approx(roc_auc_score(y, p, multi_class="ovr", average="macro"))
    for c, name in enumerate(classes):
        assert m["per_class_auc"][name] == pytest.approx(roc_auc_score(y == c, p[:, c]))
        lo, hi = m["per_class_auc_ci"][name]
        assert lo <= m["per_class_auc"][name] <= hi
    assert m["confusion_matrix"] == confusion_matrix(y, p.argmax(1)).tolist()
    assert m["accuracy"] == pytest.approx(np.mean(p.argmax(1) == y))
    lo, hi = m["ci"]["macro_auc"]
    assert lo <= m["macro_auc"] <= hi
    ref = classification_report(y, p.argmax(1), target_names=classes, output_dict=True)
    assert m["classification_report"]["viral"]["f1-score"] == pytest.approx(ref["viral"]["f1-score"])
    assert m["classification_report"]["macro avg"]["recall"] == pytest.approx(ref["macro avg"]["recall"])
    assert _plain(m)


def test_multiclass_confusion_hand_computed_and_absent_class():
    y = np.array([0, 0, 1, 1, 1])
    p = np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.1, 0.8, 0.1], [0.1, 0.2, 0.7], [0.3, 0.6, 0.1]])
    m = multiclass_metrics(y, p, ["normal", "bacterial", "viral"], n_boot=50)
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 2, 1], [0, 0, 0]]
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["per_class_auc"]["viral"] is None
    assert m["macro_auc"] is None and m["ci"]["macro_auc"] is None
    json.dumps(m, allow_nan=False)


# ------------------------------------------------------------ end to end and report


@pytest.fixture(scope="module")
def three_class_run(tmp_path_factory) -> tuple[dict, Path, np.ndarray, np.ndarray]:
    out = tmp_path_factory.mktemp("eval3")
    y, p = _softmax_data(300, 3, seed=4)
    meta = {"model": "demo-net", "model_version": "1.2", "data": "synthetic", "split": "test",
            "threshold_method": "Youden J on validation"}
    result = evaluate_predictions("pneumonia3", ["normal", "bacterial", "viral"], y, p, 0.5, out, meta, n_boot=200)
    return result, out, y, p


def test_evaluate_predictions_three_classes(three_class_run):
    result, out, y, p = three_class_run
    for key in ("task", "n", "roc_auc", "accuracy", "sensitivity", "specificity", "threshold", "macro_auc"):
        assert key in result
    assert result["task"] == "pneumonia3" and result["n"] == 300 and result["threshold"] == 0.5
    y_bin, score = (y != 0).astype(int), 1 - p[:, 0]
    assert result["roc_auc"] == pytest.approx(roc_auc_score(y_bin, score))
    assert result["sensitivity"] == pytest.approx(np.mean(score[y_bin == 1] >= 0.5))
    assert result["specificity"] == pytest.approx(np.mean(score[y_bin == 0] < 0.5))
    assert result["macro_auc"] == pytest.approx(roc_auc_score(y, p, multi_class="ovr"))
    assert result["meta"]["model"] == "demo-net"
    assert _plain(result)
    assert json.loads((out / "metrics.json").read_text()) == result


def test_evaluate_predictions_binary_without_files():
    y, p = _softmax_data(120, 2, seed=1)
    result = evaluate_predictions("pneumonia", ["normal", "pneumonia"], y, p, 0.5, None, {}, n_boot=100)
    assert "macro_auc" not in result and "multiclass" not in result
    assert result["roc_auc"] == pytest.approx(roc_auc_score(y, p[:, 1]))
    assert set(result["classification_report"]) >= {"normal", "pneumonia", "accuracy"}
    json.dumps(result, allow_nan=False)


def test_evaluate_predictions_rejects_wrong_shape():
    with pytest.raises(ValueError):
        evaluate_predictions("t", ["normal", "x"], np.array([0, 1]), np.ones((2, 3)) / 3, 0.5, None, {})


def test_pngs_are_valid_images(three_class_run):
    _, out, _, _ = three_class_run
    names = {"roc.png", "pr.png", "confusion.png", "reliability.png", "roc_per_class.png", "confusion_multiclass.png"}
    assert names <= {p.name for p in out.glob("*.png")}
    for name in names:
        path = out / name
        assert path.read_bytes()[:8] == PNG_MAGIC
        with Image.open(path) as im:
            im.verify()
        with Image.open(path) as im:
            assert im.format == "PNG" and im.width > 300 and im.height > 300
            assert len(np.unique(np.asarray(im.convert("L")))) > 10  # not a blank canvas


def test_report_is_self_contained(three_class_run):
    result, out, _, _ = three_class_run
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "Decision aid for triage, not a diagnosis" in html
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", html, re.IGNORECASE)
    assert "<link" not in html.lower() and "<script" not in html.lower()
    assert "@import" not in html and "url(http" not in html
    images = re.findall(r'<img src="([^"]+)"', html)
    assert len(images) >= 4 and all(src.startswith("data:image/png;base64,") for src in images)
    assert "demo-net" in html and "Youden J on validation" in html
    assert f"{result['roc_auc']:.3f}" in html and "bacterial" in html


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_evaluate_does_not_import_torch():
    """No module reachable from cxrtriage.evaluate through first-party imports imports torch."""
    root = Path(cxrtriage.__file__).parent.parent
    todo = ["cxrtriage.evaluate", *(f"cxrtriage.evaluate.{p.stem}" for p in Path(evaluate_pkg.__file__).parent.glob("*.py"))]
    seen: set[str] = set()
    while todo:
        mod = todo.pop()
        if mod in seen:
            continue
        seen.add(mod)
        base = root.joinpath(*mod.split("."))
        path = base / "__init__.py" if base.is_dir() else base.with_suffix(".py")
        if not path.exists():
            continue
        for name in _imports(path):
            assert name.split(".")[0] not in {"torch", "torchvision", "timm"}, f"{path} imports {name}"
            if name.startswith("cxrtriage"):
                parts = name.split(".")
                todo.extend(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    assert "cxrtriage.evaluate.metrics" in seen and "cxrtriage" in seen


def test_patient_resampled_cis_do_not_shrink_when_a_patient_has_many_films():
    """Five copies of every film of one patient are still one patient: resampling images would
    narrow the AUC interval as if there were five times the evidence; resampling patients does not."""
    from cxrtriage.evaluate.metrics import binary_metrics

    rng = np.random.default_rng(3)
    y = np.r_[np.ones(40), np.zeros(40)].astype(int)
    s = np.clip(0.5 + 0.25 * (y - 0.5) + rng.normal(0, 0.25, y.size), 0, 1)
    ids = np.array([f"p{i}" for i in range(y.size)])
    width = lambda m: m["ci"]["roc_auc"][1] - m["ci"]["roc_auc"][0]  # noqa: E731
    one = binary_metrics(y, s, 0.5, n_boot=2000, groups=ids)
    y5, s5, ids5 = np.repeat(y, 5), np.repeat(s, 5), np.repeat(ids, 5)
    by_patient = binary_metrics(y5, s5, 0.5, n_boot=2000, groups=ids5)
    by_image = binary_metrics(y5, s5, 0.5, n_boot=2000)
    assert by_patient["roc_auc"] == pytest.approx(one["roc_auc"])
    assert width(by_patient) == pytest.approx(width(one), rel=0.2)
    assert width(by_image) < 0.6 * width(by_patient)
    assert by_patient["ci_resampling"].startswith("patients (80)")
    with pytest.raises(ValueError, match="groups"):
        binary_metrics(y, s, 0.5, n_boot=10, groups=ids[:-1])
