"""The service's PACS worklist against a real Orthanc: list, open, results, no PACS, PACS down.

Orthanc is started by the fixtures in ``tests/pacs_fixtures.py`` (Debian's ``/usr/sbin/Orthanc``
with the DICOMweb plugin, HTTP Basic auth, free loopback ports); the tests that need it skip,
saying why, when it is not installed. The no-PACS and PACS-down tests run everywhere.
"""

from __future__ import annotations

import hashlib
import io
import re
import time
import warnings
from pathlib import Path

import pydicom
import pytest

pytest.register_assert_rewrite("pacs_fixtures")
from pacs_fixtures import make_dicom  # noqa: E402
from serve_fixtures import ROOT, LiveServer, free_port, samples, wait_ready  # noqa: E402, F401

from cxrtriage.serve import Settings, create_app  # noqa: E402

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

pytest_plugins = ["pacs_fixtures"]
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

API = "/api/v1"
TOKEN = "pacs-view-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CHROMIUM = Path("/usr/bin/chromium")
OUT = ROOT / "test-output"

# Two chest radiograph studies: A is new (nothing stored), B already has our AI result (an SR) in the PACS.
STUDY_A = {"study_description": "Chest PA cxr-test-A", "accession_number": "ACC-101", "study_date": "20250103",
           "study_time": "091500"}
STUDY_B = {"study_description": "Chest PA cxr-test-B", "accession_number": "ACC-102", "study_date": "20250102",
           "study_time": "101500", "patient_id": "CXR-0043"}


def _app(tmp: Path, **kw) -> TestClient:
    settings = Settings(data_dir=tmp, threads=1, samples=False, **kw)
    return TestClient(create_app(settings), headers=AUTH if kw.get("token") else None)


def _pacs_settings(srv) -> dict:
    return {"pacs_url": srv.url, "pacs_user": srv.credentials["user"], "pacs_password": srv.credentials["password"]}


@pytest.fixture(scope="module")
def pacs(orthanc_module, cxr_pixels, triage_engine):
    """The module's Orthanc holding study A (DX, untriaged) and study B (CR, with our SR stored)."""
    from cxrtriage.pacs.dicomweb import stow
    from cxrtriage.pacs.results import build_sr

    srv = orthanc_module
    data_a = make_dicom(cxr_pixels[0][1], "dx", **STUDY_A)
    data_b = make_dicom(cxr_pixels[1][1], "mono1", **STUDY_B)
    for data in (data_a, data_b):
        srv.stow(data)
    ds_a, ds_b = (pydicom.dcmread(io.BytesIO(d)) for d in (data_a, data_b))
    pred_b = triage_engine.predict_bytes(data_b)
    assert pred_b.ok, pred_b
    stow(srv.dicomweb(), [build_sr(ds_b, pred_b)], str(ds_b.StudyInstanceUID))
    return {"srv": srv, "a": ds_a, "b": ds_b, "data_a": data_a, "pred_b": pred_b}


@pytest.fixture(scope="module")
def client(pacs, tmp_path_factory):
    with _app(tmp_path_factory.mktemp("serve-pacs"), token=TOKEN, **_pacs_settings(pacs["srv"])) as c:
        wait_ready(c)
        yield c


def _items(c, **params) -> list[dict]:
    r = c.get(f"{API}/pacs/studies", params=params)
    assert r.status_code == 200, r.text
    return r.json()["items"]


def test_info_says_a_pacs_is_configured(client, pacs):
    body = client.get(f"{API}/info").json()
    assert body["pacs"] == {"configured": True, "url": pacs["srv"].url}
    assert "password" not in str(body) and pacs["srv"].credentials["password"] not in str(body)


def test_list_shows_pushed_studies_and_the_stored_ai_result(client, pacs):
    uid_a, uid_b = str(pacs["a"].StudyInstanceUID), str(pacs["b"].StudyInstanceUID)
    items = {r["study_uid"]: r for r in _items(client)}
    assert {uid_a, uid_b} <= set(items)
    a, b = items[uid_a], items[uid_b]
    assert a["source"] == "pacs" and a["description"] == STUDY_A["study_description"]
    assert a["accession_number"] == "ACC-101" and a["patient_id"] == "CXR-0042" and "DX" in a["modalities"]
    assert a["triage"] == [] and a["ai"] is None and a["opened"] == []
    assert a["urls"]["open"] == f"{API}/pacs/studies/{uid_a}/open"

    # B: the SR stored in the PACS is read back and summarised, without running the model
    pred = pacs["pred_b"]
    (sr,) = b["triage"]
    assert sr["probability"] == pytest.approx(pred.score, abs=1e-5)
    assert sr["source_sop_instance_uids"] == [str(pacs["b"].SOPInstanceUID)]
    assert b["ai"]["source"] == "pacs" and b["ai"]["priority"] == pred.priority
    assert b["ai"]["score"] == pytest.approx(pred.score, abs=1e-5)

    # paging (newest first) and QIDO-RS filters
    first, second = _items(client, limit=1), _items(client, limit=1, offset=1)
    assert [first[0]["study_uid"], second[0]["study_uid"]] == [uid_a, uid_b]
    assert client.get(f"{API}/pacs/studies", params={"limit": 1}).json()["next_offset"] == 1
    assert [r["study_uid"] for r in _items(client, accession_number="ACC-102")] == [uid_b]
    assert [r["study_uid"] for r in _items(client, patient_id="CXR-0043", results=False)] == [uid_b]
    assert client.get(f"{API}/pacs/studies", params={"study_date": "2025-01-01"}).status_code == 422


