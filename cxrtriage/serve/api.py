"""HTTP routes: the versioned JSON API under /api/v1, health, readiness and metrics."""

from __future__ import annotations

import logging
from typing import Annotated, Any, Literal

import anyio
import anyio.to_thread
from fastapi import APIRouter, File, HTTPException, Path, Query, Request, Response, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from cxrtriage.contract import PRIORITY_ORDER
from cxrtriage.io import ImageReadError, ImageTooLargeError, NotAnImageError
from cxrtriage.serve.decode import DecodeBusyError
from cxrtriage.serve.limits import retry_header
from cxrtriage.serve.middleware import error_body
from cxrtriage.serve.render import DEFAULT_MAX_SIDE, MAX_MAX_SIDE, MIN_MAX_SIDE
from cxrtriage.serve.responses import (
    API,
    Pending,
    ResultOut,
    StudyList,
    StudyOut,
    UploadReply,
    result_json,
    study_json,
)
from cxrtriage.serve.schema import Source, StudyStatus
from cxrtriage.serve.service import (
    EmptyFileError,
    NotReadyError,
    PacsFailedError,
    PacsNotConfiguredError,
    TriageService,
    UnknownPacsStudyError,
    UnknownStudyError,
    display_name,
)
from cxrtriage.serve.store import QueueFullError

log = logging.getLogger("cxrtriage.serve.api")

router = APIRouter(prefix=API)
ops = APIRouter()

StudyId = Annotated[str, Path(description="Study id, as returned by the upload", max_length=64)]
MaxSide = Annotated[int, Query(ge=MIN_MAX_SIDE, le=MAX_MAX_SIDE, description="Longest side of the PNG in px")]
Wait = Annotated[float, Query(ge=0, le=60, allow_inf_nan=False,
                              description="Seconds to wait for a pending result (long poll)")]
#: The largest offset a listing takes (far beyond any worklist; SQLite's integers end at 2**63).
MAX_OFFSET = 1_000_000_000

ERRORS = {
    400: {"description": "Malformed request (for example no file or an empty file)"},
    401: {"description": "Missing or wrong API token"},
    404: {"description": "Unknown study"},
    413: {"description": "Upload larger than the limit, or an image of more pixels than the limit (checked "
                 "from its header before decoding)"},
    415: {"description": "Not a DICOM, PNG or JPEG file"},
    422: {"description": "A radiograph that cannot be used (corrupt, too small, not a projection radiograph)"},
    503: {"description": "The queue is full (or the data folder cannot be written): try again after Retry-After "
                         "seconds"},
}


def svc(request: Request) -> TriageService:
    return request.app.state.service


def _not_found(sid: str) -> HTTPException:
    return HTTPException(404, f"no study with id '{sid}' (it may have been deleted)")


_ERROR_CODES = {400: "bad_request", 413: "too_large", 415: "unsupported_media_type", 422: "unprocessable"}


def _status_for(exc: ImageReadError) -> int:
    if isinstance(exc, EmptyFileError):
        return 400
    if isinstance(exc, ImageTooLargeError):
        return 413
    if isinstance(exc, NotAnImageError):
        return 415
    return 422


def _detail(service: TriageService, sid: str) -> dict[str, Any]:
    row = service.study(sid)
    res = service.store.get_result(row["result_id"])
    try:
        window = service.window_info(row)
    except (ImageReadError, OSError):
        window = None
    return study_json(row, res, service.prediction(res) if res is not None else None, window)


# -- studies --------------------------------------------------------------------------
@router.post("/studies", status_code=201, summary="Upload one or more radiographs", response_model=UploadReply,
             responses={200: {"description": "Every file was already known (same bytes): their existing studies",
                              "model": UploadReply}, **ERRORS})
