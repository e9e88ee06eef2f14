"""Pure ASGI middleware: API tokens and the audit log of writes, request-size limit, metrics, security headers."""

from __future__ import annotations

import json
import logging
import time

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cxrtriage.serve.metrics import Metrics
from cxrtriage.serve.tokens import WRITE_METHODS, TokenTable

audit = logging.getLogger("cxrtriage.serve.audit")

# Paths served without the token: liveness, and the page shell and API description, which
# hold no data (the page asks for the token before it calls the API).
OPEN_PATHS = frozenset({"/healthz", "/", "/favicon.ico", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})
OPEN_PREFIXES = ("/static/", "/docs-assets/")

PAGE_CSP = ("default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
            "connect-src 'self'; font-src 'self'; object-src 'none'; frame-ancestors 'none'; base-uri 'none'; "
            "form-action 'self'")


async def send_json(send: Send, status: int, body: dict, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    payload = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                            (b"connection", b"close"), *(headers or [])]})
    await send({"type": "http.response.body", "body": payload})


def error_body(status: int, code: str, message: str, **extra) -> dict:
    return {"status": status, "error": code, "message": message, **extra}


class UploadTooLarge(HTTPException):
    """The request body passed the size limit while it was arriving."""

    def __init__(self, limit: int):
        super().__init__(413, _too_large_message(limit))


def _too_large_message(limit: int) -> str:
    return (f"the upload is larger than the limit of {limit / 1048576:g} MiB "
            f"({limit} bytes); send fewer or smaller files")


class BodyLimitMiddleware:
    """413 for a body over ``limit`` bytes: at once from Content-Length, else counting bytes as they arrive."""

    def __init__(self, app: ASGIApp, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = None
        for k, v in scope.get("headers", ()):
            if k == b"content-length":
                try:
                    length = int(v)
                except ValueError:
                    return await send_json(send, 400, error_body(400, "bad_request", "Content-Length is not a number"))
        if length is not None and length > self.limit:
            scope["cxr.too_large"] = True
            return await send_json(send, 413, error_body(413, "too_large", _too_large_message(self.limit),
                                                         limit_bytes=self.limit))
        seen = 0
        limit = self.limit

        async def counted() -> Message:
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > limit:
                    raise UploadTooLarge(limit)
            return msg

        await self.app(scope, counted, send)


class TokenMiddleware:
    """Every call but the open paths needs a token (``Authorization: Bearer <token>`` or ``X-API-Token``);
    writes (POST, PUT, PATCH, DELETE) need a ``write`` token (403 for a read-only one). Each write is
    logged with the token's name, the route and the answer: an audit trail with no patient data
    (no file names, no PACS identifiers; study ids are random)."""

    def __init__(self, app: ASGIApp, tokens: TokenTable):
        self.app = app
        self.tokens = tokens

    @staticmethod
    def _given(scope: Scope) -> bytes | None:
        for k, v in scope.get("headers", ()):
            if k == b"authorization":
                scheme, _, value = v.partition(b" ")
                if scheme.lower() == b"bearer":
                    return value.strip()
            elif k == b"x-api-token":
                return v.strip()
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        method = scope.get("method", "GET")
        write = method in WRITE_METHODS
        if not self.tokens:
            scope["cxr.token"], scope["cxr.role"] = None, "write"
            return await (self._audited(scope, receive, send, "-") if write else self.app(scope, receive, send))
        path = scope.get("path", "")
        if method == "OPTIONS" or path in OPEN_PATHS or path.startswith(OPEN_PREFIXES):
            return await self.app(scope, receive, send)
        given = self._given(scope)
        token = self.tokens.find(given) if given is not None else None
        if token is None:
            why = "missing" if given is None else "wrong"
            return await send_json(
                send, 401,
                error_body(401, "unauthorized", f"API token {why}: send it as 'Authorization: Bearer <token>'"),
                [(b"www-authenticate", b'Bearer realm="cxr-triage"')])
        scope["cxr.token"], scope["cxr.role"] = token.name, token.role
        if write and not token.can_write:
            audit.info("refused token=%s role=%s %s %s -> 403", token.name, token.role, method, _route_of(scope))
            return await send_json(send, 403, error_body(
                403, "forbidden", f"the token '{token.name}' is read-only: uploads, analyses, deletes and PACS "
                                  "imports need a write token"))
        if write:
            return await self._audited(scope, receive, send, token.name)
        return await self.app(scope, receive, send)

    async def _audited(self, scope: Scope, receive: Receive, send: Send, name: str) -> None:
        status = 500

        async def watched(msg: Message) -> None:
            nonlocal status
            if msg["type"] == "http.response.start":
                status = msg["status"]
            await send(msg)

        try:
            await self.app(scope, receive, watched)
        finally:
            sid = (scope.get("path_params") or {}).get("study_id")
            audit.info("write token=%s %s %s%s -> %d", name, scope.get("method"), _route_of(scope),
                       f" study={sid}" if sid and len(str(sid)) <= 64 else "", status)


def _route_of(scope: Scope) -> str:
    """The route template (``/api/v1/studies/{study_id}``), never the raw path (it may carry a PACS UID)."""
    route = scope.get("route")
    return getattr(route, "path", None) or "<unmatched>"


class ObserveMiddleware:
    """Counts requests and their latency by route template; adds security and caching headers."""

    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        status = 500
        path = scope.get("path", "")
        page = path == "/" or path.startswith("/static/")

        async def wrapped(msg: Message) -> None:
            nonlocal status
            if msg["type"] == "http.response.start":
                status = msg["status"]
                headers = list(msg.get("headers", []))
                names = {k.lower() for k, _ in headers}
                headers += [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer")]
                if b"x-frame-options" not in names:
                    headers.append((b"x-frame-options", b"DENY"))
                if page:
                    headers.append((b"content-security-policy", PAGE_CSP.encode()))
                elif path.startswith("/api/") and b"cache-control" not in names:
                    headers.append((b"cache-control", b"no-store"))
                msg = {**msg, "headers": headers}
            await send(msg)

        try:
            await self.app(scope, receive, wrapped)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or ("/static" if path.startswith("/static/") else "<other>")
            method = scope.get("method", "GET")
            self.metrics.requests.labels(method, template, str(status)).inc()
            self.metrics.latency.labels(method, template).observe(time.perf_counter() - t0)
