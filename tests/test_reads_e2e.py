"""The site loop end to end in a real browser: reads recorded in the viewer (and the rest imported
from a RIS export), `cxr calibrate --from-service` fits on them, the running service loads the new
version without a restart, and new results carry it (the worklist shows it); rollback returns.
Needs Debian's chromium, playwright and Kermany test-dev under ../shared."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from serve_fixtures import ROOT, LiveServer

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]
DEV = ROOT.parent / "shared" / "data" / "kermany-224" / "test-dev"
TOKEN = "e2e-reads-token-0123456789abcdef"
API = "/api/v1"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium"),
    pytest.mark.skipif(not DEV.is_dir(), reason=f"needs Kermany test-dev at {DEV}"),
]


def _films() -> list[tuple[Path, str]]:
    normal = sorted((DEV / "NORMAL").glob("*.jpeg"))[:32]
    sick = sorted((DEV / "PNEUMONIA").glob("*.jpeg"))[:32]
    return [(p, "normal") for p in normal] + [(p, "pneumonia") for p in sick]


def test_reads_in_the_viewer_calibrate_from_the_service_and_swap_without_restart(tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs playwright (python)")
    from playwright.sync_api import expect

    films = _films()
    srv = LiveServer(tmp_path / "data", token=TOKEN, args=("--model", "cxr-pneumonia"),
                     env={"CXR_QUEUE_MAX_WAIT_S": "0"}).wait_ready()
    try:
        r = srv.client.post(f"{API}/studies", files=[("files", (p.name, p.read_bytes(), "image/jpeg")) for p, _ in films])
        assert r.status_code == 201 and not r.json()["errors"], r.text
        ids = {s["name"]: s["id"] for s in r.json()["studies"]}
        for sid in ids.values():
            assert srv.client.get(f"{API}/studies/{sid}", params={"wait": 60}).json()["status"] == "done"
        old = srv.client.get(f"{API}/model").json()["active"]["version"]

        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
            page = browser.new_page(viewport={"width": 1440, "height": 900})
            page.goto(srv.url)
            page.fill("#token-input", TOKEN)
            page.click("#token-dialog button[type=submit]")
            expect(page.locator("#status-text")).to_have_text("ready", timeout=15000)
            expect(page.locator("#model-chip")).to_contain_text(old)
            truth_of = {p.name: t for p, t in films}
            expect(page.locator("#worklist-body tr")).to_have_count(50, timeout=15000)
            by_viewer = [page.locator("#worklist-body tr .study-name").nth(i).text_content() for i in (0, 1)]
            for k, name in enumerate(by_viewer):  # a click on the label for the first, a key for the second
                truth = truth_of[name]
                page.locator("#worklist-body tr", has_text=name).click()
                expect(page.locator("#study-title")).to_have_text(name)
                expect(page.locator("#read-current")).to_have_text("Not read yet.", timeout=10000)
                if k == 0:
                    page.locator(f"#read-buttons button[data-label='{truth}']").click()
                else:
                    page.keyboard.press("1" if truth == "normal" else "2")
                expect(page.locator("#read-current")).to_contain_text(f"Read: {truth} by api-token", timeout=10000)
            hist = srv.client.get(f"{API}/studies/{ids[by_viewer[0]]}/read").json()
            assert hist["current"]["source"] == "viewer" and hist["current"]["model"]["version"] == old

            ris = tmp_path / "ris.csv"
            ris.write_text("file,label\n" + "".join(f"{p.name},{t}\n" for p, t in films if p.name not in by_viewer))
            out = subprocess.run([sys.executable, "-m", "cxrtriage", "reads", "import", str(ris), "--url", srv.url,
                                  "--token", TOKEN], cwd=ROOT, capture_output=True, text=True)
            assert out.returncode == 0, out.stderr
            assert srv.client.get(f"{API}/reads").json()["total"] == len(films)

            site = tmp_path / "site-model"
            out = subprocess.run([sys.executable, "-m", "cxrtriage", "calibrate", "--from-service", str(srv.data_dir),
                                  "--out", str(site), "--n-boot", "100", "--json"], cwd=ROOT, capture_output=True,
                                 text=True, timeout=300)
            assert out.returncode == 0, out.stderr
            summary = json.loads(out.stdout)
            assert summary["films_per_class"] == {"normal": 32, "pneumonia": 32} and "cal" in summary["version"]
            assert (site / "cxr-pneumonia.reference.npz").is_file()
            new = summary["version"]

            r = srv.client.post(f"{API}/model", json={"model": str(site)})
            assert r.status_code == 200, r.text
            assert r.json()["active"]["version"] == new and r.json()["previous"]["version"] == old
            sid = ids[by_viewer[1]]
            page.locator("#worklist-body tr", has_text=by_viewer[1]).click()
            with page.expect_response(lambda resp: "/analyze" in resp.url and resp.status == 200):
                page.get_by_role("button", name="AI diagnosis").click()
            expect(page.locator("#result")).to_contain_text(new, timeout=15000)
            expect(page.locator("#model-chip")).to_contain_text(new, timeout=15000)
            page.screenshot(path=str(tmp_path / "swapped.png"))
            browser.close()
        assert srv.client.get(f"{API}/studies/{sid}/result").json()["model"]["version"] == new
        assert "model swapped without a restart" in srv.log()

        assert srv.client.post(f"{API}/model/rollback").json()["active"]["version"] == old
        r = srv.client.post(f"{API}/studies/{sid}/analyze", params={"wait": 30})
        assert r.json()["result"]["model"]["version"] == old
    finally:
        srv.stop()