async def upload(
    request: Request,
    files: Annotated[list[UploadFile] | None, File(description="DICOM, PNG or JPEG files (several allowed)")] = None,
    file: Annotated[UploadFile | None, File(description="A single file (alternative field name)")] = None,
    source: Annotated[Literal[Source.UPLOAD, Source.PACS], Query(
        description="Where the study comes from: 'pacs' for a PACS bridge posting what it received")] = "upload",
    external_ref: Annotated[str | None, Query(
        max_length=256, description="The sender's reference for the study (e.g. its SOP Instance UID)")] = None,
) -> JSONResponse:
    """Store each file (identified by its sha256: the same file twice is one study) and queue it for
    the model. Returns at once with the study ids; results appear at ``GET /api/v1/studies/{id}``."""
    service = svc(request)
    parts = [f for f in (files or []) if f is not None] + ([file] if file is not None else [])
    if not parts:
        ctype = request.headers.get("content-type", "")
        if ctype and not ctype.lower().startswith("multipart/form-data"):
            raise HTTPException(415, "upload files as multipart/form-data in one or more 'files' fields "
                                     f"(got Content-Type {ctype.split(';')[0]})")
        raise HTTPException(400, "no file in the upload: send multipart/form-data with one or more 'files' fields")
    studies, errors = [], []
    retry = None
    for part in parts:
        data = await part.read()
        try:
            added = await run_in_threadpool(service.add_study_from_bytes, data, part.filename, source, external_ref)
        except (QueueFullError, DecodeBusyError) as exc:  # backpressure: this file is not taken; nothing is lost
            retry = getattr(exc, "retry_after", 5)
            service.metrics.uploads.labels("refused_busy").inc()
            errors.append({"name": display_name(part.filename), "status": 503, "error": "busy",
                           "type": type(exc).__name__, "message": f"{exc}; try again in {retry} s"})
            continue
        except ImageReadError as exc:
            status = _status_for(exc)
            service.metrics.uploads.labels("rejected").inc()
            service.metrics.rejections.labels(str(status), type(exc).__name__).inc()
            log.info("upload refused: %s (%d bytes) -> %d", type(exc).__name__, len(data), status)
            errors.append({"name": display_name(part.filename), "status": status, "error": _ERROR_CODES[status],
                           "type": type(exc).__name__, "message": str(exc)})
            continue
        studies.append({"id": added.id, "name": added.name, "created": added.created,
                        "duplicate": not added.created, "url": f"{API}/studies/{added.id}"})
    if not studies:
        first = errors[0]
        return JSONResponse({"status": first["status"], "error": first["error"], "type": first["type"],
                             "message": first["message"], "errors": errors}, status_code=first["status"],
                            headers=retry_header(retry) if first["status"] == 503 and retry else None)
    body = {"id": studies[0]["id"], "studies": studies, "errors": errors}
    return JSONResponse(body, status_code=201 if any(s["created"] for s in studies) else 200)


@router.get("/studies", summary="List studies (the worklist)", response_model=StudyList)
def list_studies(
    request: Request,
    sort: Annotated[Literal["priority", "time", "+time", "score"], Query(
        description="priority: urgent first, then newest; time: newest first; +time: oldest first; "
                    "score: highest P(abnormal) first")] = "priority",
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
    source: Annotated[Source | None, Query()] = None,
    status: Annotated[StudyStatus | None, Query()] = None,
) -> dict[str, Any]:
    service = svc(request)
    total, rows = service.store.list_studies(sort, limit, offset, source and source.value,
                                             status and status.value)
    return {"total": total, "limit": limit, "offset": offset, "sort": sort,
            "items": [study_json(r) for r in rows]}


@router.get("/studies/{study_id}", summary="A study with its latest result", response_model=StudyOut,
            responses=ERRORS)
async def get_study(request: Request, study_id: StudyId, wait: Wait = 0) -> dict[str, Any]:
    """``wait`` > 0 holds the answer until the pending result is ready (at most that many seconds)."""
    service = svc(request)
    try:
        if wait > 0:
            service.study(study_id)
            await service.wait(study_id, lambda: service.finished(study_id), wait)
        return await run_in_threadpool(_detail, service, study_id)
    except UnknownStudyError:
        raise _not_found(study_id) from None


@router.get("/studies/{study_id}/result", summary="The latest result of a study", response_model=ResultOut,
            responses={202: {"description": "No result yet", "model": Pending}, **ERRORS})
async def get_result(request: Request, study_id: StudyId, wait: Wait = 0) -> Any:
    service = svc(request)
    try:
        if wait > 0:
            service.study(study_id)
            await service.wait(study_id, lambda: service.finished(study_id), wait)
        row = service.study(study_id)
    except UnknownStudyError:
        raise _not_found(study_id) from None
    res = service.store.get_result(row["result_id"])
    if res is None:
        return JSONResponse({"id": study_id, "status": row["status"], "message": "no result yet"}, status_code=202)
    return result_json(res, service.prediction(res), study_id)


@router.post("/studies/{study_id}/analyze", summary="Run the model (again) on a study", response_model=StudyOut,
             responses={202: {"description": "Queued; not finished within `wait` seconds"},
                        429: {"description": "Too many analyses asked for by this token: see Retry-After"},
                        **ERRORS})
