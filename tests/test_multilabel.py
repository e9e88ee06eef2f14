"""Multi-label findings: losses, the rare-label sampler, per-label metrics with absent labels,
and nih14 end to end (train -> ONNX with sigmoid outputs -> engine -> `cxr evaluate`) on a
miniature ChestX-ray14 release."""

from __future__ import annotations

import csv
import json
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from dataset_fixtures import make_nih
from typer.testing import CliRunner

from cxrtriage.data import get_task, write_manifest
from cxrtriage.data.nih import nih_samples
from cxrtriage.evaluate import evaluate_predictions
from cxrtriage.evaluate.multilabel import MIN_THRESHOLD_POSITIVES, label_thresholds, multilabel_metrics
from cxrtriage.train.losses import focal_loss, multilabel_loss, positive_weights
from cxrtriage.train.sampler import epoch_order, label_presence, rare_label_probs


def test_positive_weights_balance_each_label():
    y = np.zeros((100, 3), dtype=np.float32)
    y[:25, 0] = 1  # 25% -> 75/25 = 3
    y[:1, 1] = 1  # 1% -> 99, capped at 50
    w = positive_weights(y, max_weight=50.0)
    assert w[0] == pytest.approx(3.0) and w[1] == pytest.approx(50.0) and w[2] == 1.0  # absent label: 1
    # as a sampler would draw them: label 0 drawn half the time -> weight 1
    p = np.where(y[:, 0] == 1, 1 / 50, 1 / 150)
    assert positive_weights(y, p)[0] == pytest.approx(1.0)


def test_focal_loss_is_bce_at_gamma_zero_and_smaller_when_confident():
    logits = torch.tensor([[3.0, -2.0, 0.1]])
    y = torch.tensor([[1.0, 0.0, 1.0]])
    bce = F.binary_cross_entropy_with_logits(logits, y, reduction="none")
    assert torch.allclose(focal_loss(logits, y, gamma=0.0), bce)
    assert (focal_loss(logits, y, gamma=2.0) < bce).all()
    assert multilabel_loss(logits, y, kind="focal") < multilabel_loss(logits, y, kind="bce")
    with pytest.raises(ValueError, match="unknown loss"):
        multilabel_loss(logits, y, kind="hinge")


def test_rare_label_sampler_keeps_rare_labels_in_batches():
    rng = np.random.default_rng(0)
    y = np.zeros((2000, 3))
    y[:, 0] = rng.random(2000) < 0.3
    y[:6, 2] = 1  # 6 images of a rare finding
    uniform = np.full(len(y), 1 / len(y))
    rare = rare_label_probs(y)
    o_uniform = epoch_order(uniform, len(y), seed=0, epoch=0)
    o_rare = epoch_order(rare, len(y), seed=0, epoch=0)
    assert np.array_equal(o_rare, epoch_order(rare, len(y), seed=0, epoch=0))  # reproducible (resume)
    assert not np.array_equal(o_rare, epoch_order(rare, len(y), seed=0, epoch=1))
    pu, pr = label_presence(y, o_uniform, 32), label_presence(y, o_rare, 32)
    assert pr[2] > 3 * pu[2] and pr[2] > 0.3
    assert pr[0] > 0.9  # common labels stay common


def test_absent_labels_are_reported_as_absent_not_zero():
    rng = np.random.default_rng(1)
    labels = ["A", "B", "Hernia"]
    y = np.zeros((120, 3), dtype=int)
    y[:40, 0] = 1
    y[30:50, 1] = 1  # Hernia absent
    p = np.clip(y * 0.4 + rng.random((120, 3)) * 0.6, 0, 1)
    thr = label_thresholds(y, p, labels)
    assert thr["Hernia"] is None and 0 < thr["A"] < 1
    m = multilabel_metrics(y, p, labels, thr, n_boot=200)
    h = m["per_label"]["Hernia"]
    assert h["roc_auc"] is None and h["status"] == "absent" and h["roc_auc_ci"] is None and h["n_pos"] == 0
    assert m["labels_absent"] == ["Hernia"] and m["n_labels_scored"] == 2
    aucs = [m["per_label"][c]["roc_auc"] for c in ("A", "B")]
    assert m["mean_auc"] == pytest.approx(np.mean(aucs))
    for c in ("A", "B"):
        lo, hi = m["per_label"][c]["roc_auc_ci"]
        assert lo <= m["per_label"][c]["roc_auc"] <= hi
    lo, hi = m["mean_auc_ci"]
    assert lo <= m["mean_auc"] <= hi


