"""Training end to end on a few dozen real radiographs: outputs, resume, export parity."""

from __future__ import annotations

import csv
import json
import random

import numpy as np
import pytest
import torch

from cxrtriage.data import kermany_samples, patient_split, write_manifest
from cxrtriage.train.config import TrainConfig
from cxrtriage.train.trainer import train

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_manifest(shared_root, tmp_path_factory):
    """48 real radiographs (24 normal, 24 pneumonia), split by patient."""
    rng = random.Random(0)
    allsamples = kermany_samples(shared_root, "train", "pneumonia3")
    pick = rng.sample([s for s in allsamples if s.label == "normal"], 24)
    pick += rng.sample([s for s in allsamples if s.label != "normal"], 24)
    path = tmp_path_factory.mktemp("manifest") / "tiny.csv"
    write_manifest(patient_split(pick, 0.25, 0), path)
    return path


def _torch_probs(model, meta: dict, x: np.ndarray) -> np.ndarray:
    """Softmax of a checkpoint's network on uint8 images (N, S, S), normalised as in training."""
    with torch.no_grad():
        t = torch.from_numpy(x).float().unsqueeze(1) / 255.0
        return torch.softmax(model((t - meta["mean"]) / meta["std"]), 1).numpy()


def _served_and_raw(out, files) -> tuple[np.ndarray, torch.nn.Module, dict, np.ndarray]:
    """A run's engine probabilities on ``files`` (with its own border and intensity steps), its torch
    network and metadata, and the files as plain resized images (no steps)."""
    from cxrtriage.data import to_model_input
    from cxrtriage.infer import Engine
    from cxrtriage.io import read_radiograph
    from cxrtriage.models.checkpoint import load_checkpoint

    model, meta = load_checkpoint(out)
    raw = np.stack([to_model_input(read_radiograph(f), meta["image_size"]) for f in files])
    engine = Engine(out, gate=False)
    got = np.array([[p.probabilities[c] for c in engine.spec.classes] for p in engine.predict_files(files)])
    return got, model, meta, raw


def _framed(src, dst, pad: int, grey: int):
    """``src`` inside a uniform frame ``pad`` px wide of grey level ``grey``, saved as ``dst`` (PNG)."""
    from PIL import Image

    from cxrtriage.io import read_radiograph

    film = read_radiograph(src).to_uint8()
    framed = np.full((film.shape[0] + 2 * pad, film.shape[1] + 2 * pad), grey, dtype=np.uint8)
    framed[pad:-pad, pad:-pad] = film
    Image.fromarray(framed).save(dst)
    return dst


def _cfg(out, manifest, cache, **kw) -> TrainConfig:
    base = dict(out_dir=str(out), manifest=str(manifest), epochs=2, batch_size=8, cache_dir=str(cache),
                image_size=64, patience=10)
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def tiny_run(tiny_manifest, tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    out = train(_cfg(root / "run", tiny_manifest, root / "cache"), progress=False)
    return out, root / "cache"


def test_run_folder_has_everything(tiny_run):
    out, _ = tiny_run
    for name in ("config.json", "metrics.csv", "curves.png", "best.pt", "last.pt", "model.onnx", "model.json",
                 "model.gate.npz", "split.csv", "val_predictions.csv"):
        assert (out / name).is_file(), name
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    meta = json.loads((out / "model.json").read_text())
    assert meta["classes"] == ["normal", "pneumonia"] and 0.0 < meta["threshold"] < 1.0
    assert meta["input"]["size"] == 64 and meta["outputs"] == ["probs", "cam", "embedding"]
    assert meta["gate"]["threshold"] > 0


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tiny_manifest, tiny_run, tmp_path):
    _, cache = tiny_run
    straight = train(_cfg(tmp_path / "a", tiny_manifest, cache), progress=False)
    train(_cfg(tmp_path / "b", tiny_manifest, cache, stop_after=1), progress=False)
    assert not (tmp_path / "b" / "model.onnx").exists()  # paused, not finished
    resumed = train(_cfg(tmp_path / "b", tiny_manifest, cache), resume=True, progress=False)
    wa = torch.load(straight / "last.pt", weights_only=False)["model"]
    wb = torch.load(resumed / "last.pt", weights_only=False)["model"]
    for k in wa:
        assert torch.allclose(wa[k].float(), wb[k].float(), atol=1e-6), k


