"""The triage service without HTTP: add studies, queue and await results, render images.

The HTTP API (``api.py``) and the PACS bridge share it: the bridge calls
:meth:`TriageService.add_study_from_bytes` with ``source="pacs"`` and its own reference
(for example the SOP Instance UID), and the studies show up in the same worklist.
With a PACS configured (``CXR_PACS_URL``), :meth:`TriageService.pacs_studies` lists its
chest radiograph studies and :meth:`TriageService.open_pacs_study` imports one.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import threading
import time
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cxrtriage.about import DISCLAIMER, __version__
from cxrtriage.contract import Prediction
from cxrtriage.io import IMAGE_SUFFIXES, ImageReadError, NotAnImageError, Radiograph
from cxrtriage.serve import render
from cxrtriage.serve.decode import PixelBudget, decode_bounded
from cxrtriage.serve.limits import RateLimiter
from cxrtriage.serve.metrics import Metrics
from cxrtriage.serve.settings import Settings
from cxrtriage.serve.site import ModelVersions, SiteLoop
from cxrtriage.serve.store import QueueFullError, Source, Store, StudyStatus, heatmap_from_row, prediction_from_row
from cxrtriage.serve.worker import Worker, default_threads

log = logging.getLogger("cxrtriage.serve")


class EmptyFileError(NotAnImageError):
    """The upload holds no bytes."""


class UnknownStudyError(KeyError):
    """No study has this id."""


class NotReadyError(LookupError):
    """The study has no result (or no heatmap) yet."""


class PacsNotConfiguredError(LookupError):
    """The service has no PACS (``CXR_PACS_URL`` unset)."""


class PacsFailedError(RuntimeError):
    """The PACS did not answer, answered with an error, or PACS support is not installed.

    ``status``: the PACS's HTTP status when it answered one; ``retry``: worth trying again later.
    """

    def __init__(self, message: str, status: int | None = None, retry: bool = True):
        super().__init__(message)
        self.status = status
        self.retry = retry


class UnknownPacsStudyError(LookupError):
    """The PACS has no such study, or it holds no CR/DX image."""


@dataclass(frozen=True)
class PacsOpened:
    """Outcome of opening a PACS study: one entry per radiograph, and those that could not be added."""

    study_uid: str
    added: list[tuple[str, Added, str | None]]  # (SOP Instance UID, outcome, display name)
    errors: list[tuple[str, ImageReadError]]


_PACS_KEY = "pacs_study:"  # meta key: Study Instance UID -> the local study ids it was opened as


def _pacs_name(data: bytes, sop_uid: str, index: int, count: int) -> str:
    """A display name for a radiograph opened from the PACS: description, view, accession."""
    import io

    import pydicom

    parts: list[str] = []
    try:
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, force=True)
        for kw in ("StudyDescription", "SeriesDescription"):
            text = str(ds.get(kw, "") or "").strip()
            if text and text not in parts:
                parts.append(text)
                break
        view = str(ds.get("ViewPosition", "") or "").strip()
        if view:
            parts.append(view)
        acc = str(ds.get("AccessionNumber", "") or "").strip()
        if acc:
            parts.append(f"Acc {acc}")
    except Exception:  # noqa: BLE001 - the name is cosmetic; the image is read (and judged) when it is added
        pass
    if not parts:
        parts.append(f"PACS image …{sop_uid[-10:]}")
    if count > 1:
        parts.append(f"{index}/{count}")
    return " · ".join(parts)


def _pacs_reason(exc: Exception) -> str:
    """A short, credential-free account of a failed PACS call for the user."""
    status = getattr(exc, "status", None)
    text = str(exc)
    what = text.split(":", 1)[0] if ":" in text else ""
    if status:
        return f"{what + ': ' if what else ''}HTTP {status}"
    cause = exc.__cause__ or exc.__context__
    kind = type(cause).__name__ if cause is not None else type(exc).__name__
    return f"{what + ': ' if what else ''}{kind}"


@dataclass(frozen=True)
class Added:
    """Outcome of adding one file: the study id, and False in ``created`` when it was a duplicate."""

    id: str
    created: bool
    job_id: int | None = None
    name: str | None = None  # the name stored for the study (cleaned; for a duplicate, the first one's)


_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def display_name(name: str | None) -> str | None:
    """The client's file name, for display only: last path component, no control characters, no
    format characters (Unicode category Cf, e.g. U+202E, which can reorder how a name reads), 120 chars."""
    if not name:
        return None
    base = re.split(r"[\\/]", name)[-1]
    base = "".join(ch for ch in _UNSAFE.sub("", base) if unicodedata.category(ch) != "Cf").strip()
    return base[:120] or None


def _patient_parts(rg: Radiograph) -> list[str] | None:
    ds = rg.dicom
    if ds is None:
        return None
    pid = str(ds.get("PatientID", "") or "").strip()
    pname = str(ds.get("PatientName", "") or "").strip()
    birth = str(ds.get("PatientBirthDate", "") or "").strip()
    if pid:
        return ["id", pid]
    if pname:
        return ["name", pname, birth]
    return None


class TriageService:
    """Store + worker + the waiting room for results. ``start()`` before use, ``stop()`` after."""

    def __init__(self, settings: Settings, metrics: Metrics | None = None):
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.store = Store(settings.data_dir, fsync=settings.fsync)
        self.budget = PixelBudget(settings.decode_budget_bytes)  # decoded pixels, the whole process
        self.site = SiteLoop(self.store, self.metrics)
        self.versions = ModelVersions(self.site, settings.model, settings.threads or default_threads())
        self.worker = Worker(self.store, settings, self.metrics, on_done=self._on_done, budget=self.budget,
                             load=self.versions.load_active, on_scored=self.site.observe)
        self.analyze_limiter = RateLimiter(settings.analyze_per_minute)
        self.windows = render.WindowCache()
        self.renditions = render.WindowCache(max_entries=64, max_bytes=128 * 1024 * 1024)
        self._decodes = threading.BoundedSemaphore(settings.max_decodes)  # full decodes at once
        self._waiters: dict[str, list[tuple[asyncio.AbstractEventLoop, asyncio.Future]]] = {}
        self._lock = threading.Lock()
        self.metrics.bind_queue(self._queue_depth)
        self.started_at = time.time()

    # -- life cycle ------------------------------------------------------------
    def start(self) -> None:
        self.store.lock()
        rec = self.store.recover()
        swept = self.store.sweep()
        if rec["requeued"] or rec["failed"]:
            log.info("resuming: %d job(s) queued again, %d given up", rec["requeued"], rec["failed"])
        if swept["tmp"] or swept["orphans"]:
            log.info("removed %d temporary and %d unreferenced file(s)", swept["tmp"], swept["orphans"])
        if self.store.created and self.settings.samples:
            self.offer_samples()
        self.worker.start()
        log.info("data in %s; %d job(s) waiting", self.settings.data_dir, self.store.pending_count())

    def stop(self) -> None:
        self.worker.stop()
        self.store.close()

    def offer_samples(self) -> int:
        """Add the bundled sample radiographs (first start with an empty data directory)."""
        if self.store.meta_get("samples_offered"):
            return 0
        folder = Path(self.settings.samples_dir)
        n = 0
        if folder.is_dir():
            for p in sorted(folder.iterdir()):
                if p.suffix.lower() not in IMAGE_SUFFIXES or not p.is_file():
                    continue
                try:
                    if self.add_study_from_bytes(p.read_bytes(), p.name, source="sample").created:
                        n += 1
                except Exception as exc:  # noqa: BLE001 - a broken sample must not stop the service
                    log.warning("sample %s not added: %s", p.name, type(exc).__name__)
        self.store.meta_set("samples_offered", str(n))
        if n:
            log.info("offered %d sample radiograph(s) for the demo worklist", n)
        return n

    def _queue_depth(self) -> int:
        try:
            return self.store.pending_count()
        except Exception:  # noqa: BLE001 - a status figure: never fail the page for it
            return -1

    # -- adding studies ----------------------------------------------------------
    def add_study_from_bytes(self, data: bytes, name: str | None = None, source: str = "upload",
                             external_ref: str | None = None) -> Added:
        """Validate, store and queue one file (DICOM, PNG or JPEG).

        Raises a :class:`cxrtriage.io.ImageReadError` subclass (message for the user) when the
        file is not a usable radiograph. The same bytes twice give the same study.
        """
        source = Source(source)
        shown = display_name(name)
        if not data:
            raise EmptyFileError(f"{shown or 'the upload'}: file is empty")
        sha = hashlib.sha256(data).hexdigest()
        row = self.store.find_by_sha(sha)
        if row is not None:
            self.metrics.uploads.labels("duplicate").inc()
            return Added(row["id"], False, name=row["name"])
        self.admit()
        rg = self.decode_bytes(data, shown or "upload")
        with self.budget.lease(int(rg.pixels.nbytes) * 2):  # the decoded film and its rendition, until stored
            return self._add_decoded(data, sha, rg, shown, source, external_ref)

    def _add_decoded(self, data: bytes, sha: str, rg: Radiograph, shown: str | None, source: Source,
                     external_ref: str | None) -> Added:
        meta = rg.meta
        parts = _patient_parts(rg)
        fields: dict[str, Any] = {
            "sha256": sha, "source": source.value, "external_ref": external_ref, "name": shown, "size": len(data),
            "format": meta.get("format"), "modality": meta.get("modality"),
            "view_position": meta.get("view_position"), "photometric": meta.get("photometric"),
            "bits": meta.get("bits"), "width": meta.get("width"), "height": meta.get("height"),
            "patient_ref": self.store.pseudonym(*parts) if parts else None,
        }
        try:
            win = render.window_defaults(rg)
            fields.update(win_center=win["center"], win_width=win["width"], value_min=win["min"],
                          value_max=win["max"])
        except Exception:  # noqa: BLE001 - the viewer then works the window out when first asked
            pass
        self.store.put_object(data, sha)
        try:
            sid, created, job_id = self.store.insert_study(fields, max_pending=self.settings.queue_max)
        except QueueFullError as exc:  # the file stays until the next start's sweep (another upload may share it)
            exc.retry_after = self.retry_after()
            raise
        if created:
            self.worker.cache.put(job_id, rg)
            self.renditions.put(sid, render.rendition(rg.pixels))
            self.worker.notify()
            self.metrics.uploads.labels("created").inc()
            log.info("study %s queued (%s, %d bytes, source %s)", sid, fields["format"], len(data), source)
        else:
            self.metrics.uploads.labels("duplicate").inc()
            shown = (self.store.find_by_sha(sha) or {"name": shown})["name"]
        return Added(sid, created, job_id, shown)

    def decode_bytes(self, data: bytes, name: str) -> Radiograph:
        """Decode a file within the pixel limit and the process's decode budget (reduced when it is over
        2048 px a side), at most ``settings.max_decodes`` at once."""
        with self._decodes:
            return decode_bounded(data, name, self.settings.max_pixels, self.budget)

    # -- backpressure ------------------------------------------------------------------
    def retry_after(self, depth: int | None = None) -> int:
        """Seconds a refused client should wait: the time the queue takes to drain (1 to 60)."""
        depth = self._queue_depth() if depth is None else depth
        rate = self.worker.rate.per_s
        return int(min(60, max(1, round(depth / rate)))) if rate else 5

    def admit(self) -> None:
        """Raise :class:`QueueFullError` when the queue is at its bound, or its estimated wait (jobs over
        the worker's measured rate) is over ``settings.queue_max_wait_s``."""
        depth = self.store.pending_count()
        st = self.settings
        if depth >= st.queue_max:
            raise QueueFullError(f"the queue is full ({depth} studies waiting; the limit is {st.queue_max})",
                                 self.retry_after(depth))
        rate = self.worker.rate.per_s
        if st.queue_max_wait_s and rate and depth / rate > st.queue_max_wait_s:
            raise QueueFullError(f"the queue is too long: {depth} studies waiting, about {depth / rate:.0f} s of "
                                 f"work (the limit is {st.queue_max_wait_s:g} s)", self.retry_after(depth))

    # -- the PACS (DICOMweb) -------------------------------------------------------------
    def _pacs_call(self, fn_name: str, *args: Any, **kw: Any) -> Any:
        """Call :mod:`cxrtriage.pacs.worklist` ``fn_name`` with the configured PACS and credentials."""
        st = self.settings
        if not st.pacs:
            raise PacsNotConfiguredError("no PACS is configured")
        try:
            from cxrtriage.pacs import worklist
            from cxrtriage.pacs.connection import PacsConnection
            from cxrtriage.pacs.orthanc import PacsError, PacsUnavailable
        except ImportError as exc:
            raise PacsFailedError(f"PACS support is not installed (pip install -e '.[pacs]'): {exc.name}",
                                  retry=False) from exc
        fn = getattr(worklist, fn_name)
        try:
            pacs = PacsConnection(st.pacs_url, st.pacs_user, st.pacs_password, st.pacs_token, st.pacs_dicomweb_root)
            return fn(pacs, *args, **kw)
        except PacsUnavailable as exc:
            log.warning("PACS %s does not answer: %s", st.pacs_url, _pacs_reason(exc))
            raise PacsFailedError(f"the PACS at {st.pacs_url} does not answer ({_pacs_reason(exc)}); "
                                  "try again later", exc.status) from exc
        except PacsError as exc:
            log.warning("PACS %s refused a request: %s", st.pacs_url, _pacs_reason(exc))
            why = "check CXR_PACS_USER/CXR_PACS_PASSWORD or CXR_PACS_TOKEN" if exc.status in (401, 403) else (
                "is the URL a DICOMweb server (CXR_PACS_DICOMWEB_ROOT)?")
            raise PacsFailedError(f"the PACS at {st.pacs_url} refused the request ({_pacs_reason(exc)}); {why}",
                                  exc.status, retry=False) from exc
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("PACS %s gave an unusable answer: %s", st.pacs_url, type(exc).__name__)
            raise PacsFailedError(f"the PACS at {st.pacs_url} gave an answer that is not DICOMweb "
                                  f"({type(exc).__name__}); check CXR_PACS_URL and CXR_PACS_DICOMWEB_ROOT",
                                  retry=False) from exc

    def pacs_studies(self, limit: int = 25, offset: int = 0, filters: dict[str, str] | None = None,
                     with_results: bool = True) -> list[dict[str, Any]]:
        """The PACS's CR/DX studies, newest first, each with ``triage`` (results stored in the PACS)
        and ``opened`` (the rows of the local studies it was opened as, oldest first)."""
        rows = self._pacs_call("list_pacs_studies", limit=limit, offset=offset, filters=filters or None,
                               with_results=with_results)
        for row in rows:
            row["opened"] = self.pacs_opened(row.get("study_uid") or "")
        return rows

    def pacs_opened(self, study_uid: str) -> list[Any]:
        """The local studies a PACS study was opened as (those not deleted since)."""
        if not study_uid:
            return []
        raw = self.store.meta_get(_PACS_KEY + study_uid)
        ids = json.loads(raw) if raw else []
        return [row for row in (self.store.get_study(i) for i in ids) if row is not None]

    def open_pacs_study(self, study_uid: str) -> PacsOpened:
        """Fetch the study's CR/DX images from the PACS, add them (``source="pacs"``, the SOP
        Instance UID as reference) and queue them for the model. The same image twice is the
        same study (content-addressed), so opening again adds nothing."""
        images = self._pacs_call("fetch_pacs_images", study_uid)
        if not images:
            raise UnknownPacsStudyError(study_uid)
        added: list[tuple[str, Added, str | None]] = []
        errors: list[tuple[str, ImageReadError]] = []
        for i, (sop_uid, data) in enumerate(images, 1):
            name = _pacs_name(data, sop_uid, i, len(images))
            try:
                added.append((sop_uid, self.add_study_from_bytes(data, name, source="pacs", external_ref=sop_uid),
                              display_name(name)))
            except ImageReadError as exc:
                log.info("PACS image refused: %s (%d bytes)", type(exc).__name__, len(data))
                errors.append((sop_uid, exc))
        if added:
            with self._lock:
                known = [r["id"] for r in self.pacs_opened(study_uid)]
                ids = known + [a.id for _, a, _ in added if a.id not in known]
                self.store.meta_set(_PACS_KEY + study_uid, json.dumps(ids))
        log.info("PACS study opened: %d image(s) added, %d already known, %d refused",
                 sum(a.created for _, a, _ in added), sum(not a.created for _, a, _ in added), len(errors))
        return PacsOpened(study_uid, added, errors)

    def analyze(self, study_id: str) -> int:
        """Queue another model run for a study; returns the job id. A run of the study still waiting is
        that run (the requests merge); a new one is refused with :class:`QueueFullError` when the queue
        is full."""
        job = self.store.waiting_job(study_id)
        if job is not None:
            return job
        self.admit()
        try:
            job = self.store.enqueue(study_id, "analyze", max_pending=self.settings.queue_max)
        except QueueFullError as exc:
            exc.retry_after = self.retry_after()
            raise
        if job is None:
            raise UnknownStudyError(study_id)
        self.worker.notify()
        return job

    def delete(self, study_id: str) -> None:
        if self.store.delete_study(study_id) is None:
            raise UnknownStudyError(study_id)
        self.windows.drop(study_id)
        self.renditions.drop(study_id)
        log.info("study %s deleted", study_id)

    # -- waiting for results -------------------------------------------------------
    def _on_done(self, study_ids: list[str]) -> None:
        with self._lock:
            waiting = [w for sid in set(study_ids) for w in self._waiters.pop(sid, [])]
        for loop, fut in waiting:
            try:
                loop.call_soon_threadsafe(_resolve, fut)
            except RuntimeError:  # the loop is closed
                pass

    async def wait(self, study_id: str, done: Callable[[], bool], timeout: float) -> bool:
        """Wait until ``done()`` is true (checked after each result of the study) or ``timeout`` s pass."""
        deadline = time.monotonic() + timeout
        loop = asyncio.get_running_loop()
        while True:
            fut = loop.create_future()
            with self._lock:
                self._waiters.setdefault(study_id, []).append((loop, fut))
            if done():
                self._forget(study_id, fut)
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                self._forget(study_id, fut)
                return False
            try:
                await asyncio.wait_for(fut, left)
            except asyncio.TimeoutError:
                self._forget(study_id, fut)
                return done()

    def _forget(self, study_id: str, fut: asyncio.Future) -> None:
        with self._lock:
            lst = self._waiters.get(study_id)
            if lst:
                lst[:] = [w for w in lst if w[1] is not fut]
                if not lst:
                    self._waiters.pop(study_id, None)

    # -- reading ---------------------------------------------------------------------
    def study(self, study_id: str):
        row = self.store.get_study(study_id)
        if row is None:
            raise UnknownStudyError(study_id)
        return row

    def finished(self, study_id: str) -> bool:
        row = self.store.get_study(study_id)
        return row is None or StudyStatus(row["status"]) in (StudyStatus.DONE, StudyStatus.FAILED)

    def prediction(self, result_row) -> Prediction:
        """The stored result as the one result type (for the annotated overlay and the API)."""
        return prediction_from_row(result_row)

    def rendition(self, row) -> np.ndarray:
        """The study's display rendition (uint8, at most ``render.RENDITION_SIDE`` a side), decoded once."""
        img = self.renditions.get(row["id"])
        if img is None:
            rg = self.decode_bytes(self.store.read_object(row["sha256"]), f"study {row['id']}")
            img = render.rendition(rg.pixels)
            self.renditions.put(row["id"], img)
        return img

    def window_source(self, row) -> render.WindowSource:
        src = self.windows.get(row["id"])
        if src is None:
            rg = self.decode_bytes(self.store.read_object(row["sha256"]), f"study {row['id']}")
            src = render.window_source(b"", rg, name=f"study {row['id']}")
            self.windows.put(row["id"], src)
        return src

    def window_info(self, row) -> dict[str, float]:
        if row["win_width"] is not None:
            return {"center": round(row["win_center"], 3), "width": round(row["win_width"], 3),
                    "min": round(row["value_min"], 3), "max": round(row["value_max"], 3),
                    "invert": str(row["photometric"] or "").upper() == "MONOCHROME1"}
        src = self.window_source(row)
        return {"center": round(src.default[0], 3), "width": round(src.default[1], 3),
                "min": round(src.vmin, 3), "max": round(src.vmax, 3), "invert": src.invert}

    def original_png(self, study_id: str, center: float | None, width: float | None, max_side: int) -> bytes:
        row = self.study(study_id)
        if center is None and width is None:
            return render.png_bytes(render.gray_image(self.rendition(row) / np.float32(255.0), max_side))
        else:
            src = self.window_source(row)
            c = src.default[0] if center is None else center
            w = src.default[1] if width is None else width
            pixels = src.render(c, w)
        return render.png_bytes(render.gray_image(pixels, max_side))

    def heatmap_png(self, study_id: str, max_side: int, opacity: float) -> bytes:
        row = self.study(study_id)
        res = self.store.get_result(row["result_id"])
        hm = heatmap_from_row(res)
        if hm is None:
            why = "the study has not been analysed yet" if res is None else (
                "the model gave no heatmap for this study (refused or unreadable)")
            raise NotReadyError(why)
        return render.heatmap_png(hm, row["width"], row["height"], max_side, opacity)

    def overlay_png(self, study_id: str, max_side: int) -> bytes:
        row = self.study(study_id)
        res = self.store.get_result(row["result_id"])
        if res is None:
            raise NotReadyError("the study has not been analysed yet")
        return render.overlay_png(self.rendition(row) / np.float32(255.0), self.prediction(res), max_side)

    def info(self) -> dict[str, Any]:
        eng = self.worker.engine
        model = None
        if eng is not None:
            model = eng.describe()
            prev = self.worker.previous
            model["previous"] = prev.model_ref if prev is not None else None
        return {"service": "cxr-triage", "version": __version__, "disclaimer": DISCLAIMER, "model": model,
                "ready": self.worker.ready.is_set(), "settings": self.settings.public(),
                "pacs": {"configured": self.settings.pacs, "url": self.settings.pacs_url}}


def _resolve(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_result(True)