async def analyze(request: Request, study_id: StudyId, wait: Wait = 30) -> Any:
    """Queues a fresh model run and waits up to ``wait`` seconds for it; answers with the study and its
    new result, or 202 when the run has not finished yet. Asking again while the study's run has not
    started joins that run. Each token (without tokens, each client address) may ask
    ``CXR_ANALYZE_PER_MINUTE`` times a minute; 429 beyond, 503 when the queue is full."""
    service = svc(request)
    key = request.scope.get("cxr.token") or (request.client.host if request.client else "-")
    wait_s = service.analyze_limiter.take(str(key))
    if wait_s:
        raise HTTPException(429, f"too many analyses asked for; try again in {max(1, round(wait_s))} s",
                            headers=retry_header(wait_s))
    try:
        job = await run_in_threadpool(service.analyze, study_id)
    except UnknownStudyError:
        raise _not_found(study_id) from None
    except QueueFullError as exc:
        raise HTTPException(503, f"{exc}; try again in {exc.retry_after} s",
                            headers=retry_header(exc.retry_after)) from None
    done = await service.wait(study_id, lambda: service.store.job_state(job) in ("done", "failed", None), wait)
    if not done:
        return JSONResponse({"id": study_id, "job": job, "status": "queued",
                             "message": "queued; poll the study for the result"}, status_code=202)
    try:
        return await run_in_threadpool(_detail, service, study_id)
    except UnknownStudyError:
        raise _not_found(study_id) from None


@router.delete("/studies/{study_id}", status_code=204, summary="Delete a study, its file and results",
               responses=ERRORS)
def delete_study(request: Request, study_id: StudyId) -> Response:
    try:
        svc(request).delete(study_id)
    except UnknownStudyError:
        raise _not_found(study_id) from None
    return Response(status_code=204)


def _png(data: bytes, cache: str = "private, max-age=300") -> Response:
    return Response(data, media_type="image/png", headers={"cache-control": cache})


@router.get("/studies/{study_id}/image.png", summary="The radiograph as PNG (optionally re-windowed)",
            response_class=Response, responses={200: {"content": {"image/png": {}}}, **ERRORS})
def image_png(request: Request, study_id: StudyId, max_side: MaxSide = DEFAULT_MAX_SIDE,
              wc: Annotated[float | None, Query(ge=-1e9, le=1e9, allow_inf_nan=False,
                                                description="Window center (modality units for DICOM)")] = None,
              ww: Annotated[float | None, Query(gt=0, le=1e9, allow_inf_nan=False,
                                                description="Window width")] = None) -> Response:
    """Without ``wc``/``ww`` the image as the file presents it (its own VOI window or LUT); with them, the
    stored values re-windowed (DICOM: after the modality LUT; MONOCHROME1 shown inverted)."""
    try:
        return _png(svc(request).original_png(study_id, wc, ww, max_side))
    except UnknownStudyError:
        raise _not_found(study_id) from None
    except (ImageReadError, FileNotFoundError) as exc:
        raise _cannot_show(exc) from None


def _cannot_show(exc: Exception) -> HTTPException:
    if isinstance(exc, ImageTooLargeError):
        return HTTPException(413, f"the stored file cannot be shown: {exc}")
    return HTTPException(422, f"the stored file cannot be shown: {type(exc).__name__}")


@router.get("/studies/{study_id}/heatmap.png", summary="Where the model looked: a transparent overlay PNG",
            response_class=Response, responses={200: {"content": {"image/png": {}}}, **ERRORS})
def heatmap_png(request: Request, study_id: StudyId, max_side: MaxSide = DEFAULT_MAX_SIDE,
                opacity: Annotated[float, Query(ge=0, le=1, allow_inf_nan=False)] = 1.0) -> Response:
    """RGBA PNG of the size of ``image.png`` (same ``max_side``), to lay over it."""
    try:
        return _png(svc(request).heatmap_png(study_id, max_side, opacity), "private, no-cache")
    except UnknownStudyError:
        raise _not_found(study_id) from None
    except NotReadyError as exc:
        raise HTTPException(404, f"no heatmap: {exc}") from None


@router.get("/studies/{study_id}/overlay.png", summary="Radiograph, heatmap, call and disclaimer in one PNG",
            response_class=Response, responses={200: {"content": {"image/png": {}}}, **ERRORS})
def overlay_png(request: Request, study_id: StudyId, max_side: MaxSide = 768) -> Response:
    try:
        return _png(svc(request).overlay_png(study_id, max_side), "private, no-cache")
    except UnknownStudyError:
        raise _not_found(study_id) from None
    except NotReadyError as exc:
        raise HTTPException(404, f"no overlay: {exc}") from None
    except (ImageReadError, FileNotFoundError) as exc:
        raise _cannot_show(exc) from None


