"""Locating and describing a model bundle: ``<name>.onnx`` beside its ``<name>.json`` sidecar."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

ASSETS = Path(__file__).resolve().parents[1] / "assets"
DEFAULT_MODEL = ASSETS / "model" / "cxr-pneumonia.onnx"


class ModelNotFoundError(FileNotFoundError):
    """The model path does not lead to an ONNX file with its JSON sidecar."""


@dataclass(frozen=True)
class ModelInfo:
    """What serving needs to know about a model, read from its sidecar."""

    onnx_path: Path
    name: str
    version: str
    task: str
    classes: tuple[str, ...]
    input_size: int
    threshold: float
    threshold_high: float
    outputs: tuple[str, ...]
    raw: dict = field(repr=False, default_factory=dict)

    @property
    def has_cam(self) -> bool:
        return "cam" in self.outputs


def resolve_model(model: str | Path | None) -> Path:
    """The .onnx file for ``model``: a .onnx or .json path, a run folder, or None for the bundled one."""
    if model is None:
        p = DEFAULT_MODEL
    else:
        p = Path(model)
        if p.is_dir():
            cands = [p / "model.onnx", *sorted(p.glob("*.onnx"))]
            p = next((c for c in cands if c.exists()), p / "model.onnx")
        elif p.suffix == ".json":
            p = p.with_suffix(".onnx")
    if not p.exists():
        raise ModelNotFoundError(f"no model at {p} (give an .onnx file, its .json sidecar or a training run folder)")
    if not p.with_suffix(".json").exists():
        raise ModelNotFoundError(f"{p}: the sidecar {p.with_suffix('.json').name} is missing")
    return p


def load_info(model: str | Path | None) -> ModelInfo:
    """Read the sidecar of ``model`` (see :func:`resolve_model`)."""
    p = resolve_model(model)
    meta = json.loads(p.with_suffix(".json").read_text())
    thr = float(meta.get("threshold", 0.5))
    return ModelInfo(
        onnx_path=p,
        name=str(meta.get("name", p.stem)),
        version=str(meta.get("version", "")),
        task=str(meta.get("task", "pneumonia")),
        classes=tuple(meta["classes"]),
        input_size=int(meta["input"]["size"]),
        threshold=thr,
        threshold_high=float(meta.get("threshold_high", max(thr, 0.9))),
        outputs=tuple(meta.get("outputs", ["probs"])),
        raw=meta,
    )
