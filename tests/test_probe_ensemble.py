"""Linear probes (frozen ImageNet trunk + fitted head) and ensembles of trained runs."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from dataset_fixtures import make_kermany
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from typer.testing import CliRunner

from cxrtriage.cli.main import app
from cxrtriage.models.archs import build_model
from cxrtriage.models.weights import init_weights
from cxrtriage.models.ensemble import resize_matrix
from cxrtriage.train.augment import AugmentConfig
from cxrtriage.train.probe import C_GRID, FeatureExtractor, fold_head


@pytest.fixture(scope="module")
def mini_kermany(tmp_path_factory):
    from cxrtriage.data import kermany_samples, patient_split, write_manifest

    root = tmp_path_factory.mktemp("kermany")
    make_kermany(root / "chest_xray", 14, 14)
    return write_manifest(patient_split(kermany_samples(root / "chest_xray", "train"), 0.25, 0), root / "split.csv")


@pytest.mark.parametrize(("variant", "taps", "width"), [(0, (7, 10), 192), (1, (10, 14), 192), (2, (10, 14), 208)])
def test_probe_trunk_is_efficientnet_lite_up_to_stage_5(variant, taps, width):
    probe = build_model(f"lite{variant}_probe", 2, 96)
    full = build_model(f"efficientnet_lite{variant}", 2, 96)
    init_weights(probe, f"lite{variant}_probe", pretrained=True)
    init_weights(full, f"efficientnet_lite{variant}", pretrained=True)
    x = torch.randn(2, 1, 96, 96)
    with torch.no_grad():
        t = full.features
        h, maps = t.act(t._bn0(t._conv_stem(x))), []
        for i, b in enumerate(t._blocks):
            h = b(h)
            if i in taps:
                maps.append(h)
        got = probe.forward_features(x)
        assert got.shape[1] == width and torch.allclose(got, torch.cat(maps, 1), atol=1e-5)
    assert sum(p.numel() for p in probe.features.parameters()) < 0.5 * sum(p.numel() for p in t.parameters())


@pytest.mark.parametrize("classes", [2, 3])
def test_folded_head_reproduces_the_fitted_classifier(classes):
    rng = np.random.default_rng(classes)
    f = rng.normal(3.0, 2.0, size=(300, 12)) * rng.uniform(0.5, 5, size=12)
    y = rng.integers(0, classes, 300)
    f[:, 0] += y * 2.0
    scaler = StandardScaler().fit(f)
    clf = LogisticRegression(C=0.3, max_iter=2000).fit(scaler.transform(f), y)
    head = torch.nn.Module()
    head.head = torch.nn.Linear(12, classes)
    fold_head(head, clf, scaler, classes)
    with torch.no_grad():
        p = torch.softmax(head.head(torch.tensor(f, dtype=torch.float32)), 1).numpy()
    np.testing.assert_allclose(p, clf.predict_proba(scaler.transform(f)), atol=1e-4)


def test_resize_matrix_is_pillows_bilinear_resize():
    img = np.random.default_rng(0).uniform(0, 255, (96, 96)).astype(np.float32)
    a = resize_matrix(96, 40)
    ref = np.asarray(Image.fromarray(img, mode="F").resize((40, 40), Image.BILINEAR))
    np.testing.assert_allclose(a @ img @ a.T, ref, atol=1e-3)


def _train(args, tmp_path):
    r = CliRunner().invoke(app, ["train", *args, "--cache-dir", str(tmp_path / "cache"), "--quiet"])
    assert r.exit_code == 0, r.output
    return r


def test_probe_augmented_views_follow_the_augmentation_settings(tmp_path):
    model = build_model("lite0_probe", 2, 64)
    init_weights(model, "lite0_probe", pretrained=True)
    extract = FeatureExtractor(model.eval(), 0.5, 0.25, 64, tmp_path, threads=1)
    g = torch.Generator().manual_seed(0)
    x = (torch.nn.functional.interpolate(torch.rand(4, 1, 8, 8, generator=g), size=64, mode="bilinear")[:, 0]
         * 200 + 20).to(torch.uint8)
    plain = extract(x, progress=False)
    default = extract(x, augment_seed=1, progress=False)
    none = extract(x, augment_seed=1, augment=AugmentConfig().scaled(0.0), progress=False)
    mirrored = extract(x, augment_seed=1, augment=AugmentConfig(hflip_p=1.0).scaled(0.0), progress=False)
    assert np.abs(default - plain).max() > 1e-2  # the default views differ from the images
    assert np.allclose(none, plain, atol=1e-4)  # strength 0: the images as they are
    assert np.allclose(mirrored, extract(torch.flip(x, dims=[-1]), progress=False), atol=1e-4)


def test_linear_probe_then_ensemble_with_a_trained_cnn(mini_kermany, tmp_path):
    from cxrtriage.data import read_manifest
    from cxrtriage.infer import Engine

    r = _train(["--out", str(tmp_path / "probe"), "--manifest", str(mini_kermany), "--arch", "lite0_probe",
                "--image-size", "96", "--probe-views", "1"], tmp_path)
    assert "trunk frozen" in r.output
    after = torch.load(tmp_path / "probe" / "best.pt", weights_only=False)
    ref = build_model("lite0_probe", 2, 96)
    init_weights(ref, "lite0_probe", pretrained=True)
    assert all(torch.equal(after["model"][k], v) for k, v in ref.state_dict().items() if k.startswith("features."))
    rows = list(csv.DictReader((tmp_path / "probe" / "metrics.csv").open()))
    assert [float(r["C"]) for r in rows] == list(C_GRID)
    meta = json.loads((tmp_path / "probe" / "model.json").read_text())
    assert meta["arch"] == "lite0_probe" and meta["outputs"] == ["probs", "cam", "embedding"]
    assert meta["training"]["init"] == "ImageNet" and meta["gate"]["threshold"] > 0

    _train(["--out", str(tmp_path / "cnn"), "--manifest", str(mini_kermany), "--image-size", "64", "--epochs", "1",
            "--batch-size", "8"], tmp_path)
    r = CliRunner().invoke(app, ["ensemble", str(tmp_path / "cnn"), str(tmp_path / "probe"), "--out",
                                 str(tmp_path / "ens"), "--cache-dir", str(tmp_path / "cache")])
    assert r.exit_code == 0, r.output
    meta = json.loads((tmp_path / "ens" / "model.json").read_text())
    assert meta["input"]["size"] == 96 and meta["arch"] == "ensemble(cxrnet + lite0_probe)"
    assert meta["outputs"] == ["probs", "cam", "embedding"] and 0 < meta["threshold"] < 1

    # the ensemble's probability is the mean of its members' own (each at its own input size)
    paths = [s.path for s in read_manifest(mini_kermany)][:6]
    ens = Engine(tmp_path / "ens", gate=False).predict_files(paths, heatmap=True)
    cnn = Engine(tmp_path / "cnn", gate=False).predict_files(paths)
    probe = Engine(tmp_path / "probe", gate=False).predict_files(paths)
    for e, a, b in zip(ens, cnn, probe):
        assert e.score == pytest.approx((a.score + b.score) / 2, abs=2e-3)
        assert e.heatmap is not None

    # float16 storage halves the file; the computation stays float32, the scores barely move
    r = CliRunner().invoke(app, ["ensemble", str(tmp_path / "cnn"), str(tmp_path / "probe"), "--out",
                                 str(tmp_path / "ens16"), "--half-weights", "--heatmap-from", "0",
                                 "--cache-dir", str(tmp_path / "cache")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "ens16" / "model.onnx").stat().st_size < 0.6 * (tmp_path / "ens" / "model.onnx").stat().st_size
    meta16 = json.loads((tmp_path / "ens16" / "model.json").read_text())
    assert meta16["weights_storage"] == "float16" and meta16["heatmap_source"] == "class activation map of cxrnet"
    for e, h in zip(ens, Engine(tmp_path / "ens16", gate=False).predict_files(paths, heatmap=True)):
        assert h.score == pytest.approx(e.score, abs=5e-3)
        assert h.heatmap is not None

    r = CliRunner().invoke(app, ["ensemble", str(tmp_path / "cnn"), "--out", str(tmp_path / "one")])
    assert r.exit_code != 0 and "at least two" in r.output


def test_ensemble_refuses_members_from_different_splits(mini_kermany, tmp_path):
    from cxrtriage.data import read_manifest, write_manifest

    from dataclasses import replace

    samples = read_manifest(mini_kermany)
    samples = [replace(s, split="val" if s.split == "train" else "train") if i < 4 else s
               for i, s in enumerate(samples)]
    other = write_manifest(samples, tmp_path / "other.csv")
    for name, manifest in (("a", mini_kermany), ("b", other)):
        _train(["--out", str(tmp_path / name), "--manifest", str(manifest), "--image-size", "64", "--epochs", "1",
                "--batch-size", "8"], tmp_path)
    r = CliRunner().invoke(app, ["ensemble", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "e")])
    assert r.exit_code != 0 and "different split" in r.output


def test_a_coarser_task_sums_the_fine_probabilities_and_weights_their_maps():
    from cxrtriage.models.ensemble import EnsembleGraph, Member

    torch.manual_seed(0)
    nets = [build_model("cxrnet", 3, 64).eval() for _ in range(2)]
    for net in nets:  # random heads that do not favour one class everywhere
        torch.nn.init.normal_(net.head.weight, std=0.5)
    members = [Member(n, 64, 0.5, 0.25, 64) for n in nets]
    fine = EnsembleGraph(members, 64).eval()
    coarse = EnsembleGraph(members, 64, groups=[[0], [1, 2]]).eval()
    x = torch.rand(4, 1, 64, 64) * 255
    with torch.no_grad():
        pf, cf, ef = fine(x)
        pc, cc, ec = coarse(x)
    assert pc.shape == (4, 2) and cc.shape[1] == 2
    torch.testing.assert_close(pc[:, 1], pf[:, 1] + pf[:, 2])
    torch.testing.assert_close(pc[:, 0], pf[:, 0])
    w = pf[:, 1:] / pf[:, 1:].sum(1, keepdim=True)
    torch.testing.assert_close(cc[:, 1], (cf[:, 1:] * w[:, :, None, None]).sum(1))
    torch.testing.assert_close(ec, ef)
    with pytest.raises(ValueError, match="must split the members' 3 classes"):
        EnsembleGraph(members, 64, groups=[[0], [1]])


def test_runs_answer_only_a_task_their_classes_map_onto():
    from cxrtriage.data import get_task
    from cxrtriage.train.ensemble import _coarse_task

    task, groups = _coarse_task(get_task("pneumonia3"), "pneumonia")
    assert task.name == "pneumonia" and groups == [[0], [1, 2]]
    assert _coarse_task(get_task("pneumonia3"), None) == (get_task("pneumonia3"), None)
    with pytest.raises(ValueError, match="cannot answer 'covid3'"):
        _coarse_task(get_task("pneumonia3"), "covid3")
    with pytest.raises(ValueError, match="cannot answer 'pneumonia3'"):
        _coarse_task(get_task("pneumonia"), "pneumonia3")