@pytest.fixture(scope="module")
def nih_run(tmp_path_factory):
    """nih14 trained for two short epochs on a miniature ChestX-ray14 (64 px, default network)."""
    from cxrtriage.train.config import TrainConfig
    from cxrtriage.train.trainer import train

    root = tmp_path_factory.mktemp("nih")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        samples = nih_samples(make_nih(root / "ChestX-ray14"), val_fraction=0.25, seed=0)
    manifest = write_manifest(samples, root / "split.csv")
    torch.manual_seed(0)
    out = train(TrainConfig(out_dir=str(root / "run"), manifest=str(manifest), task="nih14", epochs=2, batch_size=8,
                            image_size=64, cache_dir=str(root / "cache"), patience=10), progress=False)
    return out, manifest, samples


def test_multilabel_run_exports_sigmoid_model_with_label_thresholds(nih_run):
    out, _, _ = nih_run
    meta = json.loads((out / "model.json").read_text())
    assert meta["kind"] == "multilabel" and meta["classes"] == list(get_task("nih14").classes)
    assert "No Finding" not in meta["classes"]
    assert meta["outputs"] == ["probs", "cam", "embedding"] and meta["score"].startswith("max")
    assert set(meta["label_thresholds"]) == set(meta["classes"])
    per = meta["validation"]["per_label_auc"]
    n_val = meta["validation"]["n"]
    for c, n in meta["validation"]["label_positives"].items():  # absent in validation -> None, never 0
        assert (per[c] is None) == (n == 0 or n == n_val)
        # a threshold of its own only from enough positives (else the engine flags at 0.5)
        assert (meta["label_thresholds"][c] is None) == (n < MIN_THRESHOLD_POSITIVES or n == n_val)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["sampler"] == "rare" and cfg["loss"] == "bce"


def test_multilabel_run_with_mixup_trains_on_blended_findings(nih_run, tmp_path):
    from cxrtriage.train.config import TrainConfig
    from cxrtriage.train.trainer import train

    out, manifest, _ = nih_run
    cfg = TrainConfig.load(out / "config.json")
    cfg.out_dir, cfg.mixup = str(tmp_path / "mixed"), 0.4
    mixed = train(cfg, progress=False)
    rows = list(csv.DictReader((mixed / "metrics.csv").open()))
    assert len(rows) == 2 and all(np.isfinite(float(r["train_loss"])) for r in rows)
    plain = torch.load(out / "last.pt", weights_only=False)["model"]
    blended = torch.load(mixed / "last.pt", weights_only=False)["model"]
    assert any(not torch.allclose(plain[k].float(), blended[k].float()) for k in plain)
    assert json.loads((mixed / "model.json").read_text())["kind"] == "multilabel"


def test_engine_scores_multilabel_model_like_torch(nih_run):
    from cxrtriage.data import to_model_input
    from cxrtriage.infer import Engine
    from cxrtriage.io import read_radiograph
    from cxrtriage.models.checkpoint import load_checkpoint

    out, _, samples = nih_run
    files = [s.path for s in samples[:6]]
    model, meta = load_checkpoint(out)
    x = np.stack([to_model_input(read_radiograph(f), meta["image_size"]) for f in files])
    with torch.no_grad():
        t = torch.from_numpy(x).float().unsqueeze(1) / 255.0
        ref = torch.sigmoid(model((t - meta["mean"]) / meta["std"])).numpy()
    engine = Engine(out, gate=False)
    preds = engine.predict_files(files, heatmap=True)
    got = np.array([[p.probabilities[c] for c in engine.spec.classes] for p in preds])
    assert np.abs(got - ref).max() < 1e-4
    assert not np.allclose(got.sum(axis=1), 1.0)  # independent sigmoids, not a softmax
    thr = engine.spec.decision.label_thresholds
    for p, row in zip(preds, got):
        # one rule: the lead finding has the highest probability relative to its own threshold;
        # score and threshold are its own, the label lists the flagged findings lead first
        t = np.array([thr[c] if thr[c] is not None else 0.5 for c in engine.spec.classes])
        lead = int(np.argmax(row / t))
        assert p.finding == engine.spec.classes[lead]
        assert p.score == pytest.approx(row[lead], abs=1e-6) and p.threshold == pytest.approx(t[lead])
        order = np.argsort(-(row / t), kind="stable")
        flagged = [engine.spec.classes[i] for i in order if row[i] >= t[i]]
        assert p.label == ("|".join(flagged) or "no finding")
        assert (p.priority in ("review", "urgent")) == bool(flagged) == (p.score >= p.threshold)
        assert p.heatmap is not None and p.heatmap.max() <= 1.0


