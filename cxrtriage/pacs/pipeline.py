"""From DICOM bytes to the objects to write back (or a logged reason to skip).

Shared by the watcher, the C-STORE listener and the Orthanc plugin's worker.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import pydicom
from pydicom import Dataset
from pydicom.uid import DigitalXRayImageStorageForProcessing

from cxrtriage.infer import Engine, Prediction
from cxrtriage.io import ImageReadError, Radiograph, WrongModalityError, read_radiograph_bytes
from cxrtriage.pacs.results import TriageResults, build_results, is_own_output

log = logging.getLogger("cxrtriage.pacs")

TRIAGE_MODALITIES = frozenset({"CR", "DX"})


@dataclass
class Outcome:
    """What happened to one instance: ``results`` to store, or ``skipped`` with a reason."""

    name: str
    status: str  # "results", "skipped" or "error" (unexpected failure; worth a retry)
    reason: str | None = None
    results: TriageResults | None = None
    study_uid: str | None = None
    sop_uid: str | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)

    @property
    def datasets(self) -> list[Dataset]:
        return self.results.datasets if self.results else []


def skip_reason(modality: str | None, sop_class_uid: str | None = None, manufacturer: str | None = None,
                series_description: str | None = None) -> str | None:
    """Why an instance is not for triage, judged from header attributes alone; None if it is."""
    if is_own_output({"Manufacturer": manufacturer, "SeriesDescription": series_description}):
        return "our own triage output"
    mod = (modality or "").strip().upper()
    if mod not in TRIAGE_MODALITIES:
        return f"modality {mod or 'unknown'} is not a projection radiograph (CR/DX)"
    if sop_class_uid and str(sop_class_uid) == DigitalXRayImageStorageForProcessing:
        return "DX 'for processing' (raw detector data, not for display)"
    return None


def dataset_skip_reason(ds: Dataset) -> str | None:
    return skip_reason(ds.get("Modality"), ds.get("SOPClassUID"), ds.get("Manufacturer"),
                       ds.get("SeriesDescription"))


def _header(data: bytes) -> Dataset | None:
    try:
        return pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, force=True)
    except Exception:
        return None


def triage_bytes(engine: Engine, items: Sequence[tuple[str, bytes]], heatmap: bool = True) -> list[Outcome]:
    """Triage DICOM files given as ``(name, bytes)``; one :class:`Outcome` each, in order."""
    outcomes: list[Outcome | None] = [None] * len(items)
    ready: list[tuple[int, Radiograph]] = []
    for i, (name, data) in enumerate(items):
        t0 = time.perf_counter()
        header = _header(data)
        if header is None or "SOPInstanceUID" not in header or "StudyInstanceUID" not in header:
            outcomes[i] = Outcome(name, "skipped", "not a DICOM instance with study and SOP instance UIDs")
            continue
        ids = {"study_uid": str(header.StudyInstanceUID), "sop_uid": str(header.SOPInstanceUID)}
        reason = dataset_skip_reason(header)
        if reason:
            outcomes[i] = Outcome(name, "skipped", reason, **ids)
            continue
        try:
            rg = read_radiograph_bytes(data, name)
        except WrongModalityError as exc:
            outcomes[i] = Outcome(name, "skipped", str(exc), **ids)
            continue
        except ImageReadError as exc:
            # A radiograph we cannot read: say so in the study rather than stay silent.
            pred = Prediction(source=name, model=engine.model_ref, error=str(exc), error_type=type(exc).__name__,
                              priority="error")
            try:
                res = build_results(header, None, pred, reason=f"the image could not be read ({exc})")
            except Exception as exc2:
                outcomes[i] = Outcome(name, "skipped", f"unreadable ({exc}) and no report possible ({exc2})", **ids)
                continue
            outcomes[i] = Outcome(name, "results", pred.error, res, **ids)
            continue
        ready.append((i, rg))
        outcomes[i] = Outcome(name, "results", **ids, timings_ms={"decode": (time.perf_counter() - t0) * 1000})
    if ready:
        t0 = time.perf_counter()
        preds = engine.predict_radiographs([rg for _, rg in ready], heatmap=heatmap)
        per = (time.perf_counter() - t0) * 1000 / len(ready)
        for (i, rg), pred in zip(ready, preds):
            t1 = time.perf_counter()
            out = outcomes[i]
            assert out is not None
            try:
                out.results = build_results(rg.dicom, rg.pixels, pred)
            except Exception as exc:  # a header highdicom cannot work with: report, do not crash the batch
                log.exception("cannot build results for %s", out.name)
                out.status, out.reason = "error", f"cannot build results: {type(exc).__name__}: {exc}"
                continue
            if not pred.ok:
                out.reason = str(pred.gate.get("reason") or pred.error or "refused")
            out.timings_ms.update(model=per, build=(time.perf_counter() - t1) * 1000)
    return [o for o in outcomes if o is not None]


@dataclass
class Encoded:
    """An :class:`Outcome` with its result objects already encoded (picklable, ready to store)."""

    name: str
    status: str
    reason: str | None = None
    study_uid: str | None = None
    sop_uid: str | None = None
    refused: bool = False
    outputs: list[tuple[str, bytes]] = field(default_factory=list)  # (SOP Instance UID, Part-10 bytes)
    summary: str = ""


def part10(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def encode(out: Outcome) -> Encoded:
    refused = bool(out.results and out.results.refused)
    summary = ""
    if out.results is not None and not refused:
        p = out.results.prediction
        summary = f"P(abnormal)={p.score or 0.0:.3f} {p.label} [{p.priority}]"
    return Encoded(out.name, out.status, out.reason, out.study_uid, out.sop_uid, refused,
                   [(str(ds.SOPInstanceUID), part10(ds)) for ds in out.datasets], summary)


def triage_encode(engine: Engine, items: Sequence[tuple[str, bytes]]) -> list[Encoded]:
    """:func:`triage_bytes`, then encode the results (what the watcher stores)."""
    return [encode(o) for o in triage_bytes(engine, items)]


# -- worker processes (``watch(..., workers=N)``) ------------------------------------------
_ENGINE: Engine | None = None


def pool_init(model: str | None, threads: int = 1) -> None:
    """Process-pool initializer: load the engine once per worker process.

    The worker also exits by itself when its parent dies (a killed watcher must not leave
    orphans waiting for work forever).
    """
    import os
    import threading

    global _ENGINE
    logging.basicConfig(level=logging.WARNING)
    parent = os.getppid()

    def _watch_parent() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent:
                os._exit(0)

    threading.Thread(target=_watch_parent, daemon=True, name="cxr-parent-watch").start()
    _ENGINE = Engine(model, threads=threads)


def pool_triage(items: list[tuple[str, bytes]]) -> list[Encoded]:
    assert _ENGINE is not None, "pool_init was not run"
    return triage_encode(_ENGINE, items)


def pool_ready() -> bool:
    return _ENGINE is not None


def log_encoded(out: Encoded, where: str = "") -> None:
    """Like :func:`log_outcome`, for an :class:`Encoded`."""
    tag = f"{where} " if where else ""
    if out.status == "skipped":
        log.info("%sskip %s: %s", tag, out.name, out.reason)
    elif out.status == "error":
        log.warning("%serror %s: %s", tag, out.name, out.reason)
    elif out.refused:
        log.info("%srefused %s: %s", tag, out.name, out.reason)
    else:
        log.info("%striaged %s: %s", tag, out.name, out.summary)


def log_outcome(out: Outcome, where: str = "") -> None:
    """One line per instance: skipped (with the reason), refused or scored."""
    tag = f"{where} " if where else ""
    if out.status == "skipped":
        log.info("%sskip %s: %s", tag, out.name, out.reason)
    elif out.status == "error":
        log.warning("%serror %s: %s", tag, out.name, out.reason)
    elif out.results is not None and out.results.refused:
        log.info("%srefused %s: %s", tag, out.name, out.reason)
    elif out.results is not None:
        p = out.results.prediction
        log.info("%striaged %s: P(abnormal)=%.3f %s [%s]", tag, out.name, p.score or 0.0, p.label, p.priority)
