"""Torch-free inference: the one factory (:func:`load_model`), the bundled models, the ONNX Runtime
engine, the router over the bundled models, the quality gate and the one batch-scoring step."""

from cxrtriage.contract import PRIORITY_ORDER, Prediction, Priority
from cxrtriage.infer.bundle import (
    DEFAULT_MODEL,
    ModelNotFoundError,
    bundled_models,
    load_spec,
    resolve_model,
)
from cxrtriage.infer.engine import Engine
from cxrtriage.infer.pipeline import Input, Predictor, Scored, decode, decode_each
from cxrtriage.infer.router import Router, load_engine, load_model, routable_models, routed_identities

__all__ = ["DEFAULT_MODEL", "Engine", "Input", "ModelNotFoundError", "PRIORITY_ORDER", "Prediction", "Predictor",
           "Priority", "Router", "Scored", "bundled_models", "decode", "decode_each", "load_engine", "load_model",
           "load_spec", "resolve_model", "routable_models", "routed_identities"]
