"""A model's reference: the triage scores and quality-gate distances of films like those it was
fitted on, stored beside the model as ``<model>.reference.npz``.

Written at export or calibration (``cxr calibrate`` stores the calibrated scores of its sample)
and, for the bundled models, by ``python scripts/model_reference.py`` from their validation films.
The drift watch compares what a site sends against it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cxrtriage.contract import Prediction, Priority


@dataclass(frozen=True)
class Reference:
    """Scores of the films the gate accepted, distances of every film it measured, refusal rate."""

    scores: np.ndarray
    distances: np.ndarray
    refused_rate: float
    source: str
    version: str

    @property
    def n(self) -> int:
        return int(len(self.distances) or len(self.scores))

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        np.savez_compressed(path, scores=self.scores.astype(np.float32), distances=self.distances.astype(np.float32),
                            refused_rate=np.float64(self.refused_rate), source=np.str_(self.source),
                            version=np.str_(self.version))
        return path

    def summary(self) -> dict:
        return {"films": self.n, "source": self.source, "version": self.version,
                "refused_rate": round(self.refused_rate, 4),
                "score_median": _median(self.scores), "distance_median": _median(self.distances)}


def _median(a: np.ndarray) -> float | None:
    return round(float(np.median(a)), 4) if len(a) else None


def reference_path(onnx_path: str | Path) -> Path:
    """Where a model's reference lives: beside its graph, ``<name>.reference.npz``."""
    return Path(onnx_path).with_suffix(".reference.npz")


def load_reference(onnx_path: str | Path) -> Reference | None:
    """The reference stored beside a model, or None when it has none."""
    path = reference_path(onnx_path)
    if not path.is_file():
        return None
    z = np.load(path)
    return Reference(z["scores"].astype(np.float64), z["distances"].astype(np.float64), float(z["refused_rate"]),
                     str(z["source"]), str(z["version"]))


def reference_from_predictions(preds: Sequence[Prediction], source: str, version: str) -> Reference:
    """The reference of scored films (``Prediction`` results of the model, with its gate)."""
    scores = [p.score for p in preds if p.priority is not Priority.REFUSED and p.score is not None]
    distances = [p.gate["distance"] for p in preds if (p.gate or {}).get("distance") is not None]
    judged = [p for p in preds if p.error is None]
    refused = sum(p.priority is Priority.REFUSED for p in judged)
    return Reference(np.asarray(scores, dtype=np.float64), np.asarray(distances, dtype=np.float64),
                     refused / max(1, len(judged)), source, version)


def reference_from_scores(scores: np.ndarray, embeddings: np.ndarray | None, gate_file: str | Path | None,
                          source: str, version: str) -> Reference:
    """The reference of a sample scored without the gate (calibration): its triage scores, and the
    gate's distances of its embeddings when the model has a gate."""
    distances = np.zeros(0)
    refused = 0.0
    if embeddings is not None and gate_file is not None and Path(gate_file).is_file():
        from cxrtriage.infer.gate import FeatureGate

        gate = FeatureGate.load(gate_file)
        distances = gate.distance(np.asarray(embeddings))
        refused = float((distances > gate.threshold).mean()) if len(distances) else 0.0
    return Reference(np.asarray(scores, dtype=np.float64), distances.astype(np.float64), refused, source, version)
