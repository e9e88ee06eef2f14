"""Starting weights: a backbone release's ImageNet state dict (offline package, torch's download
cache or a local file) or a ``cxr train`` checkpoint of the same network (a warm start)."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn
from torch.torch_version import TorchVersion

from cxrtriage.models.backbones import BACKBONES, LITE_ARCHS, lite_package, lite_weights_file

_RUN_KEYS = {"arch", "classes", "model"}
_DENSE_OLD = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\."
    r"((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$")
_HEAD_PREFIXES = ("fc.", "classifier.", "_fc.", "AuxLogits.", "head.", "last_linear.")


def read_weights_file(path: str | Path) -> object:
    """What a ``.pth``/``.pt`` file holds, read without running pickled code."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no weights file at {path}")
    with torch.serialization.safe_globals([TorchVersion]):  # recorded in `cxr train` checkpoints
        return torch.load(path, map_location="cpu", weights_only=True)


def state_dict_in(obj: object, path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict in a loaded weights file (plain, or under 'state_dict' / 'model')."""
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path}: not a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a ``.pth``/``.pt`` file (plain, or under 'state_dict' / 'model')."""
    return state_dict_in(read_weights_file(path), path)


def fetch_pretrained(arch: str) -> dict[str, torch.Tensor]:
    """The ImageNet state dict of ``arch``: offline for EfficientNet-Lite, else torch.hub's download cache."""
    b = BACKBONES.get(arch)
    if b is None:
        raise ValueError(f"--pretrained: {arch!r} has no ImageNet weights (backbones: {', '.join(BACKBONES)})")
    if b.weights_of:
        return fetch_pretrained(b.weights_of)
    if arch in LITE_ARCHS:
        return read_state_dict(lite_weights_file(LITE_ARCHS[arch]))
    try:
        sd = torch.hub.load_state_dict_from_url(b.url, map_location="cpu", progress=False, check_hash=True)
    except Exception as exc:  # noqa: BLE001 - offline, proxy, HTTP or hash error: re-raised with the offline hint
        cache = Path(torch.hub.get_dir()) / "checkpoints" / b.url.rsplit("/", 1)[-1]
        raise RuntimeError(
            f"could not fetch ImageNet weights for {arch} from {b.url} ({type(exc).__name__}: {exc}). "
            f"Offline, download that file elsewhere and pass it with --weights FILE, or place it at {cache}"
        ) from None
    return {k.removeprefix("module."): v for k, v in sd.items()}


def load_backbone_weights(model: nn.Module, state: dict[str, torch.Tensor], arch: str = "") -> dict:
    """Load a backbone's state dict (its release's key names) into a CamNet-wrapped backbone.

    The classifier head is skipped; an RGB first convolution is averaged over its three input
    channels (times 3); every other trunk tensor must be present with the right shape (a
    truncated trunk skips the layers it does not have). Returns a summary (tensors loaded,
    head tensors skipped).
    """
    target = model.state_dict()
    scale = BACKBONES[arch].input_scale if arch in BACKBONES else 1.0
    truncated = arch in BACKBONES and BACKBONES[arch].weights_of is not None
    first = next(n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)) + ".weight"
    new: dict[str, torch.Tensor] = {}
    skipped = []
    for key, value in state.items():
        m = _DENSE_OLD.match(key)
        if m:
            key = m.group(1) + m.group(2)
        if key.startswith(_HEAD_PREFIXES):
            skipped.append(key)
            continue
        name = key if key in target else f"features.{key}"
        if name not in target and truncated:
            skipped.append(key)
            continue
        if name not in target:
            raise ValueError(f"weights do not fit {arch or 'this network'}: unexpected tensor {key!r}")
        if name == first:
            if value.shape[1] == 3 and target[name].shape[1] == 1:
                value = value.sum(dim=1, keepdim=True)  # = mean over R, G, B times 3
            value = value * scale
        if value.shape != target[name].shape:
            raise ValueError(f"weights do not fit {arch or 'this network'}: {key!r} has shape "
                             f"{tuple(value.shape)}, expected {tuple(target[name].shape)}")
        new[name] = value
    missing = [k for k in target if k.startswith("features.") and k not in new]
    if missing:
        raise ValueError(f"weights do not fit {arch or 'this network'}: {len(missing)} trunk tensor(s) "
                         f"missing, e.g. {missing[:3]}")
    model.load_state_dict(new, strict=False)
    return {"loaded": len(new), "skipped_head": len(skipped)}


def init_weights(model: nn.Module, arch: str, pretrained: bool = False, weights: str | None = None) -> dict | None:
    """Initialise ``model`` from ``weights`` (a local file: a backbone release's state dict, or
    a ``cxr train`` checkpoint of the same architecture) or, with ``pretrained``, ImageNet."""
    if not (pretrained or weights):
        return None
    saved = read_weights_file(weights) if weights else None
    if is_run_checkpoint(saved):
        return warm_start(model, saved, arch, str(weights))
    if arch not in BACKBONES:
        raise ValueError(f"--pretrained/--weights apply to the transfer backbones ({', '.join(BACKBONES)}), "
                         f"not {arch!r} (--weights also takes a `cxr train` checkpoint of the same network)")
    state = state_dict_in(saved, weights) if weights else fetch_pretrained(arch)
    info = load_backbone_weights(model, state, arch)
    source_arch = BACKBONES[arch].weights_of or arch
    info["source"] = str(weights) if weights else (lite_package(LITE_ARCHS[source_arch])
                                                   if source_arch in LITE_ARCHS else BACKBONES[arch].url)
    return info


def is_run_checkpoint(obj: object) -> bool:
    """Whether ``obj`` is a checkpoint written by ``cxr train`` (``best.pt``/``last.pt``)."""
    return isinstance(obj, dict) and _RUN_KEYS <= obj.keys() and isinstance(obj["model"], dict)


def warm_start(model: torch.nn.Module, ck: dict, arch: str, source: str) -> dict:
    """Start ``model`` from a ``cxr train`` checkpoint of the same architecture, at any input size.

    Every tensor is taken over; the output layer too when the class count matches, else it
    keeps its fresh initialisation. Returns a summary (tensors loaded, head tensors skipped).
    """
    if ck["arch"] != arch:
        raise ValueError(f"--weights {source}: a {ck['arch']} checkpoint cannot start a {arch} run")
    target = model.state_dict()
    new, skipped = {}, []
    for key, value in ck["model"].items():
        if key in target and target[key].shape == value.shape:
            new[key] = value
        elif key.startswith("head."):
            skipped.append(key)
        elif key not in target:
            raise ValueError(f"--weights {source}: unexpected tensor {key!r} for {arch}")
        else:
            raise ValueError(f"--weights {source}: {key!r} has shape {tuple(value.shape)}, this {arch} expects "
                             f"{tuple(target[key].shape)} (networks with a flattening classifier fit one input "
                             "size only)")
    missing = [k for k in target if k not in new and not k.startswith("head.")]
    if missing:
        raise ValueError(f"--weights {source}: {len(missing)} tensor(s) missing, e.g. {missing[:3]}")
    model.load_state_dict(new, strict=False)
    return {"loaded": len(new), "skipped_head": len(skipped), "source": str(source)}
