"""The FastAPI application factory."""

from __future__ import annotations

import errno
import html
import logging
import sqlite3
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect

from cxrtriage.about import DISCLAIMER, __version__
from cxrtriage.serve.api import ops, router
from cxrtriage.serve.api_site import site_router
from cxrtriage.serve.decode import DecodeBusyError
from cxrtriage.serve.middleware import BodyLimitMiddleware, ObserveMiddleware, TokenMiddleware, error_body
from cxrtriage.serve.service import TriageService
from cxrtriage.serve.settings import Settings
from cxrtriage.serve.store import QueueFullError
from cxrtriage.serve.tokens import TokenTable

STATIC = Path(__file__).with_name("static")
log = logging.getLogger("cxrtriage.serve")

_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
          409: "conflict", 413: "too_large", 415: "unsupported_media_type", 422: "unprocessable", 429: "too_many",
          500: "internal_error", 502: "bad_gateway", 503: "unavailable", 507: "insufficient_storage"}
RETRY_AFTER_S = 60  # what a client is told to wait when the disk is full or the data folder read-only
DOCS_ASSETS = "/docs-assets"
# The API docs pages load nothing from outside the service (ReDoc would fetch its logo from a CDN).
DOCS_CSP = ("default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
            "img-src 'self' data:; font-src 'self' data:; worker-src 'self' blob:; connect-src 'self'; "
            "object-src 'none'; frame-ancestors 'none'; base-uri 'none'")


