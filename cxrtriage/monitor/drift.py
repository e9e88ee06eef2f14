"""Drift and performance statistics (scipy's, not hand-rolled) and the rolling watch that raises alarms.

Drift: over the last ``window`` results of a model version, the two-sample Kolmogorov-Smirnov
test (``scipy.stats.ks_2samp``) of the scores of the films the gate accepted and of the gate's
distances against the model's reference, and an exact binomial test of the refusal rate against
the reference's. An alarm is raised when any p-value falls below ``alpha``, and cleared when
every one is back above it.

Performance: sensitivity, specificity and PPV of the stored calls against readers' labels, each
with a Wilson 95% interval (``scipy.stats.binomtest``); an alarm when the sensitivity interval's
upper bound is below the sensitivity the model promises.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import stats

from cxrtriage.monitor.reference import Reference

#: Results a drift check looks at, the fewest it needs, and the p-value under which it alarms.
WINDOW = 50
MIN_FILMS = 30
ALPHA = 1e-4


@dataclass
class DriftCheck:
    """One drift check of a window of results against a reference."""

    films: int
    refused: int
    score_ks: float | None = None
    score_p: float | None = None
    distance_ks: float | None = None
    distance_p: float | None = None
    refused_p: float | None = None
    alarm: bool = False
    reasons: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def drift_check(ref: Reference, scores: Iterable[float], distances: Iterable[float], refused: int, films: int,
                alpha: float = ALPHA, min_films: int = MIN_FILMS) -> DriftCheck:
    """Test a window of results against ``ref`` (nothing is tested below ``min_films`` films)."""
    s = np.asarray([v for v in scores if v is not None], dtype=np.float64)
    d = np.asarray([v for v in distances if v is not None], dtype=np.float64)
    out = DriftCheck(films=films, refused=refused)
    if films < min_films:
        return out
    if len(s) >= min_films // 2 and len(ref.scores):
        r = stats.ks_2samp(s, ref.scores)
        out.score_ks, out.score_p = float(r.statistic), float(r.pvalue)
    if len(d) >= min_films // 2 and len(ref.distances):
        r = stats.ks_2samp(d, ref.distances)
        out.distance_ks, out.distance_p = float(r.statistic), float(r.pvalue)
    rate = min(max(ref.refused_rate, 1.0 / max(ref.n, 1)), 1.0)  # a reference with no refusal: one in its films
    out.refused_p = float(stats.binomtest(refused, films, rate, alternative="greater").pvalue)
    for p, what in ((out.score_p, f"score distribution (KS {out.score_ks:.3f})" if out.score_ks else ""),
                    (out.distance_p, f"gate distance distribution (KS {out.distance_ks:.3f})"
                     if out.distance_ks else ""),
                    (out.refused_p, f"refusals ({refused} of {films})")):
        if p is not None and p < alpha:
            out.reasons.append(f"{what} p={p:.2g}")
    out.alarm = bool(out.reasons)
    return out


@dataclass
class _Window:
    scores: deque = field(default_factory=lambda: deque(maxlen=WINDOW))
    distances: deque = field(default_factory=lambda: deque(maxlen=WINDOW))
    refused: deque = field(default_factory=lambda: deque(maxlen=WINDOW))


class DriftWatch:
    """Rolling windows of results per model version; ``observe`` checks after each result and says
    when an alarm starts (True), ends (False) or stays as it was (None)."""

    def __init__(self, window: int = WINDOW, alpha: float = ALPHA, min_films: int = MIN_FILMS):
        self.window, self.alpha, self.min_films = window, alpha, min_films
        self._w: dict[tuple[str, str], _Window] = {}
        self.state: dict[tuple[str, str], DriftCheck] = {}

    def observe(self, key: tuple[str, str], ref: Reference | None, score: float | None, distance: float | None,
                refused: bool) -> bool | None:
        w = self._w.get(key)
        if w is None:
            w = self._w[key] = _Window(deque(maxlen=self.window), deque(maxlen=self.window),
                                       deque(maxlen=self.window))
        w.scores.append(None if refused else score)
        w.distances.append(distance)
        w.refused.append(bool(refused))
        if ref is None:
            return None
        was = self.state.get(key)
        now = drift_check(ref, w.scores, w.distances, sum(w.refused), len(w.refused), self.alpha, self.min_films)
        self.state[key] = now
        if now.alarm and not (was and was.alarm):
            return True
        if was is not None and was.alarm and not now.alarm:
            return False
        return None

    def alarming(self) -> list[tuple[str, str]]:
        return [k for k, c in self.state.items() if c.alarm]


def proportion_ci(k: int, n: int) -> dict:
    """k of n as a proportion with its Wilson 95% interval (None when n is 0)."""
    if n <= 0:
        return {"value": None, "ci95": None, "k": k, "n": n}
    ci = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    return {"value": round(k / n, 4), "ci95": [round(float(ci.low), 4), round(float(ci.high), 4)], "k": k, "n": n}


def performance(calls: Iterable[tuple[bool, bool]], target_sensitivity: float | None = None) -> dict:
    """Sensitivity, specificity and PPV of (flagged, reader says abnormal) pairs, and the alarm."""
    pairs = list(calls)
    tp = sum(f and a for f, a in pairs)
    fn = sum((not f) and a for f, a in pairs)
    tn = sum((not f) and (not a) for f, a in pairs)
    fp = sum(f and (not a) for f, a in pairs)
    out = {"reads": len(pairs), "sensitivity": proportion_ci(tp, tp + fn), "specificity": proportion_ci(tn, tn + fp),
           "ppv": proportion_ci(tp, tp + fp), "target_sensitivity": target_sensitivity, "alarm": False,
           "reasons": []}
    sens = out["sensitivity"]
    if target_sensitivity is not None and sens["ci95"] is not None and sens["ci95"][1] < target_sensitivity:
        out["alarm"] = True
        out["reasons"].append(f"sensitivity {sens['value']:.3f} (95% CI upper bound {sens['ci95'][1]:.3f}) is "
                              f"below the model's {target_sensitivity:.3f}")
    return out
