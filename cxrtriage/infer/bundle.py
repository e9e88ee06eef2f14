"""Locating a model: a bundled model by name, or an ``.onnx`` file beside its ``.json`` sidecar."""

from __future__ import annotations

from pathlib import Path

from cxrtriage.contract import ModelSpec

ASSETS = Path(__file__).resolve().parents[1] / "assets"
MODELS_DIR = ASSETS / "model"
DEFAULT_NAME = "cxr-pneumonia"
DEFAULT_MODEL = MODELS_DIR / f"{DEFAULT_NAME}.onnx"


class ModelNotFoundError(FileNotFoundError):
    """The model reference leads to no ONNX file with its JSON sidecar."""


def bundled_models() -> dict[str, Path]:
    """The models that ship inside the package, by name (the default first)."""
    found = {p.stem: p for p in sorted(MODELS_DIR.glob("*.onnx")) if p.with_suffix(".json").exists()}
    return dict(sorted(found.items(), key=lambda kv: kv[0] != DEFAULT_NAME))


def resolve_model(model: str | Path | None) -> Path:
    """The .onnx file for ``model``: a bundled model's name, a .onnx or .json path, a run folder,
    or None for the default model."""
    if model is None:
        p = DEFAULT_MODEL
    elif str(model) in bundled_models() and not Path(model).exists():  # a name (also as a CLI Path)
        p = bundled_models()[str(model)]
    else:
        p = Path(model)
        if p.is_dir():
            cands = [p / "model.onnx", *sorted(p.glob("*.onnx"))]
            p = next((c for c in cands if c.exists()), p / "model.onnx")
        elif p.suffix == ".json":
            p = p.with_suffix(".onnx")
    if not p.exists():
        names = ", ".join(bundled_models())
        raise ModelNotFoundError(f"no model at {p} (give a bundled model's name ({names}), an .onnx file, "
                                 "its .json sidecar or a training run folder)")
    if not p.with_suffix(".json").exists():
        raise ModelNotFoundError(f"{p}: the sidecar {p.with_suffix('.json').name} is missing")
    return p


def load_spec(model: str | Path | None) -> ModelSpec:
    """The contract of ``model`` (see :func:`resolve_model`)."""
    return ModelSpec.load(resolve_model(model))


def model_card(onnx_path: Path) -> Path | None:
    """The model card of a bundled model: ``<name>.md`` beside it (``MODEL_CARD.md`` for the default)."""
    for card in (onnx_path.with_suffix(".md"),
                 onnx_path.parent / "MODEL_CARD.md" if onnx_path.stem == DEFAULT_NAME else None):
        if card is not None and card.exists():
            return card
    return None