# -- the PACS ------------------------------------------------------------------------------
StudyUid = Annotated[str, Path(description="Study Instance UID in the PACS", min_length=1, max_length=64,
                               pattern=r"^[0-9]+(\.[0-9]+)*$")]
PACS_ERRORS = {
    401: {"description": "Missing or wrong API token"},
    404: {"description": "No PACS configured (CXR_PACS_URL), or no such study in the PACS"},
    502: {"description": "The PACS does not answer, or refused the request"},
}
#: PACS calls block a thread each (DICOMweb over HTTP); at most this many at once, in their own
#: threads, so a slow or hanging PACS cannot starve the rest of the API.
PACS_CONCURRENCY = 4
NO_PACS = ("no PACS is configured for this service: set CXR_PACS_URL (and CXR_PACS_USER/CXR_PACS_PASSWORD "
           "or CXR_PACS_TOKEN), or start it with --pacs-url")


async def _pacs(request: Request, fn, *args: Any) -> Any:
    """Run a blocking PACS call in a worker thread of its own limited pool; map failures to HTTP."""
    state = request.app.state
    limiter = getattr(state, "pacs_limiter", None)
    if limiter is None:
        limiter = state.pacs_limiter = anyio.CapacityLimiter(PACS_CONCURRENCY)
    try:
        return await anyio.to_thread.run_sync(lambda: fn(*args), limiter=limiter)
    except PacsNotConfiguredError:
        raise HTTPException(404, NO_PACS) from None
    except PacsFailedError as exc:
        raise HTTPException(502, str(exc), headers={"Retry-After": "30"} if exc.retry else None) from None


def _local_summary(row) -> dict[str, Any]:
    pending = StudyStatus(row["status"]) in (StudyStatus.QUEUED, StudyStatus.RUNNING)
    return {"id": row["id"], "name": row["name"], "status": row["status"], "external_ref": row["external_ref"],
            "priority": row["priority"] or ("pending" if pending else None), "label": row["label"],
            "score": row["score"], "url": f"{API}/studies/{row['id']}"}


def _most_urgent(priorities: list[str | None]) -> str | None:
    known = [p for p in priorities if p in PRIORITY_ORDER]
    return min(known, key=PRIORITY_ORDER.__getitem__) if known else None


def _pacs_ai(opened: list[dict[str, Any]], triage: list[dict[str, Any]]) -> dict[str, Any] | None:
    """One line for the worklist: the service's own result when the study was opened and scored,
    else the result stored in the PACS (our SRs), else None."""
    done = [o for o in opened if o["status"] == "done" and o["priority"]]
    if done:
        top = min(done, key=lambda o: (PRIORITY_ORDER.get(o["priority"], 9), -(o["score"] or 0)))
        return {"source": "service", "priority": top["priority"], "label": top["label"], "score": top["score"],
                "study_id": top["id"]}
    if any(o["priority"] == "pending" for o in opened):
        return {"source": "service", "priority": "pending", "label": None, "score": None, "study_id": None}
    if triage:
        prios = [t.get("priority") or ("refused" if t.get("refused") else None) for t in triage]
        scored = [t for t in triage if t.get("probability") is not None]
        top = max(scored, key=lambda t: t["probability"]) if scored else triage[0]
        return {"source": "pacs", "priority": _most_urgent(prios), "label": top.get("label") or top.get("finding"),
                "score": top.get("probability"), "refused": all(t.get("refused") for t in triage),
                "reason": top.get("reason"), "model": {"name": top.get("model_name"),
                                                       "version": top.get("model_version")}}
    return None


def pacs_study_json(row: dict[str, Any]) -> dict[str, Any]:
    d = {k: v for k, v in row.items() if k != "opened"}
    d["opened"] = [_local_summary(r) for r in row.get("opened", [])]
    d["ai"] = _pacs_ai(d["opened"], d.get("triage") or [])
    d["urls"] = {"open": f"{API}/pacs/studies/{row.get('study_uid')}/open"}
    return d


@router.get("/pacs/studies", summary="Chest radiograph studies in the PACS (newest first)",
            responses=PACS_ERRORS)
