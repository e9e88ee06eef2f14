"""Torch-free inference: the bundled models, the ONNX Runtime engine (one pipeline), the quality gate."""

from cxrtriage.contract import PRIORITY_ORDER, Prediction, Priority
from cxrtriage.infer.bundle import (
    DEFAULT_MODEL,
    ModelNotFoundError,
    bundled_models,
    load_spec,
    resolve_model,
)
from cxrtriage.infer.engine import Engine
from cxrtriage.infer.pipeline import Input, Triager, decode
from cxrtriage.infer.router import Router, load_triager, routable_models, routed_identities

__all__ = ["DEFAULT_MODEL", "Engine", "Input", "ModelNotFoundError", "PRIORITY_ORDER", "Prediction", "Priority",
           "Router", "Triager", "bundled_models", "decode", "load_spec", "load_triager", "resolve_model",
           "routable_models", "routed_identities"]
