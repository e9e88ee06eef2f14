"""Which population a film looks like, read from a model's own embedding: a logistic regression
fitted on the network's pooled features of its own population's films against the other
population's (``<model>.domain.npz`` beside the model; ``scripts/routing_domain.py`` fits it).

The router uses it to settle a film the model's gate accepted without a margin: when the film
looks nothing like the other population, no second model needs to look."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


def domain_path(onnx_path: Path) -> Path:
    return onnx_path.with_suffix(".domain.npz")


@dataclass(frozen=True)
class DomainCheck:
    """P(the film comes from ``other``) = sigmoid(((embedding - mean) / scale) . coef + intercept)."""

    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: float
    other: str  # the population it tells the model's own from, e.g. "adult"

    def p_other(self, embedding: np.ndarray) -> np.ndarray:
        z = ((np.asarray(embedding, dtype=np.float64) - self.mean) / self.scale) @ self.coef + self.intercept
        return 1.0 / (1.0 + np.exp(-z))

    def save(self, path: str | Path) -> None:
        np.savez_compressed(path, mean=self.mean.astype(np.float32), scale=self.scale.astype(np.float32),
                            coef=self.coef.astype(np.float32), intercept=np.float64(self.intercept),
                            other=np.array(self.other))

    @classmethod
    def load(cls, path: str | Path) -> DomainCheck:
        with np.load(path) as z:
            return cls(z["mean"].astype(np.float64), z["scale"].astype(np.float64), z["coef"].astype(np.float64),
                       float(z["intercept"]), str(z["other"]))
