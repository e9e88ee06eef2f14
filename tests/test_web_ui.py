"""The web page in a real headless browser (Debian's chromium driven by Playwright)."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from serve_fixtures import ROOT, LiveServer, samples  # noqa: F401

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
OUT = ROOT / "test-output"
TOKEN = "ui-test-token"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium"),
]


def _until(cond, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs playwright (python)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = LiveServer(tmp_path_factory.mktemp("web") / "data", token=TOKEN).wait_ready()
    yield srv
    srv.stop()


def test_upload_open_analyze_and_see_the_overlay(browser, server, samples, tmp_path):
    from playwright.sync_api import expect

    dicom = samples["dicom"][0] if samples["dicom"] else None
    jpeg = samples["raster"][0]
    OUT.mkdir(exist_ok=True)
    page = browser.new_page(viewport={"width": 1440, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    try:
        page.goto(server.url)
        # the service has a token: the page asks for it
        expect(page.locator("#token-dialog")).to_be_visible()
        page.fill("#token-input", TOKEN)
        page.click("#token-dialog button[type=submit]")
        expect(page.locator("#status-text")).to_have_text("ready", timeout=15000)
        expect(page.locator("#disclaimer")).to_be_visible()
        expect(page.locator("#disclaimer")).to_contain_text("not a diagnosis")

        # upload through the file input (drag-and-drop calls the same function)
        upload = [str(jpeg)] + ([str(dicom)] if dicom else [])
        page.set_input_files("#file-input", upload)
        row = page.locator("#worklist-body tr", has_text=(dicom or jpeg).name)
        expect(row).to_be_visible(timeout=15000)
        expect(page.locator("#worklist-body tr")).to_have_count(len(upload))
        expect(row.locator(".badge")).not_to_have_text("Analysing", timeout=15000)
        flag_classes = row.get_attribute("class")
        assert any(f"p-{p}" in flag_classes for p in ("urgent", "review", "routine")), flag_classes

        # open it and press "AI diagnosis"
        row.click()
        expect(page.locator("#study-title")).to_have_text((dicom or jpeg).name)
        expect(page.locator("#img-original")).to_be_visible()
        before = page.locator("#result .facts dd").nth(3).text_content(timeout=15000)
        button = page.get_by_role("button", name="AI diagnosis")
        expect(button).to_be_enabled()
        with page.expect_response(lambda r: "/analyze" in r.url and r.status == 200):
            button.click()
        expect(page.locator("#analyze-label")).to_have_text("AI diagnosis", timeout=15000)
        expect(page.locator("#result .result-label")).to_be_visible()
        label = page.locator("#result .result-label").text_content().strip().lower()
        assert label in ("normal", "pneumonia", "bacterial", "viral"), label
        expect(page.locator("#result .prob")).to_have_count(2)
        assert page.locator("#result .facts dd").nth(3).text_content() >= before

        # the heatmap overlay is shown over the radiograph, and can be switched off and faded
        overlay = page.locator("#img-heatmap")
        expect(overlay).to_be_visible()
        _until(lambda: overlay.evaluate("e => e.complete && e.naturalWidth") > 0)
        box_o = page.locator("#img-original").bounding_box()
        box_h = overlay.bounding_box()
        assert box_o == box_h, (box_o, box_h)
        page.locator("#opacity").fill("80")
        expect(overlay).to_have_css("opacity", "0.8")
        page.locator(".switch-track").click()
        expect(overlay).to_be_hidden()
        page.locator(".switch-track").click()
        expect(overlay).to_be_visible()

        # window/level re-renders the stored image
        if dicom:
            src0 = page.locator("#img-original").get_attribute("src")
            with page.expect_response(lambda r: "/image.png" in r.url and "wc=" in r.url):
                page.locator("#wl-width").fill(page.locator("#wl-width").get_attribute("min"))
            expect(page.locator("#img-original")).not_to_have_attribute("src", src0)
            expect(page.locator("#wl-readout")).not_to_contain_text("as stored")
            page.click("#wl-reset")
            expect(page.locator("#wl-readout")).to_contain_text("as stored")

        page.locator("#opacity").fill("45")
        page.screenshot(path=str(OUT / "web-worklist.png"))

        # a bad file is refused with a message a person understands, and the page goes on working
        bad = tmp_path / "archive.dcm"
        bad.write_bytes(b"PK\x03\x04" + bytes(300))
        page.set_input_files("#file-input", str(bad))
        expect(page.locator(".msg.err")).to_contain_text("ZIP")
        expect(page.locator("#worklist-body tr")).to_have_count(len(upload))
    finally:
        page.close()
    # expected refusals (401 before the token, 415 for the zip) show as failed loads; nothing else may fail
    assert not [e for e in errors if not e.startswith("Failed to load resource")], errors


@pytest.mark.parametrize("page_path, ready, operation", [
    ("/docs", ".opblock", ".opblock-summary-path"),
    ("/redoc", "[data-section-id]", "h2"),
])
def test_api_docs_render_offline(browser, server, page_path, ready, operation):
    """/docs (Swagger UI) and /redoc render their operations with no internet: every request that
    does not go to the service is refused, as on a hospital network."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    outside: list[str] = []

    def only_local(route):
        if route.request.url.startswith(server.url):
            return route.continue_()
        outside.append(route.request.url)
        return route.abort()

    page.route("**/*", only_local)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        page.goto(server.url + page_path)
        page.wait_for_selector(ready, timeout=20000)
        assert page.locator(ready).count() >= 5
        text = " ".join(page.locator(operation).all_inner_texts())
        assert ("/api/v1/studies" if page_path == "/docs" else "Upload one or more radiographs") in text
        OUT.mkdir(exist_ok=True)
        page.screenshot(path=str(OUT / f"api-docs{page_path.replace('/', '-')}.png"))
    finally:
        page.close()
    assert outside == [], f"the docs page asked the internet for {outside}"
    assert not errors, errors


def test_a_viewer_token_sees_the_worklist_but_is_offered_no_change(browser, samples, tmp_path):
    """With a read-only token the page shows studies and results but no upload, analysis, delete
    or read buttons (the API would answer 403), and says it is read-only."""
    from playwright.sync_api import expect

    viewer = "ui-viewer-token"
    srv = LiveServer(tmp_path / "data", token=TOKEN, env={"CXR_VIEWER_TOKEN": viewer}).wait_ready()
    try:
        with open(samples["raster"][0], "rb") as fh:
            r = httpx.post(f"{srv.url}/api/v1/studies?wait=30", files={"files": (samples["raster"][0].name, fh)},
                           headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
        assert r.status_code in (200, 201), r.text
        info = httpx.get(f"{srv.url}/api/v1/info", headers={"Authorization": f"Bearer {viewer}"}).json()
        assert info["access"] == {"token": "viewer", "can_write": False}
        page = browser.new_page(viewport={"width": 1440, "height": 900})
        page.goto(srv.url)
        page.fill("#token-input", viewer)
        page.click("#token-dialog button[type=submit]")
        expect(page.locator("#status-text")).to_have_text("ready", timeout=15000)
        expect(page.locator("#read-only-chip")).to_be_visible()
        expect(page.locator("#dropzone")).to_be_hidden()
        row = page.locator("#worklist-body tr", has_text=samples["raster"][0].name)
        expect(row).to_be_visible(timeout=15000)
        row.click()
        expect(page.locator("#analyze")).to_be_hidden()
        expect(page.locator("#delete")).to_be_hidden()
        page.close()
    finally:
        srv.stop()
