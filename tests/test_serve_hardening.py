"""The service under hostile or failing conditions: decompression bombs, a full or read-only disk,
stale and crashed jobs, out-of-range parameters, spoofing file names. Real files, real SQLite,
a real tmpfs for the full disk, the real server process where memory is measured."""

from __future__ import annotations

import concurrent.futures as cf
import sqlite3
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

from testkit.bombs import bomb_files
from serve_fixtures import (  # noqa: F401
    ROOT,
    LiveServer,
    SmallDisk,
    read_only_bind,
    undo_bind,
    peak_rss_mb,
    samples,
    unique_jpeg,
    wait_ready,
)

from cxrtriage.contract import Prediction
from cxrtriage.serve import Settings, create_app
from cxrtriage.serve.store import MAX_ATTEMPTS, Store

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
API = "/api/v1"


@pytest.fixture(scope="module")
def bombs() -> dict[str, bytes]:
    return bomb_files()


def _client(tmp: Path, **kw) -> TestClient:
    kw.setdefault("samples", False)
    return TestClient(create_app(Settings(data_dir=tmp, threads=1, **kw)))


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    with _client(tmp_path_factory.mktemp("hard")) as c:
        wait_ready(c)
        yield c


def upload(c, name: str, data: bytes):
    return c.post(f"{API}/studies", files={"files": (name, data, "application/octet-stream")})


def done(c, sid: str) -> dict:
    r = c.get(f"{API}/studies/{sid}", params={"wait": 30})
    assert r.status_code == 200 and r.json()["status"] == "done", r.text
    return r.json()


# -- decompression bombs ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["bomb.png", "bomb_rle.dcm", "bomb_raw.dcm"])
def test_bomb_upload_is_refused_with_413_and_the_reason(client, bombs, name):
    r = upload(client, name, bombs[name])
    assert r.status_code == 413, r.text
    body = r.json()
    assert body["error"] == "too_large" and body["type"] == "ImageTooLargeError"
    assert "not decoded" in body["message"]


def test_bombs_leave_the_server_memory_flat(tmp_path, samples, bombs):
    """The real server process: its peak RSS barely moves while three bombs at once, twice, are
    refused (before: +3.7 GB for the PNG, 5.4 GB for three at once)."""
    srv = LiveServer(tmp_path / "data").wait_ready()
    try:
        ok = srv.client.post(f"{API}/studies", files={"files": ("a.jpeg", samples["raster"][0].read_bytes())})
        assert ok.status_code == 201
        srv.client.get(f"{API}/studies/{ok.json()['id']}", params={"wait": 30})
        before = peak_rss_mb(srv.proc.pid)
        with cf.ThreadPoolExecutor(3) as pool:
            codes = list(pool.map(lambda kv: srv.client.post(f"{API}/studies", files={"files": kv}).status_code,
                                  list(bombs.items()) * 2))
        after = peak_rss_mb(srv.proc.pid)
        assert codes == [413] * 6
        assert after - before < 100, f"peak RSS {before:.0f} -> {after:.0f} MiB"
    finally:
        srv.stop()


def test_pixel_limit_is_a_setting(tmp_path, samples):
    data = samples["raster"][0].read_bytes()
    with _client(tmp_path, max_pixels=224 * 224 - 1) as c:
        r = upload(c, "big.jpeg", data)
        assert r.status_code == 413 and "224x224" in r.json()["message"]
        assert c.get(f"{API}/info").json()["settings"]["max_pixels"] == 224 * 224 - 1


def test_a_study_decoded_again_after_a_restart_keeps_the_services_pixel_limit(tmp_path, samples):
    """A queued study outlives a restart with a lower limit: the worker reads the stored file again
    under the new service's own limit (not an environment default) and fails that study with the reason."""
    data = samples["raster"][0].read_bytes()
    with _client(tmp_path, worker_delay_s=60) as c:
        wait_ready(c)
        sid = upload(c, "queued.jpeg", data).json()["id"]
        assert c.get(f"{API}/studies/{sid}").json()["status"] in ("queued", "running")
    with _client(tmp_path, max_pixels=224 * 224 - 1) as c:
        body = c.get(f"{API}/studies/{sid}", params={"wait": 30}).json()
        assert body["status"] in ("done", "failed"), body
        assert "224x224" in str(body), body


