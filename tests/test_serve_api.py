"""The HTTP API, in process (FastAPI TestClient): real radiographs, real engine, real SQLite."""

from __future__ import annotations

import io
import logging
import sqlite3
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from serve_fixtures import dicom_bytes, gray, png_bytes, samples, unique_jpeg, wait_ready  # noqa: F401

from cxrtriage.about import DISCLAIMER
from cxrtriage.infer import PRIORITY_ORDER, Engine
from cxrtriage.serve import Settings, create_app
from cxrtriage.serve.settings import DEFAULT_MAX_UPLOAD_BYTES

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

API = "/api/v1"
TOKEN = "s3cret-token-for-tests"


def _client(tmp: Path, **kw) -> TestClient:
    kw.setdefault("samples", False)
    settings = Settings(data_dir=tmp, threads=1, **kw)
    return TestClient(create_app(settings))


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    with _client(tmp_path_factory.mktemp("serve")) as c:
        wait_ready(c)
        yield c


@pytest.fixture(scope="module")
def engine():
    return Engine(threads=1)


def upload(c, name: str, data: bytes, ctype: str = "application/octet-stream"):
    return c.post(f"{API}/studies", files={"files": (name, data, ctype)})


def upload_ok(c, name: str, data: bytes) -> str:
    r = upload(c, name, data)
    assert r.status_code in (200, 201), r.text
    return r.json()["id"]


def result_of(c, sid: str) -> dict:
    r = c.get(f"{API}/studies/{sid}", params={"wait": 20})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "done", body
    return body


def db_rows(c, sql: str, *args):
    db = c.app.state.settings.data_dir / "cxr.sqlite3"
    with sqlite3.connect(db) as conn:
        return conn.execute(sql, args).fetchall()


def png_size(data: bytes) -> tuple[int, int, str]:
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        assert img.format == "PNG"
        return img.width, img.height, img.mode


def still_serving(c) -> None:
    assert c.get("/healthz").json() == {"status": "ok"}
    assert c.get(f"{API}/studies", params={"limit": 1}).status_code == 200


# -- round trip --------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["raster", "dicom"])
def test_upload_gives_the_engines_result(client, engine, samples, kind):
    if not samples[kind]:
        pytest.skip(f"no {kind} sample")
    path = samples[kind][0]
    data = path.read_bytes()
    r = upload(client, path.name, data)
    assert r.status_code == 201, r.text
    body = r.json()
    sid = body["id"]
    assert body["studies"][0] == {"id": sid, "name": path.name, "created": True, "duplicate": False,
                                  "url": f"{API}/studies/{sid}"}
    study = result_of(client, sid)
    expected = engine.predict_bytes(data, path.name)
    res = study["result"]
    assert res["label"] == expected.label
    assert res["priority"] == expected.priority
    assert res["threshold"] == pytest.approx(expected.threshold)
    assert res["score"] == pytest.approx(expected.score, abs=1e-5)
    assert res["probabilities"].keys() == expected.probabilities.keys()
    for k, v in expected.probabilities.items():
        assert res["probabilities"][k] == pytest.approx(v, abs=1e-5)
    assert res["gate"]["accepted"] is True
    # the service names no model: the bundled models are routed; these films reach the pediatric one
    assert res["model"] == {"name": engine.spec.name, "version": engine.spec.version, "routed_by": "gate"}
    assert study["judged_by"] == f"{engine.spec.name} (gate)"
    assert res["timings_ms"]["total"] > 0
    assert res["heatmap_url"].startswith(f"{API}/studies/{sid}/heatmap.png")
    assert res["disclaimer"] == DISCLAIMER
    assert study["image"]["format"] == ("dicom" if kind == "dicom" else path.suffix.lower().lstrip(".").replace("jpg", "jpeg"))
    assert study["image"]["sha256"] and study["image"]["bytes"] == len(data)
    # the stored file is named by its content, not by the client's name
    files = [p for p in (client.app.state.settings.data_dir / "objects").rglob("*") if p.is_file()]
    assert all(path.name not in str(p) for p in files)
    assert any(p.read_bytes() == data for p in files)
    # the result endpoint agrees
    r2 = client.get(f"{API}/studies/{sid}/result")
    assert r2.status_code == 200 and r2.json()["score"] == res["score"]


