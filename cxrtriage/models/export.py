"""Export a trained network to ONNX (the serving format, torch-free to load); the facts of the
written graph come back as an :class:`ExportedGraph`, from which the caller composes the sidecar.

Graph input ``image``: (N, 1, S, S) float32 pixel values in 0..255. Outputs: ``probs``
(N, C) softmax (sigmoid per finding when the sidecar's kind is "multilabel"); for CAM-ready
networks also ``cam`` (N, C, h, w), the class activation maps in logit units, and ``embedding``
(N, 4F), the features pooled on a 2x2 grid, used by the quality gate.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from cxrtriage.contract import Decision, InputSpec, Kind, ModelSpec, normalise
from cxrtriage.models.base import CamNet


class ServingGraph(nn.Module):
    """Normalisation + network + softmax (+ CAM and embedding when the network allows)."""

    def __init__(self, model: nn.Module, mean: float, std: float, multilabel: bool = False):
        super().__init__()
        self.model = model
        self.mean, self.std = float(mean), float(std)
        self.has_cam = isinstance(model, CamNet)
        self.multilabel = multilabel  # sigmoid per finding instead of softmax over classes

    def forward(self, image: torch.Tensor):
        x = normalise(image, self.mean, self.std)
        if not self.has_cam:
            return output_probs(self.model(x), self.multilabel)
        logits, cam, emb = self.model.serving_outputs(x)
        return output_probs(logits, self.multilabel), cam, emb


def output_probs(logits: torch.Tensor, multilabel: bool = False) -> torch.Tensor:
    """Probabilities from logits: a sigmoid per finding (multi-label) or a softmax over classes."""
    return torch.sigmoid(logits) if multilabel else torch.softmax(logits, dim=1)


@dataclass(frozen=True)
class ExportedGraph:
    """What an exported ONNX file is, as the sidecar records it: its place, digest, outputs and input."""

    path: Path
    sha256: str
    outputs: tuple[str, ...]
    input: InputSpec
    weights_storage: str = "float32"

    def model_spec(self, *, name: str, task: str, classes: Sequence[str], kind: Kind | str, arch: str,
                   decision: Decision, score: str, provenance: Mapping[str, Any]) -> ModelSpec:
        """The model's sidecar: these graph facts with the model's identity, decision and provenance.
        The version is the graph's hash, plus the steps applied before the graph when there are any."""
        return ModelSpec(
            name=name, task=task, classes=tuple(classes), input=self.input, decision=decision, kind=kind,
            outputs=self.outputs, version="-".join([self.sha256[:12], *self.input.steps]), arch=arch,
            sha256=self.sha256,
            onnx_file=self.path.name, weights_storage=self.weights_storage,
            heatmap="cam" if "cam" in self.outputs else "gradcam", score=score, provenance=dict(provenance),
        )


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def export_onnx(model: nn.Module, out_path: str | Path, image_size: int, mean: float, std: float,
                multilabel: bool = False, intensity: str = "none", border: str = "keep") -> ExportedGraph:
    """Write one trained network (its normalisation inside) to ``out_path`` (.onnx); ``intensity``
    is the normalisation the pipeline applies before the graph (recorded in the sidecar)."""
    graph = ServingGraph(model, mean, std, multilabel=multilabel).eval()
    names = ["probs", "cam", "embedding"] if graph.has_cam else ["probs"]
    return export_graph(graph, out_path, InputSpec(size=image_size, mean=float(mean), std=float(std),
                                                            intensity=intensity, border=border), names)


def export_graph(graph: nn.Module, out_path: str | Path, input_spec: InputSpec, names: list[str],
                 half_weights: bool = False) -> ExportedGraph:
    """Export a serving graph (input ``image`` in 0..255, outputs ``names``) to ONNX; the sidecar is
    the caller's, composed with :meth:`ExportedGraph.model_spec` and written by ``ModelSpec.save``.

    ``half_weights`` stores the weights as float16 (half the file; computation stays float32)."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    size = input_spec.size
    dummy = torch.full((2, 1, size, size), 128.0)
    axes = {"image": {0: "batch"}, **{n: {0: "batch"} for n in names}}
    with warnings.catch_warnings():  # the TorchScript exporter is deprecated but exact for these graphs
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            graph.eval(), (dummy,), str(out_path), input_names=["image"], output_names=names,
            dynamic_axes=axes, opset_version=17, dynamo=False,
        )
    if half_weights:
        store_weights_as_half(out_path)
    return ExportedGraph(path=out_path, sha256=file_sha256(out_path), outputs=tuple(names), input=input_spec,
                         weights_storage="float16" if half_weights else "float32")


def run_onnx(onnx_path: str | Path, images, outputs: list[str], batch: int = 128,
             threads: int | None = None) -> dict:
    """Named outputs of an exported graph for uint8 images (N, S, S), batched, with ONNX Runtime."""
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    parts: dict[str, list] = {n: [] for n in outputs}
    for s in range(0, len(images), batch):
        x = np.asarray(images[s:s + batch], dtype=np.float32)[:, None]
        for n, v in zip(outputs, sess.run(outputs, {"image": x})):
            parts[n].append(v)
    return {n: np.concatenate(v) for n, v in parts.items()}


def store_weights_as_half(onnx_path: str | Path, min_size: int = 256) -> None:
    """Rewrite float32 initializers (``min_size`` values or more) as float16 with a Cast back to
    float32 in front of their users: the file halves, ONNX Runtime folds the casts once at load,
    and every operation still computes in float32."""
    import onnx  # only for rewriting weights as float16
    from onnx import helper, numpy_helper

    model = onnx.load(str(onnx_path))
    g = model.graph
    casts = []
    for init in list(g.initializer):
        w = numpy_helper.to_array(init)
        if w.dtype != np.float32 or w.size < min_size:
            continue
        name = init.name
        half = numpy_helper.from_array(w.astype(np.float16), name + "__f16")
        g.initializer.remove(init)
        g.initializer.append(half)
        casts.append(helper.make_node("Cast", [half.name], [name], to=onnx.TensorProto.FLOAT,
                                      name=name + "__to_f32"))
    for node in reversed(casts):
        g.node.insert(0, node)
    onnx.checker.check_model(model)
    onnx.save(model, str(onnx_path))
