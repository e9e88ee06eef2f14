"""The model contract: one typed object for an exported model's sidecar (``<name>.json`` beside
``<name>.onnx``).

:class:`ModelSpec` owns what every path must agree on: the input (size, normalisation), how a
triage score is read from the probabilities, the decision (operating threshold, "urgent"
threshold, per-finding thresholds -> label and priority) and the model's provenance (training,
validation, quality gate, calibration). This module is the only one that reads or writes the
sidecar's JSON form; export, calibration and the quality gate write through :meth:`ModelSpec.save`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from cxrtriage.contract.decision import Call, Decision, SpecError, decide
from cxrtriage.contract.preprocess import BORDERS, CROPS, INTENSITIES, RESAMPLES, Prepared, prepare, prepare_resized
from cxrtriage.contract.result import Priority
from cxrtriage.contract.scoring import Kind, apply_temperature, normalise, triage_score

FORMAT = "cxr-triage-onnx/1"
URGENT_SPECIFICITY = 0.995     # the "urgent" threshold keeps this specificity on validation
GATE_QUANTILE = 0.995          # the quality gate accepts this quantile of its threshold films (x a small margin)


POPULATIONS = ("pediatric", "adult")
ADULT_AGE = 18.0  # years; below it a film is pediatric


def population_of(age_years: float) -> str:
    return "pediatric" if age_years < ADULT_AGE else "adult"


@dataclass(frozen=True)
class InputSpec:
    """The graph's input: (N, 1, size, size) float32 pixel values in 0..255.

    ``mean``/``std`` are the normalisation applied inside the graph (None for an ensemble,
    whose members each normalise on their own)."""

    size: int
    mean: float | None = None
    std: float | None = None
    name: str = "image"
    channels: int = 1
    range: tuple[int, int] = (0, 255)
    resize: str = "square, bilinear, aspect not kept"
    normalisation: str | None = None
    intensity: str = "none"  # applied to the resized uint8 image before the graph (see INTENSITIES)
    border: str = "keep"  # applied to the resized uint8 image before the intensity step (see BORDERS)
    crop: str = "none"  # applied to the film before the resize (see CROPS)
    resample: str = "bilinear"  # how the film is resized (see RESAMPLES)

    def __post_init__(self) -> None:
        if self.size < 8:
            raise SpecError(f"input size {self.size} is too small")
        if self.intensity not in INTENSITIES:
            raise SpecError(f"unknown intensity normalisation {self.intensity!r}; known: {', '.join(INTENSITIES)}")
        if self.border not in BORDERS:
            raise SpecError(f"unknown border step {self.border!r}; known: {', '.join(BORDERS)}")
        if self.crop not in CROPS:
            raise SpecError(f"unknown crop step {self.crop!r}; known: {', '.join(CROPS)}")
        if self.resample not in RESAMPLES:
            raise SpecError(f"unknown resize {self.resample!r}; known: {', '.join(RESAMPLES)}")
        if self.crop != "none" and self.border != "keep":
            raise SpecError("the center crop and the border trim do not combine")
        if (self.mean is None) != (self.std is None) or (self.std is not None and self.std <= 0):
            raise SpecError("input normalisation needs both mean and a positive std")

    @property
    def steps(self) -> tuple[str, ...]:
        """The steps run on the resized image before the graph, where they are not the defaults."""
        return tuple(s for s in (self.intensity, self.border) if s not in ("none", "keep"))

    def prepare(self, radiographs: Sequence[Any]) -> Prepared:
        """Radiographs (or 2-D arrays) to the graph's input batch with this model's resize, border
        and intensity steps; ``.restore(maps)`` on the result puts heatmaps back on the films."""
        return prepare(radiographs, self.size, self.intensity, self.border, self.crop, self.resample)

    def prepare_resized(self, images: np.ndarray) -> Prepared:
        """Like :meth:`prepare` for images already resized to ``size`` (the training cache)."""
        if self.crop != "none" or self.resample != "bilinear":
            raise SpecError(f"an input with crop {self.crop!r} and resize {self.resample!r} cannot be prepared "
                            "from films already resized by the cache; prepare the films themselves")
        return prepare_resized(images, self.intensity, self.border)

    def normalise(self, x: Any) -> Any:
        """0..255 pixel values to what the network sees (the graph does this itself)."""
        if self.mean is None or self.std is None:
            raise SpecError("this model normalises per member inside its graph")
        return normalise(x, self.mean, self.std)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "size": self.size, "channels": self.channels,
                             "range": list(self.range)}
        if self.mean is not None:
            d.update(mean=self.mean, std=self.std)
        if self.normalisation is not None:
            d["normalisation"] = self.normalisation
        d["resize"] = self.resize
        if self.intensity != "none":
            d["intensity"] = self.intensity
        if self.border != "keep":
            d["border"] = self.border
        if self.crop != "none":
            d["crop"] = self.crop
        if self.resample != "bilinear":
            d["resample"] = self.resample
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> InputSpec:
        return cls(size=int(d["size"]), mean=_opt_float(d.get("mean")), std=_opt_float(d.get("std")),
                   name=str(d.get("name", "image")), channels=int(d.get("channels", 1)),
                   range=tuple(d.get("range", (0, 255))), resize=str(d.get("resize", cls.resize)),
                   normalisation=d.get("normalisation"), intensity=str(d.get("intensity", "none")),
                   border=str(d.get("border", "keep")), crop=str(d.get("crop", "none")),
                   resample=str(d.get("resample", "bilinear")))


@dataclass(frozen=True)
class ModelSpec:
    """An exported model: what it takes, what it answers, how to decide, where it came from."""

    name: str
    task: str
    classes: tuple[str, ...]
    input: InputSpec
    decision: Decision
    kind: Kind = Kind.SINGLE
    outputs: tuple[str, ...] = ("probs",)
    version: str = ""
    arch: str = ""
    sha256: str = ""
    onnx_file: str = ""
    weights_storage: str = "float32"
    heatmap: str = "gradcam"
    score: str = "1 - P(normal)"
    temperature: float = 1.0  # probabilities are recalibrated by it (site calibration); 1 = as trained
    class_bias: tuple[float, ...] | None = None  # per-class log-odds offsets (site calibration); None = as trained
    provenance: Mapping[str, Any] = field(default_factory=dict)  # training, validation, gate, members, ...

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", Kind(self.kind))
        object.__setattr__(self, "classes", tuple(self.classes))
        object.__setattr__(self, "outputs", tuple(self.outputs))
        if len(self.classes) < (1 if self.kind is Kind.MULTILABEL else 2):
            raise SpecError(f"model {self.name!r} needs at least two classes, has {list(self.classes)}")
        if "probs" not in self.outputs:
            raise SpecError(f"model {self.name!r} has no 'probs' output")
        if not np.isfinite(self.temperature) or self.temperature <= 0:
            raise SpecError(f"temperature must be positive, got {self.temperature}")
        if self.class_bias is not None:
            object.__setattr__(self, "class_bias", tuple(float(b) for b in self.class_bias))
            if len(self.class_bias) != len(self.classes) or not np.all(np.isfinite(self.class_bias)):
                raise SpecError(f"class_bias needs one finite offset per class ({len(self.classes)}), "
                                f"got {list(self.class_bias)}")
        unknown = set(self.decision.label_thresholds or {}) - set(self.classes)
        if unknown:
            raise SpecError(f"label thresholds for unknown classes: {sorted(unknown)}")

    # -- the rules ------------------------------------------------------------
    @property
    def has_cam(self) -> bool:
        return "cam" in self.outputs

    @property
    def threshold(self) -> float:
        return self.decision.threshold

    @property
    def threshold_high(self) -> float:
        return self.decision.threshold_high

    @property
    def input_size(self) -> int:
        return self.input.size

    def calibrated(self, probs: np.ndarray) -> np.ndarray:
        """The graph's probabilities after the model's temperature and class offsets (unchanged
        when the model was never calibrated)."""
        return apply_temperature(probs, self.temperature, self.kind, self.class_bias)

    def triage_score(self, probs: np.ndarray) -> np.ndarray:
        """P(abnormal) per row of (N, C) probabilities."""
        return triage_score(probs, self.kind)

    def decide(self, probs: np.ndarray) -> Call:
        """The call for one image's probabilities (C,): label, score, threshold, priority and the
        class that drove them, by the one rule of :func:`cxrtriage.contract.decision.decide`."""
        return decide(probs, self.classes, self.kind, self.decision)

    def label_for(self, probs: np.ndarray) -> str:
        return self.decide(probs).label

    def priority(self, score: float) -> Priority:
        return self.decision.priority(score)

    @property
    def population(self) -> str | None:
        """Whom the model was trained on: "pediatric" (under 18) or "adult"; None if unstated."""
        value = self.provenance.get("population")
        return str(value) if value in POPULATIONS else None

    def age_warning(self, age_years: float | None) -> str | None:
        """A warning when a film's patient age lies outside the population the model learnt from."""
        if age_years is None or self.population is None or population_of(age_years) == self.population:
            return None
        return (f"patient age {age_years:g} years: {self.name} was trained on {self.population} films "
                "only; its output is not validated for this patient")

    @property
    def training_seed(self) -> int:
        return int((self.provenance.get("training") or {}).get("seed", 0))

    @property
    def split_task(self) -> str:
        """The task of the patient-wise split it was trained on (its members' finer task, for an
        ensemble that answers a coarser one): validation films are drawn with it."""
        return str((self.provenance.get("trained_as") or {}).get("task", self.task))

    @property
    def ref(self) -> dict[str, str]:
        """The name and version a result carries."""
        return {"name": self.name, "version": self.version}

    def with_decision(self, **changes: Any) -> ModelSpec:
        return replace(self, decision=replace(self.decision, **changes))

    def with_provenance(self, **entries: Any) -> ModelSpec:
        return replace(self, provenance={**self.provenance, **entries})

    # -- the JSON form --------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "format": FORMAT, "name": self.name, "version": self.version, "task": self.task,
            "kind": self.kind.value, "classes": list(self.classes), "arch": self.arch,
            "onnx_file": self.onnx_file, "sha256": self.sha256, "weights_storage": self.weights_storage,
            "input": self.input.to_dict(), "outputs": list(self.outputs), "heatmap": self.heatmap,
            "score": self.score, "threshold": self.decision.threshold,
            "threshold_high": self.decision.threshold_high, "threshold_method": self.decision.method,
        }
        if self.decision.label_thresholds is not None:
            d["label_thresholds"] = dict(self.decision.label_thresholds)
        if self.temperature != 1.0:
            d["temperature"] = self.temperature
        if self.class_bias is not None:
            d["class_bias"] = list(self.class_bias)
        d.update(self.provenance)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], default_name: str = "model") -> ModelSpec:
        try:
            decision = Decision(threshold=float(d["threshold"]), threshold_high=float(d["threshold_high"]),
                                method=str(d.get("threshold_method", Decision.method)),
                                label_thresholds=d.get("label_thresholds"))
            own = {f.name for f in fields(cls)} | {"format", "threshold", "threshold_high", "threshold_method",
                                                    "label_thresholds"}
            return cls(
                name=str(d.get("name", default_name)), task=str(d.get("task", "pneumonia")),
                classes=tuple(d["classes"]), input=InputSpec.from_dict(d["input"]), decision=decision,
                kind=Kind(d.get("kind", "single")), outputs=tuple(d.get("outputs", ("probs",))),
                version=str(d.get("version", "")), arch=str(d.get("arch", "")), sha256=str(d.get("sha256", "")),
                onnx_file=str(d.get("onnx_file", "")), weights_storage=str(d.get("weights_storage", "float32")),
                heatmap=str(d.get("heatmap", "gradcam")), score=str(d.get("score", cls.score)),
                temperature=float(d.get("temperature", 1.0)),
                class_bias=None if d.get("class_bias") is None else tuple(d["class_bias"]),
                provenance={k: v for k, v in d.items() if k not in own},
            )
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, SpecError):
                raise
            raise SpecError(f"not a cxr-triage model sidecar: {exc!r}") from None

    @classmethod
    def load(cls, path: str | Path) -> ModelSpec:
        """Read a sidecar (``.json``; an ``.onnx`` path reads the one beside it)."""
        path = Path(path).with_suffix(".json")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise SpecError(f"{path}: not valid JSON ({exc})") from None
        return cls.from_dict(data, default_name=path.stem)

    def save(self, path: str | Path) -> Path:
        """Write the sidecar beside ``path`` (an ``.onnx`` or ``.json`` path); returns the JSON path."""
        path = Path(path).with_suffix(".json")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2))
        tmp.replace(path)
        return path


def _opt_float(v: Any) -> float | None:
    return None if v is None else float(v)
