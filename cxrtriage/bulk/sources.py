"""What a bulk job reads: a folder of images, a CSV of paths, or a DICOMweb server."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cxrtriage.pacs.connection import PacsConnection

DICOMWEB_PREFIXES = ("http://", "https://")
TRIAGE_MODALITIES = ("CR", "DX")


class BulkError(RuntimeError):
    """The job cannot start (bad source, results made by another model, Ray missing, ...)."""


@dataclass(frozen=True)
class DicomwebArchive:
    """A DICOMweb server to read from: its connection and the modalities to triage."""

    pacs: PacsConnection
    modalities: tuple[str, ...] = TRIAGE_MODALITIES

    def __post_init__(self) -> None:
        object.__setattr__(self, "pacs", PacsConnection.of(self.pacs))
        modalities = tuple(str(m).strip().upper() for m in self.modalities if str(m).strip())
        if not modalities:
            raise BulkError("a DICOMweb source needs at least one modality (e.g. CR, DX)")
        object.__setattr__(self, "modalities", modalities)

    def client(self) -> Any:
        from cxrtriage.pacs.dicomweb import dicomweb_client

        return dicomweb_client(self.pacs)


def is_dicomweb(source: str | Path) -> bool:
    return str(source).startswith(DICOMWEB_PREFIXES)


def _image_files(folder: Path) -> list[str]:
    from cxrtriage.io import IMAGE_SUFFIXES

    return sorted(str(f) for f in folder.rglob("*")
                  if f.is_file() and not f.name.startswith(".")
                  and (f.suffix.lower() in IMAGE_SUFFIXES or not f.suffix))


def _csv_paths(path: Path) -> list[str]:
    with path.open(newline="") as fh:
        rows = [r for r in csv.reader(fh) if r and any(c.strip() for c in r)]
    if not rows:
        return []
    header = [c.strip().lower() for c in rows[0]]
    col, body = (header.index("path"), rows[1:]) if "path" in header else (0, rows)
    out = []
    for r in body:
        p = Path(r[col].strip()).expanduser()
        out.append(str(p if p.is_absolute() else (path.parent / p)))
    return out


def _dicomweb_items(dw: DicomwebArchive) -> list[dict[str, str | None]]:
    from cxrtriage.pacs.dicomweb import qido_instances

    client = dw.client()
    base = client.base_url.rstrip("/")
    return [{"path": f"{base}/studies/{r.study_uid}/series/{r.series_uid}/instances/{r.sop_uid}",
             "sop_instance_uid": r.sop_uid, "study_instance_uid": r.study_uid,
             "series_instance_uid": r.series_uid} for r in qido_instances(client, dw.modalities)]


def list_source(source: str | Path, dicomweb: DicomwebArchive | None = None) -> list[dict[str, str | None]]:
    """The items to triage: ``{"path", "sop_instance_uid", "study_instance_uid", "series_instance_uid"}``.

    For DICOMweb, ``path`` is the instance's WADO-RS URL (its stable key)."""
    if is_dicomweb(source):
        return _dicomweb_items(dicomweb or DicomwebArchive(PacsConnection(str(source))))
    p = Path(source).expanduser()
    if p.is_dir():
        paths = _image_files(p)
    elif p.is_file() and p.suffix.lower() in (".csv", ".txt"):
        paths = _csv_paths(p)
    elif p.exists():
        raise BulkError(f"{p}: give a folder, a CSV of paths or a DICOMweb URL (http://...)")
    else:
        raise BulkError(f"{p}: no such folder or file")
    return [{"path": path, "sop_instance_uid": None, "study_instance_uid": None, "series_instance_uid": None}
            for path in dict.fromkeys(paths)]
