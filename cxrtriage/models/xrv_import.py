"""A TorchXRayVision DenseNet as a cxr-triage model folder (``cxr import torchxrayvision``).

TorchXRayVision (https://github.com/mlmed/torchxrayvision) publishes DenseNet-121 weights trained
on NIH ChestX-ray14, CheXpert, MIMIC-CXR, PadChest and others. This module turns one of them (an
xrv weights name, downloaded by TorchXRayVision itself, or a local weights file) into what every
verb serves: ``model.onnx`` (outputs ``probs``, ``cam``, ``embedding``), its sidecar written by
:meth:`~cxrtriage.contract.ModelSpec.save`, and, given reference films, a quality gate.

xrv's preprocessing in our contract: the film's central square (``XRayCenterCrop``), resized to
224 x 224 as ``XRayResizer`` does (scikit-image, then rounded to 8 bits), pixel values scaled to
[-1024, 1024] (``xrv.datasets.normalize``: ``(2 x / 255 - 1) * 1024`` = ``(x / 255 - 0.5) / (1 / 2048)``,
done inside the graph). The graph answers sigmoid probabilities; xrv's ``op_threshs`` (its
per-finding operating points) become the findings' own thresholds: the decision xrv's ``op_norm``
expresses by mapping each threshold to 0.5.

Every import checks the ONNX graph against torch (xrv's own forward) on real films and refuses to
write a model that differs by more than :data:`MAX_DIFF` on any probability. It needs torch and
torchxrayvision (the ``xrv`` extra, its own venv: ``scripts/bootstrap_xrv.sh``); serving the
folder needs neither.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

SIZE = 224
MEAN, STD = 0.5, 1.0 / 2048  # (x / 255 - MEAN) / STD = xrv.datasets.normalize(x, 255)
MAX_DIFF = 1e-4  # the largest |ONNX - torch| on a probability an import accepts
FINDINGS = ("auto", "nih14", "all")
SAMPLES = Path(__file__).resolve().parents[1] / "assets" / "samples"
LICENCE = (
    "TorchXRayVision's code and weights are its authors' (Apache-2.0 for the library: "
    "https://github.com/mlmed/torchxrayvision/blob/master/LICENSE; read it for the weights too). The "
    "weights were trained on public datasets, each under its own terms of use (NIH ChestX-ray14, "
    "CheXpert, MIMIC-CXR (PhysioNet credentialed licence), PadChest, RSNA Pneumonia, Google, OpenI, "
    "...; several for research only): read the terms of those its weights name before any use beyond "
    "research. Not validated for clinical use by cxr-triage."
)


def _nih14() -> tuple[str, ...]:
    from cxrtriage.data.tasks import NIH14_FINDINGS

    return NIH14_FINDINGS


def _key(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


def our_name(xrv_label: str) -> str:
    """Our spelling of an xrv pathology: the NIH finding it is (case, spaces and '_' aside), else its own."""
    return {_key(n): n for n in _nih14()}.get(_key(xrv_label), xrv_label)


@dataclass(frozen=True)
class Findings:
    """Which xrv outputs the model answers, under which names, with which thresholds."""

    index: tuple[int, ...]                    # xrv output per class
    classes: tuple[str, ...]                  # our names
    thresholds: dict[str, float | None]       # xrv's op_threshs (None where it has none)
    task: str
    label_map: dict[str, str] = field(default_factory=dict)  # xrv name -> ours
    dropped: tuple[str, ...] = ()             # named xrv outputs left out (--findings nih14)


def select_findings(labels: Sequence[str], op_threshs: Sequence[float] | None, findings: str = "auto") -> Findings:
    """The classes of the imported model: xrv's named outputs ("" outputs, untrained, are skipped),
    NIH findings first in NIH order under NIH's names, then the rest under their own names.

    ``findings``: "nih14" keeps the 14 NIH findings only (all must be there; task ``nih14``, which
    ``cxr evaluate`` and ``cxr calibrate`` score against NIH-style labels); "all" keeps every named
    output; "auto" is "nih14" when the weights have all 14, else "all"."""
    if findings not in FINDINGS:
        raise ValueError(f"unknown --findings {findings!r}; choose one of {', '.join(FINDINGS)}")
    nih = _nih14()
    named = [(i, our_name(lab)) for i, lab in enumerate(labels) if str(lab).strip()]
    names = [n for _, n in named]
    if len(set(names)) != len(names):
        raise ValueError(f"two xrv outputs map to one name: {names}")
    have_nih = [n for n in nih if n in names]
    if findings == "auto":
        findings = "nih14" if len(have_nih) == len(nih) else "all"
    if findings == "nih14" and len(have_nih) != len(nih):
        missing = [n for n in nih if n not in names]
        raise ValueError(f"these weights lack NIH findings {missing}; import them with --findings all")
    rest = [] if findings == "nih14" else [n for n in names if n not in nih]
    classes = tuple(have_nih + rest)
    where = {n: i for i, n in named}
    thr: dict[str, float | None] = {}
    for c in classes:
        t = None if op_threshs is None else float(op_threshs[where[c]])
        thr[c] = t if t is not None and math.isfinite(t) and 0.0 < t < 1.0 else None
    return Findings(index=tuple(where[c] for c in classes), classes=classes, thresholds=thr,
                    task="nih14" if classes == tuple(nih) else "torchxrayvision",
                    label_map={str(labels[where[c]]): c for c in classes},
                    dropped=tuple(str(labels[i]) for i, n in named if n not in classes))


# -- loading xrv weights (torch and torchxrayvision from here on) ---------------------------------
@dataclass
class Loaded:
    model: Any                 # xrv.models.DenseNet, eval mode, without op_threshs
    labels: list[str]
    op_threshs: list[float] | None
    source: dict[str, Any]     # provenance: weights name, file, sha256, url, ...


def _xrv():
    try:
        import torchxrayvision as xrv
    except ImportError as exc:
        raise SystemExit(f"torchxrayvision is not importable here ({exc}); run scripts/bootstrap_xrv.sh "
                         "and use .venv-xrv/bin/cxr, or pip install 'cxr-triage[xrv]'") from None
    return xrv


def load_xrv(weights: str, labels_of: str | None = None) -> Loaded:
    """An xrv DenseNet from a weights name (downloaded by TorchXRayVision into its cache) or a local
    file (xrv's own pickled model or a state dict). ``labels_of``: the xrv weights name whose labels
    and operating points a file holds (default: the name whose download has the file's name, else
    xrv's 18 default pathologies without operating points)."""
    import torch

    from cxrtriage.models.export import file_sha256

    xrv = _xrv()
    urls = xrv.models.model_urls
    path = Path(weights).expanduser()
    if not path.is_file():
        if weights not in urls:
            names = sorted(k for k in urls if k.startswith("densenet"))
            raise SystemExit(f"{weights}: neither a weights file nor a TorchXRayVision DenseNet name ({names})")
        if weights.startswith("resnet"):
            raise SystemExit(f"{weights}: only TorchXRayVision's DenseNet weights import (224 px)")
        path = Path(xrv.models.get_weights(weights))
        labels_of = labels_of or weights
    if labels_of is None:
        labels_of = next((k for k, v in urls.items() if k.startswith("densenet")
                          and Path(v["weights_url"]).name == path.name), None)
    if labels_of is not None and labels_of not in urls:
        raise SystemExit(f"--labels-of {labels_of}: not a TorchXRayVision weights name")
    state = _state_dict(torch.load(path, map_location="cpu", weights_only=False))
    n_out = int(state["classifier.weight"].shape[0])
    model = xrv.models.DenseNet(weights=None, num_classes=n_out)
    model.load_state_dict(state)
    model.op_threshs = None
    model.eval()
    info = urls.get(labels_of, {}) if labels_of else {}
    labels = list(info.get("labels") or xrv.datasets.default_pathologies)
    if len(labels) != n_out:
        raise SystemExit(f"{path.name}: {n_out} outputs, but {labels_of or 'the default pathologies'} "
                         f"name {len(labels)}; say which weights it holds with --labels-of")
    op = info.get("op_threshs")
    source = {"library": "torchxrayvision", "library_version": xrv.__version__,
              "weights": weights if not Path(weights).expanduser().is_file() else path.name,
              "weights_file_sha256": file_sha256(path), "labels_of": labels_of,
              "weights_url": info.get("weights_url"), "description": info.get("description")}
    return Loaded(model, labels, None if op is None else [float(v) for v in op], source)


def _state_dict(obj: Any) -> dict:
    """The state dict of what ``torch.load`` gave: xrv's pickled modules, or a (wrapped) state dict."""
    if hasattr(obj, "state_dict"):
        obj = obj.state_dict()
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or "classifier.weight" not in obj:
        raise SystemExit("not a TorchXRayVision DenseNet weights file (no classifier.weight)")
    return {k.removeprefix("module."): v for k, v in obj.items() if k != "op_threshs"}


def serving_net(model: Any, index: Sequence[int]):
    """The xrv DenseNet as a :class:`~cxrtriage.models.base.CamNet`: its features (+ ReLU, as xrv's
    ``features2``) and its classifier's rows ``index``, so the class activation maps and the gate's
    embedding come out as for our own networks."""
    import torch
    from torch import nn

    from cxrtriage.models.base import CamNet

    lin = model.classifier
    net = CamNet(nn.Sequential(model.features, nn.ReLU()), int(lin.in_features), len(index))
    with torch.no_grad():
        rows = torch.as_tensor(list(index), dtype=torch.long)
        net.head.weight.copy_(lin.weight[rows])
        net.head.bias.copy_(lin.bias[rows])
    return net.eval()


def torch_probs(model: Any, images: np.ndarray, index: Sequence[int], xrv_scaled: bool = False) -> np.ndarray:
    """xrv's own forward (``features2``, ``classifier``, sigmoid) on uint8 images (N, S, S), scaled by
    ``xrv.datasets.normalize``; ``xrv_scaled``: the images are already in xrv's range (float)."""
    import torch

    xrv = _xrv()
    out = []
    with torch.no_grad():
        for s in range(0, len(images), 8):
            chunk = np.asarray(images[s:s + 8], dtype=np.float32)
            x = chunk if xrv_scaled else xrv.datasets.normalize(chunk, 255)
            logits = model.classifier(model.features2(torch.from_numpy(np.ascontiguousarray(x[:, None]))))
            out.append(torch.sigmoid(logits)[:, list(index)].numpy())
    return np.concatenate(out) if out else np.zeros((0, len(index)), np.float32)


def xrv_pipeline(rg: Any) -> np.ndarray:
    """A film as TorchXRayVision's README prepares one: ``normalize(img, 255)`` of the 8-bit film,
    ``XRayCenterCrop``, ``XRayResizer(224)`` (scikit-image): (224, 224) float32 in [-1024, 1024]."""
    xrv = _xrv()
    img = xrv.datasets.normalize(rg.to_uint8(), 255)[None]
    return xrv.datasets.XRayResizer(SIZE)(xrv.datasets.XRayCenterCrop()(img))[0]


# -- the model folder -------------------------------------------------------------------------------
def read_films(paths: Sequence[Path]) -> tuple[list[Any], list[str]]:
    """The readable films of ``paths`` (radiographs) and the sources of those that could not be read."""
    from cxrtriage.io import ImageReadError, read_radiograph

    films, bad = [], []
    for p in paths:
        try:
            films.append(read_radiograph(p))
        except ImageReadError:
            bad.append(str(p))
    return films, bad


def film_paths(folder: str | Path) -> list[Path]:
    """The image files under ``folder`` (recursively), sorted."""
    from cxrtriage.data.generic import unlabelled_films

    return [Path(s.path) for s in unlabelled_films(folder)]


def check_graph(engine: Any, model: Any, index: Sequence[int], films: Sequence[Any], out: Path) -> dict[str, Any]:
    """ONNX Runtime (``engine``, the served graph) against torch (xrv's forward) on ``films``
    prepared by the contract, and xrv's own preparation beside ours; the arrays go to
    ``torch_check.npz``. Raises when the graph differs by more than :data:`MAX_DIFF`."""
    prepared = engine.prepare(list(films)).images
    onnx_p = engine.run_arrays(prepared)["probs"]
    torch_p = torch_probs(model, prepared, index)
    theirs = np.stack([xrv_pipeline(rg) for rg in films])
    torch_xrv = torch_probs(model, theirs, index, xrv_scaled=True)
    ours_scaled = (prepared.astype(np.float32) / 255.0 - MEAN) / STD
    np.savez_compressed(out / "torch_check.npz", sources=np.array([rg.source for rg in films]),
                        classes=np.array(engine.spec.classes), images=prepared, onnx_probs=onnx_p,
                        torch_probs=torch_p, torch_probs_xrv_preprocessing=torch_xrv)
    diff = float(np.abs(onnx_p - torch_p).max())
    facts = {"films": len(films), "max_abs_diff_probs_onnx_vs_torch": diff,
             "xrv_preprocessing": {
                 "mean_abs_diff_pixels_xrv_units": float(np.abs(ours_scaled - theirs).mean()),
                 "max_abs_diff_probs": float(np.abs(torch_xrv - torch_p).max()),
                 "note": "xrv's README preparation (scikit-image resize kept in float) against the "
                         "contract's (the same resize, rounded to 8 bits)"}}
    if not diff <= MAX_DIFF:
        raise SystemExit(f"the ONNX graph differs from torch by {diff:.2e} (> {MAX_DIFF}) on a probability; "
                         "nothing written")
    return facts


def fit_gate(engine: Any, onnx_path: Path, reference: Path) -> dict[str, Any]:
    """A quality gate on the reference films, split patient-wise (sub-folder, else file) in two halves:
    the first fits it, even rows of the second set its threshold, odd rows measure false refusals."""
    from cxrtriage.data.generic import unlabelled_films
    from cxrtriage.infer.gate import attach_gate, fit_feature_gate

    samples = unlabelled_films(reference)
    films, bad = read_films([Path(s.path) for s in samples])
    readable = {rg.source for rg in films}
    patient = {str(Path(s.path).resolve()): s.patient_id for s in samples}
    of = {rg.source: patient.get(str(Path(rg.source).resolve()), rg.source) for rg in films}
    patients = sorted({of[src] for src in readable})
    first = set(np.random.default_rng(0).permutation(patients)[: len(patients) // 2].tolist())
    emb = np.concatenate([engine.run_arrays(engine.prepare(films[s:s + 16]).images)["embedding"]
                          for s in range(0, len(films), 16)])
    in_first = np.array([of[rg.source] in first for rg in films])
    if in_first.sum() < 2 or (~in_first).sum() < 4:
        raise SystemExit(f"--reference {reference}: at least 8 readable films of several patients are needed "
                         f"for a gate ({len(films)} readable)")
    fit, other = emb[in_first], emb[~in_first]
    gate = fit_feature_gate(fit, other[0::2])
    held = other[1::2]
    stats = {"source": str(reference), "n_fit": int(len(fit)), "n_threshold": int(len(other[0::2])),
             "n_heldout": int(len(held)), "unreadable": len(bad),
             "heldout_false_refusal_rate": float((gate.distance(held) > gate.threshold).mean()),
             "fitted_on": "reference films only (xrv's training films are not at hand)"}
    return attach_gate(onnx_path, gate, stats)


def import_xrv(weights: str, out: str | Path, *, labels_of: str | None = None, findings: str = "auto",
               reference: str | Path | None = None, check: Sequence[str | Path] | None = None,
               name: str | None = None, urgent: float = 0.5) -> Path:
    """Write ``out/model.onnx`` with its sidecar (and gate, given ``reference``) from xrv ``weights``;
    returns the ONNX path. ``check``: films (files or folders) for the torch check (default: the
    bundled sample radiographs)."""
    import torch

    from cxrtriage.about import __version__
    from cxrtriage.contract import Decision, InputSpec
    from cxrtriage.infer import Engine
    from cxrtriage.models.export import ServingGraph, export_graph

    torch.set_num_threads(max(1, min(4, torch.get_num_threads())))
    loaded = load_xrv(weights, labels_of)
    sel = select_findings(loaded.labels, loaded.op_threshs, findings)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    spec_in = InputSpec(size=SIZE, mean=MEAN, std=STD, crop="center", resample="skimage",
                        resize="central square (aspect kept), scikit-image anti-aliased bilinear, 8 bits",
                        normalisation="TorchXRayVision: (2 x / 255 - 1) * 1024, in [-1024, 1024]")
    graph = export_graph(ServingGraph(serving_net(loaded.model, sel.index), MEAN, STD, multilabel=True),
                         out / "model.onnx", spec_in, ["probs", "cam", "embedding"])
    known = [t for t in sel.thresholds.values() if t is not None]
    decision = Decision(threshold=min(known) if known else 0.5, threshold_high=max(urgent, *known, 0.0),
                        method="TorchXRayVision's op_threshs per finding (0.5 where it has none); operating "
                               f"threshold the lowest of them; urgent at P >= {max(urgent, *known, 0.0):g}",
                        label_thresholds=sel.thresholds)
    provenance: dict[str, Any] = {
        "cxr_triage_version": __version__, "population": "adult", "imported": loaded.source,
        "label_map": sel.label_map, "dropped_findings": list(sel.dropped), "licence": LICENCE,
    }
    spec = graph.model_spec(name=name or f"xrv-{Path(loaded.source['weights']).stem}", task=sel.task,
                            classes=sel.classes, kind="multilabel", arch="torchxrayvision densenet121",
                            decision=decision, score="max over findings of P(finding)", provenance=provenance)
    spec.save(graph.path)
    engine = Engine(graph.path, gate=False)
    films, _ = read_films([p for c in (check or [SAMPLES]) for p in
                           (film_paths(c) if Path(c).is_dir() else [Path(c)])])
    if not films:
        raise SystemExit("no readable film to check the graph against torch")
    spec = spec.with_provenance(check=check_graph(engine, loaded.model, sel.index, films, out))
    if reference is not None:
        spec = spec.with_provenance(gate=fit_gate(engine, graph.path, Path(reference)))
    spec.save(graph.path)
    return graph.path


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m cxrtriage.models.xrv_import WEIGHTS --out DIR [...]`` (what ``cxr import
    torchxrayvision`` runs, in the venv that has torchxrayvision)."""
    ap = argparse.ArgumentParser(prog="cxr import torchxrayvision", description=__doc__.split("\n")[0])
    ap.add_argument("weights", help="a TorchXRayVision DenseNet weights name (e.g. densenet121-res224-all; "
                    "TorchXRayVision downloads it) or a local weights file")
    ap.add_argument("--out", required=True, help="the model folder to write")
    ap.add_argument("--labels-of", help="for a weights file: the xrv weights name whose labels it has")
    ap.add_argument("--findings", choices=FINDINGS, default="auto")
    ap.add_argument("--reference", help="films (folder or CSV) of the site to fit the quality gate on")
    ap.add_argument("--check", action="append", help="films (file or folder) to check the graph against "
                    "torch on (repeatable; default: the bundled sample radiographs)")
    ap.add_argument("--name", help="the model's name (default: xrv-<weights>)")
    ap.add_argument("--urgent", type=float, default=0.5, help="probability of the lead finding from which a "
                    "flagged film is urgent (at least its own threshold)")
    a = ap.parse_args(argv)
    path = import_xrv(a.weights, a.out, labels_of=a.labels_of, findings=a.findings, reference=a.reference,
                      check=a.check, name=a.name, urgent=a.urgent)
    spec = json.loads(path.with_suffix(".json").read_text())
    print(json.dumps({"model": str(path), "name": spec["name"], "task": spec["task"], "classes": spec["classes"],
                      "check": spec["check"], "gate": spec.get("gate")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
