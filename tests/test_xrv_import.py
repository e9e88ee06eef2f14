"""``cxr import torchxrayvision``: a TorchXRayVision DenseNet served by our engine as torch runs it.

The conversion runs in ``.venv-xrv`` (torchxrayvision needs torchvision, built here for another torch
than the project's; ``scripts/bootstrap_xrv.sh`` makes it, ``scripts/test.sh`` calls that); the
served folder is checked here, in the main venv, with :class:`cxrtriage.infer.Engine`. Without
``.venv-xrv`` those tests skip and say why; the contract's crop and resize steps are tested anyway.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxrtriage.contract import InputSpec, ModelSpec, SpecError
from cxrtriage.contract.preprocess import center_box, center_square
from cxrtriage.data.tasks import NIH14_FINDINGS
from cxrtriage.infer import Engine, bundled_models
from cxrtriage.io import read_radiograph
from cxrtriage.models.xrv_import import select_findings

ROOT = Path(__file__).resolve().parents[1]
XRV_PY = ROOT / ".venv-xrv" / "bin" / "python"
SAMPLES = ROOT / "cxrtriage" / "assets" / "samples"
SHARED = ROOT.parent / "shared" / "data"

# Random DenseNet weights made usable: batch-norm statistics from the films and the classifier scaled
# so the probabilities spread over (0, 1) (at random-init scale every sigmoid sits at 0 or 1, where
# any graph agrees with torch). Writes a state dict, xrv's own format (a pickled module) and the
# labels and operating points of the xrv weights named.
MAKE_WEIGHTS = r"""
import json, sys
import numpy as np, torch, torchxrayvision as xrv
from cxrtriage.models.xrv_import import film_paths, read_films
from cxrtriage.contract import InputSpec
films, out = sys.argv[1], sys.argv[2]
torch.manual_seed(0)
m = xrv.models.DenseNet(weights=None)
rgs, _ = read_films(film_paths(films))
imgs = InputSpec(size=224, mean=0.5, std=1 / 2048, crop="center", resample="skimage").prepare(rgs).images
x = torch.from_numpy(xrv.datasets.normalize(imgs.astype(np.float32), 255)[:, None])
for mod in m.modules():
    if isinstance(mod, torch.nn.BatchNorm2d):
        mod.reset_running_stats(); mod.momentum = None
m.train()
with torch.no_grad():
    m.features(x)
m.eval()
with torch.no_grad():
    lg = m.classifier(m.features2(x))
    mu, sd = lg.mean(0), lg.std(0).clamp_min(1e-6)
    m.classifier.weight.mul_((1.5 / sd)[:, None])
    m.classifier.bias.copy_((m.classifier.bias - mu) * 1.5 / sd)
torch.save(m.state_dict(), out + "/random_state.pt")
torch.save(m, out + "/random_module.pt")
urls = xrv.models.model_urls
json.dump({k: {"labels": urls[k]["labels"], "op_threshs": [None if np.isnan(v) else v for v in urls[k]["op_threshs"]]}
           for k in ("densenet121-res224-all", "densenet121-res224-nih")}, open(out + "/xrv_labels.json", "w"))