def test_viewer_images_come_from_the_cached_rendition(client, samples):
    """image.png and overlay.png are made from the rendition kept at upload: they still answer when
    the stored file is gone (nothing decodes it again)."""
    r = upload(client, "view.jpeg", unique_jpeg(samples["raster"][1].read_bytes(), "rendition"))
    sid = r.json()["id"]
    body = done(client, sid)
    service = client.app.state.service
    assert service.renditions.get(sid) is not None
    service.store.object_path(body["image"]["sha256"]).unlink()
    for what in ("image.png", "overlay.png"):
        assert client.get(f"{API}/studies/{sid}/{what}", params={"max_side": 256}).status_code == 200


# -- parameters and names -----------------------------------------------------------------------
@pytest.mark.parametrize("path, params", [
    ("/studies", {"offset": "99999999999999999999"}),
    ("/studies", {"limit": "99999999999999999999"}),
    ("/studies", {"offset": "-1"}),
    ("/studies/x/image.png", {"wc": "nan"}),
    ("/studies/x/image.png", {"wc": "inf"}),
    ("/studies/x/image.png", {"ww": "-inf"}),
    ("/studies/x/image.png", {"ww": "1e300"}),
    ("/studies/x/image.png", {"max_side": "99999999999999999999"}),
    ("/studies/x/heatmap.png", {"opacity": "nan"}),
    ("/studies/x", {"wait": "nan"}),
    ("/studies/x/result", {"wait": "inf"}),
    ("/pacs/studies", {"offset": "99999999999999999999"}),
])
def test_out_of_range_numbers_are_422(client, path, params):
    r = client.get(API + path, params=params)
    assert r.status_code == 422, r.text
    assert r.json()["error"] == "invalid_request"


def test_format_characters_are_stripped_and_the_stored_name_echoed(client, samples):
    data = unique_jpeg(samples["raster"][2].read_bytes(), "names")
    raw = "C:\\films\\right\u202egpj.\u200bexe\u2066.jpeg"
    r = upload(client, raw, data)
    assert r.status_code == 201
    stored = r.json()["studies"][0]["name"]
    assert stored == "rightgpj.exe.jpeg"
    assert client.get(f"{API}/studies/{r.json()['id']}").json()["name"] == stored
    again = upload(client, "other.jpeg", data)  # a duplicate answers with the name stored the first time
    assert again.status_code == 200 and again.json()["studies"][0]["name"] == stored


def test_openapi_documents_the_response_models(client):
    spec = client.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    for name in ("StudyOut", "ResultOut", "StudyList", "UploadReply"):
        assert name in schemas
    assert set(schemas["Priority"]["enum"]) == {"urgent", "review", "routine", "refused", "error"}
    ok = spec["paths"]["/api/v1/studies/{study_id}"]["get"]["responses"]["200"]
    assert ok["content"]["application/json"]["schema"]["$ref"].endswith("/StudyOut")


def test_unexpected_failure_is_json_500(tmp_path):
    app = create_app(Settings(data_dir=tmp_path, threads=1, samples=False))

    def boom():
        raise RuntimeError("a defect")

    app.add_api_route("/boom", boom)  # a route with a defect, beside the real ones
    with TestClient(app, raise_server_exceptions=False) as c:
        r = c.get("/boom")
        assert r.status_code == 500 and r.headers["content-type"] == "application/json"
        assert r.json()["error"] == "internal_error" and "RuntimeError" in r.json()["message"]


# -- a full or read-only disk -------------------------------------------------------------------
@pytest.fixture
def disk(tmp_path):
    d = SmallDisk(tmp_path / "disk", size=8 * 1024 * 1024)
    yield d
    d.unmount()


def test_full_disk_upload_is_507_and_read_only_is_503(disk, samples):
    with _client(disk.path / "data", fsync=False) as c:
        wait_ready(c)
        disk.fill()
        r = upload(c, "full.jpeg", unique_jpeg(samples["raster"][0].read_bytes(), "full"))
        assert r.status_code == 507, r.text
        assert r.headers["retry-after"] and r.json()["error"] == "insufficient_storage"
        disk.free()
        tmp = disk.path / "data" / "tmp"  # where every file write of the store begins
        read_only_bind(tmp)
        try:
            r = upload(c, "ro.jpeg", unique_jpeg(samples["raster"][0].read_bytes(), "ro"))
            assert r.status_code == 503, r.text
            assert r.headers["retry-after"] and r.json()["error"] == "storage_unavailable"
            assert c.get("/readyz").status_code == 503
        finally:
            undo_bind(tmp)
        assert upload(c, "rw.jpeg", unique_jpeg(samples["raster"][0].read_bytes(), "rw")).status_code == 201