def _index_html(name: str = "index.html") -> str:
    page = (STATIC / name).read_text(encoding="utf-8")
    return page.replace("{{DISCLAIMER}}", html.escape(DISCLAIMER)).replace("{{VERSION}}", html.escape(__version__))


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err.get("loc", ()) if x not in ("query", "path", "body"))
        parts.append(f"{loc}: {err.get('msg', 'invalid')}" if loc else str(err.get("msg", "invalid")))
    return "invalid request: " + "; ".join(parts)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the service. The store opens and the worker starts when the app starts (lifespan)."""
    settings = settings or Settings.from_env()
    service = TriageService(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        service.start()
        try:
            yield
        finally:
            service.stop()

    middleware = [Middleware(ObserveMiddleware, metrics=service.metrics)]
    if settings.cors_origins:
        middleware.append(Middleware(CORSMiddleware, allow_origins=list(settings.cors_origins),
                                     allow_methods=["GET", "POST", "DELETE"],
                                     allow_headers=["Authorization", "X-API-Token", "Content-Type"]))
    middleware += [Middleware(TokenMiddleware, tokens=TokenTable.from_settings(settings)),
                   Middleware(BodyLimitMiddleware, limit=settings.max_upload_bytes)]

    app = FastAPI(
        docs_url=None, redoc_url=None,  # served below from files installed with the service (no CDN)
        title="cxr-triage",
        version=__version__,
        summary="Chest X-ray triage: upload radiographs, get a priority, probabilities and a heatmap.",
        description=DISCLAIMER + "\n\nWhen the service has an API token, send it as `Authorization: Bearer <token>`.",
        lifespan=lifespan,
        middleware=middleware,
    )
    app.state.service = service
    app.state.settings = settings
    app.include_router(router)
    app.include_router(site_router)
    app.include_router(ops)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    _add_docs(app)
    page = _index_html()

    @app.get("/", include_in_schema=False)
    def index() -> HTMLResponse:
        return HTMLResponse(page, headers={"cache-control": "no-cache"})

    monitor_page = _index_html("monitor.html")

    @app.get("/monitor", include_in_schema=False)
    def monitor_html() -> HTMLResponse:
        return HTMLResponse(monitor_page, headers={"cache-control": "no-cache"})

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _CODES.get(exc.status_code, "error")
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404 and message == "Not Found":
            message = f"no such endpoint: {request.method} {request.url.path}"
        if exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}"
        return JSONResponse(error_body(exc.status_code, code, message), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(error_body(422, "invalid_request", _validation_message(exc)), status_code=422)

    _add_error_handlers(app)
    return app


def _docs_assets() -> Path | None:
    """The Swagger UI and ReDoc files of the ``fastapi-offline`` package (None when it is not installed)."""
    try:
        folder = Path(str(resources.files("fastapi_offline") / "static"))
    except ModuleNotFoundError:
        return None
    return folder if (folder / "swagger-ui-bundle.js").is_file() else None


def _add_docs(app: FastAPI) -> None:
    """/docs (Swagger UI) and /redoc from assets installed with the service: a hospital network has
    no internet, and a page that loads its scripts from a CDN stays blank there."""
    assets = _docs_assets()
    if assets is None:
        log.warning("fastapi-offline is not installed: /docs and /redoc are off (pip install -e '.[serve]')")
        return
    app.mount(DOCS_ASSETS, StaticFiles(directory=assets), name="docs-assets")
    title = f"{app.title} API"

    @app.get("/docs", include_in_schema=False)
    def swagger() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url=app.openapi_url, title=title,
                                   oauth2_redirect_url="/docs/oauth2-redirect",
                                   swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
                                   swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
                                   swagger_favicon_url="/static/favicon.svg")

    @app.get("/docs/oauth2-redirect", include_in_schema=False)
    def swagger_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get("/redoc", include_in_schema=False)
    def redoc() -> HTMLResponse:
        page = get_redoc_html(openapi_url=app.openapi_url, title=title,
                              redoc_js_url=f"{DOCS_ASSETS}/redoc.standalone.js",
                              redoc_favicon_url="/static/favicon.svg", with_google_fonts=False)
        page.headers["content-security-policy"] = DOCS_CSP  # ReDoc's "powered by" logo is on a CDN
        return page


def operation(method: str, path: str) -> str:
    """What a request that failed to write did not do, for its error message."""
    if method == "DELETE":
        return "the study was not deleted (its record and file are both kept)"
    if path.endswith("/analyze"):
        return "the analysis was not queued"
    if path.endswith("/read") or "/reads" in path:
        return "the read was not stored"
    if path.endswith("/model") or path.endswith("/rollback"):
        return "the model in use was not changed"
    if "/pacs/" in path:
        return "the PACS study was not imported"
    if method == "POST" and path.rstrip("/").endswith("/studies"):
        return "the upload was not stored"
    return "nothing was changed"


def storage_failure(exc: BaseException, what: str = "the upload was not stored") -> tuple[int, str, str] | None:
    """(status, code, message) when ``exc`` is the data folder refusing a write, else None:
    507 when the disk is full, 503 when the folder or database is read-only. ``what``: the operation
    that did not happen, named in the message."""
    if isinstance(exc, OSError):
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return 507, "insufficient_storage", f"the service's disk is full; {what}"
        if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM, errno.EXDEV):
            return 503, "storage_unavailable", f"the service's data folder is read-only; {what}"
        return None
    if isinstance(exc, sqlite3.Error):
        text = str(exc).lower()
        if "full" in text:
            return 507, "insufficient_storage", f"the service's disk is full; {what}"
        if "readonly" in text or "read-only" in text or "locked" in text or "disk i/o" in text:
            return 503, "storage_unavailable", f"the service's database cannot be written now ({exc}); {what}"
    return None


def _add_error_handlers(app: FastAPI) -> None:
    """Every failure answers JSON: storage refusals with Retry-After, anything else as a 500."""

    async def storage_error(request: Request, exc: Exception) -> JSONResponse:
        found = storage_failure(exc, operation(request.method, request.url.path))
        if found is None:
            return await internal_error(request, exc)
        status, code, message = found
        log.warning("%s %s -> %d: %s", request.method, request.url.path, status, exc)
        return JSONResponse(error_body(status, code, f"{message}; try again later"), status_code=status,
                            headers={"Retry-After": str(RETRY_AFTER_S)})

    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.error("%s %s failed: %s", request.method, request.url.path, type(exc).__name__,
                  exc_info=(type(exc), exc, exc.__traceback__))
        return JSONResponse(error_body(500, "internal_error", f"the service failed on this request "
                                                              f"({type(exc).__name__}); it has been logged"),
                            status_code=500)

    async def busy(request: Request, exc: Exception) -> JSONResponse:
        retry = int(getattr(exc, "retry_after", 5))
        return JSONResponse(error_body(503, "busy", f"{exc}; try again in {retry} s"), status_code=503,
                            headers={"Retry-After": str(retry)})

    async def gone(request: Request, exc: Exception) -> Response:
        log.info("%s %s: the client went away before its request was complete", request.method, request.url.path)
        return Response(status_code=400)

    app.add_exception_handler(QueueFullError, busy)
    app.add_exception_handler(DecodeBusyError, busy)
    app.add_exception_handler(ClientDisconnect, gone)
    app.add_exception_handler(OSError, storage_error)
    app.add_exception_handler(sqlite3.Error, storage_error)
    app.add_exception_handler(Exception, internal_error)
