"""``cxr pacs watch``: follow a PACS, triage every new chest radiograph, store results back.

Two ways to find new instances:

* ``mode="changes"`` (Orthanc): the ``/changes`` feed; instances are read with Orthanc's
  REST API (``/instances/{id}/file``, the file exactly as stored);
* ``mode="dicomweb"`` (any DICOMweb PACS): QIDO-RS polling for CR/DX instances, WADO-RS
  retrieval in the stored transfer syntax.

Results (see :mod:`cxrtriage.pacs.results`) go back into the source study with STOW-RS
(``store="stow"``, the default) or Orthanc's ``POST /instances`` (``store="rest"``).
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
import threading
import time
from collections import defaultdict
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from cxrtriage.infer import Engine, Predictor, load_model
from cxrtriage.pacs.connection import PacsConnection
from cxrtriage.pacs.dicomweb import InstanceRef, dicomweb_client, qido_instances, stow_bytes, wado_instance
from cxrtriage.pacs.orthanc import OrthancClient, PacsError, PacsUnavailable
from cxrtriage.pacs.pipeline import (
    Encoded,
    OutcomeStatus,
    log_outcome,
    pool_init,
    pool_ready,
    pool_triage,
    skip_reason,
    triage_encode,
)
from cxrtriage.pacs.state import FAILED, PENDING, SKIPPED, Item, State, backoff_delay

log = logging.getLogger("cxrtriage.pacs")

MODES = ("changes", "dicomweb")
STORES = ("stow", "rest")


@dataclass
class WatchStats:
    """Counts of one ``watch`` run."""

    discovered: int = 0
    triaged: int = 0
    refused: int = 0
    skipped: int = 0
    failed: int = 0
    retried: int = 0
    stored: int = 0
    cycles: int = 0
    errors: list[str] = field(default_factory=list)
    pending: int = 0

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)


class WatchSource(Protocol):
    name: str

    def discover(self, state: State) -> int: ...
    def pre_skip(self, item: Item) -> str | None: ...
    def fetch(self, item: Item) -> bytes: ...


class ChangesSource:
    """Orthanc's change feed; the cursor is the last sequence number seen."""

    name = "changes"

    def __init__(self, client: OrthancClient, backfill: bool = True, page: int = 500):
        self.client, self.backfill, self.page = client, backfill, page
        self.cursor_name = f"changes:{client.url}"

    def discover(self, state: State) -> int:
        since = state.cursor(self.cursor_name)
        if since is None:
            start = 0 if self.backfill else self.client.last_change()
            state.enqueue([], cursor=(self.cursor_name, str(start)))
            since = str(start)
        seq, added = int(since), 0
        while True:
            changes, last, done = self.client.changes(seq, self.page)
            if not changes and seq > 0 and added == 0 and self.client.last_change() < seq:
                # The feed restarted below our cursor: a new Orthanc database. Start again from 0.
                log.warning("Orthanc's change feed restarted (last %d < cursor %d); reading it from the start",
                            self.client.last_change(), seq)
                seq = 0
                state.enqueue([], cursor=(self.cursor_name, "0"))
                continue
            new = [(f"orthanc:{c.id}", {"orthanc_id": c.id, "seq": c.seq}) for c in changes
                   if c.change_type == "NewInstance"]
            added += state.enqueue(new, cursor=(self.cursor_name, str(last)))
            if done or last <= seq:
                return added
            seq = last

    def pre_skip(self, item: Item) -> str | None:
        """Judge from the series' tags in Orthanc's index (no file read): CT, SR, our own outputs..."""
        stags = self.client.instance_series_tags(item.ref["orthanc_id"])
        return skip_reason(stags.get("Modality"), None, stags.get("Manufacturer"), stags.get("SeriesDescription"))

    def fetch(self, item: Item) -> bytes:
        return self.client.instance_file(item.ref["orthanc_id"])


