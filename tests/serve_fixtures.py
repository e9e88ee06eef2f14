"""Fixtures and helpers for the service tests (tests/test_serve*.py, tests/test_web*.py).

Real radiographs only: the samples bundled in ``cxrtriage/assets/samples`` (or the folder
in ``$CXR_TEST_SAMPLES_DIR``), DICOM made from them with ``testkit.make_dicom``, and
the real server started as a subprocess where a test needs a process to kill.
"""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = Path(os.environ.get("CXR_TEST_SAMPLES_DIR") or ROOT / "cxrtriage" / "assets" / "samples")
DICOM_SUFFIXES = (".dcm", ".dicom")
RASTER_SUFFIXES = (".jpeg", ".jpg", ".png")


def sample_files() -> dict[str, list[Path]]:
    files = sorted(p for p in SAMPLES.glob("*") if p.is_file()) if SAMPLES.is_dir() else []
    return {"raster": [p for p in files if p.suffix.lower() in RASTER_SUFFIXES],
            "dicom": [p for p in files if p.suffix.lower() in DICOM_SUFFIXES]}


@pytest.fixture(scope="session")
def samples() -> dict[str, list[Path]]:
    """{'raster': [...], 'dicom': [...]} of the bundled sample radiographs."""
    found = sample_files()
    if not found["raster"]:
        pytest.skip(f"no sample radiographs in {SAMPLES}")
    return found


def gray(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("L"), dtype=np.uint8)


def png_bytes(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def unique_jpeg(data: bytes, tag: str) -> bytes:
    """The same JPEG with a comment segment after SOI: identical pixels, different bytes (and sha256)."""
    assert data[:2] == b"\xff\xd8", "not a JPEG"
    text = f"cxr-test {tag}".encode()
    return data[:2] + b"\xff\xfe" + (len(text) + 2).to_bytes(2, "big") + text + data[2:]


def dicom_bytes(pixels: np.ndarray, **kw) -> bytes:
    """A Part-10 DICOM of ``pixels`` (uint8 display values) made with the project's writer."""
    from testkit.make_dicom import radiograph_to_dicom

    buf = io.BytesIO()
    kw.setdefault("modality", "DX")
    kw.setdefault("bits_stored", 12)
    kw.setdefault("window", "full")
    radiograph_to_dicom(pixels, buf, **kw)
    return buf.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(client, timeout: float = 30.0, headers: dict | None = None) -> None:
    """Poll /readyz until the model is loaded."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = client.get("/readyz", headers=headers or {})
            if last.status_code == 200:
                return
        except httpx.TransportError as exc:
            last = exc
        time.sleep(0.05)
    raise AssertionError(f"service not ready after {timeout} s: {getattr(last, 'text', last)}")


class LiveServer:
    """``python -m cxrtriage serve`` on a free loopback port, as a real process."""

    def __init__(self, data_dir: Path, env: dict[str, str] | None = None, token: str | None = None,
                 args: tuple[str, ...] = (), nofile: int | None = None):
        self.data_dir = Path(data_dir)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.token = token
        self.log_path = self.data_dir.parent / f"server-{self.port}.log"
        env_all = {**os.environ, "CXR_THREADS": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
        env_all.pop("CXR_API_TOKEN", None)
        if token:
            env_all["CXR_API_TOKEN"] = token
        self._log = open(self.log_path, "ab")

        def limit_files() -> None:  # the open-files limit of a container (soft and hard), when asked
            if nofile:
                import resource

                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cxrtriage", "serve", "--host", "127.0.0.1", "--port", str(self.port),
             "--data-dir", str(self.data_dir), "--no-samples", *args],
            cwd=ROOT, env=env_all, stdout=self._log, stderr=subprocess.STDOUT, preexec_fn=limit_files)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.client = httpx.Client(base_url=self.url, headers=headers, timeout=30.0)

    def wait_ready(self, timeout: float = 60.0) -> "LiveServer":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if self.client.get("/readyz").status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"server not ready after {timeout} s:\n{self.log()}")

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL: no shutdown handler runs."""
        self.proc.kill()
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.client.close()
        self._log.close()


# -- a real small or read-only disk --------------------------------------------------------------
class SmallDisk:
    """A tmpfs of ``size`` bytes mounted at ``path`` (needs the right to mount, e.g. root in a
    container; tests skip otherwise): a real full disk (ENOSPC) and a real read-only one (EROFS)."""

    def __init__(self, path: Path, size: int = 4 * 1024 * 1024):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        out = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(self.path)],
                             capture_output=True, text=True)
        if out.returncode != 0:
            pytest.skip(f"cannot mount a small tmpfs here: {out.stderr.strip()}")

    def fill(self) -> Path:
        """Write a file until the disk is full; returns it (delete it to free the space)."""
        filler = self.path / "filler.bin"
        with open(filler, "wb") as fh:
            try:
                while True:
                    fh.write(b"\0" * 65536)
                    fh.flush()
            except OSError:
                pass
        try:  # the last partial block too
            with open(self.path / "filler2.bin", "wb") as fh:
                while True:
                    fh.write(b"\0" * 512)
                    fh.flush()
        except OSError:
            pass
        return filler

    def free(self) -> None:
        for name in ("filler.bin", "filler2.bin"):
            (self.path / name).unlink(missing_ok=True)

    def read_only(self, ro: bool = True) -> None:
        subprocess.run(["mount", "-o", f"remount,{'ro' if ro else 'rw'}", str(self.path)], check=True)

    def unmount(self) -> None:
        subprocess.run(["umount", "-l", str(self.path)], capture_output=True)


def read_only_bind(folder: Path) -> None:
    """Make ``folder`` read-only in place (a read-only bind mount over itself): writes there fail
    with EROFS, as on a read-only disk, while files already open elsewhere stay writable."""
    subprocess.run(["mount", "--bind", str(folder), str(folder)], check=True)
    subprocess.run(["mount", "-o", "remount,bind,ro", str(folder)], check=True)


def undo_bind(folder: Path) -> None:
    subprocess.run(["umount", str(folder)], check=True)


def peak_rss_mb(pid: int) -> float:
    """High-water mark of a process's resident memory (VmHWM), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM"):
            return int(line.split()[1]) / 1024
    return float("nan")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024
    return float("nan")
