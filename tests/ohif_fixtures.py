"""The OHIF viewer (npm ``@ohif/app``) served beside a test Orthanc, and Chromium to drive it.

``scripts/install_ohif.sh`` (run by ``scripts/test.sh``) unpacks the prebuilt viewer into
``.cache/ohif/<version>/dist``; :class:`testkit.ohif.OhifServer` serves it with an app
config pointing at ``/dicom-web`` on its own origin, which it forwards to Orthanc with
Orthanc's credentials. Tests skip, saying why, when the viewer, Chromium, Playwright or
Orthanc is missing.

Use from a test module with ``pytest_plugins = ["pacs_fixtures", "ohif_fixtures"]``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from pacs_fixtures import serve_orthanc

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="session")
def ohif_available() -> None:
    from testkit.ohif import ohif_missing

    reason = ohif_missing()
    if reason:
        pytest.skip(reason)


@pytest.fixture(scope="module")
def chromium():
    """Debian's Chromium, headless, through Playwright."""
    if not CHROMIUM.exists():
        pytest.skip(f"needs Debian's chromium at {CHROMIUM}")
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs playwright (python)")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def orthanc_for_viewer(orthanc_available, tmp_path):
    """A fresh Orthanc whose DICOMweb answers name the host they are asked on (the viewer's origin)."""
    from testkit.local_orthanc import OrthancServer

    srv = OrthancServer(tmp_path / "orthanc")
    dicomweb = dict(srv.config()["DicomWeb"])
    dicomweb.pop("Host", None)  # BulkDataURIs then follow the proxy's Host header
    srv.extra = {"DicomWeb": dicomweb}
    yield from serve_orthanc(srv)


@pytest.fixture
def ohif(ohif_available, orthanc_for_viewer):
    """OHIF on a free loopback port, reading ``orthanc_for_viewer`` through its ``/dicom-web`` proxy."""
    from testkit.ohif import OhifServer

    srv = OhifServer(orthanc_for_viewer.url, **orthanc_for_viewer.credentials).start()
    try:
        yield srv
    finally:
        srv.stop()