class QidoPoller:
    """QIDO-RS polling; every CR/DX instance not yet in the state is new."""

    name = "dicomweb"

    def __init__(self, client: Any, backfill: bool = True, lookback_days: int | None = None):
        self.client, self.backfill, self.lookback_days = client, backfill, lookback_days
        self.cursor_name = f"dicomweb:{client.base_url}"

    def discover(self, state: State) -> int:
        refs = qido_instances(self.client, lookback_days=self.lookback_days)
        keys = [r.key for r in refs]
        known = state.known_keys(keys)
        new = [(r.key, r.to_dict()) for r in refs if r.key not in known]
        if state.cursor(self.cursor_name) is None:
            state.enqueue([], cursor=(self.cursor_name, str(time.time())))
            if not self.backfill:  # everything already there counts as seen
                state.enqueue(new, status=SKIPPED, detail="present before the watcher started")
                return 0
        return state.enqueue(new)

    def pre_skip(self, item: Item) -> str | None:
        return skip_reason(item.ref.get("modality"), item.ref.get("sop_class_uid"))

    def fetch(self, item: Item) -> bytes:
        r = item.ref
        return wado_instance(self.client, InstanceRef(r["study_uid"], r["series_uid"], r["sop_uid"]))


class Storer:
    """Writes encoded result objects into their study (STOW-RS or Orthanc REST)."""

    def __init__(self, kind: str, pacs: PacsConnection):
        if kind not in STORES:
            raise ValueError(f"store must be one of {STORES}, not {kind!r}")
        self.kind = kind
        self.dw = dicomweb_client(pacs) if kind == "stow" else None
        self.rest = OrthancClient(pacs) if kind == "rest" else None

    def store(self, parts: list[bytes], study_uid: str) -> None:
        if self.dw is not None:
            stow_bytes(self.dw, parts, study_uid)
            return
        assert self.rest is not None
        for data in parts:
            self.rest.store(data)


def _done(value: Any) -> Future:
    f: Future = Future()
    f.set_result(value)
    return f


