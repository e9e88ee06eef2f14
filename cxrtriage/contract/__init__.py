"""The model contract, torch-free: what an exported model takes and answers (:class:`ModelSpec`),
the shared scoring rules, and the one result type (:class:`Prediction`)."""

from cxrtriage.contract.decision import NO_FINDING, RULES, Call, flagged
from cxrtriage.contract.preprocess import Prepared
from cxrtriage.contract.result import PRIORITY_ORDER, Prediction, Priority, StrEnum
from cxrtriage.contract.scoring import Kind, apply_temperature, normalise, standardise, triage_score, triage_target
from cxrtriage.contract.spec import (
    ADULT_AGE,
    BORDERS,
    GATE_QUANTILE,
    INTENSITIES,
    POPULATIONS,
    URGENT_SPECIFICITY,
    Decision,
    InputSpec,
    ModelSpec,
    SpecError,
    population_of,
)

__all__ = [
    "Call", "NO_FINDING", "Prepared", "RULES", "flagged",
    "ADULT_AGE", "GATE_QUANTILE", "BORDERS", "INTENSITIES", "POPULATIONS", "population_of", "Decision", "InputSpec",
    "Kind", "ModelSpec", "PRIORITY_ORDER", "Prediction", "Priority", "SpecError",
    "StrEnum", "URGENT_SPECIFICITY", "apply_temperature", "normalise", "standardise", "triage_score", "triage_target",
]
