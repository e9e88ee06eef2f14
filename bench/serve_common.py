"""What ``bench/serve_load.py`` and its hostile scenarios (``bench/serve_scenarios.py``) share:
where the films are, the server's memory, free ports, percentiles and the upload bodies."""

from __future__ import annotations

import io
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT / ".." / "shared" / "data" / "kermany-224" / "train"
SAMPLES = ROOT / "cxrtriage" / "assets" / "samples"
MAX_SECONDS = 600

def _status_mib(pid: int, key: str) -> float | None:
    """One memory line of ``/proc/PID/status`` (``VmRSS``, ``VmHWM``) in MiB; None if unreadable."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{key}:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def rss_mib(pid: int) -> float | None:
    return _status_mib(pid, "VmRSS")


def peak_rss_mib(pid: int) -> float | None:
    """High-water mark of the process's resident memory (VmHWM)."""
    return _status_mib(pid, "VmHWM")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    v = sorted(values)
    k = (len(v) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


class Payloads:
    """Unique upload bodies made from real radiographs."""

    def __init__(self, source: Path, limit: int, dicom_fraction: float):
        files = sorted(p for p in source.rglob("*") if p.suffix.lower() in (".jpeg", ".jpg"))
        if not files:
            raise SystemExit(f"no JPEG radiographs under {source}")
        step = max(1, len(files) // limit)
        self.jpegs = [p.read_bytes() for p in files[::step][:limit]]
        self.dicom = None
        if dicom_fraction > 0:
            import pydicom

            dcm = sorted(SAMPLES.glob("*.dcm"))
            if dcm:
                self.dicom = pydicom.dcmread(dcm[0])
        self.dicom_every = int(round(1 / dicom_fraction)) if dicom_fraction > 0 and self.dicom else 0
        self._n = 0
        self._lock = threading.Lock()

    def next(self) -> tuple[str, bytes, str]:
        with self._lock:
            n = self._n
            self._n += 1
        if self.dicom_every and n % self.dicom_every == 0:
            from pydicom.uid import generate_uid

            with self._lock:
                ds = self.dicom
                ds.SOPInstanceUID = generate_uid()
                ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
                buf = io.BytesIO()
                ds.save_as(buf, enforce_file_format=True)
            return f"bench-{n}.dcm", buf.getvalue(), "application/dicom"
        data = self.jpegs[n % len(self.jpegs)]
        text = f"cxr-bench {n} {time.time_ns()}".encode()
        unique = data[:2] + b"\xff\xfe" + (len(text) + 2).to_bytes(2, "big") + text + data[2:]
        return f"bench-{n}.jpeg", unique, "image/jpeg"


def _r(v: float | None) -> float | None:
    return None if v is None else round(v, 1)


def wait_ready(proc: subprocess.Popen, url: str, timeout_s: float, exited: Callable[[], str]) -> None:
    """Poll ``url``/readyz until the server answers 200; ``SystemExit`` when it exits (with the
    text ``exited()`` gives) or is not ready within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"server exited ({proc.returncode}){exited()}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"server not ready after {timeout_s:g} s")
        time.sleep(0.1)