"""


def _xrv_ready() -> str | None:
    """None when .venv-xrv runs torchxrayvision and cxr-triage; else why not."""
    if not XRV_PY.exists():
        return "no .venv-xrv (scripts/bootstrap_xrv.sh makes it; scripts/test.sh runs that)"
    r = subprocess.run([str(XRV_PY), "-c", "import torchxrayvision, cxrtriage.models.export"],
                       capture_output=True, text=True, timeout=300)
    return None if r.returncode == 0 else f".venv-xrv cannot import torchxrayvision: {r.stderr[-300:]}"


def _films(folder: Path) -> Path:
    """Real radiographs: the bundled samples, two of them made non-square (a crop of rows, a wider
    re-sampling), and, when ../shared is here, non-square films of two COVID-19 collections."""
    folder.mkdir()
    for p in sorted(SAMPLES.glob("*")):
        if p.suffix in (".jpeg", ".dcm"):
            shutil.copy(p, folder / p.name)
    a = np.asarray(Image.open(SAMPLES / "person1_bacteria_1.jpeg").convert("L"))
    Image.fromarray(a[20:180]).save(folder / "rows_cropped.png")
    b = Image.open(SAMPLES / "IM-0119-0001.jpeg").convert("L")
    b.resize((300, 224), Image.Resampling.BICUBIC).save(folder / "wider.png")
    for sub in ("covid-hannover", "covid-multisource"):
        for p in sorted((SHARED / sub / "images").glob("*.jpg"))[:3]:
            shutil.copy(p, folder / f"{sub}_{p.name}")
    return folder


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """Random xrv weights, imported twice: the state dict by ``cxr import torchxrayvision`` from the
    main venv (re-run in .venv-xrv), as xrv's "all" weights with every finding and a gate; xrv's own
    file format by the module, as its NIH weights (four unnamed outputs)."""
    why = _xrv_ready()
    if why:
        pytest.skip(why)
    tmp = tmp_path_factory.mktemp("xrv")
    films = _films(tmp / "films")
    r = subprocess.run([str(XRV_PY), "-c", MAKE_WEIGHTS, str(films), str(tmp)], capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    cxr = [sys.executable, "-m", "cxrtriage"]
    env = {**os.environ, "CXR_XRV_PYTHON": str(XRV_PY)}
    r = subprocess.run([*cxr, "import", "torchxrayvision", str(tmp / "random_state.pt"), "--out", str(tmp / "all"),
                        "--labels-of", "densenet121-res224-all", "--findings", "all", "--check", str(films),
                        "--reference", str(films)], capture_output=True, text=True, timeout=900, env=env)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    r = subprocess.run([str(XRV_PY), "-m", "cxrtriage.models.xrv_import", str(tmp / "random_module.pt"),
                        "--out", str(tmp / "nih"), "--labels-of", "densenet121-res224-nih", "--check", str(films)],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    return {"tmp": tmp, "films": films, "xrv": json.loads((tmp / "xrv_labels.json").read_text())}


@pytest.mark.parametrize("folder", ["all", "nih"])
def test_engine_serves_the_imported_model_as_torch_runs_it(imported, folder):
    out = imported["tmp"] / folder
    check = np.load(out / "torch_check.npz")
    sources = [str(s) for s in check["sources"]]
    assert len(sources) >= 12 and any(read_radiograph(s).shape[0] != read_radiograph(s).shape[1] for s in sources)
    engine = Engine(out, gate=False)
    rgs = [read_radiograph(s) for s in sources]
    assert np.array_equal(engine.prepare(rgs).images, check["images"])  # one contract in both venvs
    preds = engine.predict_radiographs(rgs)
    probs = np.array([[p.probabilities[c] for c in engine.spec.classes] for p in preds])
    torch_p = check["torch_probs"]
    assert torch_p.std() > 0.1  # spread over (0, 1): the comparison means something
    assert np.abs(probs - torch_p).max() <= 1e-4
    assert ModelSpec.load(out / "model.onnx").provenance["check"]["max_abs_diff_probs_onnx_vs_torch"] <= 1e-4
    assert all(p.heatmap is not None and p.heatmap.shape == (7, 7) for p in preds)  # the CAM, DenseNet's grid


def test_imported_sidecar_says_what_xrv_does(imported):
    xrv = imported["xrv"]
    spec = ModelSpec.load(imported["tmp"] / "all" / "model.onnx")
    labels, ops = xrv["densenet121-res224-all"]["labels"], xrv["densenet121-res224-all"]["op_threshs"]
    assert spec.kind.value == "multilabel" and spec.outputs == ("probs", "cam", "embedding")
    assert spec.classes[:14] == NIH14_FINDINGS
    assert set(spec.classes[14:]) == {"Lung Lesion", "Fracture", "Lung Opacity", "Enlarged Cardiomediastinum"}
    assert spec.task == "torchxrayvision"
    assert spec.decision.label_thresholds == {lab: pytest.approx(t) for lab, t in zip(labels, ops)}
    i = spec.input
    assert (i.size, i.mean, i.std, i.crop, i.resample) == (224, 0.5, 1 / 2048, "center", "skimage")
    src = spec.provenance["imported"]
    assert src["library"] == "torchxrayvision" and src["labels_of"] == "densenet121-res224-all"
    assert src["weights_file_sha256"] == _sha256(imported["tmp"] / "random_state.pt")
    assert "github.com/mlmed/torchxrayvision" in spec.provenance["licence"] and "terms" in spec.provenance["licence"]
    assert spec.population == "adult"
    gate = spec.provenance["gate"]
    assert (imported["tmp"] / "all" / gate["file"]).exists() and gate["n_fit"] >= 2
    pixels = spec.provenance["check"]["xrv_preprocessing"]
    assert pixels["mean_abs_diff_pixels_xrv_units"] < 4.02  # at most half a grey level (8-bit rounding)


def test_nih_weights_skip_unnamed_outputs_and_take_nih_names(imported):
    xrv = imported["xrv"]["densenet121-res224-nih"]
    spec = ModelSpec.load(imported["tmp"] / "nih" / "model.onnx")
    assert spec.task == "nih14" and spec.classes == NIH14_FINDINGS  # what cxr evaluate and calibrate take
    assert "" not in spec.provenance["label_map"]
    want = {lab: t for lab, t in zip(xrv["labels"], xrv["op_threshs"]) if lab}
    assert spec.decision.label_thresholds == {k: pytest.approx(v) for k, v in want.items()}
    assert "model.gate.npz" not in os.listdir(imported["tmp"] / "nih")  # no --reference, no gate


def test_cli_verbs_take_the_imported_folder(imported, tmp_path):
    out, films = imported["tmp"] / "all", imported["films"]
    r = subprocess.run([sys.executable, "-m", "cxrtriage", "predict", str(films / "rows_cropped.png"), "--model",
                        str(out), "--json"], capture_output=True, text=True, timeout=300)
    assert r.returncode in (0, 4), r.stderr[-1000:]  # 4: its gate refused the film, said so
    row = json.loads(r.stdout)
    row = row[0] if isinstance(row, list) else row
    assert "xrv-random_state" in json.dumps(row)
    r = subprocess.run([sys.executable, "-m", "cxrtriage", "explain", str(films / "wider.png"), "--model", str(out),
                        "--out", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert r.returncode in (0, 4), r.stderr[-1000:]


# -- the contract's crop and resize steps (no torchxrayvision needed) ---------------------------------
def test_center_square_is_xrv_crop_center():
    img = np.arange(300 * 201, dtype=np.float32).reshape(300, 201)
    side, top, left = 201, 300 // 2 - 201 // 2, 0
    assert np.array_equal(center_square(img), img[top:top + side, left:left + side])
    assert center_square(img.T).shape == (201, 201)
    assert center_box((300, 201), 224) == (round(50 * 224 / 300), round(251 * 224 / 300), 0, 224)
    assert center_box((224, 224), 224) is None


def test_center_crop_prepares_the_central_square_and_restores_maps_onto_the_film():
    film = np.zeros((200, 400), np.uint8)
    film[:, 100:300] = 200  # the central square is all bright; the sides dark
    spec = InputSpec(size=64, crop="center")
    prep = spec.prepare([film])
    assert prep.images.shape == (1, 64, 64) and prep.images.min() == 200
    maps = np.ones((1, 1, 8, 8), np.float32)
    back = prep.restore(maps)[0, 0]
    assert back.shape == (8, 8)
    assert back[:, 3:5].min() == pytest.approx(1.0) and back[:, 0].max() == pytest.approx(1.0)  # frame = the minimum
    assert prep.boxes[0] == (0, 64, 16, 48)


def test_skimage_resize_is_xrv_resizer_rounded():
    from skimage.transform import resize

    film = np.asarray(Image.open(SAMPLES / "person1_bacteria_1.jpeg").convert("L").resize((333, 280)))
    got = InputSpec(size=224, crop="center", resample="skimage").prepare([film]).images[0]
    want = resize(center_square(film).astype(np.float32)[None], (1, 224, 224), mode="constant",
                  preserve_range=True)[0]
    assert np.abs(got.astype(np.float32) - want).max() <= 0.5 + 1e-3


def test_crop_and_resize_round_trip_and_old_sidecars_are_unchanged(tmp_path):
    spec = InputSpec(size=224, mean=0.5, std=1 / 2048, crop="center", resample="skimage")
    assert InputSpec.from_dict(spec.to_dict()) == spec
    for onnx in bundled_models().values():
        raw = json.loads(onnx.with_suffix(".json").read_text())
        assert "crop" not in raw["input"] and ModelSpec.load(onnx).to_dict() == raw
        assert ModelSpec.load(onnx).input.crop == "none"
    with pytest.raises(SpecError, match="crop"):
        InputSpec(size=224, crop="left")
    with pytest.raises(SpecError, match="resize"):
        InputSpec(size=224, resample="lanczos")
    with pytest.raises(SpecError, match="do not combine"):
        InputSpec(size=224, crop="center", border="trim")
    with pytest.raises(SpecError, match="prepare the films"):
        spec.prepare_resized(np.zeros((1, 224, 224), np.uint8))


def test_findings_map_to_nih_names_skip_unnamed_and_keep_the_rest():
    others = [n for n in NIH14_FINDINGS if n not in ("Atelectasis", "Pleural_Thickening")]
    labels = ["Atelectasis", "", "Pleural Thickening", "Lung Opacity", *others]
    ops = [0.1, float("nan"), 0.2, 0.3, *[float("nan")] * 12]
    sel = select_findings(labels, ops, "all")
    assert sel.classes[:14] == NIH14_FINDINGS and sel.classes[14:] == ("Lung Opacity",)
    assert sel.thresholds["Pleural_Thickening"] == 0.2 and sel.thresholds["Hernia"] is None
    assert sel.label_map["Pleural Thickening"] == "Pleural_Thickening" and sel.task == "torchxrayvision"
    auto = select_findings(labels, ops)
    assert auto.classes == NIH14_FINDINGS and auto.task == "nih14" and auto.dropped == ("Lung Opacity",)
    assert labels[auto.index[auto.classes.index("Pleural_Thickening")]] == "Pleural Thickening"
    with pytest.raises(ValueError, match="lack NIH findings"):
        select_findings(["Lung Opacity", "Pneumonia"], None, "nih14")
    assert select_findings(["Lung Opacity", "Pneumonia"], None).classes == ("Pneumonia", "Lung Opacity")


def test_cli_without_torchxrayvision_says_how_to_install(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from cxrtriage.cli import import_commands
    from cxrtriage.cli.main import app

    monkeypatch.setenv("CXR_XRV_PYTHON", str(tmp_path / "no-such-python"))
    monkeypatch.setattr(import_commands, "_here", lambda: False)
    r = CliRunner().invoke(app, ["import", "torchxrayvision", "densenet121-res224-all", "--out", str(tmp_path / "m")])
    assert r.exit_code == 2
    assert "bootstrap_xrv.sh" in r.output and "cxr-triage[xrv]" in r.output
