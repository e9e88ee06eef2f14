"""The HTTP connection guard: header and body read timeouts and a cap on open connections.

uvicorn closes an idle keep-alive connection, but a connection that sends half a request header
and stalls is held for ever, and so is a body that stops arriving; thousands of them exhaust the
process's file descriptors and nothing answers any more, ``/healthz`` included. The protocol
here is uvicorn's httptools protocol with three guards (the same limits nginx's
``client_header_timeout``, ``client_body_timeout`` and ``limit_conn`` put in front):

* a request's header must be complete ``header_timeout`` seconds after its first byte (or after
  the connection opened); otherwise the connection is answered 408 and closed;
* a request body may not stall for more than ``body_timeout`` seconds between two reads; otherwise
  the application sees the client gone and the connection is closed;
* at most ``max_connections`` connections are open; one more closes the oldest connection that
  is still waiting for its request header (a stalled one: a client that sends its request at
  once is not waiting), or, when none is, refuses the new one with 503.
"""

from __future__ import annotations

import asyncio
import logging
import resource

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger("cxrtriage.serve.connections")

_408 = b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
_503 = (b"HTTP/1.1 503 Service Unavailable\r\nretry-after: 5\r\ncontent-type: text/plain\r\n"
        b"content-length: 32\r\nconnection: close\r\n\r\ntoo many connections; try again\n")
#: File descriptors kept free for the database, model files, logs and the PACS client.
FD_RESERVE = 128


def connection_limits(wanted: int) -> tuple[int, int]:
    """(connection cap, listen backlog) that fit the open-files limit (raised to its hard limit first,
    where allowed). asyncio accepts up to a backlog's worth of connections before the protocol sees
    any of them (and closes the ones it drops one loop turn later), so the cap leaves room for two such
    batches beside :data:`FD_RESERVE`."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    backlog = min(2048, max(64, (soft - FD_RESERVE) // 8))
    return max(16, min(wanted, soft - FD_RESERVE - 2 * backlog)), backlog


class GuardedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with header/body timeouts and the connection cap (class
    attributes: make a subclass with :func:`guarded_protocol`)."""

    header_timeout = 10.0
    body_timeout = 15.0
    max_connections = 8192

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._guard_timer: asyncio.TimerHandle | None = None
        self._waiting = _waiting(self.server_state)
        self._waiting[self] = None
        self._arm(self.header_timeout, self._header_expired)
        if len(self.connections) > self.max_connections:
            self._make_room()

    def _make_room(self) -> None:
        oldest = next(iter(self._waiting), None)
        if oldest is None or oldest is self and len(self._waiting) == 1:
            _suppressed_warning("connection limit (%d) reached with every connection busy: new ones get 503",
                                self.max_connections)
            self.transport.write(_503)
            self._drop()
            return
        if oldest is self:  # only reached when others wait too: take the next oldest
            oldest = next(p for p in self._waiting if p is not self)
        _suppressed_warning("connection limit (%d) reached: closing the oldest connection still waiting for "
                            "its request header", self.max_connections)
        oldest._drop()

    def _drop(self) -> None:
        self._waiting.pop(self, None)
        self._disarm()
        self.connections.discard(self)
        self.transport.abort()

    def _arm(self, seconds: float, callback) -> None:
        self._disarm()
        self._guard_timer = self.loop.call_later(seconds, callback)

    def _disarm(self) -> None:
        timer = getattr(self, "_guard_timer", None)
        if timer is not None:
            timer.cancel()
            self._guard_timer = None

    def _header_expired(self) -> None:
        self._guard_timer = None
        if self.transport.is_closing():
            return
        _suppressed_warning("closed a connection whose request header was not complete after %g s",
                            self.header_timeout)
        self.transport.write(_408)
        self._waiting.pop(self, None)
        self.transport.close()

    def _body_expired(self) -> None:
        self._guard_timer = None
        if self.transport.is_closing():
            return
        _suppressed_warning("closed a connection whose request body stalled for %g s", self.body_timeout)
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True  # the application's next receive() says the client is gone
            cycle.message_event.set()
        self.transport.abort()

    # -- the parser's callbacks ------------------------------------------------------------
    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self not in self._waiting:  # the next request on a kept-alive connection
            self._waiting[self] = None
            self._arm(self.header_timeout, self._header_expired)

    def on_headers_complete(self) -> None:
        self._waiting.pop(self, None)
        self._disarm()
        super().on_headers_complete()
        self._arm(self.body_timeout, self._body_expired)

    def on_body(self, body: bytes) -> None:
        super().on_body(body)
        if self._guard_timer is not None:
            self._arm(self.body_timeout, self._body_expired)

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._waiting.pop(self, None)
        self._disarm()
        super().connection_lost(exc)


def _waiting(server_state) -> dict:
    """Connections of this server still waiting for a request header, oldest first."""
    found = getattr(server_state, "cxr_waiting", None)
    if found is None:
        found = server_state.cxr_waiting = {}
    return found


def _suppressed_warning(msg: str, *args) -> None:
    log.warning(msg, *args)  # repeated lines are rate-limited by the service's log filter


def guarded_protocol(header_timeout: float, body_timeout: float, max_connections: int) -> type[GuardedProtocol]:
    """A :class:`GuardedProtocol` with these limits (uvicorn's ``http=`` setting takes the class)."""
    return type("CxrHttpProtocol", (GuardedProtocol,), {
        "header_timeout": float(header_timeout), "body_timeout": float(body_timeout),
        "max_connections": int(max_connections)})
