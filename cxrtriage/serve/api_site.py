"""HTTP routes of the site loop: readers' reads, their import, the monitor, and the model in use."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from cxrtriage.serve.api import ERRORS, StudyId, svc
from cxrtriage.serve.middleware import error_body
from cxrtriage.serve.reads import ReadError, ReadIn, allowed_labels, parse_reads_csv
from cxrtriage.serve.responses import API, iso
from cxrtriage.serve.schema import ReadSource
from cxrtriage.serve.site import ImportRefused, ModelSwapError

site_router = APIRouter(prefix=API)


class ReadBody(BaseModel):
    """A reader's label. ``agree`` alone (true) takes the AI's label as the reader's."""

    label: str | None = Field(None, max_length=64, description="normal / pneumonia (bacterial / viral for the "
                              "three-class model); 'no finding' or 'abnormal' for the adult model")
    findings: list[Annotated[str, Field(max_length=64)]] = Field(default_factory=list, max_length=14,
                                                                  description="The adult model's findings")
    agree: bool | None = Field(None, description="Whether the reader agrees with the AI's call")
    source: Literal["viewer", "api"] = "api"


class ReadOut(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    id: int
    study_id: str
    label: str
    findings: list[str]
    agree: bool | None
    reader: str
    source: str
    created_at: str | None
    current: bool
    replaces: int | None
    model: dict[str, str | None] = Field(description="The model (name, version) whose result the reader saw")
    ai: dict[str, str | None] = Field(description="The AI's call when the read was made (label, priority)")


class ReadHistory(BaseModel):
    study_id: str
    current: ReadOut | None
    history: list[ReadOut] = Field(description="Every read of the study, newest first")
    labels: list[str] = Field(description="The labels a reader may give for this study")
    findings: list[str]


class ReadList(BaseModel):
    total: int
    limit: int
    offset: int
    items: list[ReadOut]


class ImportBody(BaseModel):
    csv: str = Field(..., max_length=10_000_000, description="The reads CSV: a study column (study id, SOP or "
                     "Study Instance UID, file name), label[, findings separated by |]")


class ImportReply(BaseModel):
    imported: int
    ids: list[int]


class ModelState(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    active: dict[str, Any] | None
    previous: dict[str, Any] | None
    choice: dict[str, Any]


class SwapBody(BaseModel):
    model: str = Field(..., min_length=1, max_length=1024, description="A model folder (e.g. written by "
                       "cxr calibrate), an .onnx file with its sidecar, or a bundled model's name")


def read_json(row) -> dict[str, Any]:
    return {"id": row["id"], "study_id": row["study_id"], "label": row["label"],
            "findings": json.loads(row["findings"]) if row["findings"] else [],
            "agree": None if row["agree"] is None else bool(row["agree"]), "reader": row["reader"],
            "source": row["source"], "created_at": iso(row["created_at"]), "current": bool(row["current"]),
            "replaces": row["replaces"], "model": {"name": row["model_name"], "version": row["model_version"]},
            "ai": {"label": row["ai_label"], "priority": row["ai_priority"]}}


def _history(request: Request, study_id: str) -> dict[str, Any]:
    service = svc(request)
    row = service.store.get_study(study_id)
    if row is None:
        raise HTTPException(404, f"no study with id '{study_id}' (it may have been deleted)")
    res = service.store.get_result(row["result_id"])
    labels, findings = allowed_labels(service.site.spec_for(res["model_name"] if res is not None else None))
    reads = [read_json(r) for r in service.store.reads_of(study_id)]
    return {"study_id": study_id, "current": reads[0] if reads else None, "history": reads,
            "labels": list(labels), "findings": list(findings)}


@site_router.get("/studies/{study_id}/read", summary="A study's read (and its history)", response_model=ReadHistory,
                 responses=ERRORS)
def get_read(request: Request, study_id: StudyId) -> dict[str, Any]:
    return _history(request, study_id)


@site_router.put("/studies/{study_id}/read", summary="Record or change the reader's label of a study",
                 response_model=ReadHistory, responses={403: {"description": "A read-only token"}, **ERRORS})
def put_read(request: Request, study_id: StudyId, body: ReadBody) -> dict[str, Any]:
    """Stored with the reader (the token's name), the time and the model version whose result was
    shown; a change keeps the earlier read in the history. 422 for a label the study's model does not
    know; 503/507 when the disk refuses (nothing stored)."""
    service = svc(request)
    if not body.label and not body.agree:
        raise HTTPException(422, "give a label, or agree: true to take the AI's label")
    reader = request.scope.get("cxr.token") or "anonymous"
    try:
        service.site.record([ReadIn(study_id, body.label or "", tuple(body.findings), body.agree)], reader,
                            ReadSource(body.source))
    except KeyError:
        raise HTTPException(404, f"no study with id '{study_id}' (it may have been deleted)") from None
    except ReadError as exc:
        raise HTTPException(422, str(exc)) from None
    return _history(request, study_id)


@site_router.get("/reads", summary="Readers' labels, newest first", response_model=ReadList)
def list_reads(request: Request, limit: Annotated[int, Query(ge=1, le=1000)] = 100,
               offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0,
               history: Annotated[bool, Query(description="Also the reads later changed")] = False) -> dict[str, Any]:
    total, rows = svc(request).store.list_reads(limit, offset, current=not history)
    return {"total": total, "limit": limit, "offset": offset, "items": [read_json(r) for r in rows]}


@site_router.post("/reads/import", summary="Import reads from the RIS (all or nothing)", response_model=ImportReply,
                  status_code=201, responses={422: {"description": "Unknown studies or labels: nothing imported"},
                                              403: {"description": "A read-only token"}})
async def import_reads(request: Request, body: Annotated[ImportBody, Body()]) -> Any:
    service = svc(request)
    reader = request.scope.get("cxr.token") or "anonymous"
    try:
        rows = parse_reads_csv(body.csv)
        ids = await run_in_threadpool(service.site.import_reads, rows, reader)
    except ImportRefused as exc:
        return JSONResponse({**error_body(422, "unprocessable", str(exc)), "errors": exc.errors}, status_code=422)
    except ReadError as exc:
        raise HTTPException(422, str(exc)) from None
    return {"imported": len(ids), "ids": ids}


@site_router.get("/monitor", summary="Drift and performance of each model version, and the alarms")
def monitor(request: Request) -> dict[str, Any]:
    """Per model version: the reference, the recent window's drift tests (KS on scores and gate
    distances, binomial on refusals), per-day figures, sensitivity / specificity / PPV against reads
    with 95% CIs, histograms for plots; and the alarms raised."""
    return svc(request).site.report()


def _state(request: Request) -> dict[str, Any]:
    service = svc(request)
    w = service.worker
    return {"active": w.engine.describe() if w.engine is not None else None,
            "previous": w.previous.model_ref if w.previous is not None else None,
            "choice": service.versions.active()}


@site_router.get("/model", summary="The model version in use and the one kept for rollback",
                 response_model=ModelState)
def model_state(request: Request) -> dict[str, Any]:
    return _state(request)


@site_router.post("/model", summary="Load another model version without a restart", response_model=ModelState,
                  responses={403: {"description": "A read-only token"},
                             422: {"description": "The model cannot be loaded; the one in use stays"}})
async def swap_model(request: Request, body: SwapBody) -> dict[str, Any]:
    """The new version scores every job from now on; the previous stays loaded for
    ``POST /api/v1/model/rollback``. In a routed service a model of a routed population replaces
    that population's model. The choice is kept over restarts."""
    service = svc(request)
    if not service.worker.ready.is_set():
        raise HTTPException(503, "the model is still loading; try again shortly", headers={"Retry-After": "5"})
    try:
        choice = service.versions.choice_for(body.model, service.worker.engine)
        await run_in_threadpool(service.versions.swap, service.worker, choice)
    except ModelSwapError as exc:
        raise HTTPException(422, str(exc)) from None
    return _state(request)


@site_router.post("/model/rollback", summary="Back to the model version before the last swap",
                  response_model=ModelState, responses={409: {"description": "No earlier version"}})
async def rollback_model(request: Request) -> dict[str, Any]:
    service = svc(request)
    try:
        await run_in_threadpool(service.versions.rollback, service.worker)
    except ModelSwapError as exc:
        raise HTTPException(409, str(exc)) from None
    return _state(request)
