"""The FastAPI application factory."""

from __future__ import annotations

import html
import logging
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware import Middleware

from cxrtriage import DISCLAIMER, __version__
from cxrtriage.serve.api import ops, router
from cxrtriage.serve.middleware import BodyLimitMiddleware, ObserveMiddleware, TokenMiddleware, error_body
from cxrtriage.serve.service import TriageService
from cxrtriage.serve.settings import Settings

STATIC = Path(__file__).with_name("static")
log = logging.getLogger("cxrtriage.serve")

_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
          409: "conflict", 413: "too_large", 415: "unsupported_media_type", 422: "unprocessable", 429: "too_many",
          500: "internal_error", 502: "bad_gateway", 503: "unavailable"}


def _index_html() -> str:
    page = (STATIC / "index.html").read_text(encoding="utf-8")
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
    middleware += [Middleware(TokenMiddleware, token=settings.token),
                   Middleware(BodyLimitMiddleware, limit=settings.max_upload_bytes)]

    app = FastAPI(
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
    app.include_router(ops)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    page = _index_html()

    @app.get("/", include_in_schema=False)
    def index() -> HTMLResponse:
        return HTMLResponse(page, headers={"cache-control": "no-cache"})

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

    return app
