"""Pure ASGI middleware: API token, request-size limit, metrics, security headers."""

from __future__ import annotations

import hmac
import json
import time

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cxrtriage.serve.metrics import Metrics

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
    """Every call but the open paths needs ``Authorization: Bearer <token>`` (or ``X-API-Token``)."""

    def __init__(self, app: ASGIApp, token: str | None):
        self.app = app
        self.token = token.encode() if token else None

    def _given(self, scope: Scope) -> bytes | None:
        for k, v in scope.get("headers", ()):
            if k == b"authorization":
                scheme, _, value = v.partition(b" ")
                if scheme.lower() == b"bearer":
                    return value.strip()
            elif k == b"x-api-token":
                return v.strip()
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.token is None or scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        if scope.get("method") == "OPTIONS" or path in OPEN_PATHS or path.startswith(OPEN_PREFIXES):
            return await self.app(scope, receive, send)
        given = self._given(scope)
        if given is None or not hmac.compare_digest(given, self.token):
            why = "missing" if given is None else "wrong"
            return await send_json(
                send, 401,
                error_body(401, "unauthorized", f"API token {why}: send it as 'Authorization: Bearer <token>'"),
                [(b"www-authenticate", b'Bearer realm="cxr-triage"')])
        return await self.app(scope, receive, send)


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
