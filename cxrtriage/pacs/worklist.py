"""The PACS side of the service's worklist: list chest radiograph studies, open them, read results.

DICOMweb only (QIDO-RS, WADO-RS), so it works with Orthanc and any other DICOMweb PACS.
"""

from __future__ import annotations

from typing import Any

from pydicom import Dataset

from cxrtriage.pacs.connection import PacsConnection
from cxrtriage.pacs.dicomweb import (
    TRIAGE_MODALITIES,
    InstanceRef,
    _call,
    _value,
    dataset_bytes,
    dicomweb_client,
    search_studies,
    study_series,
)
from cxrtriage.pacs.results import MANUFACTURER, SERIES_DESCRIPTION, read_result_sr

_STUDY_TAGS = {
    "study_uid": "0020000D", "study_date": "00080020", "study_time": "00080030", "accession_number": "00080050",
    "patient_id": "00100020", "patient_name": "00100010", "patient_sex": "00100040",
    "patient_birth_date": "00100030", "description": "00081030", "modalities": "00080061",
    "n_series": "00201206", "n_instances": "00201208",
}


def _is_ours(series: dict[str, Any]) -> bool:
    return _value(series, "0008103E") == SERIES_DESCRIPTION or _value(series, "00080070") == MANUFACTURER


def list_pacs_studies(pacs: PacsConnection | str, *, limit: int = 100, offset: int = 0,
                      modalities: tuple[str, ...] = TRIAGE_MODALITIES, filters: dict[str, Any] | None = None,
                      with_results: bool = True, **connection: Any) -> list[dict[str, Any]]:
    """Studies holding CR/DX images, newest first (by Study Date/Time), each with the AI triage result if one exists.

    Each entry: ``study_uid, study_date, study_time, accession_number, patient_id,
    patient_name, patient_sex, patient_birth_date, description, modalities, n_series,
    n_instances, source="pacs"`` and ``triage``: a list of decoded SRs
    (:class:`cxrtriage.pacs.results.ResultSummary` as dicts; empty when not triaged yet).
    ``filters``: extra QIDO-RS matching keys (``PatientID``, ``StudyDate="20250101-"``...).
    ``pacs``: a :class:`PacsConnection`, or a URL with its fields as keywords (``user=...``).
    Raises :class:`cxrtriage.pacs.orthanc.PacsUnavailable` / ``PacsError``.
    """
    client = dicomweb_client(pacs, **connection)
    studies = search_studies(client, modalities, limit=limit, offset=offset, filters=filters)
    out = []
    for s in studies:
        row: dict[str, Any] = {k: _value(s, tag) for k, tag in _STUDY_TAGS.items()}
        row["modalities"] = [str(m) for m in (s.get("00080061", {}).get("Value") or [])]
        for k in ("n_series", "n_instances"):
            row[k] = int(row[k]) if str(row[k]).isdigit() else None
        row["source"] = "pacs"
        row["triage"] = [r.to_dict() for r in study_results(client, row["study_uid"])] if with_results else []
        out.append(row)
    out.sort(key=lambda r: (r["study_date"], r["study_time"]), reverse=True)
    return out


def study_results(client: Any, study_uid: str) -> list[Any]:
    """Decoded triage SRs of a study (``client``: a DICOMwebClient)."""
    found = []
    for series in study_series(client, study_uid):
        if _value(series, "00080060") != "SR" or not _is_ours(series):
            continue
        series_uid = _value(series, "0020000E")
        for inst in _call("QIDO-RS instances", client.search_for_instances, study_uid, series_uid):
            ds = _call("WADO-RS instance", client.retrieve_instance, study_uid, series_uid, _value(inst, "00080018"))
            found.append(read_result_sr(ds))
    return found


def open_pacs_study(pacs: PacsConnection | str, study_uid: str, **connection: Any) -> list[tuple[InstanceRef, Dataset]]:
    """The CR/DX images of a study (not our own outputs), as pydicom datasets in their stored syntax."""
    client = dicomweb_client(pacs, **connection)
    out = []
    for series in study_series(client, study_uid):
        modality = _value(series, "00080060")
        if modality not in TRIAGE_MODALITIES or _is_ours(series):
            continue
        series_uid = _value(series, "0020000E")
        for inst in _call("QIDO-RS instances", client.search_for_instances, study_uid, series_uid):
            ref = InstanceRef(study_uid, series_uid, _value(inst, "00080018"), _value(inst, "00080016"), modality)
            ds = _call("WADO-RS instance", client.retrieve_instance, study_uid, series_uid, ref.sop_uid,
                       media_types=(("application/dicom", "*"),))
            out.append((ref, ds))
    return out


def fetch_pacs_images(pacs: PacsConnection | str, study_uid: str, **connection: Any) -> list[tuple[str, bytes]]:
    """The CR/DX images of a study as ``(SOP Instance UID, Part-10 bytes)``, ready for
    ``TriageService.add_study_from_bytes(data, name, source="pacs", external_ref=sop_uid)``."""
    return [(ref.sop_uid, dataset_bytes(ds))
            for ref, ds in open_pacs_study(pacs, study_uid, **connection)]
