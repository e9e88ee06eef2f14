"""Probes for the 14 NIH findings on cached trunk features, with missing labels masked.

A recipe is a list of trunks (an ensemble when more than one: the mean of their probabilities),
one L2 strength, a label-smoothing amount and whether the COVID-19 collections' films join the
fit as evidence for Pneumonia. Each finding's logistic regression is fitted on the films whose
label for that finding is known (NaN = unknown, left out: masked, never negative).

Label smoothing (``smooth`` = e) fits each finding to the soft target y(1 - e) + e/2, written as
two weighted copies of each film (weight of the positive copy = the soft target).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler


@dataclass(frozen=True)
class Recipe:
    """What is fitted: trunks (``arch@size[/intensity]``), L2 strength, smoothing, extra films."""

    name: str
    trunks: tuple[str, ...] = ("lite0_probe@320",)
    C: float = 0.003
    smooth: float = 0.0
    extra: bool = False
    class_weight: str | None = None
    notes: str = field(default="", compare=False)


def parse_trunk(trunk: str) -> tuple[str, int, str]:
    """``lite0_probe@320/clahe`` -> (arch, size, intensity)."""
    arch, _, rest = trunk.partition("@")
    size, _, intensity = rest.partition("/")
    if not arch or not size.isdigit():
        raise ValueError(f"trunk {trunk!r}: expected ARCH@SIZE[/INTENSITY], e.g. lite0_probe@320")
    return arch, int(size), intensity or "none"


@dataclass
class FindingProbe:
    """One standardiser and one logistic regression per finding (None where a finding had no
    positives or no negatives among the known labels: its probability is then the known rate)."""

    scaler: StandardScaler
    models: list[LogisticRegression | None]
    rates: np.ndarray

    def predict_proba(self, f: np.ndarray) -> np.ndarray:
        z = self.scaler.transform(f)
        out = np.empty((len(f), len(self.models)))
        for j, m in enumerate(self.models):
            out[:, j] = m.predict_proba(z)[:, 1] if m is not None else self.rates[j]
        return out

    def coef(self) -> tuple[np.ndarray, np.ndarray]:
        """(W, b) on raw features: logits = f @ W.T + b (the scaler folded in)."""
        w = np.vstack([m.coef_[0] if m is not None else np.zeros(self.scaler.mean_.size) for m in self.models])
        b = np.array([m.intercept_[0] if m is not None else np.log(r / (1 - r))
                      for m, r in zip(self.models, np.clip(self.rates, 1e-4, 1 - 1e-4))])
        w = w / self.scaler.scale_
        return w, b - w @ self.scaler.mean_


def fit_findings(f: np.ndarray, y: np.ndarray, C: float, smooth: float = 0.0,
                 class_weight: str | None = None) -> FindingProbe:
    """Fit one regression per finding on the rows where its label is known (y may hold NaN)."""
    if f.ndim != 2 or y.ndim != 2 or len(f) != len(y):
        raise ValueError(f"features (N, D) and labels (N, K) must match; got {f.shape} and {y.shape}")
    if not 0.0 <= smooth < 0.5:
        raise ValueError(f"label smoothing must be in [0, 0.5), got {smooth}")
    scaler = StandardScaler().fit(f)
    z = scaler.transform(f)
    models: list[LogisticRegression | None] = []
    rates = np.zeros(y.shape[1])
    for j in range(y.shape[1]):
        known = ~np.isnan(y[:, j])
        yj, zj = y[known, j], z[known]
        rates[j] = float(yj.mean()) if yj.size else 0.0
        if yj.size == 0 or yj.min() == yj.max():
            models.append(None)
            continue
        clf = LogisticRegression(C=C, max_iter=5000, class_weight=class_weight)
        if smooth:
            soft = yj * (1 - smooth) + smooth / 2
            clf.fit(np.vstack([zj, zj]), np.r_[np.ones(len(yj)), np.zeros(len(yj))],
                    sample_weight=np.r_[soft, 1 - soft])
        else:
            clf.fit(zj, yj.astype(int))
        models.append(clf)
    return FindingProbe(scaler, models, rates)


def fit_predict(recipe: Recipe, feats: dict[str, np.ndarray], y: np.ndarray, train: np.ndarray,
                test: np.ndarray) -> np.ndarray:
    """Fit ``recipe`` on the ``train`` rows and return the probabilities of the ``test`` rows (mean over
    the recipe's trunks). ``feats`` maps each trunk to its (N, D) features."""
    probs = []
    for trunk in recipe.trunks:
        probe = fit_findings(feats[trunk][train], y[train], recipe.C, recipe.smooth, recipe.class_weight)
        probs.append(probe.predict_proba(feats[trunk][test]))
    return np.mean(probs, axis=0)
