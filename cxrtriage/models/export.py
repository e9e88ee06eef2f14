"""Export a trained network to ONNX with a JSON sidecar (the serving format, torch-free to load).

Graph input ``image``: (N, 1, S, S) float32 pixel values in 0..255. Outputs: ``probs``
(N, C) softmax (sigmoid per finding when the sidecar's kind is "multilabel"); for CAM-ready networks also ``cam`` (N, C, h, w), the class activation
maps in logit units, and ``embedding`` (N, 4F), the features pooled on a 2x2 grid, used by the quality gate.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import torch
from torch import nn

from cxrtriage.models.archs import CamNet


class ServingGraph(nn.Module):
    """Normalisation + network + softmax (+ CAM and embedding when the network allows)."""

    def __init__(self, model: nn.Module, mean: float, std: float, multilabel: bool = False):
        super().__init__()
        self.model = model
        self.mean, self.std = float(mean), float(std)
        self.has_cam = isinstance(model, CamNet)
        self.multilabel = multilabel  # sigmoid per finding instead of softmax over classes

    def _probs(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logits) if self.multilabel else torch.softmax(logits, dim=1)

    def forward(self, image: torch.Tensor):
        x = (image / 255.0 - self.mean) / self.std
        if not self.has_cam:
            return self._probs(self.model(x))
        logits, cam, emb = self.model.serving_outputs(x)
        return self._probs(logits), cam, emb


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def export_onnx(model: nn.Module, out_path: str | Path, image_size: int, mean: float, std: float,
                sidecar: dict) -> tuple[Path, Path]:
    """Write ``out_path`` (.onnx) and its ``.json`` sidecar; returns both paths."""
    graph = ServingGraph(model, mean, std, multilabel=sidecar.get("kind") == "multilabel").eval()
    names = ["probs", "cam", "embedding"] if graph.has_cam else ["probs"]
    return export_graph(graph, out_path, image_size, names, sidecar,
                        {"mean": float(mean), "std": float(std)})


def export_graph(graph: nn.Module, out_path: str | Path, image_size: int, names: list[str], sidecar: dict,
                 normalisation: dict, half_weights: bool = False) -> tuple[Path, Path]:
    """Export a serving graph (input ``image`` in 0..255, outputs ``names``) with its sidecar.

    ``half_weights`` stores the weights as float16 (half the file; computation stays float32)."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    dummy = torch.full((2, 1, image_size, image_size), 128.0)
    axes = {"image": {0: "batch"}, **{n: {0: "batch"} for n in names}}
    with warnings.catch_warnings():  # the TorchScript exporter is deprecated but exact for these graphs
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            graph.eval(), (dummy,), str(out_path), input_names=["image"], output_names=names,
            dynamic_axes=axes, opset_version=17, dynamo=False,
        )
    if half_weights:
        store_weights_as_half(out_path)
    meta = dict(sidecar)
    meta.update(
        format="cxr-triage-onnx/1",
        weights_storage="float16" if half_weights else "float32",
        onnx_file=out_path.name,
        sha256=file_sha256(out_path),
        input={"name": "image", "size": image_size, "channels": 1, "range": [0, 255], **normalisation,
               "resize": "square, bilinear, aspect not kept"},
        outputs=names,
        heatmap="cam" if "cam" in names else "gradcam",
    )
    meta.setdefault("version", meta["sha256"][:12])
    json_path = out_path.with_suffix(".json")
    json_path.write_text(json.dumps(meta, indent=2))
    return out_path, json_path


def update_sidecar(onnx_path: str | Path, entries: dict) -> dict:
    """Merge ``entries`` into the JSON sidecar of ``onnx_path``; returns the new sidecar."""
    json_path = Path(onnx_path).with_suffix(".json")
    meta = json.loads(json_path.read_text())
    meta.update(entries)
    meta["version"] = entries.get("version", meta["sha256"][:12])
    json_path.write_text(json.dumps(meta, indent=2))
    return meta


def run_onnx(onnx_path: str | Path, images, outputs: list[str], batch: int = 128,
             threads: int | None = None) -> dict:
    """Named outputs of an exported graph for uint8 images (N, S, S), batched, with ONNX Runtime."""
    import numpy as np
    import onnxruntime as ort

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
    import numpy as np
    import onnx
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
