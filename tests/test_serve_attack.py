"""The real service process under attack: pixel bombs just under the limit, half-open sockets, stalled
bodies. uvicorn on loopback, real sockets, the server's own memory and file descriptors measured."""

from __future__ import annotations

import concurrent.futures as cf
import io
import socket
import threading
import time
import zlib

import httpx
import numpy as np
import pytest
from PIL import Image
from serve_fixtures import LiveServer, peak_rss_mb, samples, unique_jpeg  # noqa: F401

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning")]
API = "/api/v1"


def _chunk(kind: bytes, data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")


@pytest.fixture(scope="module")
def sub_limit_bombs() -> list[bytes]:
    """Eight distinct 7740 x 7740 16-bit all-zero PNGs: 59.9 Mpx each (under the 60 Mpx limit), ~117 KB."""
    buf = io.BytesIO()
    Image.fromarray(np.zeros((7740, 7740), np.uint16)).save(buf, format="PNG", compress_level=9)
    png = buf.getvalue()
    return [png[:33] + _chunk(b"tEXt", f"Comment\0bomb {i}".encode()) + png[33:] for i in range(8)]


def test_sub_limit_bombs_at_once_do_not_multiply_in_memory(tmp_path, sub_limit_bombs):
    """Eight uploads at once of images just under the pixel limit: each is accepted and scored, and the
    server's peak RSS grows by far less than one full-size float copy each (before: decoded again at
    full size by the worker, a batch at a time: +1.9 GB for eight)."""
    srv = LiveServer(tmp_path / "data", args=("--model", "cxr-pneumonia")).wait_ready()
    try:
        before = peak_rss_mb(srv.proc.pid)

        def send(i: int) -> httpx.Response:
            with httpx.Client(base_url=srv.url, timeout=120) as c:
                return c.post(f"{API}/studies", files={"files": (f"b{i}.png", sub_limit_bombs[i], "image/png")})

        with cf.ThreadPoolExecutor(len(sub_limit_bombs)) as pool:
            answers = list(pool.map(send, range(len(sub_limit_bombs))))
        assert [r.status_code for r in answers] == [201] * len(sub_limit_bombs), [r.text[:200] for r in answers]
        for r in answers:  # every 2xx ends in a result
            body = srv.client.get(f"{API}/studies/{r.json()['id']}", params={"wait": 60}).json()
            assert body["status"] == "done" and body["result"], body
            assert body["image"]["width"] == 7740 and body["image"]["height"] == 7740
        grown = peak_rss_mb(srv.proc.pid) - before
        assert grown < 500, f"peak RSS grew {grown:.0f} MiB for {len(sub_limit_bombs)} sub-limit bombs"
        assert srv.client.get(f"{API}/studies/{answers[0].json()['id']}/image.png").status_code == 200
    finally:
        srv.stop()


def _half_open(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(b"POST /api/v1/studies HTTP/1.1\r\nHost: x\r\nX-Pad: ")
    return s


def _closed_within(s: socket.socket, seconds: float) -> float | None:
    """Seconds until the server closes ``s`` (None: still open after ``seconds``)."""
    t0 = time.monotonic()
    s.settimeout(0.2)
    while time.monotonic() - t0 < seconds:
        try:
            data = s.recv(4096)
        except TimeoutError:
            continue
        except OSError:
            return time.monotonic() - t0
        if data == b"":
            return time.monotonic() - t0
        if b"408" in data or b"503" in data:  # an answer, then the close
            continue
    return None


def test_half_open_sockets_do_not_take_down_healthz(tmp_path):
    """1,500 connections that send half a header and stall, against a server whose open-files limit is
    1,024 (a container's): while they are held, /healthz on a fresh connection answers within 1 s, the server
    never runs out of file descriptors, and its log does not fill (before: accept() failed with 'Too
    many open files', /healthz timed out)."""
    srv = LiveServer(tmp_path / "data", nofile=1024).wait_ready()
    socks: list[socket.socket] = []
    probes: list[float | None] = []
    stop = threading.Event()

    def probe() -> None:
        while not stop.is_set():
            t0 = time.perf_counter()
            try:
                ok = httpx.get(f"{srv.url}/healthz", timeout=5).status_code == 200
            except httpx.HTTPError:
                ok = False
            probes.append(time.perf_counter() - t0 if ok else None)
            stop.wait(0.2)

    try:
        log_before = len(srv.log())
        for _ in range(1500):
            try:
                socks.append(_half_open(srv.port))
            except OSError:
                pass
        t = threading.Thread(target=probe, daemon=True)
        t.start()
        time.sleep(5)
        stop.set()
        t.join(10)
        fds = len(list((__import__("pathlib").Path(f"/proc/{srv.proc.pid}/fd")).iterdir()))
        assert fds < 1024, f"the server holds {fds} file descriptors"
        assert probes and all(p is not None and p < 1.0 for p in probes), probes
        assert len(srv.log()) - log_before < 20_000, srv.log()[-3000:]
        assert srv.proc.poll() is None
    finally:
        stop.set()
        for s in socks:
            s.close()
        srv.stop()


def test_stalled_header_and_body_are_closed_by_their_timeouts(tmp_path):
    """A header that stops half way and a body declared as 1 MB that stops after 100 bytes are both
    closed after their timeouts (before: held for as long as the client liked)."""
    env = {"CXR_HEADER_TIMEOUT_S": "2", "CXR_BODY_TIMEOUT_S": "2"}
    srv = LiveServer(tmp_path / "data", env=env).wait_ready()
    try:
        header = _half_open(srv.port)
        body = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
        body.sendall(b"POST /api/v1/studies HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; "
                     b"boundary=b\r\nContent-Length: 1048576\r\n\r\n--b\r\n" + b"x" * 100)
        took_header = _closed_within(header, 10)
        took_body = _closed_within(body, 10)
        assert took_header is not None and took_header < 6, took_header
        assert took_body is not None and took_body < 6, took_body
        header.close()
        body.close()
        assert srv.client.get("/healthz").status_code == 200
        assert "Traceback" not in srv.log()
    finally:
        srv.stop()
