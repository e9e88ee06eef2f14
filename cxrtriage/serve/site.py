"""The site loop of the service: readers' reads, the drift and performance watch with its alarms,
and loading a new model version without a restart (the previous one kept for rollback).

Alarms are raised as results arrive (the worker hands each batch's results here), kept in the
``alarms`` table, logged, and exposed as Prometheus gauges and on ``/api/v1/monitor``.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import threading
import time
from typing import Any

import numpy as np

from cxrtriage.contract import ModelSpec, Prediction, Priority
from cxrtriage.infer import Engine, Predictor, Router, load_model, load_spec
from cxrtriage.monitor import DriftWatch, Reference, drift_check, load_reference
from cxrtriage.monitor.drift import ALPHA, MIN_FILMS, WINDOW, performance
from cxrtriage.serve.metrics import Metrics
from cxrtriage.serve.reads import ImportRow, ReadError, ReadIn, abnormal, check_read
from cxrtriage.serve.schema import ReadSource
from cxrtriage.serve.store import Store

log = logging.getLogger("cxrtriage.serve.monitor")
MODEL_KEY = "model_active"      # meta: the model the service loads (set by a swap, kept over restarts)
PREVIOUS_KEY = "model_previous"  # meta: the one before it (for rollback)
DAYS = 30


class ImportRefused(ValueError):
    """A reads import with unknown studies or labels: nothing was stored; ``errors`` lists them."""

    def __init__(self, errors: list[dict[str, Any]], rows: int):
        super().__init__(f"{len(errors)} of {rows} row(s) cannot be imported; nothing was imported")
        self.errors = errors


class ModelSwapError(ValueError):
    """A model folder or name that cannot be loaded; the service keeps the model it has."""


def engines_of(predictor: Predictor | None) -> list[Engine]:
    if isinstance(predictor, Engine):
        return [predictor]
    if isinstance(predictor, Router):
        return list(predictor.engines.values())
    return []


def target_sensitivity(spec: ModelSpec) -> float | None:
    """The sensitivity the model promises: its calibration's expected value, else its target."""
    cal = spec.provenance.get("calibration") or {}
    exp = (cal.get("expected") or {}).get("sensitivity") or {}
    value = exp.get("value", cal.get("target_sensitivity"))
    return float(value) if value is not None else None


