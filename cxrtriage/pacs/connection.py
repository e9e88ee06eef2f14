"""How to reach a PACS: one value object, validated once where it is built.

:class:`PacsConnection` carries the base URL, the DICOMweb path under it, the credentials
(HTTP Basic user and password, or a bearer token), the request timeout and TLS verification.
Every PACS client (Orthanc REST, DICOMweb, the watcher, the worklist, bulk triage) takes one.
Building one needs only the standard library.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    import requests

DEFAULT_ROOT = "/dicom-web"
DEFAULT_TIMEOUT = 30.0


@dataclass(frozen=True)
class PacsConnection:
    """A PACS's address and credentials.

    ``url``: the server's base URL (``http://orthanc:8042``); ``dicomweb_root``: the DICOMweb
    service's path under it (Orthanc: ``/dicom-web``; empty when ``url`` is the DICOMweb root
    itself). ``token`` (a bearer token) wins over ``user``/``password`` (HTTP Basic).
    ``verify``: check the server's TLS certificate (or the path of a CA bundle to check it with).
    """

    url: str
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    dicomweb_root: str = DEFAULT_ROOT
    timeout: float = DEFAULT_TIMEOUT
    verify: bool | str = True

    def __post_init__(self) -> None:
        url = str(self.url or "").strip().rstrip("/")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"PACS URL {self.url!r} is not an http:// or https:// URL with a host")
        object.__setattr__(self, "url", url)
        for name in ("user", "password", "token"):
            value = getattr(self, name)
            object.__setattr__(self, name, str(value) if value is not None and str(value).strip() else None)
        root = str(self.dicomweb_root or "").strip().strip("/")
        object.__setattr__(self, "dicomweb_root", "/" + root if root else "")
        timeout = float(self.timeout)
        if not timeout > 0:
            raise ValueError(f"PACS timeout must be positive, got {self.timeout!r}")
        object.__setattr__(self, "timeout", timeout)

    @classmethod
    def of(cls, pacs: PacsConnection | str, **changes: Any) -> PacsConnection:
        """``pacs`` as a connection: a :class:`PacsConnection` (``changes`` replace its fields), or a
        URL (``changes`` are the other fields, e.g. ``user=..., password=...``)."""
        changes = {k: v for k, v in changes.items() if v is not None}
        if isinstance(pacs, cls):
            return replace(pacs, **changes) if changes else pacs
        return cls(str(pacs), **changes)

    @property
    def dicomweb_url(self) -> str:
        """The DICOMweb service's base URL (``url`` + ``dicomweb_root``)."""
        return self.url + self.dicomweb_root

    @property
    def auth(self) -> str:
        """How requests authenticate, without the secret: ``token``, ``basic`` or ``none``."""
        return "token" if self.token else "basic" if self.user is not None else "none"

    def session(self, headers: dict[str, str] | None = None) -> requests.Session:
        """A requests session with these credentials and TLS verification."""
        import requests  # the "pacs" extra; building a connection needs only the standard library

        s = requests.Session()
        if self.token:
            s.headers["Authorization"] = f"Bearer {self.token}"
        elif self.user is not None:
            s.auth = (self.user, self.password or "")
        s.verify = self.verify
        if headers:
            s.headers.update(headers)
        return s
