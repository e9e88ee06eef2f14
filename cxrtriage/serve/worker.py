"""The background inference worker: one thread, one engine, fed by the queue persisted in SQLite.

The worker claims the oldest pending jobs (several at once when they pile up, so a burst is
scored as one batch) and hands their files (or the radiographs the upload already decoded) to
the engine's one pipeline, :meth:`cxrtriage.infer.Engine.predict_batch`, whose failures come
back as results. Each result is stored together with the end of its job. When the write fails
(disk full, read-only folder) the jobs go back to the queue and are tried again later; jobs
left 'running' are reclaimed by the live worker. When the batch raises, or the process dies
on it, its jobs are retried one by one, so only the culprit fails.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from cxrtriage.contract import Prediction, Priority
from cxrtriage.infer import Predictor, load_model
from cxrtriage.io import ImageReadError, Radiograph
from cxrtriage.serve.decode import DecodeBusyError, PixelBudget, decode_bounded, model_copy
from cxrtriage.serve.metrics import Metrics
from cxrtriage.serve.settings import Settings
from cxrtriage.serve.store import Job, Store

log = logging.getLogger("cxrtriage.serve.worker")
RECLAIM_EVERY_S = 5.0  # how often the worker looks for 'running' jobs nobody holds
MAX_BACKOFF_S = 10.0   # longest pause after a failed write before the next try
#: Most bytes of decoded pixels one scoring step holds: a batch of larger films is scored in parts.
CHUNK_BYTES = 64 * 1024 * 1024


class DecodedCache:
    """Radiographs decoded at upload (their :func:`~cxrtriage.serve.decode.model_copy`), kept for the
    worker so it does not decode them again (bounded in bytes; the oldest go first)."""

    def __init__(self, max_bytes: int = 96 * 1024 * 1024):
        self.max_bytes = max_bytes
        self._items: OrderedDict[int, Radiograph] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def put(self, job_id: int, rg: Radiograph) -> None:
        rg = model_copy(rg)  # pixels and meta are all the model needs; no dataset, no more pixels than needed
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


class Throughput:
    """Studies scored per second of the worker's busy time (a moving average), for the queue's wait estimate."""

    def __init__(self, alpha: float = 0.2):
        self.alpha = alpha
        self.per_s: float | None = None

    def add(self, n: int, seconds: float) -> None:
        if n <= 0 or seconds <= 0:
            return
        now = n / seconds
        self.per_s = now if self.per_s is None else (1 - self.alpha) * self.per_s + self.alpha * now


def default_threads() -> int:
    """ONNX Runtime threads for the service: half the cores. The web side needs CPU too, and idle
    intra-op threads spin; on 2 cores one thread gave the lowest latency under load."""
    return max(1, (os.cpu_count() or 1) // 2)


class Worker:
    """Runs inference in a daemon thread. ``notify()`` wakes it after a job was queued."""

    def __init__(self, store: Store, settings: Settings, metrics: Metrics,
                 on_done: Callable[[list[str]], None] | None = None, budget: PixelBudget | None = None,
                 load: Callable[[], Predictor] | None = None,
                 on_scored: Callable[[list[Prediction]], None] | None = None):
        self.store, self.settings, self.metrics = store, settings, metrics
        self.on_done = on_done or (lambda ids: None)
        self.on_scored = on_scored or (lambda preds: None)
        self._load_model = load or (lambda: load_model(settings.model, threads=settings.threads or default_threads()))
        self.previous: Predictor | None = None  # the model before the last swap (for rollback)
        self.budget = budget or PixelBudget(settings.decode_budget_bytes)
        self.cache = DecodedCache()
        self.rate = Throughput()
        self.engine: Predictor | None = None
        self.engine_error: str | None = None
        self.ready = threading.Event()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.processed = 0
        self._held: set[int] = set()  # ids of the jobs being scored now
        self._write_failures = 0

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
        os.environ.setdefault("CXR_ORT_SPINNING", "0")  # the engine's idle threads leave the cores to the rest
        try:
            self.engine = self._load_model()
        except Exception as exc:  # noqa: BLE001 - a missing or broken model: readyz reports it
            self.engine_error = f"{type(exc).__name__}: {exc}"
            log.error("model could not be loaded: %s", self.engine_error)
            return
        try:
            self.store.relax_sync()
        except sqlite3.Error:
            pass
        self.metrics.model_loaded.set(1)
        self.ready.set()
        log.info("model %s %s loaded; worker running (batch %d)", self.engine.model_ref["name"],
                 self.engine.model_ref["version"], self.settings.batch_size)
        next_reclaim = 0.0
        while not self._stop.is_set():
            self._wake.clear()
            if time.monotonic() >= next_reclaim:
                next_reclaim = time.monotonic() + RECLAIM_EVERY_S
                self._reclaim()
            try:
                jobs = self.store.claim(self.settings.batch_size)
            except (OSError, sqlite3.Error) as exc:  # disk full, read-only: tried again in a while
                log.warning("cannot take jobs from the queue: %s", _why(exc))
                self._stop.wait(2.0)
                continue
            except Exception:  # noqa: BLE001 - the worker loop must outlive any queue error
                log.exception("cannot read the queue")
                self._stop.wait(1.0)
                continue
            if not jobs:
                self._wake.wait(1.0)
                continue
            self._process(jobs)

    def _reclaim(self) -> None:
        try:
            n = self.store.reclaim(self._held)
        except (OSError, sqlite3.Error) as exc:
            log.warning("cannot reclaim stale jobs yet: %s", _why(exc))
            return
        if n:
            log.warning("%d job(s) left 'running' put back in the queue", n)
            self.notify()

    def _load(self, job: Job, name: str) -> Radiograph | Prediction:
        """The job's radiograph: decoded at upload (cached), else its stored file decoded again under the
        service's pixel limit and decode budget, as at upload; a file that cannot be read: its result."""
        rg = self.cache.pop(job.id)
        if rg is not None:
            return rg
        try:
            return model_copy(decode_bounded(self.store.read_object(job.sha256), name, self.settings.max_pixels,
                                             self.budget))
        except (ImageReadError, OSError) as exc:  # the stored file is gone or unreadable: this job's result
            return Prediction.failed(name, exc, self.engine.model_ref)

    def _score(self, jobs: list[Job]) -> list[Prediction]:
        """The engine's pipeline over the jobs' radiographs, in parts of at most CHUNK_BYTES of pixels
        (a batch of large films is never all in memory at once)."""
        out: list[Prediction] = []
        chunk: list[Radiograph | Prediction] = []
        names: list[str] = []
        held = 0
        for job in jobs:
            name = f"study {job.study_id}"
            while True:
                try:
                    item = self._load(job, name)
                    break
                except DecodeBusyError:  # uploads hold the budget: wait for it rather than fail the job
                    if self._stop.wait(0.5):
                        raise
            size = int(item.pixels.nbytes) if isinstance(item, Radiograph) else 0
            if chunk and held + size > CHUNK_BYTES:
                out += self._predict(chunk, names)
                chunk, names, held = [], [], 0
            chunk.append(item)
            names.append(name)
            held += size
        return out + (self._predict(chunk, names) if chunk else [])

    def _predict(self, items: list[Radiograph | Prediction], names: list[str]) -> list[Prediction]:
        """The one batch-scoring step over decoded films; a film that could not be read keeps its result."""
        assert self.engine is not None
        return [s.prediction for s in self.engine.score(items, names, heatmap=True)]

    def _process(self, jobs: list[Job]) -> None:
        if self.settings.worker_delay_s:
            if self._stop.wait(self.settings.worker_delay_s * len(jobs)):
                return  # stopping: the jobs stay 'running' and are queued again on the next start
        self._held = {j.id for j in jobs}
        t0 = time.perf_counter()
        try:
            try:
                preds = self._score(jobs)
            except Exception as exc:  # noqa: BLE001 - any failure of a batch becomes its jobs' failure, never a dead worker
                self._batch_failed(jobs, exc)
                return
            self.metrics.inference_seconds.observe(time.perf_counter() - t0)
            self.metrics.batch_size.observe(len(jobs))
            try:
                written = self.store.finish(list(zip(jobs, preds)))
            except (OSError, sqlite3.Error) as exc:
                self._write_failed(jobs, exc)
                return
            self._write_failures = 0
        finally:
            self._held = set()
        now = time.time()
        for job, p in zip(jobs, preds):
            self.metrics.inferences.labels(p.priority.value).inc()
            if p.priority is Priority.REFUSED:
                self.metrics.refusals.inc()
            self.metrics.turnaround.observe(max(0.0, now - job.created_at))
        self.processed += len(written)
        self.rate.add(len(jobs), time.perf_counter() - t0)
        try:
            self.on_scored([p for (job, p) in zip(jobs, preds) if any(j.id == job.id for j, _ in written)])
        except Exception:  # noqa: BLE001 - the watch must never stop the worker
            log.exception("the drift watch failed on a batch")
        self.on_done([j.study_id for j, _ in written] or [j.study_id for j in jobs])

    def _batch_failed(self, jobs: list[Job], exc: Exception) -> None:
        """The pipeline raised (it should not): a batch is retried one job at a time, so that only
        the job that raises fails; a single job fails."""
        log.exception("inference failed for %d job(s)", len(jobs))
        try:
            if len(jobs) > 1:
                self.store.isolate(jobs, f"inference failed in a batch: {type(exc).__name__}; retried alone")
                self.notify()
                return
            self.metrics.inference_errors.inc(len(jobs))
            self.store.fail(jobs, f"inference failed: {type(exc).__name__}")
        except Exception:  # noqa: BLE001 - the jobs stay running and are reclaimed
            log.exception("cannot record the failure; the jobs are reclaimed later")
        self.on_done([j.study_id for j in jobs])

    def _write_failed(self, jobs: list[Job], exc: BaseException) -> None:
        """The result could not be stored (disk full, read-only folder): the jobs go back to the queue
        (their retry counted, the reason kept); the worker pauses, longer after each failure."""
        self._write_failures += 1
        reason = f"result not written ({_why(exc)}); retry {self._write_failures}"
        log.warning("%d job(s) put back in the queue: %s", len(jobs), reason)
        try:
            self.store.requeue(jobs, reason)
        except Exception as again:  # noqa: BLE001 - the store may refuse any write; the jobs are reclaimed later
            log.warning("cannot put the jobs back yet (%s); they are reclaimed when the store takes writes",
                        _why(again))
        self._stop.wait(min(MAX_BACKOFF_S, 0.25 * 2 ** self._write_failures))


def _why(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    return str(exc) or type(exc).__name__
