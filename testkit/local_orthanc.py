"""Run a private Orthanc (Debian packages) for tests, benchmarks and demos.

Each :class:`OrthancServer` is its own ``/usr/sbin/Orthanc`` process with its own JSON
configuration, free loopback ports (HTTP and DICOM), a storage folder and the DICOMweb
plugin (plus the Python plugin running ``orthanc_plugin.py`` when asked). The Debian
service and ``/etc/orthanc`` are not used. Install the packages with
``scripts/install_orthanc.sh``.
"""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import requests

ORTHANC_BIN = Path(os.environ.get("CXR_ORTHANC_BIN", "/usr/sbin/Orthanc"))
PLUGIN_DIRS = [p for p in (os.environ.get("CXR_ORTHANC_PLUGINS"), "/usr/share/orthanc/plugins",
                           "/usr/lib/orthanc", "/usr/lib/x86_64-linux-gnu/orthanc") if p]
PLUGIN_SCRIPT = Path(__file__).resolve().parents[1] / "cxrtriage" / "pacs" / "orthanc_plugin.py"
USER, PASSWORD = "cxr", "triage-test"


def find_plugin(stem: str) -> Path | None:
    """The plugin library ``lib<stem>.so`` (or a versioned ``.so.X``) in Debian's folders."""
    for d in PLUGIN_DIRS:
        folder = Path(d)
        if folder.is_dir():
            for cand in sorted(folder.glob(f"lib{stem}.so*")):
                if cand.is_file():
                    return cand
    return None


def orthanc_missing() -> str | None:
    """Why a local Orthanc cannot run here, or None."""
    if not ORTHANC_BIN.exists():
        return f"{ORTHANC_BIN} not found: run scripts/install_orthanc.sh (Debian packages orthanc, orthanc-dicomweb)"
    if find_plugin("OrthancDicomWeb") is None:
        return "Orthanc DICOMweb plugin not found (Debian package orthanc-dicomweb)"
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class OrthancServer:
    """One Orthanc process with its own configuration, ports and storage folder."""

    def __init__(self, workdir: str | Path, python_plugin: bool = False, auth: bool = True,
                 extra: dict[str, Any] | None = None, python: str | None = None):
        self.workdir = Path(workdir)
        self.storage = self.workdir / "storage"
        self.storage.mkdir(parents=True, exist_ok=True)
        self.http_port, self.dicom_port = free_port(), free_port()
        self.aet = "ORTHANC"
        self.auth = auth
        self.python_plugin = python_plugin
        self.python = python or sys.executable
        self.extra = extra or {}
        self.proc: subprocess.Popen | None = None
        self.log_path = self.workdir / "orthanc.log"
        self.config_path = self.workdir / "config.json"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def credentials(self) -> dict[str, str | None]:
        return {"user": USER, "password": PASSWORD} if self.auth else {"user": None, "password": None}

    def config(self) -> dict[str, Any]:
        cfg: dict[str, Any] = {
            "Name": "cxr-local",
            "StorageDirectory": str(self.storage),
            "IndexDirectory": str(self.storage),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": self.aet,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": self.auth,
            "RegisteredUsers": {USER: PASSWORD} if self.auth else {},
            "DicomAlwaysAllowStore": True,
            "DicomCheckCalledAet": False,
            "SaveJobs": False,
            "HttpThreadsCount": 16,
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True, "Ssl": False,
                         "Host": f"127.0.0.1:{self.http_port}"},
            "Plugins": [str(find_plugin("OrthancDicomWeb"))],
        }
        if self.python_plugin:
            lib = find_plugin("OrthancPython")
            if lib is None:
                raise FileNotFoundError("Orthanc Python plugin not found (Debian package orthanc-python)")
            cfg["Plugins"].append(str(lib))
            cfg["PythonScript"] = str(PLUGIN_SCRIPT)
            cfg["PythonVerbose"] = False
            # How the plugin finds this project's interpreter (see docs/pacs.md).
            cfg["CxrTriage"] = {"Python": self.python, "Timeout": 120}
        cfg.update(self.extra)
        return cfg

    def start(self, timeout: float = 30.0) -> "OrthancServer":
        """Start Orthanc and wait until ``/system`` answers (RuntimeError with its log otherwise)."""
        self.config_path.write_text(json.dumps(self.config(), indent=2))
        env = dict(os.environ)
        env.pop("PYTHONPATH", None)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen([str(ORTHANC_BIN), str(self.config_path)], cwd=self.workdir, stdout=log,
                                         stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        auth = (USER, PASSWORD) if self.auth else None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if requests.get(self.url + "/system", auth=auth, timeout=1).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.1)
        self.stop(graceful=False)
        raise RuntimeError(f"Orthanc did not answer /system within {timeout:.0f} s:\n{self.log_tail()}")

    def stop(self, timeout: float = 20.0, graceful: bool = True) -> None:
        """Stop Orthanc (SIGTERM and wait; ``graceful=False``: SIGKILL, for throwaway servers)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            if graceful:
                self.proc.terminate()
            else:
                self.proc.kill()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def __enter__(self) -> "OrthancServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    # -- helpers -------------------------------------------------------------------------
    def client(self):
        from cxrtriage.pacs.orthanc import OrthancClient

        return OrthancClient(self.url, **self.credentials)

    def dicomweb(self):
        from cxrtriage.pacs.dicomweb import dicomweb_client

        return dicomweb_client(self.url, **self.credentials)

    def stow(self, data: bytes, client: Any = None) -> None:
        """STOW-RS one Part-10 file (as a modality or a router would)."""
        import pydicom

        from cxrtriage.pacs.dicomweb import stow

        ds = pydicom.dcmread(io.BytesIO(data))
        stow(client or self.dicomweb(), [ds], str(ds.StudyInstanceUID))

    def study_instances(self, study_uid: str) -> list[dict[str, Any]]:
        return self.client().study_instances(study_uid)

    def instance_dataset(self, orthanc_id: str):
        import pydicom

        return pydicom.dcmread(io.BytesIO(self.client().instance_file(orthanc_id)))

    def count_instances(self) -> int:
        return int(self.client().get_json("/statistics")["CountInstances"])