class SiteLoop:
    """Reads, the watch and model versions of one service."""

    def __init__(self, store: Store, metrics: Metrics, window: int = WINDOW, alpha: float = ALPHA):
        self.store, self.metrics = store, metrics
        self.watch = DriftWatch(window=window, alpha=alpha)
        self.references: dict[tuple[str, str], Reference | None] = {}
        self.specs: dict[str, ModelSpec] = {}
        self._lock = threading.Lock()

    # -- models -------------------------------------------------------------------
    def adopt(self, predictor: Predictor) -> None:
        """Take the references and specs of a newly loaded model (and prime the watch from the store)."""
        for e in engines_of(predictor):
            key = (e.spec.name, e.spec.version)
            self.specs[e.spec.name] = e.spec
            if key not in self.references:
                self.references[key] = load_reference(e.onnx_path)
                self._prime(key)
            self.metrics.model_info.labels(e.spec.name, e.spec.version).set(1)

    def _prime(self, key: tuple[str, str]) -> None:
        rows = self.store.conn().execute(
            "SELECT score, gate, priority FROM results WHERE model_name = ? AND model_version = ? AND error IS NULL"
            " ORDER BY id DESC LIMIT ?", (*key, self.watch.window)).fetchall()
        with self._lock:
            for r in reversed(rows):
                gate = json.loads(r["gate"] or "{}")
                self.watch.observe(key, self.references.get(key), r["score"], gate.get("distance"),
                                   r["priority"] == Priority.REFUSED.value)
            self._gauges(key)

    def spec_for(self, model_name: str | None) -> ModelSpec | None:
        if not model_name:
            return None
        if model_name in self.specs:
            return self.specs[model_name]
        try:
            return load_spec(model_name)
        except Exception:  # noqa: BLE001 - a model no longer installed: the default labels apply
            return None

    @staticmethod
    def load(model: str | None, threads: int | None) -> Predictor:
        try:
            return load_model(model, threads=threads)
        except Exception as exc:  # noqa: BLE001 - any reason the model cannot load is the caller's answer
            raise ModelSwapError(f"the model {model or '(bundled, routed)'} cannot be loaded: "
                                 f"{type(exc).__name__}: {exc}") from None

    # -- results ------------------------------------------------------------------------
    def observe(self, preds: list[Prediction]) -> None:
        """Feed scored results to the watch; raise or clear alarms."""
        now = time.time()
        with self._lock:
            for p in preds:
                name, version = p.model.get("name"), p.model.get("version")
                if p.error is not None or not name or not version:
                    continue
                key = (name, version)
                changed = self.watch.observe(key, self.references.get(key), p.score, (p.gate or {}).get("distance"),
                                             p.priority is Priority.REFUSED)
                if changed is not None:
                    self._alarm_changed(key, changed, now)
                self._gauges(key)

    def _alarm_changed(self, key: tuple[str, str], started: bool, now: float) -> None:
        check = self.watch.state[key]
        detail = json.dumps(check.to_dict())
        try:
            with self.store.tx() as c:
                if started:
                    c.execute("INSERT INTO alarms (model_name, model_version, kind, started_at, detail) VALUES "
                              "(?, ?, 'drift', ?, ?)", (*key, now, detail))
                else:
                    c.execute("UPDATE alarms SET ended_at = ? WHERE model_name = ? AND model_version = ? AND "
                              "kind = 'drift' AND ended_at IS NULL", (now, *key))
        except Exception as exc:  # noqa: BLE001 - the log and the gauges still say it when the disk refuses
            log.warning("drift alarm of %s %s not stored: %s", key[0], key[1], type(exc).__name__)
        if started:
            log.warning("DRIFT ALARM %s %s: %s (last %d films)", key[0], key[1], "; ".join(check.reasons), check.films)
        else:
            log.info("drift alarm of %s %s cleared (last %d films)", key[0], key[1], check.films)

    def _gauges(self, key: tuple[str, str]) -> None:
        check = self.watch.state.get(key)
        m = self.metrics
        m.drift_alarm.labels(*key).set(1 if check is not None and check.alarm else 0)
        if check is None:
            return
        for stat, value in (("score", check.score_ks), ("distance", check.distance_ks)):
            if value is not None:
                m.drift_statistic.labels(*key, stat).set(value)
        for stat, value in (("score", check.score_p), ("distance", check.distance_p), ("refused", check.refused_p)):
            if value is not None:
                m.drift_pvalue.labels(*key, stat).set(value)

    # -- reads ------------------------------------------------------------------------------
    def record(self, reads: list[ReadIn], reader: str, source: ReadSource) -> list[int]:
        """Check every read against the labels of the model that scored its study, then store them
        all or none (ReadError or KeyError before anything is written)."""
        checked = []
        for r in reads:
            row = self.store.get_study(r.study_id)
            if row is None:
                raise KeyError(r.study_id)
            res = self.store.get_result(row["result_id"])
            spec = self.spec_for(res["model_name"] if res is not None else None)
            if r.agree and not r.label and res is not None:
                r = ReadIn(r.study_id, res["label"] or "", r.findings, True)
            checked.append(check_read(r, spec))
        ids = self.store.record_reads(checked, reader, source)
        self.metrics.reads.labels(ReadSource(source).value).inc(len(ids))
        return ids

    def import_reads(self, rows: list[ImportRow], reader: str) -> list[int]:
        """Store every row's read, or none: unknown studies and labels are all reported together
        (:class:`ImportRefused`) before anything is written."""
        reads, errors = [], []
        for row in rows:
            study = self.store.find_study_by_ref(row.ref)
            if study is None:
                errors.append({"line": row.line, "study": row.ref, "error": "unknown study"})
                continue
            res = self.store.get_result(study["result_id"])
            try:
                reads.append(check_read(ReadIn(study["id"], row.label, row.findings),
                                        self.spec_for(res["model_name"] if res is not None else None)))
            except ReadError as exc:
                errors.append({"line": row.line, "study": row.ref, "error": str(exc)})
        if errors:
            raise ImportRefused(errors, len(rows))
        ids = self.store.record_reads(reads, reader, ReadSource.IMPORT)
        self.metrics.reads.labels(ReadSource.IMPORT.value).inc(len(ids))
        log.info("%d read(s) imported by %s", len(ids), reader)
        return ids

    # -- the report ---------------------------------------------------------------------------
    def report(self) -> dict[str, Any]:
        """Per model version: reference, the current window's drift, per-day figures, performance
        against reads, alarms."""
        rows = self.store.conn().execute(
            "SELECT model_name, model_version, COUNT(*) n FROM results WHERE model_name IS NOT NULL AND "
            "model_version IS NOT NULL GROUP BY model_name, model_version ORDER BY MAX(id) DESC").fetchall()
        keys = [(r["model_name"], r["model_version"]) for r in rows]
        keys += [k for k in self.references if k not in keys]
        reads = self.store.read_results()
        models = [self._model_report(k, reads) for k in keys]
        alarms = [dict(a) for a in self.store.conn().execute(
            "SELECT * FROM alarms ORDER BY id DESC LIMIT 50").fetchall()]
        for a in alarms:
            a["detail"] = json.loads(a["detail"] or "{}")
        return {"window": self.watch.window, "alpha": self.watch.alpha, "min_films": MIN_FILMS,
                "alarm": any(m["alarm"] for m in models), "models": models, "alarms": alarms}

    def _model_report(self, key: tuple[str, str], reads: list) -> dict[str, Any]:
        ref = self.references.get(key)
        if ref is None and key not in self.references:
            ref = self._reference_for(key)
        spec = self.spec_for(key[0])
        target = target_sensitivity(spec) if spec is not None and spec.version == key[1] else None
        calls = [(Prediction(source="", priority=r["result_priority"]).flagged, abnormal(r["label"]))
                 for r in reads if (r["result_model"], r["result_version"]) == key
                 and r["result_priority"] in (Priority.URGENT.value, Priority.REVIEW.value, Priority.ROUTINE.value)]
        perf = performance(calls, target)
        with self._lock:
            check = self.watch.state.get(key)
        drift = check.to_dict() if check is not None else None
        days = self._days(key, ref)
        return {"name": key[0], "version": key[1], "reference": ref.summary() if ref is not None else None,
                "drift": drift, "days": days, "performance": perf,
                "histograms": self._histograms(key, ref),
                "alarm": bool((drift or {}).get("alarm")) or perf["alarm"]}

    @staticmethod
    def _reference_for(key: tuple[str, str]) -> Reference | None:
        """The reference of a bundled model no longer loaded (None when it has none)."""
        try:
            from cxrtriage.infer import resolve_model

            return load_reference(resolve_model(key[0]))
        except Exception:  # noqa: BLE001 - no reference: drift is not measured for this model
            return None

    def _recent(self, key: tuple[str, str], since: float = 0.0, limit: int | None = None) -> list:
        sql = ("SELECT created_at, score, gate, priority FROM results WHERE model_name = ? AND model_version = ?"
               " AND error IS NULL AND created_at >= ? ORDER BY id DESC" + (" LIMIT ?" if limit else ""))
        args = (*key, since, limit) if limit else (*key, since)
        return self.store.conn().execute(sql, args).fetchall()

    def _days(self, key: tuple[str, str], ref: Reference | None) -> list[dict[str, Any]]:
        since = time.time() - DAYS * 86400
        by_day: dict[str, list] = {}
        for r in self._recent(key, since):
            day = _dt.datetime.fromtimestamp(r["created_at"], _dt.timezone.utc).date().isoformat()
            by_day.setdefault(day, []).append(r)
        out = []
        for day in sorted(by_day):
            rs = by_day[day]
            refused = sum(r["priority"] == Priority.REFUSED.value for r in rs)
            scores = [r["score"] for r in rs if r["priority"] != Priority.REFUSED.value]
            dists = [json.loads(r["gate"] or "{}").get("distance") for r in rs]
            entry: dict[str, Any] = {"day": day, "scored": len(rs) - refused, "refused": refused,
                                     "score_median": round(float(np.median(scores)), 4) if scores else None}
            if ref is not None:
                entry["drift"] = drift_check(ref, scores, dists, refused, len(rs)).to_dict()
            out.append(entry)
        return out

    def _histograms(self, key: tuple[str, str], ref: Reference | None) -> dict[str, Any]:
        rs = self._recent(key, limit=self.watch.window)
        scores = np.asarray([r["score"] for r in rs
                             if r["priority"] != Priority.REFUSED.value and r["score"] is not None])
        dists = np.asarray([d for d in (json.loads(r["gate"] or "{}").get("distance") for r in rs) if d is not None])
        sbins = np.linspace(0, 1, 11)
        tops = [1.0] + ([float(dists.max())] if len(dists) else [])
        if ref is not None and len(ref.distances):
            tops.append(float(np.quantile(ref.distances, 0.999)))
        top = max(tops)
        dbins = np.linspace(0, top * 1.05, 13)
        return {"score": _hist(scores, ref.scores if ref is not None else None, sbins),
                "distance": _hist(np.clip(dists, 0, dbins[-1]), np.clip(ref.distances, 0, dbins[-1])
                                  if ref is not None else None, dbins)}


