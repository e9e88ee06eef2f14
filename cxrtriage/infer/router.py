"""Each film to the bundled model that can judge it.

A DICOM Patient's Age decides first (under 18: the pediatric model, else the adult one). Without
an age, the routable models' own quality gates decide: the accepting model whose gate distance is
smallest relative to its threshold wins. A film no model accepts is refused with each model's
reason. Every result names its model and why (``model["routed_by"]``: age or gate).

Routing looks once where it can: the model that judged most of the recent films scores a film
first, and when its gate distance is well inside its threshold (:data:`DECISIVE_RATIO`), or its
gate accepts the film and its domain check says the film looks nothing like the other population
(:data:`DECISIVE_OTHER`), no other model could have won, so no other runs. Only films near a
gate's edge run through every model (``python bench/routing.py`` prints how often, and that the
decisions equal a full look).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path

from cxrtriage.contract import POPULATIONS, ModelSpec, Prediction, Priority, population_of
from cxrtriage.infer.bundle import bundled_models, load_spec
from cxrtriage.infer.engine import Engine
from cxrtriage.infer.pipeline import Predictor
from cxrtriage.io import Radiograph

#: Gate distance / threshold below which a model's acceptance settles the route. Measured on
#: films of the other population (bench/routing.py): the pediatric gate's ratio on adult NIH and
#: COVID-19 films is above 0.84 (1st percentile), the adult gate's on pediatric films above 1.1, so
#: a film under these ratios is one the other model would not have won.
DECISIVE_RATIO = {"pediatric": 0.82, "adult": 0.80}
#: A film a model's gate accepted (ratio <= 1) without that margin is still settled by the one look
#: when the model's domain check (cxrtriage.infer.domain) gives the other population less than this.
DECISIVE_OTHER = 0.05
RECENT = 64  # winners remembered to choose which model looks first


def routable_models() -> dict[str, str]:
    """One bundled model per population ("pediatric", "adult"): the first listed, default first."""
    chosen: dict[str, str] = {}
    for name in bundled_models():
        population = load_spec(name).population
        if population in POPULATIONS and population not in chosen:
            chosen[population] = name
    return chosen


def routed_ref(specs: Sequence[ModelSpec]) -> dict[str, str]:
    """How the router names itself where no one model judged (a film every gate refused, a failed read)."""
    return {"name": f"routed ({' + '.join(s.name for s in specs)})", "version": "+".join(s.version for s in specs)}


def routed_identities() -> set[tuple[str, str]]:
    """(name, version) of every model a routed result can carry, the router's own name included."""
    specs = [load_spec(name) for name in routable_models().values()]
    ref = routed_ref(specs)
    return {(s.name, s.version) for s in specs} | {(ref["name"], ref["version"])}