def test_open_imports_the_study_and_scores_it_like_the_engine(client, pacs, triage_engine):
    from cxrtriage.pacs import fetch_pacs_images

    srv, ds = pacs["srv"], pacs["a"]
    uid, sop = str(ds.StudyInstanceUID), str(ds.SOPInstanceUID)
    r = client.post(f"{API}/pacs/studies/{uid}/open")
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["study_uid"] == uid and body["errors"] == []
    (study,) = body["studies"]
    assert study["created"] and study["sop_instance_uid"] == sop and body["ids"] == [study["id"]]

    detail = client.get(f"{API}/studies/{study['id']}", params={"wait": 30}).json()
    assert detail["status"] == "done", detail
    assert detail["source"] == "pacs" and detail["external_ref"] == sop
    assert "Chest PA cxr-test-A" in detail["name"] and "ACC-101" in detail["name"]

    # the same bytes the service stored (WADO-RS, as stored) give the same call from the engine
    ((got_sop, data),) = fetch_pacs_images(srv.url, uid, **srv.credentials)
    assert got_sop == sop and hashlib.sha256(data).hexdigest() == detail["image"]["sha256"]
    expected = triage_engine.predict_bytes(data)
    assert expected.ok
    assert detail["label"] == expected.label and detail["result"]["label"] == expected.label
    assert detail["score"] == pytest.approx(expected.score, abs=1e-5)
    assert detail["priority"] == expected.priority

    # it is in the service's worklist as a PACS study, and the PACS view knows it was opened
    listed = client.get(f"{API}/studies", params={"source": "pacs"}).json()["items"]
    assert [s["id"] for s in listed] == [study["id"]]
    a = {x["study_uid"]: x for x in _items(client)}[uid]
    assert [o["id"] for o in a["opened"]] == [study["id"]]
    assert a["ai"]["source"] == "service" and a["ai"]["score"] == pytest.approx(expected.score, abs=1e-5)

    # opening again adds nothing: same ids, 200
    again = client.post(f"{API}/pacs/studies/{uid}/open")
    assert again.status_code == 200, again.text
    assert again.json()["ids"] == body["ids"] and not again.json()["studies"][0]["created"]
    assert client.get(f"{API}/studies", params={"source": "pacs"}).json()["total"] == 1


def test_open_unknown_or_malformed_study(client, pacs):
    r = client.post(f"{API}/pacs/studies/1.2.826.0.1.3680043.99.1/open")
    assert r.status_code == 404
    assert r.json()["error"] == "not_found" and "1.2.826.0.1.3680043.99.1" in r.json()["message"]
    assert client.post(f"{API}/pacs/studies/not-a-uid/open").status_code == 422


