"""The result of triaging one image: one type, one JSON form (:meth:`Prediction.to_dict`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any

import numpy as np

from cxrtriage.about import DISCLAIMER


class StrEnum(str, Enum):
    """An enum whose members are their own string values (in JSON, f-strings and comparisons)."""

    __str__ = str.__str__
    __format__ = str.__format__  # type: ignore[assignment]


class Priority(StrEnum):
    """Where a film goes in the reading queue, most pressing first."""

    URGENT = "urgent"    # score >= the model's high threshold
    REVIEW = "review"    # score >= the operating threshold
    ROUTINE = "routine"
    REFUSED = "refused"  # the quality gate judged the image out of scope: no score
    ERROR = "error"      # unreadable input

    @property
    def rank(self) -> int:
        return list(Priority).index(self)


PRIORITY_ORDER = {p.value: p.rank for p in Priority}


@dataclass
class Prediction:
    """Triage of one image. ``score`` is compared with ``threshold`` to flag the film; ``label``,
    ``priority`` and ``finding`` follow from them by the rule in ``rule`` (see
    :mod:`cxrtriage.contract.decision`); ``heatmap`` is ``finding``'s activation map (0..1, on the
    model's grid, e.g. 14 x 14) when asked for."""

    source: str
    label: str | None = None
    score: float | None = None
    probabilities: dict[str, float] = field(default_factory=dict)
    threshold: float | None = None
    priority: Priority = Priority.ERROR
    gate: dict[str, Any] = field(default_factory=dict)
    model: dict[str, str] = field(default_factory=dict)
    timings_ms: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    error_type: str | None = None
    heatmap: np.ndarray | None = field(default=None, repr=False)
    meta: dict[str, Any] = field(default_factory=dict)
    finding: str | None = None  # the class whose probability is the score (multi-label: the lead finding)
    rule: str | None = None     # how label, score, threshold and priority were read from the probabilities

    def __post_init__(self) -> None:
        self.priority = Priority(self.priority)

    @property
    def ok(self) -> bool:
        return self.error is None and self.priority not in (Priority.REFUSED, Priority.ERROR)

    @property
    def flagged(self) -> bool:
        """Whether the call is abnormal (score at or above its threshold: review or urgent)."""
        return self.priority in (Priority.URGENT, Priority.REVIEW)

    @classmethod
    def failed(cls, source: str, exc: BaseException, model: dict[str, str] | None = None) -> Prediction:
        """The result for an input that could not be read: the error, no score."""
        return cls(source=source, model=dict(model or {}), error=str(exc), error_type=type(exc).__name__)

    def to_dict(self, heatmap: bool = False) -> dict[str, Any]:
        d = asdict(self)
        d.pop("heatmap")
        d["priority"] = self.priority.value
        if heatmap and self.heatmap is not None:
            d["heatmap"] = self.heatmap.round(4).tolist()
        d["disclaimer"] = DISCLAIMER
        return d
