"""A small client for Orthanc's own REST API: the change feed, instances and storing."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import requests

from cxrtriage.pacs.connection import PacsConnection

#: HTTP statuses worth retrying: the server is there but busy, restarting or behind a proxy.
RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


class PacsError(RuntimeError):
    """The PACS answered with an error that retrying will not fix (bad request, not found...)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class PacsUnavailable(PacsError):
    """The PACS could not be reached or is temporarily failing; retry later."""


def raise_for(resp: requests.Response, what: str) -> None:
    """Map an HTTP error answer to :class:`PacsUnavailable` or :class:`PacsError`."""
    if resp.status_code < 400:
        return
    detail = resp.text[:300].strip()
    msg = f"{what}: HTTP {resp.status_code} {resp.reason}" + (f" ({detail})" if detail else "")
    cls = PacsUnavailable if resp.status_code in RETRYABLE_STATUS else PacsError
    raise cls(msg, resp.status_code)


def wrap_network(exc: Exception, what: str) -> PacsUnavailable:
    return PacsUnavailable(f"{what}: {type(exc).__name__}: {exc}")


@dataclass
class Change:
    """One entry of Orthanc's ``/changes`` feed."""

    seq: int
    change_type: str
    resource_type: str
    id: str


class OrthancClient:
    """Orthanc REST: ``/changes``, ``/instances`` (read and store), ``/tools/find``."""

    def __init__(self, pacs: PacsConnection | str, session: requests.Session | None = None, **auth: Any):
        """``pacs``: a :class:`PacsConnection`, or a URL with its fields as keywords (``user=...``)."""
        self.pacs = PacsConnection.of(pacs, **auth)
        self.url, self.timeout = self.pacs.url, self.pacs.timeout
        self.session = session or self.pacs.session()

    # -- plumbing ------------------------------------------------------------------------
    def request(self, method: str, path: str, what: str | None = None, **kw: Any) -> requests.Response:
        what = what or f"{method} {path}"
        kw.setdefault("timeout", self.timeout)
        try:
            resp = self.session.request(method, self.url + path, **kw)
        except requests.RequestException as exc:
            raise wrap_network(exc, what) from exc
        raise_for(resp, what)
        return resp

    def get_json(self, path: str, **kw: Any) -> Any:
        return self.request("GET", path, **kw).json()

    # -- API -----------------------------------------------------------------------------
    def changes(self, since: int, limit: int = 200) -> tuple[list[Change], int, bool]:
        """Changes after sequence number ``since``: (changes, last sequence, done)."""
        d = self.get_json("/changes", params={"since": since, "limit": limit})
        out = [Change(int(c["Seq"]), c["ChangeType"], c["ResourceType"], c["ID"]) for c in d.get("Changes", [])]
        return out, int(d.get("Last", since)), bool(d.get("Done", True))

    def last_change(self) -> int:
        """Sequence number of the newest change (to start following from now)."""
        return int(self.get_json("/changes", params={"last": ""}).get("Last", 0))

    def instance_series_tags(self, orthanc_id: str) -> dict[str, Any]:
        """Main DICOM tags of an instance's series, in one request (``/instances/{id}/series``)."""
        return self.get_json(f"/instances/{orthanc_id}/series").get("MainDicomTags", {})

    def instance_file(self, orthanc_id: str) -> bytes:
        """The DICOM file exactly as it was stored."""
        return self.request("GET", f"/instances/{orthanc_id}/file").content

    def store(self, data: bytes) -> dict[str, Any]:
        """POST a DICOM file to ``/instances``; Orthanc answers ``Success`` or ``AlreadyStored``."""
        return self.request("POST", "/instances", data=data,
                            headers={"Content-Type": "application/dicom"}).json()

    def find(self, level: str, query: dict[str, str], expand: bool = True,
             limit: int | None = None) -> list[Any]:
        body: dict[str, Any] = {"Level": level, "Query": query, "Expand": expand}
        if limit:
            body["Limit"] = limit
        return self.request("POST", "/tools/find", json=body).json()

    def study_instances(self, study_uid: str) -> list[dict[str, Any]]:
        """All instances of a study (expanded resources), by Study Instance UID."""
        return self.find("Instance", {"StudyInstanceUID": study_uid})