def test_pacs_routes_need_the_api_token(client, pacs):
    uid = str(pacs["a"].StudyInstanceUID)
    for method, path in (("GET", f"{API}/pacs/studies"), ("POST", f"{API}/pacs/studies/{uid}/open")):
        r = client.request(method, path, headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401, (path, r.text)


def test_wrong_pacs_credentials_give_502_with_a_hint(pacs, tmp_path):
    settings = {**_pacs_settings(pacs["srv"]), "pacs_password": "not-the-password"}
    with _app(tmp_path / "data", **settings) as c:
        r = c.get(f"{API}/pacs/studies")
        assert r.status_code == 502, r.text
        msg = r.json()["message"]
        assert "HTTP 401" in msg and "CXR_PACS_PASSWORD" in msg and "not-the-password" not in msg


def test_no_pacs_configured_gives_404_with_a_message(tmp_path):
    with _app(tmp_path / "data") as c:
        assert c.get(f"{API}/info").json()["pacs"] == {"configured": False, "url": None}
        for method, path in (("GET", f"{API}/pacs/studies"), ("POST", f"{API}/pacs/studies/1.2.3/open")):
            r = c.request(method, path)
            assert r.status_code == 404, r.text
            body = r.json()
            assert body["error"] == "not_found" and "no PACS is configured" in body["message"]
            assert "CXR_PACS_URL" in body["message"]


def test_pacs_down_gives_502_and_the_service_keeps_serving(tmp_path, samples):  # noqa: F811
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with _app(tmp_path / "data", pacs_url=url, pacs_user="cxr", pacs_password="secret-pw") as c:
        wait_ready(c)
        t0 = time.monotonic()
        for method, path in (("GET", f"{API}/pacs/studies"), ("POST", f"{API}/pacs/studies/1.2.3/open")) * 3:
            r = c.request(method, path)
            assert r.status_code == 502, r.text
            body = r.json()
            assert body["error"] == "bad_gateway" and "does not answer" in body["message"] and url in body["message"]
            assert "secret-pw" not in r.text and r.headers["retry-after"] == "30"
        assert time.monotonic() - t0 < 10
        # everything else still works
        assert c.get("/healthz").json() == {"status": "ok"}
        assert c.get("/readyz").status_code == 200
        jpeg = samples["raster"][0]
        up = c.post(f"{API}/studies", files={"files": (jpeg.name, jpeg.read_bytes(), "image/jpeg")})
        assert up.status_code == 201, up.text
        done = c.get(f"{API}/studies/{up.json()['id']}", params={"wait": 20}).json()
        assert done["status"] == "done" and done["label"]


@pytest.mark.slow
@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium")
def test_page_pacs_tab_lists_and_opens(pacs, tmp_path):
    """In the browser: the PACS tab appears, lists both studies (B with its stored result), and
    "Open" imports A, selects it and shows the model's result."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs playwright (python)")
    from playwright.sync_api import expect

    srv = pacs["srv"]
    env = {"CXR_PACS_URL": srv.url, "CXR_PACS_USER": srv.credentials["user"],
           "CXR_PACS_PASSWORD": srv.credentials["password"]}
    server = LiveServer(tmp_path / "data", env=env).wait_ready()
    errors: list[str] = []
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM),
                                        args=["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"])
            page = browser.new_page(viewport={"width": 1440, "height": 900})
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
            page.goto(server.url)
            expect(page.locator("#status-text")).to_have_text("ready", timeout=15000)
            tab = page.locator("#tab-pacs")
            expect(tab).to_be_visible()
            tab.click()
            expect(page.locator("#dropzone")).to_be_hidden()
            row_a = page.locator("#pacs-body tr", has_text=STUDY_A["study_description"])
            row_b = page.locator("#pacs-body tr", has_text=STUDY_B["study_description"])
            expect(row_a).to_be_visible(timeout=15000)
            expect(row_a).to_contain_text("Not triaged")
            expect(row_b.locator(".badge")).to_have_text(pacs["pred_b"].priority, ignore_case=True)
            expect(row_b.locator(".ai-score")).to_have_text(f"P {pacs['pred_b'].score:.2f}")

            row_a.get_by_role("button", name="Open").click()
            expect(page.locator("#study-title")).to_contain_text(STUDY_A["study_description"], timeout=15000)
            expect(page.locator("#img-original")).to_be_visible()
            expect(page.locator("#result .result-label")).to_be_visible(timeout=20000)
            expect(page.locator("#img-heatmap")).to_be_visible(timeout=10000)
            expect(row_a.get_by_role("button", name="Show")).to_be_visible(timeout=15000)
            expect(row_a).to_have_class(re.compile(r"\bselected\b"))
            OUT.mkdir(exist_ok=True)
            page.screenshot(path=str(OUT / "web-pacs.png"))
            page.click("#tab-local")
            expect(page.locator("#worklist-body tr", has_text=STUDY_A["study_description"])).to_be_visible()
            browser.close()
    finally:
        server.stop()
    assert not errors, errors


def test_settings_from_environment(monkeypatch):
    from cxrtriage.serve.settings import SettingsError

    for k in ("CXR_PACS_URL", "CXR_PACS_USER", "CXR_PACS_PASSWORD", "CXR_PACS_TOKEN", "CXR_PACS_DICOMWEB_ROOT"):
        monkeypatch.delenv(k, raising=False)
    assert not Settings.from_env().pacs
    monkeypatch.setenv("CXR_PACS_URL", "http://orthanc:8042/")
    monkeypatch.setenv("CXR_PACS_USER", "triage")
    monkeypatch.setenv("CXR_PACS_PASSWORD", "pw-from-env")
    s = Settings.from_env()
    assert s.pacs and (s.pacs_url, s.pacs_user, s.pacs_password) == ("http://orthanc:8042", "triage", "pw-from-env")
    assert s.pacs_dicomweb_root == "/dicom-web" and "pw-from-env" not in repr(s) + str(s.public())
    assert Settings.from_env(pacs_url="https://pacs.example.org").pacs_url == "https://pacs.example.org"
    # credentials in the URL move out of it; a bad URL is refused without echoing a password
    s = Settings(pacs_url="http://u:p%40ss@pacs:8042")
    assert (s.pacs_url, s.pacs_user, s.pacs_password) == ("http://pacs:8042", "u", "p@ss")
    with pytest.raises(SettingsError, match="http:// or https://") as err:
        Settings(pacs_url="ftp://u:hidden@pacs")
    assert "hidden" not in str(err.value)
