"""The result of triaging one image."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from cxrtriage import DISCLAIMER

PRIORITY_ORDER = {"urgent": 0, "review": 1, "routine": 2, "refused": 3, "error": 4}


@dataclass
class Prediction:
    """Triage of one image. ``score`` is P(abnormal) = 1 - P(normal); ``label`` the call at the threshold.

    ``priority``: 'urgent' (score >= high threshold), 'review' (>= threshold), 'routine',
    'refused' (the quality gate judged the image out of scope) or 'error' (unreadable).
    """

    source: str
    label: str | None = None
    score: float | None = None
    probabilities: dict[str, float] = field(default_factory=dict)
    threshold: float | None = None
    priority: str = "error"
    gate: dict[str, Any] = field(default_factory=dict)
    model: dict[str, str] = field(default_factory=dict)
    timings_ms: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    error_type: str | None = None
    heatmap: np.ndarray | None = field(default=None, repr=False)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None and self.priority not in ("refused", "error")

    def to_dict(self, heatmap: bool = False) -> dict[str, Any]:
        d = asdict(self)
        d.pop("heatmap")
        if heatmap and self.heatmap is not None:
            d["heatmap"] = self.heatmap.round(4).tolist()
        d["disclaimer"] = DISCLAIMER
        return d


def priority_for(score: float, threshold: float, threshold_high: float) -> str:
    if score >= threshold_high:
        return "urgent"
    if score >= threshold:
        return "review"
    return "routine"