async def pacs_studies(
    request: Request,
    limit: Annotated[int, Query(ge=1, le=200)] = 25,
    offset: Annotated[int, Query(ge=0, le=10000)] = 0,
    patient_id: Annotated[str | None, Query(max_length=64, description="QIDO-RS PatientID (wildcards * ?)")] = None,
    patient_name: Annotated[str | None, Query(max_length=64, description="QIDO-RS PatientName")] = None,
    accession_number: Annotated[str | None, Query(max_length=64)] = None,
    study_date: Annotated[str | None, Query(
        pattern=r"^(\d{8}|\d{8}-|-\d{8}|\d{8}-\d{8})$",
        description="YYYYMMDD, or a range: YYYYMMDD-, -YYYYMMDD, YYYYMMDD-YYYYMMDD")] = None,
    results: Annotated[bool, Query(description="Read the AI results stored in the PACS (one more "
                                               "request per study)")] = True,
) -> Any:
    """The PACS's studies holding CR or DX images, with ``triage`` (our results stored in the PACS, as
    DICOM SR), ``opened`` (the service's studies it was opened as) and ``ai`` (one summary line).
    404 when the service has no PACS; 502 when the PACS does not answer."""
    service = svc(request)
    filters = {k: v for k, v in (("PatientID", patient_id), ("PatientName", patient_name),
                                 ("AccessionNumber", accession_number), ("StudyDate", study_date)) if v}
    rows = await _pacs(request, service.pacs_studies, limit, offset, filters, results)
    return {"pacs": service.settings.pacs_url, "limit": limit, "offset": offset,
            "next_offset": offset + len(rows) if len(rows) >= limit else None,
            "items": [pacs_study_json(r) for r in rows]}


@router.post("/pacs/studies/{study_uid}/open", summary="Import a PACS study's radiographs and queue them",
             responses={200: {"description": "Every image was already in the service: their existing studies"},
                        422: {"description": "No image of the study could be used"}, **PACS_ERRORS},
             status_code=201)
async def open_pacs_study(request: Request, study_uid: StudyUid) -> Any:
    """Fetches the study's CR/DX images (WADO-RS, as stored), adds each as a study with source
    ``pacs`` (its SOP Instance UID as ``external_ref``) and queues it for the model, like an upload.
    Returns the study ids at once; results appear at ``GET /api/v1/studies/{id}``. Opening again
    gives the same ids (the store is content-addressed)."""
    service = svc(request)
    try:
        opened = await _pacs(request, service.open_pacs_study, study_uid)
    except UnknownPacsStudyError:
        raise HTTPException(404, f"the PACS has no study '{study_uid}' with CR or DX images") from None
    studies = [{"id": a.id, "sop_instance_uid": sop, "name": name, "created": a.created,
                "duplicate": not a.created, "url": f"{API}/studies/{a.id}"} for sop, a, name in opened.added]
    errors = []
    for sop, exc in opened.errors:
        status = _status_for(exc)
        service.metrics.rejections.labels(str(status), type(exc).__name__).inc()
        errors.append({"sop_instance_uid": sop, "status": status, "error": _ERROR_CODES[status],
                       "type": type(exc).__name__, "message": str(exc)})
    if not studies:
        first = errors[0]
        return JSONResponse({**error_body(first["status"], first["error"], first["message"]),
                             "study_uid": study_uid, "errors": errors}, status_code=first["status"])
    body = {"study_uid": study_uid, "ids": [s["id"] for s in studies], "studies": studies, "errors": errors}
    return JSONResponse(body, status_code=201 if any(s["created"] for s in studies) else 200)


@router.get("/info", summary="Model, version, limits, the disclaimer and what the caller's token may do")
def info(request: Request) -> dict[str, Any]:
    return {**svc(request).info(), "access": {"token": request.scope.get("cxr.token"),
                                              "can_write": request.scope.get("cxr.role", "write") == "write"}}


# -- operations ----------------------------------------------------------------------------
@ops.get("/healthz", summary="Liveness (no token needed)")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@ops.get("/readyz", summary="Readiness: model loaded, storage writable, worker running",
         responses={503: {"description": "Not ready; the checks say why"}})
def readyz(request: Request) -> JSONResponse:
    service = svc(request)
    w = service.worker
    eng = w.engine
    model = {"ok": w.ready.is_set()}
    if eng is not None:
        model.update(name=eng.model_ref["name"], version=eng.model_ref["version"])
    if w.engine_error:
        model["error"] = w.engine_error
    elif not w.ready.is_set():
        model["error"] = "loading"
    checks = {"model": model, "storage": {"ok": service.store.writable()}, "worker": {"ok": w.alive}}
    ok = all(c["ok"] for c in checks.values())
    return JSONResponse({"ready": ok, "checks": checks, "queue": service.store.pending_count()},
                        status_code=200 if ok else 503)


@ops.get("/metrics", summary="Prometheus metrics", response_class=Response,
         responses={200: {"content": {"text/plain": {}}}})
def metrics(request: Request) -> Response:
    m = svc(request).metrics
    return Response(m.render(), media_type=m.content_type)