def test_cli_evaluate_reports_per_label_table_with_absent_labels(nih_run, tmp_path):
    from cxrtriage.cli.main import app

    out, manifest, samples = nih_run
    r = CliRunner().invoke(app, ["evaluate", "--model", str(out), "--manifest", str(manifest), "--split", "test",
                                 "--out", str(tmp_path / "ev"), "--n-boot", "100"])
    assert r.exit_code == 0, r.output
    assert "Hernia" in r.output and "absent" in r.output and "mean AUC over" in r.output
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    ml = m["multilabel"]
    for absent in ("Hernia", "Fibrosis", "Pleural_Thickening", "Emphysema"):  # no positive in the test list
        assert ml["per_label"][absent]["roc_auc"] is None and absent in ml["labels_absent"]
    scored = [e["roc_auc"] for e in ml["per_label"].values() if e["roc_auc"] is not None]
    assert ml["n_labels_scored"] == len(scored) and ml["mean_auc"] == pytest.approx(np.mean(scored))
    assert m["n"] == sum(s.split == "test" for s in samples)
    html = (tmp_path / "ev" / "report.html").read_text()
    assert "Per finding" in html and "absent" in html and "max over findings" in html
    assert (tmp_path / "ev" / "label_auc.png").stat().st_size > 5000


def test_evaluate_predictions_dispatches_on_multilabel_targets(tmp_path):
    rng = np.random.default_rng(2)
    y = (rng.random((60, 2)) < 0.3).astype(int)
    p = np.clip(y * 0.3 + rng.random((60, 2)) * 0.7, 0, 1)
    r = evaluate_predictions("t", ["A", "B"], y, p, 0.5, None, {}, n_boot=50,
                             label_thresholds={"A": 0.5, "B": None})
    assert r["kind"] == "multilabel" and r["multilabel"]["per_label"]["B"]["sensitivity"] is None
    assert r["n_pos"] == int(y.any(axis=1).sum())


def test_a_finding_with_few_validation_positives_gets_no_threshold_of_its_own():
    rng = np.random.default_rng(2)
    y = np.zeros((200, 2), dtype=int)
    y[:60, 0] = 1
    y[:9, 1] = 1  # 9 positives: below MIN_THRESHOLD_POSITIVES
    p = np.clip(y * 0.3 + rng.random((200, 2)) * 0.7, 0, 1)
    thr = label_thresholds(y, p, ["Effusion", "Pneumothorax"])
    assert thr["Pneumothorax"] is None and thr["Effusion"] is not None


def test_multilabel_cis_resample_patients_when_given():
    """Five copies of each patient's film do not narrow the mean-AUC interval when patients are resampled."""
    from cxrtriage.evaluate.multilabel import multilabel_metrics

    rng = np.random.default_rng(5)
    y = (rng.random((60, 3)) < 0.4).astype(int)
    p = np.clip(0.3 + 0.3 * y + rng.normal(0, 0.2, y.shape), 0, 1)
    ids = np.array([f"p{i}" for i in range(60)])
    width = lambda m: m["mean_auc_ci"][1] - m["mean_auc_ci"][0]  # noqa: E731
    one = multilabel_metrics(y, p, ["a", "b", "c"], n_boot=1000, groups=ids)
    y5, p5, ids5 = np.repeat(y, 5, axis=0), np.repeat(p, 5, axis=0), np.repeat(ids, 5)
    by_patient = multilabel_metrics(y5, p5, ["a", "b", "c"], n_boot=1000, groups=ids5)
    by_image = multilabel_metrics(y5, p5, ["a", "b", "c"], n_boot=1000)
    assert width(by_patient) == pytest.approx(width(one), rel=0.25)
    assert width(by_image) < 0.6 * width(by_patient)
