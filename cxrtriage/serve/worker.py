"""The background inference worker: one thread, one engine, fed by the queue persisted in SQLite.

The worker claims the oldest pending jobs (several at once when they pile up, so a burst
is scored as one batch), decodes their files (or takes the radiograph the upload already
decoded), runs the model and stores each result together with the end of its job. After a
crash the jobs left 'running' are put back in the queue by :meth:`Store.recover`.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from cxrtriage.infer import Engine
from cxrtriage.contract import Prediction
from cxrtriage.io import ImageReadError, Radiograph, read_radiograph_bytes
from cxrtriage.serve.metrics import Metrics
from cxrtriage.serve.settings import Settings
from cxrtriage.serve.store import Job, Store

log = logging.getLogger("cxrtriage.serve.worker")


class DecodedCache:
    """Radiographs decoded at upload, kept for the worker so it does not decode them again (bounded)."""

    def __init__(self, max_bytes: int = 256 * 1024 * 1024):
        self.max_bytes = max_bytes
        self._items: OrderedDict[int, Radiograph] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def put(self, job_id: int, rg: Radiograph) -> None:
        rg = replace(rg, dicom=None)  # pixels and meta are all the model needs; drop the dataset
        size = int(rg.pixels.nbytes)
        with self._lock:
            while self._items and self._bytes + size > self.max_bytes:
                _, old = self._items.popitem(last=False)
                self._bytes -= int(old.pixels.nbytes)
            if size <= self.max_bytes:
                self._items[job_id] = rg
                self._bytes += size

    def pop(self, job_id: int) -> Radiograph | None:
        with self._lock:
            rg = self._items.pop(job_id, None)
            if rg is not None:
                self._bytes -= int(rg.pixels.nbytes)
            return rg


def default_threads() -> int:
    """ONNX Runtime threads for the service: half the cores. The web side needs CPU too, and idle
    intra-op threads spin; on 2 cores one thread gave the lowest latency under load."""
    return max(1, (os.cpu_count() or 1) // 2)


def result_fields(p: Prediction) -> dict[str, Any]:
    return {"label": p.label, "score": p.score, "probabilities": p.probabilities, "threshold": p.threshold,
            "priority": p.priority, "gate": p.gate, "model": p.model, "timings_ms": p.timings_ms,
            "error": p.error, "error_type": p.error_type, "heatmap": p.heatmap}


class Worker:
    """Runs inference in a daemon thread. ``notify()`` wakes it after a job was queued."""

    def __init__(self, store: Store, settings: Settings, metrics: Metrics,
                 on_done: Callable[[list[str]], None] | None = None):
        self.store, self.settings, self.metrics = store, settings, metrics
        self.on_done = on_done or (lambda ids: None)
        self.cache = DecodedCache()
        self.engine: Engine | None = None
        self.engine_error: str | None = None
        self.ready = threading.Event()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.processed = 0

    # -- control -------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="cxr-worker", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def notify(self) -> None:
        self._wake.set()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- the loop --------------------------------------------------------------
    def _run(self) -> None:
        try:
            self.engine = Engine(self.settings.model, threads=self.settings.threads or default_threads())
        except Exception as exc:  # a missing or broken model: readyz reports it
            self.engine_error = f"{type(exc).__name__}: {exc}"
            log.error("model could not be loaded: %s", self.engine_error)
            return
        self.store.relax_sync()
        self.metrics.model_loaded.set(1)
        self.ready.set()
        log.info("model %s %s loaded; worker running (batch %d)", self.engine.spec.name,
                 self.engine.spec.version, self.settings.batch_size)
        while not self._stop.is_set():
            self._wake.clear()
            try:
                jobs = self.store.claim(self.settings.batch_size)
            except Exception:
                log.exception("cannot read the queue")
                self._stop.wait(1.0)
                continue
            if not jobs:
                self._wake.wait(1.0)
                continue
            self._process(jobs)

    def _process(self, jobs: list[Job]) -> None:
        if self.settings.worker_delay_s:
            if self._stop.wait(self.settings.worker_delay_s * len(jobs)):
                return  # stopping: the jobs stay 'running' and are queued again on the next start
        t0 = time.perf_counter()
        try:
            out: list[tuple[Job, dict[str, Any]]] = []
            rgs, decode_ms, slots = [], [], []
            for job in jobs:
                t = time.perf_counter()
                rg = self.cache.pop(job.id)
                if rg is None:
                    try:
                        rg = read_radiograph_bytes(self.store.read_object(job.sha256), f"study {job.study_id}")
                    except (ImageReadError, OSError) as exc:
                        out.append((job, result_fields(Prediction(
                            source=job.study_id, model=self.engine.model_ref, error=str(exc),
                            error_type=type(exc).__name__))))
                        continue
                rgs.append(rg)
                decode_ms.append((time.perf_counter() - t) * 1000)
                slots.append(job)
            if rgs:
                preds = self.engine.predict_radiographs(rgs, decode_ms, heatmap=True)
                out.extend((job, result_fields(p)) for job, p in zip(slots, preds))
            self.metrics.inference_seconds.observe(time.perf_counter() - t0)
            self.metrics.batch_size.observe(len(jobs))
            written = self.store.finish(out)
        except Exception as exc:
            log.exception("inference failed for %d job(s)", len(jobs))
            self.metrics.inference_errors.inc(len(jobs))
            try:
                self.store.fail(jobs, f"inference failed: {type(exc).__name__}")
            except Exception:
                log.exception("cannot record the failure")
            self.on_done([j.study_id for j in jobs])
            return
        now = time.time()
        for job, res in out:
            self.metrics.inferences.labels(res["priority"]).inc()
            if res["priority"] == "refused":
                self.metrics.refusals.inc()
            self.metrics.turnaround.observe(max(0.0, now - job.created_at))
        self.processed += len(written)
        self.on_done([j.study_id for j, _ in written] or [j.study_id for j in jobs])