class Router(Predictor):
    """Triage with the bundled models, each film routed to one of them (see the module's notes)."""

    def __init__(self, threads: int | None = None, models: dict[str, str] | None = None):
        names = models or routable_models()
        if not names:
            raise ValueError("no bundled model states its population; nothing to route to")
        self.engines = {population: Engine(name, threads=threads) for population, name in names.items()}
        self._ref = routed_ref([e.spec for e in self.engines.values()])
        self.recent: deque[str] = deque(maxlen=RECENT)  # populations that won recent films
        self.looks = {"films": 0, "second_looks": 0}  # how often a film needed more than one model

    @property
    def model_ref(self) -> dict[str, str]:
        return self._ref

    @property
    def classes(self) -> tuple[str, ...]:
        """Every routed model's classes, each once, in the models' order."""
        return tuple(dict.fromkeys(c for e in self.engines.values() for c in e.spec.classes))

    def describe(self) -> dict:
        """What a status page shows: the routing and each model."""
        return {**self.model_ref, "routed": "by DICOM patient age, else by the models' quality gates",
                "models": {population: e.describe() for population, e in self.engines.items()},
                "films_without_age": self.looks["films"], "second_looks": self.looks["second_looks"]}

    def predict_radiographs(self, rgs: Sequence[Radiograph], decode_ms: Sequence[float] | None = None,
                            heatmap: bool = True) -> list[Prediction]:
        t0 = time.perf_counter()
        out: list[Prediction | None] = [None] * len(rgs)
        by_age: dict[str, list[int]] = {}
        unknown: list[int] = []
        for i, rg in enumerate(rgs):
            age = rg.meta.get("age_years")
            population = population_of(age) if age is not None else None
            if population is not None and population in self.engines:
                by_age.setdefault(population, []).append(i)
            else:
                unknown.append(i)
        for population, idx in by_age.items():
            for i, p in zip(idx, self._run(self.engines[population], rgs, idx, decode_ms, heatmap)):
                out[i] = _routed(p, "age")
        if unknown:
            for i, p in zip(unknown, self._route_by_gate(rgs, unknown, decode_ms, heatmap)):
                out[i] = p
        total = (time.perf_counter() - t0) * 1000 / max(1, len(rgs))
        done = [p for p in out if p is not None]
        for p in done:
            p.timings_ms["total"] = round(total + p.timings_ms.get("decode", 0.0), 3)
        return done

    def _order(self) -> list[str]:
        """Populations in the order their models look: the most frequent recent winner first."""
        counts = {pop: self.recent.count(pop) for pop in self.engines}
        return sorted(self.engines, key=lambda pop: -counts[pop])

    def _route_by_gate(self, rgs: Sequence[Radiograph], idx: list[int], decode_ms: Sequence[float] | None,
                       heatmap: bool) -> list[Prediction]:
        """Films without an age: each model in :meth:`_order` looks at the films still undecided;
        a decisive acceptance ends a film's route, the rest are judged on every model's verdict."""
        seen: dict[int, dict[str, Prediction]] = {i: {} for i in idx}
        out: dict[int, Prediction] = {}
        todo = list(idx)
        for population in self._order():
            if not todo:
                break
            for i, p in zip(todo, self._run(self.engines[population], rgs, todo, decode_ms, heatmap)):
                seen[i][population] = p
                if p.ok and _decisive(p, population):
                    out[i] = _routed(p, "gate")
            todo = [i for i in todo if i not in out]
        for i in idx:
            if i not in out:  # judged on every model's verdict, in the models' own order
                out[i] = self._by_gate([seen[i][pop] for pop in self.engines if pop in seen[i]])
            winner = next((pop for pop, e in self.engines.items() if out[i].model.get("name") == e.spec.name), None)
            if winner:
                self.recent.append(winner)
        self.looks["films"] += len(idx)
        self.looks["second_looks"] += sum(len(v) > 1 for v in seen.values())
        return [out[i] for i in idx]

    @staticmethod
    def _run(engine: Engine, rgs: Sequence[Radiograph], idx: list[int], decode_ms: Sequence[float] | None,
             heatmap: bool) -> list[Prediction]:
        dec = [decode_ms[i] for i in idx] if decode_ms is not None else None
        return engine.predict_radiographs([rgs[i] for i in idx], dec, heatmap=heatmap)

    def _by_gate(self, candidates: list[Prediction]) -> Prediction:
        """The accepting candidate with the smallest distance / threshold, or one refusal naming every reason."""
        accepted = [p for p in candidates if p.priority is not Priority.REFUSED]
        if accepted:
            return _routed(min(accepted, key=_ratio), "gate")
        reasons = [f"{p.model.get('name', '?')}: {p.gate.get('reason', 'refused')}" for p in candidates]
        by_model = {p.model.get("name", "?"): p.gate for p in candidates}
        refused = candidates[0]
        refused.model = dict(self.model_ref)
        refused.gate = {"accepted": False, "reason": "no bundled model can judge this film: " + "; ".join(reasons),
                        "by_model": by_model}
        return _routed(refused, "gate")


def _decisive(p: Prediction, population: str) -> bool:
    """Whether one model's acceptance settles the route: well inside its gate, or inside it and
    looking nothing like the other population."""
    if _ratio(p) <= DECISIVE_RATIO.get(population, 0.0):
        return True
    other = next((v for k, v in p.gate.items() if k.startswith("p_") and k[2:] in POPULATIONS), None)
    return other is not None and float(other) < DECISIVE_OTHER


def _ratio(p: Prediction) -> float:
    """A prediction's gate distance relative to its threshold (0 where the gate gave none)."""
    d, t = p.gate.get("distance"), p.gate.get("threshold")
    return float(d) / float(t) if d is not None and t else 0.0


def _routed(p: Prediction, why: str) -> Prediction:
    p.model = {**p.model, "routed_by": why}
    return p


def load_model(model: str | Path | None = None, *, threads: int | None = None, gate: bool = True,
               tta: bool = False) -> Predictor:
    """The one factory every verb and the Python API get their model from.

    ``model``: a bundled model's name (:func:`~cxrtriage.infer.bundled_models`), an ``.onnx`` file
    with its sidecar, a training run folder, or None: the bundled models with each film routed to
    the one that can judge it (:class:`Router`; it needs the quality gates, so with ``gate=False``
    or ``tta=True`` None means the default model alone)."""
    if model is None and gate and not tta:
        return Router(threads=threads)
    return load_engine(model, threads=threads, tta=tta, gate=gate)


def load_engine(model: str | Path | None = None, *, threads: int | None = None, gate: bool = True,
                tta: bool = False) -> Engine:
    """One model's engine, never routed (None: the default model), for the verbs that work on a
    model's own graph and contract: evaluation, calibration, distillation."""
    return Engine(model, threads=threads, tta=tta, gate=gate)