def test_same_file_twice_is_one_study(client, samples):
    data = unique_jpeg(samples["raster"][1].read_bytes(), "dedup")
    first = upload(client, "a.jpeg", data)
    second = upload(client, "b-other-name.jpeg", data)
    assert first.status_code == 201 and second.status_code == 200, (first.text, second.text)
    assert second.json()["id"] == first.json()["id"]
    assert second.json()["studies"][0]["duplicate"] is True
    sha = client.get(f"{API}/studies/{first.json()['id']}").json()["image"]["sha256"]
    assert db_rows(client, "SELECT COUNT(*) FROM studies WHERE sha256 = ?", sha) == [(1,)]
    assert db_rows(client, "SELECT COUNT(*) FROM jobs j JOIN studies s ON s.id = j.study_id WHERE s.sha256 = ?",
                   sha) == [(1,)]


def test_several_files_in_one_upload(client, samples):
    a = unique_jpeg(samples["raster"][0].read_bytes(), "multi-a")
    b = unique_jpeg(samples["raster"][2].read_bytes(), "multi-b")
    bad = b"PK\x03\x04" + bytes(200)
    r = client.post(f"{API}/studies", files=[("files", ("a.jpeg", a, "image/jpeg")),
                                             ("files", ("b.jpeg", b, "image/jpeg")),
                                             ("files", ("c.dcm", bad, "application/dicom"))])
    assert r.status_code == 201, r.text
    body = r.json()
    assert [s["name"] for s in body["studies"]] == ["a.jpeg", "b.jpeg"]
    assert len({s["id"] for s in body["studies"]}) == 2
    assert body["errors"][0]["name"] == "c.dcm" and body["errors"][0]["status"] == 415
    for s in body["studies"]:
        result_of(client, s["id"])


def test_listing_sorts_and_pages(client, samples):
    ids = [upload_ok(client, f"list-{i}.jpeg", unique_jpeg(p.read_bytes(), f"list-{i}"))
           for i, p in enumerate(samples["raster"][:6])]
    for sid in ids:
        result_of(client, sid)
    full = client.get(f"{API}/studies", params={"limit": 500}).json()
    assert full["total"] == len(full["items"]) >= 6
    ranks = [PRIORITY_ORDER.get(s["priority"], 9) for s in full["items"]]
    assert ranks == sorted(ranks), "worklist not sorted by priority"
    for a, b in zip(full["items"], full["items"][1:]):
        if a["priority"] == b["priority"]:
            assert a["created_at"] >= b["created_at"], "same priority: newest first"
    by_time = client.get(f"{API}/studies", params={"sort": "time", "limit": 500}).json()["items"]
    times = [s["created_at"] for s in by_time]
    assert times == sorted(times, reverse=True)
    oldest = client.get(f"{API}/studies", params={"sort": "+time", "limit": 500}).json()["items"]
    assert [s["created_at"] for s in oldest] == sorted(times)
    p1 = client.get(f"{API}/studies", params={"limit": 2, "offset": 0}).json()
    p2 = client.get(f"{API}/studies", params={"limit": 2, "offset": 2}).json()
    assert p1["total"] == full["total"] and len(p1["items"]) == 2 and len(p2["items"]) == 2
    assert [s["id"] for s in p1["items"] + p2["items"]] == [s["id"] for s in full["items"][:4]]
    beyond = client.get(f"{API}/studies", params={"offset": full["total"]}).json()
    assert beyond["items"] == [] and beyond["total"] == full["total"]
    r = client.get(f"{API}/studies", params={"sort": "name"})
    assert r.status_code == 422 and "sort" in r.json()["message"]
    r = client.get(f"{API}/studies", params={"limit": 0})
    assert r.status_code == 422 and r.json()["error"] == "invalid_request"