class Watcher:
    """The watch loop; see :func:`watch`."""

    def __init__(self, pacs: PacsConnection | str, mode: str = "changes", poll_s: float = 1.0,
                 state_path: str | Path | None = None, model: str | Path | None = None, *,
                 engine: Predictor | None = None, store: str = "stow", batch_size: int = 8,
                 max_backoff_s: float = 60.0, backfill: bool = True, lookback_days: int | None = None,
                 workers: int = 1, **connection: Any):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
        self.pacs = PacsConnection.of(pacs, **connection)
        self.url, self.mode, self.poll_s = self.pacs.url, mode, max(0.05, float(poll_s))
        self.batch_size, self.max_backoff_s = max(1, batch_size), max_backoff_s
        self.state = State(state_path, backoff_base=min(1.0, self.poll_s), backoff_cap=max_backoff_s)
        self.engine = engine or load_model(model)
        if mode == "changes":
            self.source: WatchSource = ChangesSource(OrthancClient(self.pacs), backfill)
        else:
            self.source = QidoPoller(dicomweb_client(self.pacs), backfill, lookback_days)
        self.storer = Storer(store, self.pacs)  # its own session: another thread
        self.stats = WatchStats()
        self._stats_lock = threading.Lock()
        self.workers = max(1, int(workers))
        self._procs: ProcessPoolExecutor | None = None
        if self.workers > 1:
            ctx = multiprocessing.get_context("spawn")  # no fork of a threaded process
            model_path = str(self.engine.onnx_path) if isinstance(self.engine, Engine) else None
            self._procs = ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=pool_init,
                                              initargs=(model_path,))
            for f in [self._procs.submit(pool_ready) for _ in range(self.workers)]:
                f.result()  # load the model in every worker before the first image
        self.max_inflight = self.workers + 1
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cxr-store")
        self._stores: list[Future] = []
        self._inflight: set[str] = set()
        self._outage = threading.Event()

    def close(self) -> None:
        self.drain()
        self._pool.shutdown(wait=True)
        if self._procs is not None:
            self._procs.shutdown(wait=True, cancel_futures=True)
        self.state.close()

    # -- one pass --------------------------------------------------------------------------
    def _fetch(self, items: list[Item]) -> tuple[list[tuple[Item, bytes]], bool]:
        fetched: list[tuple[Item, bytes]] = []
        for it in items:
            try:
                reason = self.source.pre_skip(it)
                if reason:
                    self.state.mark_skipped(it.key, reason)
                    self._count("skipped")
                    log.info("skip %s: %s", it.key, reason)
                    continue
                fetched.append((it, self.source.fetch(it)))
            except PacsUnavailable as exc:
                self.state.mark_retry(it, str(exc), permanent_after=False)
                self._count("retried")
                return fetched, True
            except PacsError as exc:
                if exc.status == 404:
                    self.state.mark_skipped(it.key, "deleted from the PACS before it was triaged")
                    self._count("skipped")
                    log.info("skip %s: deleted from the PACS before it was triaged", it.key)
                else:
                    self._retry(it, str(exc))
        return fetched, False

    def _retry(self, it: Item, error: str, outage: bool = False) -> None:
        status = self.state.mark_retry(it, error, permanent_after=not outage)
        if status == FAILED:
            self._count("failed")
            log.error("giving up on %s after %d attempts: %s", it.key, it.attempts + 1, error)
        else:
            self._count("retried")
            log.warning("will retry %s: %s", it.key, error)

    def process(self, items: list[Item]) -> bool:
        """Fetch a batch, triage it (here or in a worker process) and hand it to the store thread.

        Storing overlaps with triaging the next batch (the PACS works while we compute).
        Returns True when the PACS became unreachable.
        """
        fetched, outage = self._fetch(items)
        if fetched:
            batch = [(it.key, data) for it, data in fetched]
            if self._procs is not None:
                future = self._procs.submit(pool_triage, batch)
            else:
                future = _done(triage_encode(self.engine, batch))
            while len(self._stores) >= self.max_inflight:
                self._stores.pop(0).result()
            for it, _ in fetched:
                self._inflight.add(it.key)
            self._stores.append(self._pool.submit(self._finish, [it for it, _ in fetched], future))
        return outage or self._outage.is_set()

    def _finish(self, items: list[Item], future: Future) -> None:
        """Store thread: record skips and errors, one STOW per study, mark items done or to retry."""
        try:
            outcomes: list[Encoded] = future.result()
        except Exception as exc:  # a worker process died: retry the whole batch later
            log.exception("triage of a batch failed")
            for it in items:
                self._retry(it, f"triage failed: {type(exc).__name__}: {exc}")
                self._inflight.discard(it.key)
            return
        by_study: dict[str, list[tuple[Item, Encoded]]] = defaultdict(list)
        for it, out in zip(items, outcomes):
            log_outcome(out)
            if out.status is OutcomeStatus.SKIPPED:
                self.state.mark_skipped(it.key, out.reason or "skipped")
                self._count("skipped")
                self._inflight.discard(it.key)
            elif out.status is OutcomeStatus.ERROR:
                self._retry(it, out.reason or "error")
                self._inflight.discard(it.key)
            else:
                by_study[out.study_uid or ""].append((it, out))
        for study_uid, group in by_study.items():
            parts = [data for _, out in group for _, data in out.outputs]
            try:
                if self._outage.is_set():
                    raise PacsUnavailable("PACS unreachable")
                self.storer.store(parts, study_uid)
            except Exception as exc:
                outage = isinstance(exc, PacsUnavailable)
                if outage:
                    self._outage.set()
                elif not isinstance(exc, PacsError):
                    log.exception("storing results of study %s failed", study_uid)
                for it, _ in group:
                    self._retry(it, str(exc), outage=outage)
                    self._inflight.discard(it.key)
                continue
            self._count("stored", len(parts))
            for it, out in group:
                self.state.mark_done(it.key, [uid for uid, _ in out.outputs],
                                     detail=out.reason if out.refused else None)
                self._count("refused" if out.refused else "triaged")
                self._inflight.discard(it.key)

    def _count(self, name: str, n: int = 1) -> None:
        with self._stats_lock:
            setattr(self.stats, name, getattr(self.stats, name) + n)

    def drain(self) -> None:
        """Wait for the batches handed to the store thread."""
        while self._stores:
            self._stores.pop(0).result()

    def run_once(self, drain: bool = True) -> None:
        """Discover new instances, then start processing everything due now. Raises PacsUnavailable.

        ``drain=False`` returns while the last results are still being stored (the loop
        goes on discovering meanwhile); in-flight instances are never handed out twice.
        """
        self.stats.cycles += 1
        for f in [f for f in self._stores if f.done()]:
            self._stores.remove(f)
            f.result()
        if not self._stores:
            self._outage.clear()
        self.stats.discovered += self.source.discover(self.state)
        try:
            while not self._outage.is_set():
                want = self.batch_size * self.workers
                items = [it for it in self.state.due(want + len(self._inflight))
                         if it.key not in self._inflight][:want]
                if not items:
                    break
                # Spread what is due over the worker processes (small batches keep latency low).
                size = max(1, min(self.batch_size, -(-len(items) // self.workers)))
                if any(self.process(items[i:i + size]) for i in range(0, len(items), size)):
                    break
        finally:
            if drain or self._outage.is_set():
                self.drain()
        if self._outage.is_set():
            raise PacsUnavailable("PACS became unreachable while processing")

    def run(self, once: bool = False, stop: threading.Event | None = None) -> WatchStats:
        """Loop until ``stop`` is set (or one pass with ``once``); outages back off and retry."""
        stop = stop or threading.Event()
        failures = 0
        log.info("watching %s (%s mode, store %s, model %s %s)", self.url, self.mode, self.storer.kind,
                 self.engine.model_ref["name"], self.engine.model_ref["version"])
        while not stop.is_set():
            started = time.monotonic()
            try:
                self.run_once(drain=once)
                failures = 0
            except PacsUnavailable as exc:
                failures += 1
                self.stats.errors.append(str(exc))
                if once:
                    log.warning("PACS unavailable: %s", exc)
                    break
                delay = backoff_delay(failures, self.poll_s, self.max_backoff_s)
                log.warning("PACS unavailable (%s); retrying in %.1f s", exc, delay)
                stop.wait(delay)
                continue
            if once:
                break
            wait = max(0.0, self.poll_s - (time.monotonic() - started))
            due = self.state.next_due_in(exclude=self._inflight)
            if due is not None:
                wait = min(wait, max(0.05, due))
            stop.wait(wait)
        self.drain()
        self.stats.pending = self.state.counts().get(PENDING, 0)
        return self.stats


def watch(pacs: PacsConnection | str, mode: str = "changes", poll_s: float = 1.0,
          state_path: str | Path | None = None, model: str | Path | None = None, once: bool = False, *,
          store: str = "stow", batch_size: int = 8, max_backoff_s: float = 60.0, backfill: bool = True,
          lookback_days: int | None = None, workers: int = 1, engine: Predictor | None = None,
          stop: threading.Event | None = None, **connection: Any) -> WatchStats:
    """Follow the PACS ``pacs`` and write triage results back into each study.

    ``pacs``: a :class:`~cxrtriage.pacs.connection.PacsConnection`, or the PACS's URL with the
    connection's other fields as keywords (``user=..., password=...``, ``token=...``,
    ``dicomweb_root=...``).
    ``mode``: ``changes`` (Orthanc's change feed) or ``dicomweb`` (QIDO-RS polling).
    ``state_path``: SQLite file of progress (default ``~/.cache/cxr-triage/pacs-state.sqlite``);
    keep it to make restarts resume without reprocessing. ``once``: one pass, then return.
    ``backfill=False`` ignores what is already in the PACS on the first run.
    ``lookback_days`` (DICOMweb): only poll studies of the last N days. ``workers``: triage
    in that many worker processes (each loads the model) to use several cores. ``stop``:
    an event that ends the loop (the CLI stops on Ctrl-C instead).
    """
    w = Watcher(pacs, mode, poll_s, state_path, model, engine=engine, store=store, batch_size=batch_size,
                max_backoff_s=max_backoff_s, backfill=backfill, lookback_days=lookback_days, workers=workers,
                **connection)
    stop = stop or threading.Event()
    previous = None
    if threading.current_thread() is threading.main_thread():
        # SIGTERM (service stop) ends the loop cleanly: in-flight results are stored first.
        previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        return w.run(once=once, stop=stop)
    except KeyboardInterrupt:
        log.info("interrupted; finishing in-flight results")
        return w.stats
    finally:
        w.close()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
