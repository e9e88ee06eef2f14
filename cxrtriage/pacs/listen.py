"""``cxr pacs listen``: a DICOM C-STORE receiver that triages what it is sent.

A modality or a PACS router pushes images with C-STORE; each received instance is first
written to a spool folder (so an acknowledged image survives a crash), then triaged, and
the results (Secondary Capture + TID 1500 SR, see :mod:`cxrtriage.pacs.results`) are sent
on with C-STORE to ``--forward AE@host:port`` (typically the PACS itself). Failed
forwards are retried with backoff; a SQLite state stops an instance being processed twice.
"""

from __future__ import annotations

import logging
import os
import queue
import re
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification

from cxrtriage.infer import Predictor, load_model
from cxrtriage.pacs.orthanc import PacsError, PacsUnavailable
from cxrtriage.pacs.pipeline import OutcomeStatus, log_outcome, triage_bytes
from cxrtriage.pacs.state import FAILED, PENDING, State, backoff_delay

log = logging.getLogger("cxrtriage.pacs")

_UID_CHARS = re.compile(r"[0-9.]{1,64}")
_SUCCESS_OR_WARNING = {0x0000, 0x0001, 0x0107, 0x0116, 0xB000, 0xB007, 0xB006}


@dataclass(frozen=True)
class Destination:
    """A DICOM node: AE title, host and port."""

    ae_title: str
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


def parse_destination(text: str) -> Destination:
    """``AE@host:port`` -> :class:`Destination` (ValueError with a usable message otherwise)."""
    try:
        ae, rest = text.split("@", 1)
        host, port = rest.rsplit(":", 1)
        dest = Destination(ae.strip(), host.strip().strip("[]"), int(port))
    except ValueError:
        raise ValueError(f"destination {text!r} is not AE@host:port (for example ORTHANC@127.0.0.1:4242)") from None
    if not dest.ae_title or len(dest.ae_title) > 16 or not dest.host or not 0 < dest.port < 65536:
        raise ValueError(f"destination {text!r}: AE title must be 1-16 characters, port 1-65535")
    return dest


