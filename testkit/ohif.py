"""Serve the OHIF viewer (npm ``@ohif/app``, prebuilt) beside a local Orthanc.

``scripts/install_ohif.sh`` unpacks the viewer's static site into
``.cache/ohif/<version>/dist``. :class:`OhifServer` serves it on a free loopback port
from a thread, with:

* ``/app-config.js``: the site's own ``deploy/ohif/app-config.js``, one DICOMweb data source
  at ``<origin>/dicom-web``, nothing from the internet;
* ``/dicom-web/...`` forwarded to Orthanc's DICOMweb plugin, adding Orthanc's
  credentials, so the viewer and its data share one origin (no CORS, and the browser
  never sees the PACS password), as an nginx ``location /dicom-web/`` does at a site;
* every other path that is not a file answered with ``index.html`` (the viewer's own
  routes such as ``/viewer?StudyInstanceUIDs=...``).
"""

from __future__ import annotations

import mimetypes
import os
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests

ROOT = Path(__file__).resolve().parents[1]
OHIF_VERSION = os.environ.get("CXR_OHIF_VERSION", "3.13.2")
OHIF_DIST = Path(os.environ.get("CXR_OHIF_DIST") or ROOT / ".cache" / "ohif" / OHIF_VERSION / "dist")
INSTALL_HINT = "run scripts/install_ohif.sh (npm pack @ohif/app)"

mimetypes.add_type("application/wasm", ".wasm")
mimetypes.add_type("text/javascript", ".js")
mimetypes.add_type("text/javascript", ".mjs")

# Hop-by-hop headers (RFC 9110 7.6.1) and the ones the proxy sets itself.
_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
        "transfer-encoding", "upgrade", "content-length", "host", "authorization", "cookie"}


def ohif_missing(dist: Path = OHIF_DIST) -> str | None:
    """Why the OHIF viewer cannot be served here, or None."""
    if not (dist / "index.html").is_file():
        return f"OHIF viewer not installed at {dist}: {INSTALL_HINT}"
    if not any(dist.glob("app.bundle.*.js")):
        return f"{dist} has no app.bundle.*.js: not a built OHIF viewer ({INSTALL_HINT})"
    return None


# The viewer's configuration a site mounts (compose.yaml): served here as it is, so the test runs
# exactly what ships. It names Orthanc's DICOMweb at <origin>/dicom-web and pins image-level
# TID 1500 findings (no SCOORD, as AI results are) to their source image.
APP_CONFIG = ROOT / "deploy" / "ohif" / "app-config.js"


class OhifServer:
    """The OHIF static site plus a ``/dicom-web`` proxy to one Orthanc, on a free loopback port."""

    def __init__(self, orthanc_url: str, user: str | None = None, password: str | None = None,
                 dist: Path = OHIF_DIST, dicomweb_root: str = "/dicom-web"):
        self.dist = Path(dist).resolve()
        self.orthanc_url = orthanc_url.rstrip("/")
        self.dicomweb_root = "/" + dicomweb_root.strip("/")
        self.session = requests.Session()
        if user:
            self.session.auth = (user, password or "")
        self.config_js = APP_CONFIG.read_bytes()
        self.proxied: list[str] = []  # paths forwarded to Orthanc, for tests
        self.httpd: ThreadingHTTPServer | None = None
        self.thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        assert self.httpd is not None, "not started"
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def viewer_url(self, study_uid: str) -> str:
        """The basic viewer (longitudinal mode) for one study."""
        return f"{self.url}/viewer?StudyInstanceUIDs={study_uid}"

    def start(self) -> "OhifServer":
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                server._handle(self)

            do_HEAD = do_GET

            def do_POST(self) -> None:
                server._handle(self)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="ohif-http", daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.httpd = None
        self.session.close()

    def __enter__(self) -> "OhifServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- request handling -----------------------------------------------------------------
    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        path = urlsplit(h.path).path
        try:
            if path == self.dicomweb_root or path.startswith(self.dicomweb_root + "/"):
                self._proxy(h)
            elif path == "/app-config.js":
                self._send(h, HTTPStatus.OK, self.config_js, "text/javascript; charset=utf-8", cache=False)
            else:
                self._static(h, path)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _send(self, h: BaseHTTPRequestHandler, status: int, body: bytes, ctype: str,
              cache: bool = True, extra: dict[str, str] | None = None) -> None:
        h.send_response(status)
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(len(body)))
        h.send_header("Cache-Control", "public, max-age=3600" if cache else "no-store")
        # Cross-origin isolation lets the viewer use SharedArrayBuffer (volume rendering, workers).
        h.send_header("Cross-Origin-Opener-Policy", "same-origin")
        h.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        h.send_header("Cross-Origin-Resource-Policy", "same-origin")
        for k, v in (extra or {}).items():
            h.send_header(k, v)
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(body)

    def _static(self, h: BaseHTTPRequestHandler, path: str) -> None:
        rel = path.lstrip("/")
        target = (self.dist / rel).resolve() if rel else self.dist / "index.html"
        if not target.is_relative_to(self.dist):
            return self._send(h, HTTPStatus.NOT_FOUND, b"not found", "text/plain")
        if target.is_dir():
            target = target / "index.html"
        if not target.is_file():
            if "." in Path(rel).name:  # a missing asset, not a viewer route
                return self._send(h, HTTPStatus.NOT_FOUND, b"not found", "text/plain")
            target = self.dist / "index.html"
        ctype = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        if ctype.startswith("text/") or ctype in ("application/json", "application/javascript"):
            ctype += "; charset=utf-8"
        self._send(h, HTTPStatus.OK, target.read_bytes(), ctype, cache=target.name != "index.html")

    def _proxy(self, h: BaseHTTPRequestHandler) -> None:
        self.proxied.append(h.path)
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length else None
        headers = {k: v for k, v in h.headers.items() if k.lower() not in _HOP}
        # Orthanc writes BulkDataURIs for the Host it is asked on: this origin, not its own port.
        headers["Host"] = h.headers.get("Host", urlsplit(self.url).netloc)
        try:
            r = self.session.request(h.command, self.orthanc_url + h.path, headers=headers, data=body,
                                     stream=True, timeout=60)
        except requests.RequestException as exc:
            return self._send(h, HTTPStatus.BAD_GATEWAY, f"Orthanc unreachable: {exc}".encode(), "text/plain")
        with r:
            data = r.raw.read(decode_content=False)
            h.send_response(r.status_code)
            for k, v in r.headers.items():
                if k.lower() not in _HOP and k.lower() not in ("www-authenticate", "set-cookie"):
                    h.send_header(k, v)
            h.send_header("Content-Length", str(len(data)))
            h.send_header("Cross-Origin-Resource-Policy", "same-origin")
            h.end_headers()
            if h.command != "HEAD":
                h.wfile.write(data)
