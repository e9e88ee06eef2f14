"""DICOMweb through dicomweb-client: QIDO-RS polling, WADO-RS retrieval, STOW-RS storing."""

from __future__ import annotations

import datetime as _dt
import io
import uuid
from dataclasses import dataclass
from typing import Any

import requests
from dicomweb_client import DICOMwebClient
from pydicom import Dataset

from cxrtriage.pacs.connection import PacsConnection
from cxrtriage.pacs.orthanc import PacsError, raise_for, wrap_network

TRIAGE_MODALITIES = ("CR", "DX")
_TAGS = {"study": "0020000D", "series": "0020000E", "sop": "00080018", "sop_class": "00080016",
         "modality": "00080060", "manufacturer": "00080070", "series_description": "0008103E"}


@dataclass(frozen=True)
class InstanceRef:
    """Where an instance lives in DICOMweb terms."""

    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str = ""
    modality: str = ""

    @property
    def key(self) -> str:
        return f"sop:{self.sop_uid}"

    def to_dict(self) -> dict[str, str]:
        return {"study_uid": self.study_uid, "series_uid": self.series_uid, "sop_uid": self.sop_uid,
                "sop_class_uid": self.sop_class_uid, "modality": self.modality}


def _value(item: dict[str, Any], tag: str) -> str:
    vals = item.get(tag, {}).get("Value") or [""]
    v = vals[0]
    if isinstance(v, dict):  # person names
        v = v.get("Alphabetic", "")
    return str(v)


def dicomweb_client(pacs: PacsConnection | str, **fields: Any) -> DICOMwebClient:
    """A DICOMweb client for the connection's DICOMweb root (Orthanc: ``url`` + ``/dicom-web``).

    ``pacs``: a :class:`PacsConnection`, or a URL with its fields as keywords (``user=...``)."""
    conn = PacsConnection.of(pacs, **fields)
    session = conn.session()
    client = DICOMwebClient(conn.dicomweb_url, session=session, timeout=conn.timeout)
    client.set_http_retry_params(retry=False)  # callers retry with their own backoff and state
    client.cxr_session, client.cxr_timeout = session, conn.timeout  # for stow_bytes
    return client


def _call(what: str, fn, *args: Any, **kw: Any) -> Any:
    """Run a dicomweb-client call, mapping network and HTTP errors to PacsError/PacsUnavailable."""
    try:
        return fn(*args, **kw)
    except requests.HTTPError as exc:
        if exc.response is not None:
            raise_for(exc.response, what)
        raise PacsError(f"{what}: {exc}") from exc
    except requests.RequestException as exc:
        raise wrap_network(exc, what) from exc


def qido_instances(client: DICOMwebClient, modalities: tuple[str, ...] = TRIAGE_MODALITIES,
                   lookback_days: int | None = None, page: int = 500) -> list[InstanceRef]:
    """Instances of the given modalities (optionally only studies of the last N days)."""
    out: list[InstanceRef] = []
    for modality in modalities:
        filters: dict[str, Any] = {"Modality": modality}
        if lookback_days is not None:
            start = (_dt.date.today() - _dt.timedelta(days=lookback_days)).strftime("%Y%m%d")
            filters["StudyDate"] = f"{start}-"
        offset = 0
        while True:
            batch = _call("QIDO-RS instances", client.search_for_instances, search_filters=filters,
                          fields=["SOPClassUID", "Modality", "StudyInstanceUID", "SeriesInstanceUID"],
                          limit=page, offset=offset)
            for item in batch:
                out.append(InstanceRef(_value(item, _TAGS["study"]), _value(item, _TAGS["series"]),
                                       _value(item, _TAGS["sop"]), _value(item, _TAGS["sop_class"]),
                                       _value(item, _TAGS["modality"]) or modality))
            if len(batch) < page:
                break
            offset += len(batch)
    return out


def wado_instance(client: DICOMwebClient, ref: InstanceRef) -> bytes:
    """WADO-RS retrieve in the stored transfer syntax (``transfer-syntax=*``), as Part-10 bytes."""
    ds = _call("WADO-RS instance", client.retrieve_instance, ref.study_uid, ref.series_uid, ref.sop_uid,
               media_types=(("application/dicom", "*"),))
    return dataset_bytes(ds)


def dataset_bytes(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=False)
    return buf.getvalue()


def stow(client: DICOMwebClient, datasets: list[Dataset], study_uid: str | None = None) -> Dataset:
    """STOW-RS ``datasets`` into ``study_uid``; raises when the PACS reports a failed SOP instance."""
    resp = _call("STOW-RS", client.store_instances, datasets, study_instance_uid=study_uid)
    failed = resp.get("FailedSOPSequence") if resp is not None else None
    if failed:
        reasons = ", ".join(f"{i.get('ReferencedSOPInstanceUID', '?')}: {i.get('FailureReason', '?')}"
                            for i in failed)
        raise PacsError(f"STOW-RS rejected {len(failed)} instance(s): {reasons}")
    return resp


def stow_bytes(client: DICOMwebClient, parts: list[bytes], study_uid: str | None = None) -> dict[str, Any]:
    """STOW-RS already encoded Part-10 files (no re-encoding); raises when any instance failed."""
    boundary = uuid.uuid4().hex
    head = f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
    body = b"".join(head + p + b"\r\n" for p in parts) + f"--{boundary}--\r\n".encode()
    url = client.base_url + (f"/studies/{study_uid}" if study_uid else "/studies")
    headers = {"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
               "Accept": "application/dicom+json"}
    session = getattr(client, "cxr_session", None) or requests.Session()
    try:
        resp = session.post(url, data=body, headers=headers, timeout=getattr(client, "cxr_timeout", 30.0))
    except requests.RequestException as exc:
        raise wrap_network(exc, "STOW-RS") from exc
    raise_for(resp, "STOW-RS")
    answer = resp.json() if resp.content else {}
    failed = (answer.get("00081198") or {}).get("Value") or []
    if failed:
        reasons = ", ".join(f"{_value(i, '00081155') or '?'}: {_value(i, '00081197') or '?'}" for i in failed)
        raise PacsError(f"STOW-RS rejected {len(failed)} instance(s): {reasons}")
    return answer


def search_studies(client: DICOMwebClient, modalities: tuple[str, ...] | None = TRIAGE_MODALITIES,
                   limit: int = 100, offset: int = 0, filters: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """QIDO-RS studies holding any of ``modalities`` (one query each, merged by Study Instance UID)."""
    fields = ["StudyDescription", "ModalitiesInStudy", "NumberOfStudyRelatedSeries",
              "NumberOfStudyRelatedInstances", "PatientBirthDate", "PatientSex"]
    merged: dict[str, dict[str, Any]] = {}
    for modality in modalities or (None,):
        search: dict[str, Any] = dict(filters or {})
        if modality:
            search["ModalitiesInStudy"] = modality
        for item in _call("QIDO-RS studies", client.search_for_studies, search_filters=search, fields=fields,
                          limit=limit + offset):
            merged.setdefault(_value(item, _TAGS["study"]), item)
    items = sorted(merged.values(), key=lambda s: (_value(s, "00080020"), _value(s, "00080030")), reverse=True)
    return items[offset:offset + limit]


def study_series(client: DICOMwebClient, study_uid: str) -> list[dict[str, Any]]:
    return _call("QIDO-RS series", client.search_for_series, study_uid,
                 fields=["Modality", "SeriesDescription", "Manufacturer", "NumberOfSeriesRelatedInstances"])

