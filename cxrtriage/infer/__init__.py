"""Torch-free inference: the bundled models, the ONNX Runtime engine (one pipeline), the quality gate."""

from cxrtriage.contract import PRIORITY_ORDER, Prediction, Priority
from cxrtriage.infer.bundle import (
    DEFAULT_MODEL,
    ModelNotFoundError,
    bundled_models,
    load_spec,
    resolve_model,
)
from cxrtriage.infer.engine import Engine, Input, decode

__all__ = ["DEFAULT_MODEL", "Engine", "Input", "ModelNotFoundError", "PRIORITY_ORDER", "Prediction", "Priority",
           "bundled_models", "decode", "load_spec", "resolve_model"]
