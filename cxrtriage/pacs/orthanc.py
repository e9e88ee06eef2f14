"""A small client for Orthanc's own REST API: the change feed, instances and storing."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import requests

DEFAULT_TIMEOUT = 30.0
#: HTTP statuses worth retrying: the server is there but busy, restarting or behind a proxy.
RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


class PacsError(RuntimeError):
    """The PACS answered with an error that retrying will not fix (bad request, not found...)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class PacsUnavailable(PacsError):
    """The PACS could not be reached or is temporarily failing; retry later."""


def make_session(user: str | None = None, password: str | None = None, token: str | None = None,
                 headers: dict[str, str] | None = None) -> requests.Session:
    """A requests session with HTTP Basic auth (user/password) or a bearer token."""
    s = requests.Session()
    if token:
        s.headers["Authorization"] = f"Bearer {token}"
    elif user is not None:
        s.auth = (user, password or "")
    if headers:
        s.headers.update(headers)
    return s


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
    """Orthanc REST: ``/system``, ``/changes``, ``/instances`` (read and store), ``/tools/find``."""

    def __init__(self, url: str, user: str | None = None, password: str | None = None, token: str | None = None,
                 timeout: float = DEFAULT_TIMEOUT, session: requests.Session | None = None):
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.session = session or make_session(user, password, token)
        self._series_tags: dict[str, dict[str, Any]] = {}

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
    def system(self) -> dict[str, Any]:
        return self.get_json("/system")

    def changes(self, since: int, limit: int = 200) -> tuple[list[Change], int, bool]:
        """Changes after sequence number ``since``: (changes, last sequence, done)."""
        d = self.get_json("/changes", params={"since": since, "limit": limit})
        out = [Change(int(c["Seq"]), c["ChangeType"], c["ResourceType"], c["ID"]) for c in d.get("Changes", [])]
        return out, int(d.get("Last", since)), bool(d.get("Done", True))

    def last_change(self) -> int:
        """Sequence number of the newest change (to start following from now)."""
        return int(self.get_json("/changes", params={"last": ""}).get("Last", 0))

    def instance(self, orthanc_id: str) -> dict[str, Any]:
        """Instance resource: MainDicomTags (SOPInstanceUID...), ParentSeries."""
        return self.get_json(f"/instances/{orthanc_id}")

    def series_tags(self, series_id: str) -> dict[str, Any]:
        """Main DICOM tags of a series (Modality, SeriesDescription...) from Orthanc's index, cached."""
        if series_id not in self._series_tags:
            if len(self._series_tags) > 10000:
                self._series_tags.clear()
            self._series_tags[series_id] = self.get_json(f"/series/{series_id}").get("MainDicomTags", {})
        return self._series_tags[series_id]

    def instance_series_tags(self, orthanc_id: str) -> dict[str, Any]:
        """Main DICOM tags of an instance's series, in one request (``/instances/{id}/series``)."""
        series = self.get_json(f"/instances/{orthanc_id}/series")
        tags = series.get("MainDicomTags", {})
        if series.get("ID"):
            self._series_tags[series["ID"]] = tags
        return tags

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