def test_images_are_pngs_of_the_right_aspect(client, samples):
    g = gray(samples["raster"][0])
    wide = np.ascontiguousarray(g[32:192, :])  # 224 x 160: not square
    sid = upload_ok(client, "wide.png", png_bytes(wide))
    result_of(client, sid)
    w, h, mode = png_size(client.get(f"{API}/studies/{sid}/image.png").content)
    assert (w, h) == (224, 160) and mode == "L"
    w, h, _ = png_size(client.get(f"{API}/studies/{sid}/image.png", params={"max_side": 112}).content)
    assert (w, h) == (112, 80)
    hw, hh, hmode = png_size(client.get(f"{API}/studies/{sid}/heatmap.png", params={"max_side": 112}).content)
    assert (hw, hh) == (112, 80) and hmode == "RGBA"
    with Image.open(io.BytesIO(client.get(f"{API}/studies/{sid}/heatmap.png").content)) as img:
        alpha = np.asarray(img)[..., 3]
    assert alpha.max() > 0, "heatmap overlay is fully transparent"
    ow, oh, omode = png_size(client.get(f"{API}/studies/{sid}/overlay.png").content)
    assert omode == "RGB" and ow / oh < 224 / 160 + 0.01  # radiograph plus banner and legend below
    r = client.get(f"{API}/studies/{sid}/image.png", params={"max_side": 10})
    assert r.status_code == 422


def test_dicom_window_level_re_renders_the_stored_file(client, samples):
    g = gray(samples["raster"][0])
    data = dicom_bytes(g, sop_instance_uid="1.2.826.0.1.3680043.8.498.1001", bits_stored=12)
    sid = upload_ok(client, "wl.dcm", data)
    study = result_of(client, sid)
    win = study["window"]
    assert win["min"] >= 0 and win["max"] <= 4095 and win["width"] > 0

    def pixels(**params):
        r = client.get(f"{API}/studies/{sid}/image.png", params=params)
        assert r.status_code == 200, r.text
        return np.asarray(Image.open(io.BytesIO(r.content)))

    default = pixels()
    stored = pixels(wc=win["center"], ww=win["width"])
    assert np.abs(default.astype(int) - stored.astype(int)).max() <= 1
    narrow = pixels(wc=2048, ww=200)
    assert narrow.std() > 0 and (narrow == 0).mean() + (narrow == 255).mean() > 0.5  # clipped by the narrow window
    dark = pixels(wc=3500, ww=1000)
    assert dark.mean() < default.mean()


def test_delete(client, samples):
    data = unique_jpeg(samples["raster"][3].read_bytes(), "delete")
    sid = upload_ok(client, "del.jpeg", data)
    sha = result_of(client, sid)["image"]["sha256"]
    stored = client.app.state.settings.data_dir / "objects" / sha[:2] / sha[2:]
    assert stored.exists()
    assert client.delete(f"{API}/studies/{sid}").status_code == 204
    assert not stored.exists()
    r = client.get(f"{API}/studies/{sid}")
    assert r.status_code == 404 and sid in r.json()["message"]
    assert client.delete(f"{API}/studies/{sid}").status_code == 404
    assert db_rows(client, "SELECT COUNT(*) FROM results WHERE study_id = ?", sid) == [(0,)]
    again = upload(client, "del.jpeg", data)
    assert again.status_code == 201 and again.json()["id"] != sid


def test_analyze_runs_the_model_again(client, samples):
    sid = upload_ok(client, "again.jpeg", unique_jpeg(samples["raster"][0].read_bytes(), "again"))
    first = result_of(client, sid)["result"]
    r = client.post(f"{API}/studies/{sid}/analyze", params={"wait": 20})
    assert r.status_code == 200, r.text
    second = r.json()["result"]
    assert second["id"] > first["id"] and second["score"] == pytest.approx(first["score"], abs=1e-6)
    assert db_rows(client, "SELECT COUNT(*) FROM results WHERE study_id = ?", sid) == [(2,)]
    assert client.post(f"{API}/studies/unknown/analyze").status_code == 404


