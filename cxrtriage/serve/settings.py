"""Service settings: defaults, environment variables and explicit arguments, in that order.

Environment variables (all optional):

``CXR_DATA_DIR``            where the database and the uploaded files live (default ``./cxr-data``)
``CXR_MODEL``               model to serve (an .onnx, its .json sidecar or a run folder; default: bundled)
``CXR_API_TOKEN``           API token with full access (named ``api-token`` in the audit log); when any token
                            is set, every call but ``/healthz`` needs one
``CXR_API_TOKEN_FILE``      file holding that token (first line), e.g. a Docker secret
``CXR_VIEWER_TOKEN``        a read-only token (named ``viewer``): lists, results and images, no writes
``CXR_VIEWER_TOKEN_FILE``   file holding the viewer token
``CXR_TOKENS_FILE``         named tokens, stored hashed: one ``NAME ROLE sha256:HEX`` a line (ROLE ``read`` or
                            ``write``); ``python -m cxrtriage.serve.tokens NAME ROLE`` makes a token and its line
``CXR_MAX_UPLOAD_BYTES``    largest request body accepted (default 64 MiB); 413 beyond
``CXR_CORS_ORIGINS``        comma-separated origins allowed by CORS (default: none, CORS closed)
``CXR_THREADS``             ONNX Runtime threads (default: half the cores)
``CXR_ORT_SPINNING``        1: ONNX Runtime's idle threads spin (the service's default is 0: they sleep and
                            leave the cores to the request threads)
``CXR_WORKER_BATCH``        most studies scored in one batch (default 16)
``CXR_MAX_PIXELS``          largest image accepted, in pixels, checked from the file's header before it is
                            decoded (default 60000000; real CR/DX radiographs are under 20 Mpx); 413 beyond
``CXR_MAX_DECODES``         most images the service decodes at once (default 2)
``CXR_DECODE_BUDGET_MB``    most MiB of decoded pixels the whole process holds in decodes at once (default 256);
                            images over 2048 px a side are decoded reduced
``CXR_QUEUE_MAX``           most jobs waiting or running (default 1000); uploads and analyses beyond: 503
                            with Retry-After
``CXR_QUEUE_MAX_WAIT_S``    refuse new work (503, Retry-After) while the queue's estimated wait is over this
                            many seconds (default 6; 0: no such bound)
``CXR_ANALYZE_PER_MINUTE``  ``POST .../analyze`` calls a token (or, without tokens, a client address) may make
                            per minute (default 30, bursts of 10; 0: unlimited); 429 with Retry-After beyond
``CXR_HEADER_TIMEOUT_S``    seconds a client has to send a request's header (default 10); then the
                            connection is closed
``CXR_BODY_TIMEOUT_S``      seconds a request body may stall between two reads (default 15)
``CXR_MAX_CONNECTIONS``     most open connections (default 8192, and below the open-files limit); a new one
                            beyond closes the oldest still waiting for its header
``CXR_WORKER_DELAY_S``      artificial delay per study in the worker (tests of crash recovery only)
``CXR_FSYNC``               ``0`` to skip fsync of uploads (faster, not crash-proof against power loss)
``CXR_SAMPLES``             ``0`` not to offer the bundled sample radiographs on first start
``CXR_PACS_URL``            a DICOMweb PACS (e.g. Orthanc: ``http://orthanc:8042``) whose chest radiograph
                            studies the worklist lists and opens; unset: no PACS view
``CXR_PACS_USER``           HTTP Basic user for the PACS (with ``CXR_PACS_PASSWORD``)
``CXR_PACS_PASSWORD``       HTTP Basic password for the PACS
``CXR_PACS_TOKEN``          bearer token for the PACS (instead of user and password)
``CXR_PACS_DICOMWEB_ROOT``  DICOMweb path under the PACS URL (default ``/dicom-web``, Orthanc's)
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

from cxrtriage.infer.bundle import ASSETS
from cxrtriage.io import default_max_pixels

DEFAULT_MAX_UPLOAD_BYTES = 64 * 1024 * 1024
SAMPLES_DIR = ASSETS / "samples"
DEFAULT_DICOMWEB_ROOT = "/dicom-web"


class SettingsError(ValueError):
    """A setting has a value the service cannot use."""


def _env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    return raw.strip().lower() not in ("0", "false", "no", "off")


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise SettingsError(f"{name}={raw!r} is not a whole number") from exc


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return float(raw)
    except ValueError as exc:
        raise SettingsError(f"{name}={raw!r} is not a number") from exc


def read_token_file(path: str | Path) -> str:
    """The token in ``path`` (first non-empty line, surrounding spaces removed)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise SettingsError(f"cannot read the API token file {p}: {exc.strerror or exc}") from exc
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    raise SettingsError(f"the API token file {p} is empty")


