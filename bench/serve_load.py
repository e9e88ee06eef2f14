#!/usr/bin/env python
"""Load test of the triage service: N concurrent clients upload real radiographs for T seconds.

Starts ``python -m cxrtriage serve`` on a loopback port with a fresh data directory, lets
``--clients`` threads each upload a radiograph and wait for its result (long poll) in a
loop, and prints uploads/s, upload-to-result latency percentiles, errors and the server's
resident memory (from /proc/PID/status) at start, peak and end.

Every upload is unique (a JPEG comment segment with a counter, or a fresh SOP Instance UID
for DICOM), so deduplication never short-cuts the work.

Usage::

    .venv/bin/python bench/serve_load.py [--clients 4] [--seconds 60] [--dicom-fraction 0.1]

Targets (issue 4, 2-core machine, default model): p50 <= 60 ms, p99 <= 500 ms at 4 clients,
>= 50 studies/s sustained for 60 s, 0 errors, memory growth <= 10 %. ``--check`` makes the
exit status 1 when a target is missed.

``--bombs N`` adds N threads that send decompression bombs throughout the run (a 190 KB PNG of
14000 x 14000 px, RLE and uncompressed DICOMs of a few hundred bytes declaring 30000 x 30000):
every one must be refused (413) while the server's memory stays flat (its peak RSS, VmHWM, is
printed before and after).

``--scenario`` runs one hostile scenario instead (each on a fresh server; ``--server-env K=V``
sets the server's ``CXR_*`` settings):

* ``bombs``: ``--concurrency`` (32) uploads at once of distinct 7740 x 7740 16-bit PNGs (59.9 Mpx,
  ~117 KB each, just under the 60 Mpx limit); the server's peak RSS growth, answers, results lost.
* ``slowloris``: ``--sockets`` (5000) connections (the server's open-files limit is ``--server-nofile``,
  4096) that send half a request header and stall, kept
  open (reopened when the server drops them) for ``--seconds``; ``/healthz`` latency throughout.
* ``burst``: the service's scoring rate is measured, then uploads arrive at ``--factor`` (4) times
  it for ``--seconds``; answers (201 / 503 / 429), queue depth, accepted studies' wait, results lost.
* ``analyze-spam``: ``POST /analyze`` on one study as fast as ``--concurrency`` threads can for
  ``--seconds``, then a normal upload; queue depth, the upload's wait, results lost.

Every scenario prints the server's RSS growth, ``/healthz`` latency (a fresh connection every
0.2 s), the queue depth it saw and the results lost (a 2xx whose study never got a result).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the checkout's testkit/

from serve_common import (  # noqa: E402
    MAX_SECONDS,
    SAMPLES,
    SHARED,
    Payloads,
    _r,
    free_port,
    peak_rss_mib,
    percentile,
    rss_mib,
    wait_ready,
)

from testkit.bombs import bomb_files  # noqa: E402

SCENARIO_NAMES = ("analyze-spam", "bombs", "burst", "slowloris")  # bench/serve_scenarios.py


def bomb_loop(url: str, bombs: dict[str, bytes], counts: dict[str, int], lock: threading.Lock,
              stop: threading.Event) -> None:
    """Send the bombs in turn until ``stop``; count the answers by status."""
    items = list(bombs.items())
    i = 0
    with httpx.Client(base_url=url, timeout=60) as client:
        while not stop.is_set():
            name, data = items[i % len(items)]
            i += 1
            try:
                code = str(client.post("/api/v1/studies", files={"files": (name, data)}).status_code)
            except httpx.HTTPError as exc:
                code = type(exc).__name__
            with lock:
                counts[code] = counts.get(code, 0) + 1


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process (from /proc/PID/stat)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


class Stats:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.latencies: list[float] = []
        self.done_at: list[float] = []
        self.errors: list[str] = []
        self.measuring = False

    def ok(self, latency: float) -> None:
        with self.lock:
            if self.measuring:
                self.latencies.append(latency)
                self.done_at.append(time.monotonic())

    def error(self, what: str) -> None:
        with self.lock:
            if self.measuring:
                self.errors.append(what)


def client_loop(url: str, payloads: Payloads, stats: Stats, stop: threading.Event) -> None:
    with httpx.Client(base_url=url, timeout=30.0) as c:
        while not stop.is_set():
            name, data, ctype = payloads.next()
            t0 = time.perf_counter()
            try:
                r = c.post("/api/v1/studies", files={"files": (name, data, ctype)})
                if r.status_code != 201:
                    stats.error(f"upload {r.status_code}: {r.text[:120]}")
                    continue
                sid = r.json()["id"]
                r = c.get(f"/api/v1/studies/{sid}", params={"wait": 20})
                body = r.json()
                if r.status_code != 200 or body.get("status") != "done" or not body.get("result"):
                    stats.error(f"result {r.status_code}: status {body.get('status')}")
                    continue
                if body["result"].get("error"):
                    stats.error(f"inference error: {body['result']['error_type']}")
                    continue
                stats.ok(time.perf_counter() - t0)
            except (httpx.HTTPError, ValueError, KeyError) as exc:
                stats.error(f"{type(exc).__name__}: {exc}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=60.0, help=f"measured duration (at most {MAX_SECONDS})")
    ap.add_argument("--warmup", type=float, default=3.0, help="seconds of load before measuring")
    ap.add_argument("--source", type=Path, default=None,
                    help="folder of JPEG radiographs (default: ../shared Kermany train set, else the samples)")
    ap.add_argument("--images", type=int, default=200, help="distinct radiographs to cycle through")
    ap.add_argument("--dicom-fraction", type=float, default=0.0, help="share of uploads sent as DICOM")
    ap.add_argument("--threads", type=int, default=None, help="server's ONNX Runtime threads")
    ap.add_argument("--model", default=None, help="the server's --model (default: none named, so the bundled "
                    "models are routed: every film without a DICOM age runs through each of them)")
    ap.add_argument("--data-dir", type=Path, default=None, help="server data dir (default: a temporary one)")
    ap.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    ap.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    ap.add_argument("--bombs", type=int, default=0,
                    help="threads sending decompression bombs during the run (each must get 413)")
    ap.add_argument("--scenario", choices=SCENARIO_NAMES, default=None, help="a hostile scenario (above)")
    ap.add_argument("--concurrency", type=int, default=32, help="bombs / analyze-spam: threads at once")
    ap.add_argument("--sockets", type=int, default=5000, help="slowloris: half-open connections held")
    ap.add_argument("--factor", type=float, default=4.0, help="burst: arrival rate over the scoring rate")
    ap.add_argument("--server-nofile", type=int, default=4096,
                    help="scenarios: the server's open-files limit (a container's typical 4096; 0: inherited)")
    ap.add_argument("--server-env", action="append", default=[], metavar="K=V", help="server environment")
    a = ap.parse_args(argv)
    if a.scenario:
        from serve_scenarios import run_scenario

        return run_scenario(a)
    seconds = max(1.0, min(float(a.seconds), MAX_SECONDS))
    source = a.source or (SHARED if SHARED.is_dir() else SAMPLES)
    payloads = Payloads(source.resolve(), a.images, a.dicom_fraction)

    tmp = None
    data_dir = a.data_dir
    if data_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="cxr-bench-")
        data_dir = Path(tmp.name)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("CXR_API_TOKEN", None)
    env.pop("CXR_WORKER_DELAY_S", None)
    if a.threads:
        env["CXR_THREADS"] = str(a.threads)
    log = open(Path(data_dir) / "server.log", "ab")
    proc = subprocess.Popen([sys.executable, "-m", "cxrtriage", "serve", "--host", "127.0.0.1", "--port", str(port),
                             "--data-dir", str(data_dir), "--no-samples", "--no-access-log", "--log-level", "warning",
                             *(["--model", a.model] if a.model else [])],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    rss: list[tuple[float, float]] = []
    try:
        wait_ready(proc, url, 60, lambda: f"; see {data_dir}/server.log")
        rss_idle = rss_mib(proc.pid)
        bombs = bomb_files() if a.bombs else {}
        bomb_counts: dict[str, int] = {}
        bomb_lock = threading.Lock()

        stats = Stats()
        stop = threading.Event()
        sampling = threading.Event()

        def sample() -> None:
            while not sampling.is_set():
                v = rss_mib(proc.pid)
                if v is not None:
                    rss.append((time.monotonic(), v))
                sampling.wait(0.25)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        threads = [threading.Thread(target=client_loop, args=(url, payloads, stats, stop), daemon=True)
                   for _ in range(a.clients)]
        threads += [threading.Thread(target=bomb_loop, args=(url, bombs, bomb_counts, bomb_lock, stop), daemon=True)
                    for _ in range(a.bombs)]
        for t in threads:
            t.start()
        time.sleep(a.warmup)
        rss_start = rss_mib(proc.pid)
        hwm_start = peak_rss_mib(proc.pid)
        cpu0, own0 = cpu_seconds(proc.pid), sum(os.times()[:2])
        with stats.lock:
            stats.measuring = True
        t_start = time.monotonic()
        time.sleep(seconds)
        with stats.lock:
            stats.measuring = False
        t_end = time.monotonic()
        cpu1, own1 = cpu_seconds(proc.pid), sum(os.times()[:2])
        rss_end = rss_mib(proc.pid)
        hwm_end = peak_rss_mib(proc.pid)
        stop.set()
        for t in threads:
            t.join(30)
        sampling.set()
        sampler.join(2)
        metrics = httpx.get(f"{url}/metrics", timeout=5).text
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()

    lat_ms = [x * 1000 for x in stats.latencies]
    n = len(lat_ms)
    window = [v for t, v in rss if t_start <= t <= t_end]
    peak = max(window) if window else float("nan")
    growth = (rss_end - rss_start) / rss_start * 100 if rss_start and rss_end else float("nan")
    quarters = [_r(_at(rss, t_start + (t_end - t_start) * q)) for q in (0.25, 0.5, 0.75, 1.0)]
    batches = _histogram_mean(metrics, "cxr_inference_batch_size")
    out = {
        "clients": a.clients, "seconds": round(t_end - t_start, 2), "source": str(source), "uploads": n,
        "uploads_per_s": round(n / (t_end - t_start), 1),
        "latency_ms": {"p50": round(percentile(lat_ms, 0.50), 1), "p95": round(percentile(lat_ms, 0.95), 1),
                       "p99": round(percentile(lat_ms, 0.99), 1), "max": round(max(lat_ms), 1) if lat_ms else None},
        "errors": len(stats.errors), "error_examples": sorted(set(stats.errors))[:5],
        "server_rss_mib": {"idle": _r(rss_idle), "start": _r(rss_start), "peak": _r(peak), "end": _r(rss_end),
                           "growth_pct": round(growth, 1), "at_25_50_75_100_pct": quarters},
        "mean_batch_size": round(batches, 2) if batches else None,
        "cpu_ms_per_study": {"server": round((cpu1 - cpu0) * 1000 / n, 2) if n and cpu0 is not None else None,
                             "clients": round((own1 - own0) * 1000 / n, 2) if n else None},
        "cpus": os.cpu_count(), "loadavg_1m": round(os.getloadavg()[0], 2),
        "server_peak_rss_mib": {"start": _r(hwm_start), "end": _r(hwm_end)},
    }
    if a.bombs:
        out["bombs"] = {"threads": a.bombs, "sent": sum(bomb_counts.values()), "answers": dict(bomb_counts)}
    checks = {
        "p50 <= 60 ms": out["latency_ms"]["p50"] <= 60,
        "p99 <= 500 ms": out["latency_ms"]["p99"] <= 500,
        ">= 50 studies/s": out["uploads_per_s"] >= 50,
        "0 errors": out["errors"] == 0,
        "memory growth <= 10 %": growth <= 10,
    }
    if a.bombs:
        checks["every bomb refused (413)"] = bool(bomb_counts) and set(bomb_counts) == {"413"}
    out["targets"] = checks
    print(f"clients {a.clients}, {out['seconds']} s measured after {a.warmup:g} s warm-up, images from {source}")
    print(f"uploads        {n}  ({out['uploads_per_s']} studies/s with results)")
    print(f"latency ms     p50 {out['latency_ms']['p50']}  p95 {out['latency_ms']['p95']}  "
          f"p99 {out['latency_ms']['p99']}  max {out['latency_ms']['max']}  (upload to result)")
    print(f"errors         {out['errors']}" + (f"  e.g. {out['error_examples'][0]}" if stats.errors else ""))
    m = out["server_rss_mib"]
    print(f"server RSS MiB idle {m['idle']}  start {m['start']}  peak {m['peak']}  end {m['end']}  "
          f"(growth {m['growth_pct']} %; at 25/50/75/100 % of the run {m['at_25_50_75_100_pct']})")
    print(f"server peak RSS (VmHWM) MiB  start {out['server_peak_rss_mib']['start']}  "
          f"end {out['server_peak_rss_mib']['end']}")
    if a.bombs:
        print(f"bombs          {out['bombs']['sent']} sent by {a.bombs} thread(s); answers {out['bombs']['answers']}")
    c = out["cpu_ms_per_study"]
    print(f"CPU ms/study   server {c['server']}  clients {c['clients']}   mean batch {out['mean_batch_size']}   "
          f"load average {out['loadavg_1m']} on {out['cpus']} CPUs")
    for name, ok in checks.items():
        print(f"  [{'ok' if ok else 'MISSED'}] {name}")
    if a.json:
        a.json.write_text(json.dumps(out, indent=2))
    if tmp is not None:
        tmp.cleanup()
    return 1 if a.check and not all(checks.values()) else 0


def _at(series: list[tuple[float, float]], t: float) -> float | None:
    """RSS sampled nearest to time ``t``."""
    if not series:
        return None
    return min(series, key=lambda tv: abs(tv[0] - t))[1]


def _histogram_mean(text: str, name: str) -> float | None:
    total = count = None
    for line in text.splitlines():
        if line.startswith(f"{name}_sum "):
            total = float(line.split()[1])
        elif line.startswith(f"{name}_count "):
            count = float(line.split()[1])
    return total / count if total is not None and count else None


if __name__ == "__main__":
    raise SystemExit(main())