def test_health_ready_and_metrics(client, samples):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    checks = ready.json()["checks"]
    assert checks["model"]["ok"] and checks["storage"]["ok"] and checks["worker"]["ok"]
    # a blank image decodes but the quality gate refuses it
    blank = np.full((256, 256), 128, np.uint8)
    sid = upload_ok(client, "blank.png", png_bytes(blank))
    assert result_of(client, sid)["result"]["priority"] == "refused"
    assert client.get(f"{API}/studies/{sid}/heatmap.png").status_code == 404
    text = client.get("/metrics").text
    assert client.get("/metrics").headers["content-type"].startswith("text/plain")
    for needle in ('cxr_http_requests_total{method="POST",route="/api/v1/studies",status="201"}',
                   'cxr_http_request_duration_seconds_bucket{le="0.05",method="GET",route="/api/v1/studies/{study_id}"}',
                   "cxr_inferences_total{priority=", 'cxr_inferences_total{priority="refused"}',
                   "cxr_refusals_total 1.0", "cxr_queue_depth", "cxr_model_loaded 1.0", "cxr_inference_batch_size_bucket",
                   'cxr_upload_rejections_total{reason="NotAnImageError",status="415"}'):
        assert needle in text, needle


def test_info_page_docs_and_headers(client):
    info = client.get(f"{API}/info").json()
    assert info["disclaimer"] == DISCLAIMER
    # no model named: the bundled models are routed, and the page lists each one
    assert info["model"]["routed"] and {p: m["name"] for p, m in info["model"]["models"].items()} == {
        "pediatric": "cxr-pneumonia", "adult": "cxr-adult14"}
    assert all(m["classes"] for m in info["model"]["models"].values())
    assert info["settings"]["max_upload_bytes"] == DEFAULT_MAX_UPLOAD_BYTES == 64 * 1024 * 1024
    page = client.get("/")
    assert page.status_code == 200 and DISCLAIMER in page.text and "AI diagnosis" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-content-type-options"] == "nosniff"
    for asset in ("app.js", "style.css", "favicon.svg"):
        assert client.get(f"/static/{asset}").status_code == 200
    assert client.get(f"{API}/studies").headers["cache-control"] == "no-store"
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {f"{API}/studies", f"{API}/studies/{{study_id}}", "/healthz", "/readyz", "/metrics"} <= set(paths)