def test_a_run_killed_while_saving_keeps_whole_checkpoints_and_resumes(tiny_manifest, tiny_run, monkeypatch,
                                                                        tmp_path):
    import io
    _, cache = tiny_run
    straight = train(_cfg(tmp_path / "a", tiny_manifest, cache, epochs=4), progress=False)
    aucs = [float(r["val_auc"]) for r in csv.DictReader((straight / "metrics.csv").open())]
    new_best = [e for e in range(len(aucs)) if aucs[e] > max(aucs[:e], default=-1.0) + 1e-5]
    assert len(new_best) >= 2, aucs  # the run writes best.pt at least twice
    real_save, best_writes = torch.save, []

    def killed_mid_write(obj, f, *a, **kw):  # the second best model: half its bytes land, then the process dies
        if str(f).rsplit("/", 1)[-1].startswith("best"):
            best_writes.append(f)
            if len(best_writes) == 2:
                buf = io.BytesIO()
                real_save(obj, buf)
                with open(f, "wb") as fh:
                    fh.write(buf.getvalue()[: len(buf.getvalue()) // 2])
                raise KeyboardInterrupt("killed")
        return real_save(obj, f, *a, **kw)

    monkeypatch.setattr(torch, "save", killed_mid_write)
    with pytest.raises(KeyboardInterrupt):
        train(_cfg(tmp_path / "b", tiny_manifest, cache, epochs=4), progress=False)
    monkeypatch.setattr(torch, "save", real_save)
    assert len(best_writes) == 2
    # the first best model, whole; the last epoch on record is the one before the kill, so that epoch runs again
    assert torch.load(tmp_path / "b" / "best.pt", weights_only=False)["epoch"] == new_best[0]
    assert torch.load(tmp_path / "b" / "last.pt", weights_only=False)["epoch"] == new_best[1] - 1
    resumed = train(_cfg(tmp_path / "b", tiny_manifest, cache, epochs=4), resume=True, progress=False)
    want = torch.load(straight / "best.pt", weights_only=False)
    got = torch.load(resumed / "best.pt", weights_only=False)
    assert got["epoch"] == want["epoch"]
    for k in want["model"]:
        assert torch.allclose(want["model"][k].float(), got["model"][k].float(), atol=1e-6), k


def test_exported_model_matches_torch_on_real_images(tiny_run, shared_root):
    from cxrtriage.data import to_model_input
    from cxrtriage.infer import Engine
    from cxrtriage.io import read_radiograph
    from cxrtriage.models.checkpoint import load_checkpoint

    out, _ = tiny_run
    files = sorted((shared_root / "train" / "PNEUMONIA").glob("*.jpeg"))[:6]
    files += sorted((shared_root / "train" / "NORMAL").glob("*.jpeg"))[:6]
    model, meta = load_checkpoint(out)
    x = np.stack([to_model_input(read_radiograph(f), meta["image_size"]) for f in files])
    with torch.no_grad():
        t = torch.from_numpy(x).float().unsqueeze(1) / 255.0
        ref = torch.softmax(model((t - meta["mean"]) / meta["std"]), 1).numpy()
    engine = Engine(out, gate=False)
    got = np.array([[p.probabilities[c] for c in engine.spec.classes] for p in engine.predict_files(files)])
    assert np.abs(got - ref).max() < 1e-4
    # and a second engine (a reload) gives identical numbers
    again = np.array([[p.probabilities[c] for c in ("normal", "pneumonia")]
                      for p in Engine(out, gate=False).predict_files(files)])
    assert np.array_equal(got, again)


def test_weight_average_is_what_is_kept_and_resumes_exactly(tiny_manifest, tiny_run, tmp_path):
    _, cache = tiny_run
    one = train(_cfg(tmp_path / "one", tiny_manifest, cache, epochs=1, ema_decay=0.9, hflip=0.5), progress=False)
    last = torch.load(one / "last.pt", weights_only=False)
    best = torch.load(one / "best.pt", weights_only=False)
    averaged = {k.removeprefix("module."): v for k, v in last["ema"].items() if k.startswith("module.")}
    assert averaged.keys() == best["model"].keys()
    assert all(torch.equal(averaged[k], best["model"][k]) for k in averaged)  # best.pt holds the average
    assert any(not torch.equal(last["model"][k], best["model"][k]) for k in averaged)  # not the raw weights
    straight = train(_cfg(tmp_path / "a", tiny_manifest, cache, ema_decay=0.9), progress=False)
    train(_cfg(tmp_path / "b", tiny_manifest, cache, ema_decay=0.9, stop_after=1), progress=False)
    resumed = train(_cfg(tmp_path / "b", tiny_manifest, cache, ema_decay=0.9), resume=True, progress=False)
    ea = torch.load(straight / "last.pt", weights_only=False)["ema"]
    eb = torch.load(resumed / "last.pt", weights_only=False)["ema"]
    for k in ea:
        assert torch.allclose(ea[k].float(), eb[k].float(), atol=1e-6), k


def test_mixup_changes_training_and_resumes_exactly(tiny_manifest, tiny_run, tmp_path):
    out, cache = tiny_run
    straight = train(_cfg(tmp_path / "a", tiny_manifest, cache, mixup=0.4), progress=False)
    plain = torch.load(out / "last.pt", weights_only=False)["model"]
    mixed = torch.load(straight / "last.pt", weights_only=False)["model"]
    assert any(not torch.allclose(plain[k].float(), mixed[k].float()) for k in plain)
    train(_cfg(tmp_path / "b", tiny_manifest, cache, mixup=0.4, stop_after=1), progress=False)
    resumed = train(_cfg(tmp_path / "b", tiny_manifest, cache, mixup=0.4), resume=True,
                    progress=False)
    wb = torch.load(resumed / "last.pt", weights_only=False)["model"]
    for k in mixed:
        assert torch.allclose(mixed[k].float(), wb[k].float(), atol=1e-6), k
    assert json.loads((resumed / "config.json").read_text())["mixup"] == 0.4


def test_three_class_task_trains(tiny_manifest, tiny_run, tmp_path):
    _, cache = tiny_run
    out = train(_cfg(tmp_path / "r3", tiny_manifest, cache, task="pneumonia3", epochs=1), progress=False)
    meta = json.loads((out / "model.json").read_text())
    assert meta["classes"] == ["normal", "bacterial", "viral"]
    assert meta["validation"]["macro_auc"] is not None


def test_bad_configuration_is_refused(tiny_manifest, tmp_path):
    with pytest.raises(ValueError, match="unknown architecture"):
        train(_cfg(tmp_path / "x", tiny_manifest, tmp_path / "c", arch="resnet9000"), progress=False)
    with pytest.raises(ValueError, match="larger than"):
        train(_cfg(tmp_path / "y", tiny_manifest, tmp_path / "c", batch_size=4096), progress=False)
    with pytest.raises(ValueError, match="hflip"):
        train(_cfg(tmp_path / "z", tiny_manifest, tmp_path / "c", hflip=2.0), progress=False)
    with pytest.raises(ValueError, match="strength"):
        train(_cfg(tmp_path / "v", tiny_manifest, tmp_path / "c", augment_strength=-1.0), progress=False)
    with pytest.raises(ValueError, match="mixup alpha"):
        train(_cfg(tmp_path / "u", tiny_manifest, tmp_path / "c", mixup=-0.2), progress=False)
    with pytest.raises(ValueError, match="linear probe"):
        train(_cfg(tmp_path / "t", tiny_manifest, tmp_path / "c", arch="lite0_probe", mixup=0.2), progress=False)
    with pytest.raises(ValueError, match="EMA decay"):
        train(_cfg(tmp_path / "w", tiny_manifest, tmp_path / "c", ema_decay=1.0), progress=False)


def test_an_equalised_run_is_served_with_the_same_equalisation(tiny_manifest, tiny_run, shared_root, tmp_path):
    """--intensity equalise: the sidecar records it, and the engine equalises before the graph,
    matching torch on equalised images (and not on the raw ones)."""
    from cxrtriage.contract import ModelSpec
    from cxrtriage.data import apply_intensity

    _, cache = tiny_run
    out = train(_cfg(tmp_path / "eq", tiny_manifest, cache, intensity="equalise", epochs=1), progress=False)
    assert ModelSpec.load(out / "model.json").input.intensity == "equalise"
    files = sorted((shared_root / "train" / "NORMAL").glob("*.jpeg"))[:4]
    files += sorted((shared_root / "train" / "PNEUMONIA").glob("*.jpeg"))[:4]
    got, model, meta, raw = _served_and_raw(out, files)
    assert np.abs(got - _torch_probs(model, meta, apply_intensity(raw, "equalise"))).max() < 1e-4
    assert np.abs(got - _torch_probs(model, meta, raw)).max() > 1e-3


def test_an_ensemble_refuses_members_with_different_intensity_normalisations(tiny_manifest, tiny_run, tmp_path):
    from cxrtriage.train.ensemble import build_ensemble

    plain, cache = tiny_run
    eq = train(_cfg(tmp_path / "eq", tiny_manifest, cache, intensity="equalise", epochs=1), progress=False)
    with pytest.raises(ValueError, match="intensity"):
        build_ensemble([plain, eq], tmp_path / "ens", cache_dir=str(cache))


def test_a_run_trained_with_border_trim_is_served_with_it(tiny_manifest, tiny_run, samples_dir, tmp_path):
    """--border trim: the sidecar records it (and its version says so), the engine trims a framed
    film before the graph, matching torch on the trimmed image (and not on the framed one); an
    ensemble refuses members trained with different border steps."""
    from cxrtriage.contract import ModelSpec
    from cxrtriage.contract.preprocess import trim_border
    from cxrtriage.train.ensemble import build_ensemble

    plain, cache = tiny_run
    out = train(_cfg(tmp_path / "trim", tiny_manifest, cache, border="trim", epochs=1), progress=False)
    spec = ModelSpec.load(out / "model.json")
    assert spec.input.border == "trim" and spec.version.endswith("-trim")
    files = [_framed(f, tmp_path / f"{f.stem}.png", pad=30, grey=30) for f in sorted(samples_dir.glob("*.jpeg"))[:4]]
    got, model, meta, raw = _served_and_raw(out, files)
    assert np.abs(got - _torch_probs(model, meta, np.stack([trim_border(a) for a in raw]))).max() < 1e-4
    assert np.abs(got - _torch_probs(model, meta, raw)).max() > 1e-3
    with pytest.raises(ValueError, match="border"):
        build_ensemble([plain, out], tmp_path / "ens", cache_dir=str(cache))


def test_a_student_distilled_from_the_bundled_model_trains_and_exports(tiny_manifest, tiny_run, tmp_path):
    """--teacher: the teacher's probabilities are computed once on the training images (at its own
    size) and the run records the teacher; distilling with weight 1 fits the teacher, not the labels."""
    from cxrtriage.contract import ModelSpec

    _, cache = tiny_run
    out = train(_cfg(tmp_path / "student", tiny_manifest, cache, teacher="cxr-pneumonia", distill_weight=1.0,
                     epochs=1, population="pediatric"), progress=False)
    assert json.loads((out / "config.json").read_text())["teacher"] == "cxr-pneumonia"
    spec = ModelSpec.load(out / "model.json")
    assert spec.classes == ("normal", "pneumonia") and spec.population == "pediatric"
    with pytest.raises(ValueError, match="mixup"):
        train(_cfg(tmp_path / "bad", tiny_manifest, cache, teacher="cxr-pneumonia", mixup=0.2), progress=False)


def test_grad_cam_in_cxr_explain_sees_the_film_as_the_graph_does(tiny_manifest, tiny_run, samples_dir, tmp_path):
    """A network without an in-graph map (ref_cnn150) trained with --intensity clahe --border trim:
    the engine serves it with both steps, and `cxr explain`'s Grad-CAM runs on the trimmed,
    CLAHE'd film and puts the map back where the film lay (the frame stays cold)."""
    from typer.testing import CliRunner

    from cxrtriage.cli.main import app
    from cxrtriage.data import apply_intensity
    from cxrtriage.contract.preprocess import border_box, trim_border, uncrop_maps
    from cxrtriage.explain.gradcam import gradcam

    _, cache = tiny_run
    out = train(_cfg(tmp_path / "ref", tiny_manifest, cache, arch="ref_cnn150", image_size=96, intensity="clahe",
                     border="trim", epochs=1), progress=False)
    path = _framed(sorted(samples_dir.glob("*bacteria*.jpeg"))[0], tmp_path / "framed.png", pad=100, grey=20)
    (got,), model, meta, (raw,) = _served_and_raw(out, [path])
    seen = apply_intensity(trim_border(raw), "clahe")
    assert np.abs(got - _torch_probs(model, meta, seen[None])[0]).max() < 1e-4

    res = CliRunner().invoke(app, ["explain", str(path), "--model", str(out), "--out", str(tmp_path / "x"), "--npy"])
    assert res.exit_code == 0, res.output
    heat = np.load(tmp_path / "x" / "framed.heatmap.npy")
    target = 1 + int(np.argmax(got[1:]))

    def cam_of(x: np.ndarray) -> np.ndarray:
        t = torch.tensor(x, dtype=torch.float32)[None, None] / 255.0
        return gradcam(model, (t - meta["mean"]) / meta["std"], target)

    want = uncrop_maps(cam_of(seen), border_box(raw), 96)[0]
    assert heat.shape == want.shape and np.abs(heat - want).max() < 1e-4
    assert np.abs(heat - cam_of(raw)[0]).max() > 0.05  # not the map of the untrimmed, unprocessed film