def c_store(datasets: list[Dataset], dest: Destination, calling_ae: str, timeout: float = 30.0) -> None:
    """Send ``datasets`` in one association; PacsUnavailable when the node cannot be reached."""
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    for uid in {str(ds.SOPClassUID) for ds in datasets}:
        ae.add_requested_context(uid, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    assoc = ae.associate(dest.host, dest.port, ae_title=dest.ae_title)
    if not assoc.is_established:
        raise PacsUnavailable(f"C-STORE to {dest}: association rejected or node unreachable")
    try:
        for ds in datasets:
            status = assoc.send_c_store(ds)
            code = int(getattr(status, "Status", -1)) if status else -1
            if code == -1:
                raise PacsUnavailable(f"C-STORE to {dest}: no answer (connection lost or timed out)")
            if code not in _SUCCESS_OR_WARNING:
                raise PacsError(f"C-STORE to {dest}: status 0x{code:04X} for {ds.SOPInstanceUID}")
    finally:
        assoc.release()


def default_spool_dir() -> Path:
    return Path.home() / ".cache" / "cxr-triage" / "listen-spool"


class Listener:
    """C-STORE SCP + a worker thread that triages the spool and forwards results."""

    def __init__(self, port: int, ae_title: str = "CXRTRIAGE", forward: str | Destination | None = None,
                 model: str | Path | None = None, *, host: str = "0.0.0.0", engine: Predictor | None = None,
                 state_path: str | Path | None = None, spool_dir: str | Path | None = None,
                 out_dir: str | Path | None = None, batch_size: int = 8, max_backoff_s: float = 60.0):
        if not ae_title or len(ae_title) > 16:
            raise ValueError("AE title must be 1-16 characters")
        self.port, self.ae_title, self.host = int(port), ae_title, host
        self.forward = parse_destination(forward) if isinstance(forward, str) else forward
        self.engine = engine or load_model(model)
        self.spool = Path(spool_dir) if spool_dir else default_spool_dir()
        self.spool.mkdir(parents=True, exist_ok=True)
        self.out_dir = Path(out_dir) if out_dir else None
        self.state = State(state_path or self.spool / "state.sqlite", backoff_cap=max_backoff_s)
        self.batch_size, self.max_backoff_s = batch_size, max_backoff_s
        self._queue: queue.Queue[Path] = queue.Queue()
        self._stop = threading.Event()
        self._server: Any = None
        self._worker: threading.Thread | None = None
        self.received = self.forwarded = 0

    # -- receiving -----------------------------------------------------------------------
    def _on_store(self, event: Any) -> int:
        try:
            data = event.encoded_dataset(include_meta=True)
            sop = str(event.request.AffectedSOPInstanceUID or "")
            if not _UID_CHARS.fullmatch(sop):
                sop = f"x{uuid.uuid4().hex}"
            tmp = self.spool / f".{uuid.uuid4().hex}.part"
            tmp.write_bytes(data)
            dest = self.spool / f"{sop}.dcm"
            os.replace(tmp, dest)
        except Exception:
            log.exception("cannot spool a received instance")
            return 0xA700  # out of resources
        self.received += 1
        self._queue.put(dest)
        return 0x0000

    def start(self) -> Listener:
        ae = AE(ae_title=self.ae_title)
        for cx in AllStoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification)
        ae.maximum_pdu_size = 0
        self._server = ae.start_server((self.host, self.port), block=False,
                                       evt_handlers=[(evt.EVT_C_STORE, self._on_store)])
        for path in sorted(self.spool.glob("*.dcm")):  # left over from a previous run
            self._queue.put(path)
        self._worker = threading.Thread(target=self._work, name="cxr-listen-worker", daemon=True)
        self._worker.start()
        log.info("listening as %s on %s:%d%s", self.ae_title, self.host, self.port,
                 f", forwarding results to {self.forward}" if self.forward else "")
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        if self._worker is not None:
            self._worker.join(30)
        self.state.close()

    def serve_forever(self) -> None:
        try:
            while not self._stop.wait(1.0):
                pass
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()

    # -- processing ----------------------------------------------------------------------
    def _take(self) -> list[Path]:
        try:
            first = self._queue.get(timeout=0.2)
        except queue.Empty:
            return []
        paths = [first]
        while len(paths) < self.batch_size:
            try:
                paths.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return paths

    def _work(self) -> None:
        retry: list[tuple[float, Path]] = []
        while not self._stop.is_set():
            now = time.time()
            due = [p for t, p in retry if t <= now]
            retry = [(t, p) for t, p in retry if t > now]
            paths = list(dict.fromkeys(due + self._take()))
            if not paths:
                continue
            for path, delay in self._handle(paths):
                retry.append((time.time() + delay, path))

    def _handle(self, paths: list[Path]) -> list[tuple[Path, float]]:
        """Triage and forward ``paths``; returns the ones to retry later, with their delay."""
        todo: list[tuple[Path, bytes]] = []
        for p in paths:
            key = f"sop:{p.stem}"
            item = self.state.get(key)
            if item is not None and item.status is not PENDING:
                log.info("already processed %s (%s); dropping the duplicate", p.stem, item.status)
                p.unlink(missing_ok=True)
                continue
            try:
                todo.append((p, p.read_bytes()))
            except FileNotFoundError:
                continue
            self.state.enqueue([(key, {"spool": str(p)})])
        if not todo:
            return []
        retry: list[tuple[Path, float]] = []
        for (p, _), out in zip(todo, triage_bytes(self.engine, [(p.stem, d) for p, d in todo])):
            key = f"sop:{p.stem}"
            log_outcome(out, "listen")
            if out.status is OutcomeStatus.SKIPPED:
                self.state.mark_skipped(key, out.reason or "skipped")
                p.unlink(missing_ok=True)
                continue
            try:
                if out.status is OutcomeStatus.ERROR:
                    raise PacsError(out.reason or "error")
                self._deliver(out.datasets)
            except (PacsError, OSError) as exc:
                item = self.state.get(key)
                assert item is not None
                outage = isinstance(exc, (PacsUnavailable, OSError))
                if self.state.mark_retry(item, str(exc), permanent_after=not outage) == FAILED:
                    log.error("giving up on %s: %s", p.stem, exc)
                    p.unlink(missing_ok=True)
                else:
                    delay = backoff_delay(item.attempts + 1, 1.0, self.max_backoff_s)
                    log.warning("forward of %s failed (%s); retry in %.1f s", p.stem, exc, delay)
                    retry.append((p, delay))
                continue
            self.state.mark_done(key, [str(d.SOPInstanceUID) for d in out.datasets])
            self.forwarded += len(out.datasets)
            p.unlink(missing_ok=True)
        return retry

    def _deliver(self, datasets: list[Dataset]) -> None:
        if self.out_dir is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            for ds in datasets:
                ds.save_as(self.out_dir / f"{ds.SOPInstanceUID}.dcm", enforce_file_format=True)
        if self.forward is not None:
            c_store(datasets, self.forward, self.ae_title)


def listen(port: int, ae_title: str = "CXRTRIAGE", forward: str | None = None, model: str | Path | None = None,
           *, host: str = "0.0.0.0", state_path: str | Path | None = None, spool_dir: str | Path | None = None,
           out_dir: str | Path | None = None, engine: Predictor | None = None, max_backoff_s: float = 60.0,
           block: bool = True) -> Listener:
    """Receive images with C-STORE on ``port`` as ``ae_title``; triage them; forward results.

    ``forward``: ``AE@host:port`` that receives the SC and SR with C-STORE (without it, and
    without ``out_dir``, results are only logged). ``out_dir``: also write results as files.
    Failed forwards are retried with exponential backoff up to ``max_backoff_s``.
    ``block=False`` returns the running :class:`Listener` (call ``stop()``); otherwise
    serve until interrupted.
    """
    lst = Listener(port, ae_title, forward, model, host=host, engine=engine, state_path=state_path,
                   spool_dir=spool_dir, out_dir=out_dir, max_backoff_s=max_backoff_s).start()
    if block:
        lst.serve_forever()
    return lst