def test_failed_result_write_puts_the_job_back_and_it_finishes_later(disk, samples, caplog):
    """The disk fills between the upload and the result: the write fails (and so does every other
    write, putting the job back included), the job is not left 'running' for good: once there is
    space the live worker takes it back, with a retry counted, and it finishes."""
    with _client(disk.path / "data", fsync=False, worker_delay_s=1.5) as c:
        wait_ready(c)
        sid = upload(c, "late.jpeg", samples["raster"][0].read_bytes()).json()["id"]
        disk.fill()
        deadline = time.monotonic() + 20
        while "result not written" not in caplog.text:
            assert time.monotonic() < deadline, "the result write did not fail"
            time.sleep(0.1)
        assert c.get(f"{API}/studies/{sid}").json()["status"] in ("queued", "running")
        disk.free()
        assert done(c, sid)["result"]["priority"] in ("urgent", "review", "routine", "refused")
        with sqlite3.connect(disk.path / "data" / "cxr.sqlite3") as conn:
            state, retries = conn.execute("SELECT state, retries FROM jobs WHERE study_id = ?", (sid,)).fetchone()
        assert state == "done" and retries >= 1


def test_write_failure_requeues_with_the_reason(tmp_path):
    """Putting a job back after a failed write counts a retry (not an attempt against the file)
    and keeps the reason."""
    store = Store(tmp_path / "data", fsync=False)
    store.insert_study({"sha256": "ab" * 32, "size": 1})
    jobs = store.claim(4)
    store.requeue(jobs, "result not written (No space left on device); retry 1")
    row = store.job_row(jobs[0].id)
    assert (row["state"], row["retries"], row["attempts"]) == ("pending", 1, 0)
    assert "No space left" in row["error"]
    store.close()


def test_start_on_a_read_only_data_folder_names_it(disk, tmp_path):
    Store(disk.path / "data").close()  # a data folder with its database, then the disk goes read-only
    disk.read_only()
    for folder in (disk.path / "data", disk.path / "new"):
        out = subprocess.run([sys.executable, "-m", "cxrtriage", "serve", "--data-dir", str(folder), "--no-samples"],
                             capture_output=True, text=True, timeout=60, cwd=ROOT)
        assert out.returncode == 2, out.stderr
        assert str(folder) in out.stderr and ("Read-only" in out.stderr or "readonly" in out.stderr)
        assert "Traceback" not in out.stderr


# -- stale and crashed jobs -----------------------------------------------------------------------
def test_live_worker_reclaims_a_job_left_running(client, samples):
    sid = upload(client, "stale.jpeg", unique_jpeg(samples["raster"][3].read_bytes(), "stale")).json()["id"]
    done(client, sid)
    store = client.app.state.service.store
    job = store.enqueue(sid)
    claimed = store.claim(1)  # taken and abandoned, as by a write that failed with its failure
    assert [j.id for j in claimed] == [job]
    deadline = time.monotonic() + 20
    while store.job_state(job) != "done":
        assert time.monotonic() < deadline, store.job_row(job)
        time.sleep(0.2)
    assert store.job_row(job)["retries"] == 1


def test_after_a_crash_the_batch_is_retried_one_by_one_so_only_the_culprit_fails(tmp_path):
    """Real SQLite; a crash is the process state abandoned with its jobs 'running', as kill -9 leaves it."""
    store = Store(tmp_path / "data", fsync=False)
    ids = [store.insert_study({"sha256": f"{i:064x}", "size": 1, "name": f"s{i}"})[0] for i in range(4)]
    batch = store.claim(16)
    assert len(batch) == 4
    culprit = batch[1].study_id
    store.close()  # crash 1, on the whole batch
    for _ in range(MAX_ATTEMPTS + 2):
        store = Store(tmp_path / "data", fsync=False)
        store.recover()
        while True:
            jobs = store.claim(16)
            if not jobs:
                break
            assert len(jobs) == 1, "a job of a crashed batch is claimed alone"
            if jobs[0].study_id == culprit:
                break  # it crashes the process again
            store.finish([(jobs[0], Prediction(source=jobs[0].study_id, label="normal", score=0.1,
                                                priority="routine"))])
        store.close()
    store = Store(tmp_path / "data", fsync=False)
    status = {sid: store.get_study(sid)["status"] for sid in ids}
    assert status.pop(culprit) == "failed"
    assert set(status.values()) == {"done"}
    store.close()


def test_a_batch_that_raises_is_isolated(tmp_path):
    store = Store(tmp_path / "data", fsync=False)
    for i in range(3):
        store.insert_study({"sha256": f"{i:064x}", "size": 1})
    batch = store.claim(16)
    store.isolate(batch, "inference failed in a batch")
    assert [len(store.claim(16)) for _ in range(3)] == [1, 1, 1]
    store.close()
