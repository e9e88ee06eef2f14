"""From probabilities to a call, by one rule a reader can follow.

A film is *flagged* when its score reaches its threshold; the label, the priority and the heatmap
all follow from the same score and threshold:

- single-label model: score = P(abnormal) = 1 - P(normal), threshold = the model's operating
  threshold; flagged -> the most likely abnormal class, else the normal class;
- multi-label model: each finding has its own threshold; the *lead finding* is the one whose
  probability is highest relative to its threshold; score = its probability, threshold = its
  threshold; flagged -> the label lists the flagged findings, lead first, else "no finding".

Priority: urgent when flagged and the score reaches the model's urgent threshold (or the lead
finding's own threshold, if higher), review when flagged, else routine. This module is the only
place a score is compared with a threshold (:func:`flagged`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from cxrtriage.contract.result import Priority
from cxrtriage.contract.scoring import Kind

DEFAULT_LABEL_THRESHOLD = 0.5  # a finding with no threshold of its own (too few validation positives)
NO_FINDING = "no finding"

RULES = {
    Kind.SINGLE: "score = 1 - P(normal); flagged when score >= threshold; label: the most likely abnormal "
                 "class when flagged, else normal; priority: urgent at >= the urgent threshold, review when "
                 "flagged, else routine",
    Kind.MULTILABEL: "each finding is flagged at its own threshold; score and threshold are those of the lead "
                     "finding (the highest probability relative to its threshold); label: the flagged findings, "
                     "lead first, else 'no finding'; priority: urgent when flagged and score >= the urgent "
                     "threshold, review when flagged, else routine",
}


class SpecError(ValueError):
    """A sidecar that does not describe a usable model."""


def flagged(scores: np.ndarray | float, threshold: float | np.ndarray) -> np.ndarray:
    """The one comparison: a case is positive when ``score >= threshold`` (element-wise)."""
    return np.asarray(scores) >= np.asarray(threshold)


@dataclass(frozen=True)
class Decision:
    """The thresholds a model decides with: ``threshold`` (operating point), ``threshold_high``
    (urgent) and, for a multi-label model, one threshold per finding."""

    threshold: float
    threshold_high: float
    method: str = "stored with the model"
    label_thresholds: Mapping[str, float | None] | None = None

    def __post_init__(self) -> None:
        for name in ("threshold", "threshold_high"):
            v = getattr(self, name)
            if not np.isfinite(v) or not 0.0 <= v <= 1.0:
                raise SpecError(f"{name} must be a probability, got {v}")
        if self.threshold_high < self.threshold:
            raise SpecError(f"threshold_high {self.threshold_high} is below threshold {self.threshold}")

    def priority(self, score: float, threshold: float | None = None) -> Priority:
        """The queue position of a film scored ``score`` against ``threshold`` (default: the
        operating threshold)."""
        threshold = self.threshold if threshold is None else threshold
        if not flagged(score, threshold):
            return Priority.ROUTINE
        return Priority.URGENT if flagged(score, max(self.threshold_high, threshold)) else Priority.REVIEW

    def label_threshold(self, label: str) -> float:
        t = (self.label_thresholds or {}).get(label)
        return DEFAULT_LABEL_THRESHOLD if t is None else float(t)


@dataclass(frozen=True)
class Call:
    """A model's call on one film: what the result shows, all from one score and one threshold."""

    label: str
    score: float
    threshold: float
    priority: Priority
    finding: str       # the class that drove the score (and whose map is the heatmap)
    finding_index: int
    rule: str


def decide(probs: np.ndarray, classes: Sequence[str], kind: Kind, decision: Decision) -> Call:
    """The call for one film's probabilities (C,), by the rule in this module's notes."""
    p = np.asarray(probs, dtype=float)
    if Kind(kind) is Kind.MULTILABEL:
        return _decide_multilabel(p, classes, decision)
    lead = 1 + int(np.argmax(p[1:]))
    score = float(np.clip(1.0 - p[0], 0.0, 1.0))
    is_flagged = bool(flagged(score, decision.threshold))
    return Call(classes[lead] if is_flagged else classes[0], score, decision.threshold, decision.priority(score),
                classes[lead], lead, RULES[Kind.SINGLE])


def _decide_multilabel(p: np.ndarray, classes: Sequence[str], decision: Decision) -> Call:
    t = np.array([decision.label_threshold(c) for c in classes], dtype=float)
    ratio = p / np.maximum(t, 1e-9)
    order = sorted(range(len(classes)), key=lambda i: (-ratio[i], -p[i]))
    lead = order[0]
    on = [classes[i] for i in order if flagged(p[i], t[i])]
    score, threshold = float(np.clip(p[lead], 0.0, 1.0)), float(t[lead])
    return Call("|".join(on) if on else NO_FINDING, score, threshold, decision.priority(score, threshold),
                classes[lead], lead, RULES[Kind.MULTILABEL])
