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

from cxrtriage.contract import Prediction, StrEnum
from cxrtriage.infer import Predictor, load_model
from cxrtriage.io import Radiograph
from cxrtriage.pacs.results import TriageResults, build_results, is_own_output

log = logging.getLogger("cxrtriage.pacs")

TRIAGE_MODALITIES = frozenset({"CR", "DX"})


class OutcomeStatus(StrEnum):
    """What became of one instance."""

    RESULTS = "results"  # result objects to store (a score, a refusal or an unreadable-image report)
    SKIPPED = "skipped"  # not for triage (another modality, our own output, ...): nothing to store
    ERROR = "error"      # an unexpected failure; worth a retry


@dataclass
class InstanceStatus:
    """What became of one instance (``name``), why, and the study and instance it is."""

    name: str
    status: OutcomeStatus
    reason: str | None = None
    study_uid: str | None = None
    sop_uid: str | None = None

    def __post_init__(self) -> None:
        self.status = OutcomeStatus(self.status)


@dataclass
class Outcome(InstanceStatus):
    """An instance's status with its result objects: ``results`` to store, or ``skipped`` with a reason."""

    results: TriageResults | None = None

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


def _header(data: bytes) -> Dataset | None:
    try:
        return pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, force=True)
    except Exception:  # noqa: BLE001 - any unparseable header means "not DICOM", skipped
        return None


def _pre_check(name: str, data: bytes) -> Outcome | Dataset:
    """The header checks before decoding: a skipped :class:`Outcome`, or the header to go on with."""
    header = _header(data)
    if header is None or "SOPInstanceUID" not in header or "StudyInstanceUID" not in header:
        return Outcome(name, OutcomeStatus.SKIPPED, "not a DICOM instance with study and SOP instance UIDs")
    reason = skip_reason(header.get("Modality"), header.get("SOPClassUID"), header.get("Manufacturer"),
                         header.get("SeriesDescription"))
    if reason:
        return Outcome(name, OutcomeStatus.SKIPPED, reason, **_ids(header))
    return header


def _ids(header: Dataset) -> dict[str, str]:
    return {"study_uid": str(header.StudyInstanceUID), "sop_uid": str(header.SOPInstanceUID)}


def triage_bytes(engine: Predictor, items: Sequence[tuple[str, bytes]], heatmap: bool = True) -> list[Outcome]:
    """Triage DICOM files given as ``(name, bytes)``; one :class:`Outcome` each, in order.

    The header checks (our own output, modality, "for processing") come first; the rest is the
    engine's pipeline: decode, then gate and network as one batch, a failure being a
    :class:`Prediction` with ``error`` set. An image of another modality is skipped; a
    radiograph that cannot be read gets a report in its study saying so."""
    outcomes: list[Outcome | None] = [None] * len(items)
    todo: list[tuple[int, Dataset]] = []
    for i, (name, data) in enumerate(items):
        checked = _pre_check(name, data)
        if isinstance(checked, Outcome):
            outcomes[i] = checked
        else:
            todo.append((i, checked))
    scored = engine.score([items[i][1] for i, _ in todo], [items[i][0] for i, _ in todo], heatmap=heatmap)
    for (i, header), s in zip(todo, scored):
        outcomes[i] = _outcome(items[i][0], header, s.radiograph, s.prediction)
    return outcomes  # type: ignore[return-value]


def _outcome(name: str, header: Dataset, rg: Radiograph | None, pred: Prediction) -> Outcome:
    """The result objects for one prediction (or why there are none)."""
    ids = _ids(header)
    if pred.error_type == "WrongModalityError":
        return Outcome(name, OutcomeStatus.SKIPPED, pred.error, **ids)
    if rg is None:  # a radiograph we cannot read: say so in the study rather than stay silent
        try:
            res = build_results(header, None, pred, reason=f"the image could not be read ({pred.error})")
        except Exception as exc:  # noqa: BLE001 - best-effort report; a failure is a skip, not a crash
            return Outcome(name, OutcomeStatus.SKIPPED, f"unreadable ({pred.error}) and no report possible ({exc})",
                           **ids)
        return Outcome(name, OutcomeStatus.RESULTS, pred.error, results=res, **ids)
    try:
        res = build_results(rg.dicom, rg.pixels, pred)
    except Exception as exc:  # a header highdicom cannot work with: report, do not crash the batch
        log.exception("cannot build results for %s", name)
        return Outcome(name, OutcomeStatus.ERROR, f"cannot build results: {type(exc).__name__}: {exc}", **ids)
    reason = None if pred.ok else str(pred.gate.get("reason") or pred.error or "refused")
    return Outcome(name, OutcomeStatus.RESULTS, reason, results=res, **ids)


@dataclass
class Encoded(InstanceStatus):
    """An :class:`Outcome` with its result objects already encoded (picklable, ready to store)."""

    refused: bool = False
    outputs: list[tuple[str, bytes]] = field(default_factory=list)  # (SOP Instance UID, Part-10 bytes)
    summary: str = ""


def part10(ds: Dataset) -> bytes:
    """``ds`` as a DICOM Part-10 file (with its file meta information)."""
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _verdict(results: TriageResults | None) -> tuple[bool, str]:
    """(refused, one-line summary of the score) for the log."""
    if results is None or results.refused:
        return bool(results), ""
    p = results.prediction
    return False, f"P(abnormal)={p.score or 0.0:.3f} {p.label} [{p.priority}]"


def encode(out: Outcome) -> Encoded:
    refused, summary = _verdict(out.results)
    return Encoded(out.name, out.status, out.reason, out.study_uid, out.sop_uid, refused,
                   [(str(ds.SOPInstanceUID), part10(ds)) for ds in out.datasets], summary)


def triage_encode(engine: Predictor, items: Sequence[tuple[str, bytes]]) -> list[Encoded]:
    """:func:`triage_bytes`, then encode the results (what the watcher stores)."""
    return [encode(o) for o in triage_bytes(engine, items)]


def log_outcome(out: Outcome | Encoded, where: str = "") -> None:
    """One line per instance: skipped (with the reason), error, refused or scored."""
    tag = f"{where} " if where else ""
    refused, summary = (out.refused, out.summary) if isinstance(out, Encoded) else _verdict(out.results)
    if out.status is OutcomeStatus.SKIPPED:
        log.info("%sskip %s: %s", tag, out.name, out.reason)
    elif out.status is OutcomeStatus.ERROR:
        log.warning("%serror %s: %s", tag, out.name, out.reason)
    elif refused:
        log.info("%srefused %s: %s", tag, out.name, out.reason)
    else:
        log.info("%striaged %s: %s", tag, out.name, summary)


# -- worker processes (``watch(..., workers=N)``) ------------------------------------------
_ENGINE: Predictor | None = None


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
    _ENGINE = load_model(model, threads=threads)


def pool_triage(items: list[tuple[str, bytes]]) -> list[Encoded]:
    assert _ENGINE is not None, "pool_init was not run"
    return triage_encode(_ENGINE, items)


def pool_ready() -> bool:
    return _ENGINE is not None
