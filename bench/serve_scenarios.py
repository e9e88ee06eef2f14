"""The hostile scenarios of ``bench/serve_load.py --scenario`` (see its docstring): sub-limit pixel
bombs, half-open sockets, a burst over the scoring rate, analyze spam. Each on a fresh server."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
from serve_common import (
    MAX_SECONDS,
    ROOT,
    SAMPLES,
    SHARED,
    Payloads,
    _r,
    free_port,
    peak_rss_mib,
    percentile,
    wait_ready,
)


class Server:
    """``python -m cxrtriage serve`` on a fresh data folder, for one scenario."""

    def __init__(self, a, extra_env: dict[str, str] | None = None):
        self.tmp = tempfile.TemporaryDirectory(prefix="cxr-scenario-")
        self.data = Path(self.tmp.name)
        self.url = f"http://127.0.0.1:{free_port()}"
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **(extra_env or {})}
        for kv in a.server_env:
            k, _, v = kv.partition("=")
            env[k] = v
        env.pop("CXR_API_TOKEN", None)
        self.log_path = self.data / "server.log"
        self._log = open(self.log_path, "ab")
        nofile = getattr(a, "server_nofile", 0)

        def limit_files() -> None:  # the server's open-files limit, as a container would set it
            if nofile:
                import resource

                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cxrtriage", "serve", "--host", "127.0.0.1", "--port", self.url.rsplit(":", 1)[1],
             "--data-dir", str(self.data / "data"), "--no-samples", "--no-access-log", "--log-level", "warning",
             *(["--model", a.model] if a.model else [])], cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT,
            preexec_fn=limit_files)
        wait_ready(self.proc, self.url, 90, lambda: ":\n" + self.log_path.read_text()[-2000:])
        self.hwm0 = peak_rss_mib(self.proc.pid)

    def queue(self) -> int | None:
        try:
            return int(httpx.get(f"{self.url}/readyz", timeout=5).json()["queue"])
        except (httpx.HTTPError, ValueError, KeyError):
            return None

    def close(self) -> dict:
        out = {"rss_mib_start": _r(self.hwm0), "peak_rss_mib": _r(peak_rss_mib(self.proc.pid)),
               "fds": len(os.listdir(f"/proc/{self.proc.pid}/fd")) if self.proc.poll() is None else None,
               "log_bytes": self.log_path.stat().st_size}
        out["rss_growth_mib"] = _r((out["peak_rss_mib"] or 0) - (self.hwm0 or 0))
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._log.close()
        self.tmp.cleanup()
        return out


class Probe(threading.Thread):
    """``/healthz`` on a fresh connection every 0.2 s (latency in ms, None when it failed), and the
    queue depth every second."""

    def __init__(self, server: Server):
        super().__init__(daemon=True)
        self.server, self.stop, self.lat, self.depth = server, threading.Event(), [], []

    def run(self) -> None:
        last_q = 0.0
        while not self.stop.is_set():
            t0 = time.perf_counter()
            try:
                ok = httpx.get(f"{self.server.url}/healthz", timeout=5).status_code == 200
            except httpx.HTTPError:
                ok = False
            self.lat.append((time.perf_counter() - t0) * 1000 if ok else None)
            if time.monotonic() - last_q >= 1.0:
                last_q = time.monotonic()
                q = self.server.queue()
                if q is not None:
                    self.depth.append(q)
            self.stop.wait(0.2)

    def summary(self) -> dict:
        self.stop.set()
        self.join(10)
        ok = [v for v in self.lat if v is not None]
        return {"healthz_probes": len(self.lat), "healthz_failed": len(self.lat) - len(ok),
                "healthz_ms_p99": round(percentile(ok, 0.99), 1), "healthz_ms_max": round(max(ok), 1) if ok else None,
                "queue_max": max(self.depth) if self.depth else None}


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    import zlib

    return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")


def subpixel_bombs(n: int, side: int = 7740) -> list[bytes]:
    """``n`` distinct 16-bit all-zero PNGs of ``side`` x ``side`` (a text chunk tells them apart)."""
    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.zeros((side, side), np.uint16)).save(buf, format="PNG", compress_level=9)
    png = buf.getvalue()
    head = 8 + 25  # signature and IHDR
    return [png[:head] + _png_chunk(b"tEXt", f"Comment\0bomb {i} {time.time_ns()}".encode()) + png[head:]
            for i in range(n)]


def _results_lost(url: str, ids: list[str], deadline_s: float = 300) -> tuple[int, list[float]]:
    """Studies (accepted with a 2xx) that have no result by the deadline, and each one's wait in s."""
    from datetime import datetime

    lost, waits, end = 0, [], time.monotonic() + deadline_s
    with httpx.Client(base_url=url, timeout=70) as c:
        for sid in ids:
            body: dict = {}
            while time.monotonic() < end:
                body = c.get(f"/api/v1/studies/{sid}", params={"wait": 30}).json()
                if body.get("status") in ("done", "failed"):
                    break
            if not body.get("result"):
                lost += 1
                continue
            t = [datetime.fromisoformat(body[k].replace("Z", "+00:00")).timestamp()
                 for k in ("created_at", "completed_at")]
            waits.append(t[1] - t[0])
    return lost, waits


