"""The triage service: HTTP API, worklist and viewer, background inference, persistence.

``cxr serve`` (also ``python -m cxrtriage serve``) calls :func:`serve`; tests and embedding code use
:func:`create_app`.
"""

from __future__ import annotations

import logging
from pathlib import Path

from cxrtriage.serve.settings import Settings, SettingsError

__all__ = ["Settings", "SettingsError", "create_app", "serve"]

log = logging.getLogger("cxrtriage.serve")


def create_app(settings: Settings | None = None):
    """The FastAPI app (see :mod:`cxrtriage.serve.app`)."""
    from cxrtriage.serve.app import create_app as _create

    return _create(settings)


def serve(
    host: str = "127.0.0.1",
    port: int = 8000,
    model: str | Path | None = None,
    data_dir: str | Path | None = None,
    token: str | None = None,
    *,
    token_file: str | Path | None = None,
    max_upload_bytes: int | None = None,
    cors_origins: list[str] | tuple[str, ...] | None = None,
    threads: int | None = None,
    samples: bool | None = None,
    pacs_url: str | None = None,
    log_level: str = "info",
    access_log: bool = True,
) -> None:
    """Run the service with uvicorn until interrupted.

    Arguments that are None fall back to the ``CXR_*`` environment variables (see
    :mod:`cxrtriage.serve.settings`), then to the defaults: the bundled model, ``./cxr-data``,
    no token, 64 MiB uploads, CORS closed, the sample radiographs offered on first start,
    no PACS (``pacs_url``; its credentials come from ``CXR_PACS_USER``/``CXR_PACS_PASSWORD``
    or ``CXR_PACS_TOKEN``).
    """
    import uvicorn

    logging.basicConfig(level=getattr(logging, log_level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    _quiet_pydicom()
    _return_freed_memory()
    from cxrtriage.serve import logs
    from cxrtriage.serve.protocol import connection_limits, guarded_protocol
    from cxrtriage.serve.tokens import TokenConfigError, TokenTable

    logs.install()
    settings = Settings.from_env(
        data_dir=Path(data_dir) if data_dir is not None else None,
        model=str(model) if model is not None else None,
        token=token, token_file=token_file, max_upload_bytes=max_upload_bytes,
        cors_origins=tuple(cors_origins) if cors_origins else None, threads=threads, samples=samples,
        pacs_url=pacs_url,
    )
    try:
        tokens = TokenTable.from_settings(settings)
    except TokenConfigError as exc:
        raise SettingsError(str(exc)) from None
    if not tokens and host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("listening on %s without an API token: anyone who can reach this port can use the API "
                    "(set CXR_API_TOKEN or CXR_API_TOKEN_FILE)", host)
    from cxrtriage.serve.store import DataDirError

    try:
        app = create_app(settings)
    except DataDirError as exc:  # a read-only or unusable data folder: say which, without a traceback
        raise SettingsError(str(exc)) from None
    cap, backlog = connection_limits(settings.max_connections)
    protocol = guarded_protocol(settings.header_timeout_s, settings.body_timeout_s, cap)
    config = uvicorn.Config(app, host=host, port=port, log_config=None, log_level=log_level.lower(),
                            access_log=access_log, timeout_graceful_shutdown=5, server_header=False,
                            http=protocol, timeout_keep_alive=5, backlog=backlog)
    log.info("cxr-triage on http://%s:%d/ (API docs at /docs)%s%s; at most %d connections, header timeout "
             "%g s, body timeout %g s", host, port,
             f"; API tokens required ({len(tokens.tokens)})" if tokens else "",
             f"; PACS {settings.pacs_url}" if settings.pacs else "", cap, settings.header_timeout_s,
             settings.body_timeout_s)
    uvicorn.Server(config).run()


def _return_freed_memory(threshold: int = 4 * 1024 * 1024) -> None:
    """Allocations of ``threshold`` bytes and more (decoded images) get memory of their own from the
    system and give it back when freed. By default glibc raises that threshold after the first large
    free, and the request threads' arenas then keep each image's memory for good: RSS grows by about
    an image per thread. (glibc only; elsewhere nothing happens.)"""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        if libc is not None and hasattr(libc, "mallopt"):
            libc.mallopt(-3, threshold)  # M_MMAP_THRESHOLD (fixing it also stops its adjustment)
    except OSError:
        pass


def _quiet_pydicom() -> None:
    """pydicom warns about odd element values and may quote them; values can be patient identifiers,
    so in the service those warnings are not logged."""
    import warnings

    import pydicom.config

    logging.getLogger("pydicom").setLevel(logging.ERROR)
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    warnings.filterwarnings("ignore", module=r"pydicom(\..*)?")
