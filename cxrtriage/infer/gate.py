"""Input-quality gate: is this a frontal chest radiograph the model can judge?

Three checks, cheapest first: the DICOM view position (lateral views are refused), the
pixel statistics (blank or near-constant images), and the Mahalanobis distance of the
network's pooled features to those of the training radiographs, with a threshold set on
validation radiographs (a chosen quantile, so the false-refusal rate is known).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cxrtriage.contract import GATE_QUANTILE

LATERAL_VIEWS = {"LL", "RL", "LLD", "RLD", "LAT", "LATERAL", "XTABLE"}
MIN_STD = 0.02


_BLAS = None


def _one_blas_thread():
    """A context limiting numpy's BLAS to one thread (the controller is built once)."""
    global _BLAS
    if _BLAS is None:
        from threadpoolctl import ThreadpoolController

        _BLAS = ThreadpoolController()
    return _BLAS.limit(limits=1, user_api="blas")


@dataclass
class FeatureGate:
    """Mahalanobis distance in the network's embedding space."""

    mean: np.ndarray
    precision: np.ndarray
    threshold: float
    quantile: float
    # wide networks (transfer backbones): embeddings are first projected on their leading
    # principal components (rows), so the precision matrix stays small
    projection: np.ndarray | None = None

    def distance(self, emb: np.ndarray) -> np.ndarray:
        # one BLAS thread: these products are small, and BLAS threads waking beside ONNX
        # Runtime's would cost more than the products themselves
        with _one_blas_thread():
            e = emb.astype(np.float64)
            if self.projection is not None:
                e = e @ self.projection.T
            d = e - self.mean
            return np.sqrt(np.maximum(((d @ self.precision) * d).sum(axis=1), 0.0))

    def save(self, path: str | Path) -> None:
        arrays: dict[str, Any] = {"mean": self.mean.astype(np.float32), "precision": self.precision.astype(np.float32),
                  "threshold": np.float64(self.threshold), "quantile": np.float64(self.quantile)}
        if self.projection is not None:
            arrays["projection"] = self.projection.astype(np.float32)
        np.savez_compressed(path, **arrays)

    @classmethod
    def load(cls, path: str | Path) -> FeatureGate:
        z = np.load(path)
        proj = z["projection"].astype(np.float64) if "projection" in z.files else None
        return cls(z["mean"].astype(np.float64), z["precision"].astype(np.float64),
                   float(z["threshold"]), float(z["quantile"]), proj)


def fit_feature_gate(train_emb: np.ndarray, val_emb: np.ndarray, quantile: float = GATE_QUANTILE,
                     margin: float = 1.05, max_dim: int = 512) -> FeatureGate:
    """Fit mean and shrunk precision on training embeddings; threshold at a validation quantile.

    Embeddings wider than ``max_dim`` (transfer backbones: 4 x 1280 or 4 x 2048) are first
    projected on their ``max_dim`` leading principal components (fitted on the training ones).
    """
    from sklearn.covariance import LedoitWolf

    x = train_emb.astype(np.float64)
    proj = None
    if x.shape[1] > max_dim:
        centred = x - x.mean(axis=0)
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        proj = vt[:min(max_dim, max(1, len(x) - 1))]
        x = x @ proj.T
    lw = LedoitWolf().fit(x)
    gate = FeatureGate(lw.location_, lw.precision_, float("inf"), quantile, proj)
    gate.threshold = float(np.quantile(gate.distance(val_emb), quantile) * margin)
    return gate


def view_refusal(meta: dict) -> str | None:
    """A reason to refuse from DICOM metadata, or None."""
    view = (meta.get("view_position") or "").upper().replace(" ", "")
    if view in LATERAL_VIEWS:
        return f"lateral view (ViewPosition {view}); the model reads frontal (PA/AP) chest radiographs only"
    return None


def pixel_refusal(pixels: np.ndarray) -> str | None:
    """A reason to refuse from the pixels alone (blank or constant images), or None."""
    if float(pixels.std()) < MIN_STD:
        return "image is blank or nearly uniform; nothing to read"
    return None


def gate_path(onnx_path: Path) -> Path:
    return onnx_path.with_suffix(".gate.npz")


def attach_gate(onnx_path: Path, gate: FeatureGate, stats: dict) -> dict:
    """Save the gate beside the model; returns its entry for the model's sidecar (``gate``)."""
    gate.save(gate_path(onnx_path))
    return {"method": "mahalanobis on pooled features (Ledoit-Wolf)", "file": gate_path(onnx_path).name,
            "threshold": gate.threshold, "quantile": gate.quantile, **stats}