def _post(client: httpx.Client, path: str, **kw) -> tuple[int | str, dict]:
    try:
        r = client.post(path, **kw)
        return r.status_code, (r.json() if r.headers.get("content-type", "").startswith("application/json") else {})
    except httpx.HTTPError as exc:
        return type(exc).__name__, {}


def scenario_bombs(a, server: Server) -> dict:
    bombs = subpixel_bombs(a.concurrency)
    codes: dict = {}
    ids: list[str] = []
    lock = threading.Lock()

    def send(i: int) -> None:
        with httpx.Client(base_url=server.url, timeout=300) as c:
            code, body = _post(c, "/api/v1/studies", files={"files": (f"bomb{i}.png", bombs[i], "image/png")})
        with lock:
            codes[str(code)] = codes.get(str(code), 0) + 1
            if isinstance(code, int) and 200 <= code < 300:
                ids.append(body["id"])

    threads = [threading.Thread(target=send, args=(i,)) for i in range(a.concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lost, waits = _results_lost(server.url, ids)
    return {"uploads": a.concurrency, "answers": codes, "results_lost": lost,
            "result_wait_s_max": round(max(waits), 1) if waits else None}


def scenario_slowloris(a, server: Server) -> dict:
    host, port = "127.0.0.1", int(server.url.rsplit(":", 1)[1])
    partial = b"POST /api/v1/studies HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data\r\nX-Pad: "
    socks: list[socket.socket] = []
    opened = dropped = refused = max_fds = 0
    end = time.monotonic() + min(a.seconds, MAX_SECONDS)
    while time.monotonic() < end:
        try:
            max_fds = max(max_fds, len(os.listdir(f"/proc/{server.proc.pid}/fd")))
        except OSError:
            pass
        alive = []
        for s in socks:  # a socket the server answered (408/503) or closed: reopen it
            try:
                s.setblocking(False)
                gone = len(s.recv(4096)) >= 0
            except BlockingIOError:
                gone = False
            except OSError:
                gone = True
            if gone:
                s.close()
                dropped += 1
            else:
                alive.append(s)
        socks = alive
        while len(socks) < a.sockets and time.monotonic() < end:
            s = socket.socket()
            s.settimeout(2)
            try:
                s.connect((host, port))
                s.sendall(partial)
                socks.append(s)
                opened += 1
            except OSError:
                s.close()
                refused += 1
                break
        time.sleep(0.5)
    held = len(socks)
    for s in socks:
        s.close()
    return {"sockets_target": a.sockets, "opened": opened, "dropped_by_server": dropped,
            "connect_failed": refused, "held_at_end": held, "server_fds_max": max_fds}


def _scoring_rate(url: str, payloads: Payloads, n: int = 48) -> float:
    """Studies scored per second when ``n`` arrive at once."""
    t0 = time.monotonic()
    with httpx.Client(base_url=url, timeout=60) as c:
        ids = [_post(c, "/api/v1/studies", files={"files": payloads.next()})[1].get("id") for _ in range(n)]
    lost, _ = _results_lost(url, [i for i in ids if i])
    return (n - lost) / (time.monotonic() - t0)


def scenario_burst(a, server: Server, payloads: Payloads) -> dict:
    import concurrent.futures as cf

    rate = _scoring_rate(server.url, payloads)
    target = rate * a.factor
    codes: dict = {}
    ids: list[str] = []
    lock = threading.Lock()
    local = threading.local()

    def send() -> None:
        if not hasattr(local, "c"):
            local.c = httpx.Client(base_url=server.url, timeout=60)
        code, body = _post(local.c, "/api/v1/studies", files={"files": payloads.next()})
        with lock:
            codes[str(code)] = codes.get(str(code), 0) + 1
            if isinstance(code, int) and 200 <= code < 300:
                ids.append(body["id"])

    t0 = time.monotonic()
    seconds = min(a.seconds, MAX_SECONDS)
    with cf.ThreadPoolExecutor(max(8, a.concurrency)) as pool:
        k = 0
        while time.monotonic() - t0 < seconds:
            due = t0 + k / target
            time.sleep(max(0.0, due - time.monotonic()))
            pool.submit(send)
            k += 1
    lost, waits = _results_lost(server.url, ids)
    return {"scoring_rate_per_s": round(rate, 1), "arrival_rate_per_s": round(target, 1), "sent": k,
            "answers": codes, "accepted": len(ids), "results_lost": lost,
            "wait_s_p50": round(percentile(waits, 0.5), 2), "wait_s_p99": round(percentile(waits, 0.99), 2),
            "wait_s_max": round(max(waits), 2) if waits else None}


def scenario_analyze_spam(a, server: Server, payloads: Payloads) -> dict:
    with httpx.Client(base_url=server.url, timeout=60) as c:
        sid = _post(c, "/api/v1/studies", files={"files": payloads.next()})[1]["id"]
        c.get(f"/api/v1/studies/{sid}", params={"wait": 30})
    codes: dict = {}
    lock = threading.Lock()
    end = time.monotonic() + min(a.seconds, MAX_SECONDS)

    def spam() -> None:
        with httpx.Client(base_url=server.url, timeout=60) as c:
            while time.monotonic() < end:
                code, _ = _post(c, f"/api/v1/studies/{sid}/analyze", params={"wait": 0})
                with lock:
                    codes[str(code)] = codes.get(str(code), 0) + 1

    threads = [threading.Thread(target=spam) for _ in range(a.concurrency)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    queue_during = server.queue()
    with httpx.Client(base_url=server.url, timeout=60) as c:
        code, body = _post(c, "/api/v1/studies", files={"files": payloads.next()})
    for t in threads:
        t.join()
    lost, waits = _results_lost(server.url, [sid] + ([body["id"]] if code == 201 else []))
    return {"analyze_answers": codes, "queue_after_1s": queue_during, "upload_during_spam": code,
            "upload_wait_s": round(waits[-1], 2) if len(waits) > 1 else None, "results_lost": lost}


SCENARIOS = {"bombs": scenario_bombs, "slowloris": scenario_slowloris, "burst": scenario_burst,
             "analyze-spam": scenario_analyze_spam}


def run_scenario(a) -> int:
    if a.scenario == "bombs" and not a.model:
        a.model = "cxr-pneumonia"  # one network: the memory measured is the decode's, not routing's
    payloads = None
    if a.scenario in ("burst", "analyze-spam"):
        source = a.source or (SHARED if SHARED.is_dir() else SAMPLES)
        payloads = Payloads(source.resolve(), a.images, 0.0)
    server = Server(a)
    probe = Probe(server)
    probe.start()
    try:
        fn = SCENARIOS[a.scenario]
        out = fn(a, server, payloads) if payloads is not None else fn(a, server)
    finally:
        out_probe = probe.summary()
        out_server = server.close()
    out = {"scenario": a.scenario, **out, **out_probe, **out_server}
    for k, v in out.items():
        print(f"{k:22s} {v}")
    if a.json:
        a.json.write_text(json.dumps(out, indent=2))
    return 0
