"""Torch-free inference: ONNX Runtime engine, quality gate, results."""

from cxrtriage.infer.bundle import DEFAULT_MODEL, ModelInfo, ModelNotFoundError, load_info, resolve_model
from cxrtriage.infer.engine import Engine
from cxrtriage.infer.result import PRIORITY_ORDER, Prediction

__all__ = ["DEFAULT_MODEL", "Engine", "ModelInfo", "ModelNotFoundError", "PRIORITY_ORDER", "Prediction",
           "load_info", "resolve_model"]