def _hist(recent: np.ndarray, ref: np.ndarray | None, bins: np.ndarray) -> dict[str, Any]:
    def frac(a: np.ndarray | None) -> list[float] | None:
        if a is None or not len(a):
            return None
        h, _ = np.histogram(a, bins)
        return [round(float(v), 4) for v in h / h.sum()]

    return {"edges": [round(float(b), 4) for b in bins], "recent": frac(recent), "reference": frac(ref),
            "recent_films": int(len(recent))}


class ModelVersions:
    """Which model the service scores with: the one named at start, or the one a swap chose (kept in
    the store's meta, so a restart keeps it), and the one before it for rollback."""

    def __init__(self, site: SiteLoop, default: str | None, threads: int | None):
        self.site, self.default, self.threads = site, default, threads
        self._lock = threading.Lock()

    def active(self) -> dict[str, Any]:
        raw = self.site.store.meta_get(MODEL_KEY)
        return json.loads(raw) if raw else {"model": self.default, "routes": None}

    def previous(self) -> dict[str, Any] | None:
        raw = self.site.store.meta_get(PREVIOUS_KEY)
        return json.loads(raw) if raw else None

    def _build(self, choice: dict[str, Any]) -> Predictor:
        if choice.get("routes"):
            try:
                return Router(threads=self.threads, models=dict(choice["routes"]))
            except Exception as exc:  # noqa: BLE001 - any reason the models cannot load is the caller's answer
                raise ModelSwapError(f"the routed models {choice['routes']} cannot be loaded: "
                                     f"{type(exc).__name__}: {exc}") from None
        return self.site.load(choice.get("model"), self.threads)

    def load_active(self) -> Predictor:
        """The model to start with (the worker calls it in its thread)."""
        choice = self.active()
        try:
            predictor = self._build(choice)
        except ModelSwapError as exc:
            if choice.get("model") == self.default and not choice.get("routes"):
                raise
            log.error("%s; starting with the service's own model instead", exc)
            predictor = self._build({"model": self.default, "routes": None})
        self.site.adopt(predictor)
        return predictor

    def choice_for(self, model: str, current: Predictor | None) -> dict[str, Any]:
        """What to load for ``model``: in a routed service, a model of a routed population replaces
        that population's model and the routing stays; otherwise the model alone."""
        try:
            spec = load_spec(model)
        except Exception as exc:  # noqa: BLE001 - a wrong path or a broken sidecar is the caller's answer
            raise ModelSwapError(f"no model at {model}: {type(exc).__name__}: {exc}") from None
        if isinstance(current, Router) and spec.population in current.engines:
            routes = {pop: str(e.onnx_path) for pop, e in current.engines.items()}
            routes[spec.population] = str(model)
            return {"model": None, "routes": routes}
        return {"model": str(model), "routes": None}

    def swap(self, worker: Any, choice: dict[str, Any], predictor: Predictor | None = None) -> dict[str, Any]:
        """Load ``choice`` (unless given loaded), record it, and hand it to the worker; the model it
        replaces is kept loaded for rollback. Nothing changes when it cannot be loaded."""
        with self._lock:
            new = predictor or self._build(choice)
            before = self.active()
            self.site.store.meta_set(PREVIOUS_KEY, json.dumps(before))
            self.site.store.meta_set(MODEL_KEY, json.dumps(choice))
            old = worker.engine
            worker.engine, worker.previous = new, old
            for e in engines_of(old):
                self.site.metrics.model_info.labels(e.spec.name, e.spec.version).set(0)
            self.site.adopt(new)
            self.site.metrics.model_swaps.inc()
            log.info("model swapped without a restart: %s %s (was %s %s)", new.model_ref["name"],
                     new.model_ref["version"], old.model_ref["name"] if old else "-",
                     old.model_ref["version"] if old else "-")
            return {"active": new.describe(), "previous": old.describe() if old is not None else None}

    def rollback(self, worker: Any) -> dict[str, Any]:
        """Back to the model before the last swap (still loaded when this process made the swap)."""
        before = self.previous()
        if before is None:
            raise ModelSwapError("no earlier model to go back to")
        return self.swap(worker, before, worker.previous)