def _split_pacs_url(url: str) -> tuple[str, str | None, str | None]:
    """``url`` without user information, and the user and password it carried (if any)."""
    parts = urlsplit(url.strip())
    try:
        port = parts.port
        usable = parts.scheme in ("http", "https") and bool(parts.hostname)
    except ValueError:
        port, usable = None, False
    if not usable:
        shown = parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()  # never echo a password
        raise SettingsError(f"the PACS URL must be an http:// or https:// address with a host (got {shown[:80]!r})")
    user = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password is not None else None
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    netloc = host + (f":{port}" if port else "")
    return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", "")), user, password


@dataclass(frozen=True)
class Settings:
    """Everything :func:`cxrtriage.serve.create_app` needs. Build with :meth:`from_env`."""

    data_dir: Path = field(default_factory=lambda: Path("cxr-data"))
    model: str | None = None
    token: str | None = field(default=None, repr=False)
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    cors_origins: tuple[str, ...] = ()
    threads: int | None = None
    batch_size: int = 16
    max_pixels: int = field(default_factory=default_max_pixels)
    max_decodes: int = 2
    worker_delay_s: float = 0.0
    fsync: bool = True
    samples: bool = True
    samples_dir: Path = SAMPLES_DIR
    pacs_url: str | None = None
    pacs_user: str | None = None
    pacs_password: str | None = field(default=None, repr=False)
    pacs_token: str | None = field(default=None, repr=False)
    pacs_dicomweb_root: str = DEFAULT_DICOMWEB_ROOT
    viewer_token: str | None = field(default=None, repr=False)
    tokens_file: Path | None = None
    decode_budget_bytes: int = 256 * 1024 * 1024
    queue_max: int = 1000
    queue_max_wait_s: float = 6.0
    analyze_per_minute: int = 30
    header_timeout_s: float = 10.0
    body_timeout_s: float = 15.0
    max_connections: int = 8192

    def __post_init__(self) -> None:
        object.__setattr__(self, "data_dir", Path(self.data_dir))
        object.__setattr__(self, "samples_dir", Path(self.samples_dir))
        if self.token is not None and not str(self.token).strip():
            object.__setattr__(self, "token", None)
        if self.max_upload_bytes < 1:
            raise SettingsError("the upload limit must be at least 1 byte")
        if self.batch_size < 1:
            raise SettingsError("the worker batch size must be at least 1")
        if self.max_pixels < 64 * 64:
            raise SettingsError(f"the pixel limit ({self.max_pixels}) must be at least 4096 (64 x 64)")
        if self.max_decodes < 1:
            raise SettingsError("the number of concurrent decodes must be at least 1")
        if self.worker_delay_s < 0:
            raise SettingsError("the worker delay cannot be negative")
        if self.viewer_token is not None and not str(self.viewer_token).strip():
            object.__setattr__(self, "viewer_token", None)
        if self.decode_budget_bytes < 16 * 1024 * 1024:
            raise SettingsError("the decode budget must be at least 16 MiB")
        if self.queue_max < 1:
            raise SettingsError("the queue bound (CXR_QUEUE_MAX) must be at least 1")
        if self.queue_max_wait_s < 0 or self.analyze_per_minute < 0:
            raise SettingsError("CXR_QUEUE_MAX_WAIT_S and CXR_ANALYZE_PER_MINUTE cannot be negative")
        if self.header_timeout_s <= 0 or self.body_timeout_s <= 0:
            raise SettingsError("the header and body timeouts must be positive")
        if self.max_connections < 16:
            raise SettingsError("the connection cap (CXR_MAX_CONNECTIONS) must be at least 16")
        for name in ("pacs_url", "pacs_user", "pacs_password", "pacs_token"):
            value = getattr(self, name)
            if value is not None and not str(value).strip():
                object.__setattr__(self, name, None)
        if self.pacs_url is not None:
            url, user, password = _split_pacs_url(str(self.pacs_url))
            object.__setattr__(self, "pacs_url", url)
            if user is not None and self.pacs_user is None and self.pacs_token is None:
                object.__setattr__(self, "pacs_user", user)
                if self.pacs_password is None:
                    object.__setattr__(self, "pacs_password", password)

    @property
    def pacs(self) -> bool:
        """True when a PACS is configured (the worklist then offers its studies)."""
        return self.pacs_url is not None

    @classmethod
    def from_env(cls, **overrides) -> Settings:
        """Settings from ``CXR_*`` environment variables; keyword arguments that are not None win."""
        token = os.environ.get("CXR_API_TOKEN") or None
        token_file = overrides.pop("token_file", None) or os.environ.get("CXR_API_TOKEN_FILE")
        if not token and token_file:
            token = read_token_file(token_file)
        origins = tuple(o.strip() for o in os.environ.get("CXR_CORS_ORIGINS", "").split(",") if o.strip())
        threads = _env_int("CXR_THREADS", 0) or None
        viewer = os.environ.get("CXR_VIEWER_TOKEN") or None
        if not viewer and os.environ.get("CXR_VIEWER_TOKEN_FILE"):
            viewer = read_token_file(os.environ["CXR_VIEWER_TOKEN_FILE"])
        base = cls(
            data_dir=Path(os.environ.get("CXR_DATA_DIR") or "cxr-data"),
            model=os.environ.get("CXR_MODEL") or None,
            token=token,
            max_upload_bytes=_env_int("CXR_MAX_UPLOAD_BYTES", DEFAULT_MAX_UPLOAD_BYTES),
            cors_origins=origins,
            threads=threads,
            batch_size=_env_int("CXR_WORKER_BATCH", 16),
            max_pixels=_env_int("CXR_MAX_PIXELS", default_max_pixels()),
            max_decodes=_env_int("CXR_MAX_DECODES", 2),
            worker_delay_s=_env_float("CXR_WORKER_DELAY_S", 0.0),
            fsync=_env_bool("CXR_FSYNC", True),
            samples=_env_bool("CXR_SAMPLES", True),
            pacs_url=os.environ.get("CXR_PACS_URL") or None,
            pacs_user=os.environ.get("CXR_PACS_USER") or None,
            pacs_password=os.environ.get("CXR_PACS_PASSWORD") or None,
            pacs_token=os.environ.get("CXR_PACS_TOKEN") or None,
            pacs_dicomweb_root=os.environ.get("CXR_PACS_DICOMWEB_ROOT") or DEFAULT_DICOMWEB_ROOT,
            viewer_token=viewer,
            tokens_file=Path(os.environ["CXR_TOKENS_FILE"]) if os.environ.get("CXR_TOKENS_FILE") else None,
            decode_budget_bytes=_env_int("CXR_DECODE_BUDGET_MB", 256) * 1024 * 1024,
            queue_max=_env_int("CXR_QUEUE_MAX", 1000),
            queue_max_wait_s=_env_float("CXR_QUEUE_MAX_WAIT_S", 6.0),
            analyze_per_minute=_env_int("CXR_ANALYZE_PER_MINUTE", 30),
            header_timeout_s=_env_float("CXR_HEADER_TIMEOUT_S", 10.0),
            body_timeout_s=_env_float("CXR_BODY_TIMEOUT_S", 15.0),
            max_connections=_env_int("CXR_MAX_CONNECTIONS", 8192),
        )
        given = {k: v for k, v in overrides.items() if v is not None}
        if "cors_origins" in given:
            given["cors_origins"] = tuple(given["cors_origins"])
        return replace(base, **given)

    def public(self) -> dict:
        """Settings safe to show (never the token, nor the PACS credentials)."""
        return {
            "max_upload_bytes": self.max_upload_bytes,
            "auth": self.token is not None or self.viewer_token is not None or self.tokens_file is not None,
            "queue_max": self.queue_max,
            "cors_origins": list(self.cors_origins),
            "batch_size": self.batch_size,
            "max_pixels": self.max_pixels,
            "pacs": self.pacs,
            "pacs_url": self.pacs_url,
        }