def test_cors_is_closed_by_default(client, tmp_path):
    pre = {"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
    r = client.options(f"{API}/studies", headers=pre)
    assert "access-control-allow-origin" not in r.headers
    r = client.get(f"{API}/studies", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in r.headers
    with _client(tmp_path, cors_origins=("https://pacs.example",)) as c:
        r = c.options(f"{API}/studies", headers={**pre, "Origin": "https://pacs.example"})
        assert r.headers.get("access-control-allow-origin") == "https://pacs.example"
        r = c.options(f"{API}/studies", headers=pre)
        assert r.headers.get("access-control-allow-origin") is None


# -- bad input ----------------------------------------------------------------------------
def _zip_bytes() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("image.dcm", b"not really" * 100)
    return buf.getvalue()


def test_bad_input_is_answered_clearly(client, samples):
    good = samples["dicom"][0].read_bytes() if samples["dicom"] else dicom_bytes(gray(samples["raster"][0]))
    cases = [
        ("corrupt.dcm", good[: len(good) // 2], 422, "truncated"),
        ("tiny.png", png_bytes(np.zeros((1, 1), np.uint8)), 422, "1x1 px"),
        ("archive.dcm", _zip_bytes(), 415, "ZIP"),
        ("notes.txt", b"hello, this is not an image\n" * 20, 415, "text"),
        ("empty.dcm", b"", 400, "empty"),
    ]
    for name, data, status, words in cases:
        r = upload(client, name, data)
        assert r.status_code == status, (name, r.text)
        body = r.json()
        assert body["status"] == status and words in body["message"] and name in body["message"], body
        still_serving(client)
    r = client.post(f"{API}/studies")
    assert r.status_code == 400 and "no file" in r.json()["message"]
    r = client.post(f"{API}/studies", content=b"raw bytes", headers={"content-type": "application/dicom"})
    assert r.status_code == 415 and "multipart/form-data" in r.json()["message"]
    for method, path in (("GET", "/studies/0123456789abcdef"), ("DELETE", "/studies/nope"),
                         ("GET", "/studies/nope/image.png"), ("GET", "/studies/nope/heatmap.png"),
                         ("GET", "/studies/nope/result"), ("POST", "/studies/nope/analyze")):
        r = client.request(method, API + path)
        assert r.status_code == 404 and r.json()["error"] == "not_found", (method, path, r.text)
    assert client.get("/api/v1/nothing-here").status_code == 404
    still_serving(client)
    assert upload(client, "fine.jpeg", unique_jpeg(samples["raster"][0].read_bytes(), "after-bad")).status_code == 201


def test_body_over_the_limit_is_413(tmp_path, samples):
    data = samples["raster"][0].read_bytes()
    with _client(tmp_path, max_upload_bytes=len(data) * 3) as c:
        wait_ready(c)
        big = unique_jpeg(data, "x") + bytes(len(data) * 4)
        r = upload(c, "big.jpeg", big)
        assert r.status_code == 413 and "limit" in r.json()["message"], r.text
        # counted while arriving when there is no Content-Length (chunked)
        body = b"--b\r\nContent-Disposition: form-data; name=\"files\"; filename=\"x.jpeg\"\r\n\r\n" + big + b"\r\n--b--\r\n"
        r = c.post(f"{API}/studies", content=iter([body[i:i + 4096] for i in range(0, len(body), 4096)]),
                   headers={"content-type": "multipart/form-data; boundary=b"})
        assert r.status_code == 413, r.text
        assert upload(c, "ok.jpeg", data).status_code == 201
        assert c.get(f"{API}/studies").json()["total"] == 1


# -- security -----------------------------------------------------------------------------
def test_token_is_required_except_for_healthz(tmp_path, samples):
    with _client(tmp_path, token=TOKEN) as c:
        assert c.get("/healthz").status_code == 200
        for path in (f"{API}/studies", f"{API}/info", "/readyz", "/metrics", f"{API}/studies/x/image.png"):
            r = c.get(path)
            assert r.status_code == 401, path
            assert r.json()["error"] == "unauthorized" and "missing" in r.json()["message"]
            assert r.headers["www-authenticate"].startswith("Bearer")
            r = c.get(path, headers={"Authorization": "Bearer wrong-token"})
            assert r.status_code == 401 and "wrong" in r.json()["message"]
        r = c.post(f"{API}/studies", files={"files": ("a.jpeg", samples["raster"][0].read_bytes())})
        assert r.status_code == 401
        good = {"Authorization": f"Bearer {TOKEN}"}
        wait_ready(c, headers=good)
        r = c.post(f"{API}/studies", files={"files": ("a.jpeg", samples["raster"][0].read_bytes())}, headers=good)
        assert r.status_code == 201
        assert c.get(f"{API}/studies", headers={"X-API-Token": TOKEN}).json()["total"] == 1
        assert c.get("/", headers={}).status_code == 200  # the page shell holds no data
        assert c.get("/healthz").status_code == 200


def test_token_from_a_file(tmp_path, monkeypatch):
    f = tmp_path / "token.txt"
    f.write_text("\n  file-token  \n")
    monkeypatch.delenv("CXR_API_TOKEN", raising=False)
    assert Settings.from_env(token_file=str(f), data_dir=tmp_path).token == "file-token"
    monkeypatch.setenv("CXR_API_TOKEN_FILE", str(f))
    assert Settings.from_env(data_dir=tmp_path).token == "file-token"
    monkeypatch.setenv("CXR_API_TOKEN", "env-token")
    assert Settings.from_env(data_dir=tmp_path).token == "env-token"


def test_patient_identifiers_are_not_logged_or_stored(client, samples, caplog):
    secrets = {"patient_name": "Doe^Jane^Q", "patient_id": "MRN-98765-SECRET", "patient_birth_date": "19700314"}
    g = gray(samples["raster"][0])
    a = dicom_bytes(g, sop_instance_uid="1.2.826.0.1.3680043.8.498.2001", **secrets)
    b = dicom_bytes(np.ascontiguousarray(g[::-1]), sop_instance_uid="1.2.826.0.1.3680043.8.498.2002", **secrets)
    with caplog.at_level(logging.DEBUG):
        ida = upload_ok(client, "scan-a.dcm", a)
        idb = upload_ok(client, "scan-b.dcm", b)
        sa, sb = result_of(client, ida), result_of(client, idb)
        client.get(f"{API}/studies/{ida}/overlay.png")
        upload(client, "broken.dcm", a[: len(a) // 2])
    assert sa["patient_ref"] and sa["patient_ref"] == sb["patient_ref"]  # same patient, same pseudonym
    assert sa["patient_ref"].startswith("P-") and "MRN" not in sa["patient_ref"]
    data_dir = client.app.state.settings.data_dir
    db_bytes = b"".join(p.read_bytes() for p in data_dir.glob("cxr.sqlite3*"))
    listing = client.get(f"{API}/studies", params={"limit": 500}).text
    for value in ("Doe", "Jane", "MRN-98765", "19700314"):
        assert value not in caplog.text, f"{value!r} was logged"
        assert value.encode() not in db_bytes, f"{value!r} is in the database"
        assert value not in listing and value not in sa.__repr__()


def test_samples_are_offered_on_first_start_only(tmp_path, samples):
    folder = samples["raster"][0].parent
    n = len(samples["raster"]) + len(samples["dicom"])
    with _client(tmp_path, samples=True, samples_dir=folder) as c:
        wait_ready(c)
        items = c.get(f"{API}/studies", params={"limit": 500}).json()["items"]
        assert len(items) == n and {s["source"] for s in items} == {"sample"}
        assert c.delete(f"{API}/studies/{items[0]['id']}").status_code == 204
    with _client(tmp_path, samples=True, samples_dir=folder) as c:
        assert c.get(f"{API}/studies").json()["total"] == n - 1


def test_a_second_service_on_the_same_data_dir_is_refused(tmp_path):
    from cxrtriage.serve.store import DataDirBusyError

    with _client(tmp_path) as c:
        wait_ready(c)
        other = _client(tmp_path)
        with pytest.raises(DataDirBusyError, match="in use"):
            with other:
                pass
    with _client(tmp_path) as c:  # free again once the first one stopped
        assert c.get("/healthz").status_code == 200


def test_studies_from_a_pacs_are_listed_with_their_source(client, samples):
    data = unique_jpeg(samples["raster"][4].read_bytes(), "pacs")
    r = client.post(f"{API}/studies", params={"source": "pacs", "external_ref": "1.2.3.4.5"},
                    files={"files": ("x.jpeg", data)})
    assert r.status_code == 201, r.text
    sid = r.json()["id"]
    study = result_of(client, sid)
    assert study["source"] == "pacs" and study["external_ref"] == "1.2.3.4.5"
    # the same call in process, as a bridge embedded in the service would make it
    service = client.app.state.service
    added = service.add_study_from_bytes(unique_jpeg(data, "pacs-2"), None, source="pacs", external_ref="1.2.3.4.6")
    assert added.created
    result_of(client, added.id)
    listed = client.get(f"{API}/studies", params={"source": "pacs"}).json()
    assert {s["id"] for s in listed["items"]} == {sid, added.id} and listed["total"] == 2
    assert client.post(f"{API}/studies", params={"source": "elsewhere"},
                       files={"files": ("x.jpeg", data)}).status_code == 422
