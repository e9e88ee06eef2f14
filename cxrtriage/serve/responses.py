"""The JSON the API answers with: pydantic response models (documented in /openapi.json) and the
functions that build them from the store's rows. A result is the one result type,
:class:`cxrtriage.contract.Prediction`, in its one JSON form (:meth:`Prediction.to_dict`) plus
where to fetch its images."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from cxrtriage.about import DISCLAIMER
from cxrtriage.contract import Prediction, Priority
from cxrtriage.serve.schema import Source, StudyStatus

API = "/api/v1"


def iso(t: float | None) -> str | None:
    if t is None:
        return None
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class ResultOut(BaseModel):
    """One model run: the :class:`Prediction` of the study's file, and where its images are."""

    model_config = ConfigDict(protected_namespaces=(), json_schema_extra={"examples": [{
        "id": 7, "created_at": "2026-01-05T09:30:12.345Z", "source": "3f9c0a1b2c3d4e5f", "label": "abnormal",
        "score": 0.91, "probabilities": {"normal": 0.09, "abnormal": 0.91}, "threshold": 0.42,
        "priority": "urgent", "gate": {"accepted": True}, "model": {"name": "cxr-pneumonia", "version": "1.0"},
        "timings_ms": {"model": 11.2, "total": 30.5}, "error": None, "error_type": None,
        "meta": {"format": "jpeg", "width": 1857, "height": 1317},
        "heatmap_url": "/api/v1/studies/3f9c0a1b2c3d4e5f/heatmap.png?r=7",
        "overlay_url": "/api/v1/studies/3f9c0a1b2c3d4e5f/overlay.png?r=7",
        "disclaimer": DISCLAIMER}]})

    id: int
    created_at: str | None
    source: str
    label: str | None = None
    score: float | None = Field(None, description="P(abnormal); for a multi-label model the probability of "
                                "its lead finding (see rule)")
    probabilities: dict[str, float] = {}
    threshold: float | None = Field(None, description="the film is flagged (review or urgent) when score >= threshold")
    finding: str | None = Field(None, description="the class whose probability is the score; its map is the heatmap")
    rule: str | None = Field(None, description="how label, score, threshold and priority were read")
    priority: Priority
    gate: dict[str, Any] = {}
    model: dict[str, str | None] = {}
    timings_ms: dict[str, float] = {}
    error: str | None = None
    error_type: str | None = None
    meta: dict[str, Any] = {}
    heatmap_url: str | None = None
    overlay_url: str
    disclaimer: str


class ImageOut(BaseModel):
    format: str | None = None
    modality: str | None = None
    view_position: str | None = None
    photometric: str | None = None
    bits: int | None = None
    width: int | None = None
    height: int | None = None
    bytes: int
    sha256: str


class WindowOut(BaseModel):
    center: float
    width: float
    min: float
    max: float
    invert: bool


class StudyOut(BaseModel):
    """A study (one radiograph) with its latest result once the model has run."""

    id: str
    name: str | None = None
    source: Source
    external_ref: str | None = None
    status: StudyStatus
    created_at: str | None
    completed_at: str | None = None
    priority: Priority | Literal["pending"] | None = None
    label: str | None = None
    score: float | None = None
    judged_by: str | None = Field(None, description="The model that judged the film, and why it was chosen "
                                  "when the bundled models are routed (e.g. 'cxr-adult14 (age)')")
    patient_ref: str | None = Field(None, description="Pseudonymous patient reference (keyed hash)")
    read_label: str | None = Field(None, description="The reader's label (current read), when there is one")
    image: ImageOut
    urls: dict[str, str]
    result: ResultOut | None = None
    window: WindowOut | None = None


class StudyList(BaseModel):
    total: int
    limit: int
    offset: int
    sort: str
    items: list[StudyOut]


class UploadedStudy(BaseModel):
    id: str
    name: str | None = Field(None, description="The name stored for the study (cleaned of path and control "
                                               "characters), not the raw client file name")
    created: bool
    duplicate: bool
    url: str


class UploadError(BaseModel):
    name: str | None = None
    status: int
    error: str
    type: str
    message: str


class UploadReply(BaseModel):
    id: str
    studies: list[UploadedStudy]
    errors: list[UploadError] = []


class Pending(BaseModel):
    id: str
    status: StudyStatus
    message: str


def urls(sid: str) -> dict[str, str]:
    base = f"{API}/studies/{sid}"
    return {"self": base, "result": f"{base}/result", "image": f"{base}/image.png", "heatmap": f"{base}/heatmap.png",
            "overlay": f"{base}/overlay.png", "analyze": f"{base}/analyze"}


def result_json(res, pred: Prediction, sid: str) -> dict[str, Any]:
    """A stored result row and its :class:`Prediction` as :class:`ResultOut`."""
    u = urls(sid)
    d = pred.to_dict()
    d.update(id=res["id"], created_at=iso(res["created_at"]),
             heatmap_url=f"{u['heatmap']}?r={res['id']}" if pred.heatmap is not None else None,
             overlay_url=f"{u['overlay']}?r={res['id']}")
    return d


def study_json(row, res=None, pred: Prediction | None = None, window: dict | None = None) -> dict[str, Any]:
    sid = row["id"]
    pending = StudyStatus(row["status"]) in (StudyStatus.QUEUED, StudyStatus.RUNNING)
    d = {
        "id": sid, "name": row["name"], "source": row["source"], "external_ref": row["external_ref"],
        "status": row["status"], "created_at": iso(row["created_at"]), "completed_at": iso(row["completed_at"]),
        "priority": row["priority"] or ("pending" if pending else None), "label": row["label"], "score": row["score"],
        "judged_by": row["judged_by"], "patient_ref": row["patient_ref"],
        "read_label": row["read_label"] if "read_label" in row.keys() else None,
        "image": {"format": row["format"], "modality": row["modality"], "view_position": row["view_position"],
                  "photometric": row["photometric"], "bits": row["bits"], "width": row["width"],
                  "height": row["height"], "bytes": row["size"], "sha256": row["sha256"]},
        "urls": urls(sid),
    }
    if res is not None and pred is not None:
        d["result"] = result_json(res, pred, sid)
    if window is not None:
        d["window"] = window
    return d
