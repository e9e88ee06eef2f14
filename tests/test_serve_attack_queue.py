"""The real service process under load and misuse: a bounded queue with 503 and Retry-After, analyze
requests that merge and are rate-limited, a delete that is all or nothing on a read-only folder,
and named tokens (read-only viewer, hashed storage, an audit log of writes)."""

from __future__ import annotations

import concurrent.futures as cf
import sqlite3
import time

import httpx
import pytest
from serve_fixtures import (
    LiveServer,
    read_only_bind,
    samples,  # noqa: F401  (the fixture)
    undo_bind,
    unique_jpeg,
)

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning")]
API = "/api/v1"


def _film(samples, tag: str) -> bytes:  # noqa: F811
    return unique_jpeg(samples["raster"][0].read_bytes(), tag)


def _done(client: httpx.Client, sid: str, wait: float = 60) -> dict:
    body = client.get(f"{API}/studies/{sid}", params={"wait": wait}).json()
    assert body["status"] == "done" and body["result"], body
    return body


def test_a_full_queue_answers_503_with_retry_after_and_every_2xx_ends_in_a_result(tmp_path, samples):  # noqa: F811
    """A slow worker and a queue bound of 4: of 14 uploads at once, those over the bound are refused
    with 503 and Retry-After (nothing stored for them), the queue never passes its bound, and every
    accepted study gets its result (before: every upload accepted, the queue without bound)."""
    env = {"CXR_QUEUE_MAX": "4", "CXR_WORKER_DELAY_S": "0.4", "CXR_WORKER_BATCH": "1"}
    srv = LiveServer(tmp_path / "data", env=env).wait_ready()
    try:
        def send(i: int) -> httpx.Response:
            with httpx.Client(base_url=srv.url, timeout=60) as c:
                return c.post(f"{API}/studies", files={"files": (f"f{i}.jpeg", _film(samples, f"q{i}"))})

        with cf.ThreadPoolExecutor(14) as pool:
            answers = list(pool.map(send, range(14)))
        codes = [r.status_code for r in answers]
        assert set(codes) <= {201, 503} and codes.count(201) >= 4 and 503 in codes, codes
        for r in answers:
            if r.status_code == 503:
                assert int(r.headers["retry-after"]) >= 1 and r.json()["error"] == "busy", r.text
        assert srv.client.get("/readyz").json()["queue"] <= 4
        accepted = [r.json()["id"] for r in answers if r.status_code == 201]
        for sid in accepted:
            _done(srv.client, sid)
        total = srv.client.get(f"{API}/studies").json()["total"]
        assert total == len(accepted)
    finally:
        srv.stop()


def test_analyze_requests_merge_and_are_rate_limited_per_token(tmp_path, samples):  # noqa: F811
    """Twenty POST /analyze on one study while its run waits: one job, not twenty; past the per-token
    rate 429 with Retry-After; the study still ends with a result (before: one job per request)."""
    env = {"CXR_WORKER_DELAY_S": "1.0", "CXR_ANALYZE_PER_MINUTE": "12"}
    srv = LiveServer(tmp_path / "data", env=env).wait_ready()
    try:
        sid = srv.client.post(f"{API}/studies", files={"files": ("a.jpeg", _film(samples, "an"))}).json()["id"]
        _done(srv.client, sid)
        codes = [srv.client.post(f"{API}/studies/{sid}/analyze", params={"wait": 0}).status_code
                 for _ in range(20)]
        assert codes[:10] == [202] * 10, codes
        assert 429 in codes, codes
        refused = srv.client.post(f"{API}/studies/{sid}/analyze", params={"wait": 0})
        assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
        with sqlite3.connect(f"file:{tmp_path / 'data' / 'cxr.sqlite3'}?mode=ro", uri=True) as db:
            jobs = db.execute("SELECT COUNT(*) FROM jobs WHERE study_id = ? AND kind = 'analyze'", (sid,)).fetchone()[0]
        assert jobs <= 2, f"{jobs} analyze jobs queued for one study"
        deadline = time.monotonic() + 30
        while srv.client.get("/readyz").json()["queue"] and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _done(srv.client, sid)["result"]
    finally:
        srv.stop()


def test_delete_on_a_read_only_folder_keeps_the_study_whole(tmp_path, samples):  # noqa: F811
    """DELETE while the file store is read-only: 503 naming the delete, and the study is still there
    with its file and result; once writable, DELETE removes row and file (before: the row went, the
    file stayed, unreachable)."""
    srv = LiveServer(tmp_path / "data").wait_ready()
    objects = tmp_path / "data" / "objects"
    try:
        sid = srv.client.post(f"{API}/studies", files={"files": ("d.jpeg", _film(samples, "del"))}).json()["id"]
        body = _done(srv.client, sid)
        path = objects / body["image"]["sha256"][:2] / body["image"]["sha256"][2:]
        assert path.is_file()
        read_only_bind(objects)
        try:
            r = srv.client.delete(f"{API}/studies/{sid}")
            assert r.status_code == 503, r.text
            assert "not deleted" in r.json()["message"] and r.headers["retry-after"]
            assert srv.client.get(f"{API}/studies/{sid}").status_code == 200
            assert srv.client.get(f"{API}/studies/{sid}/image.png").status_code == 200
            assert path.is_file()
        finally:
            undo_bind(objects)
        assert srv.client.delete(f"{API}/studies/{sid}").status_code == 204
        assert srv.client.get(f"{API}/studies/{sid}").status_code == 404
        assert not path.exists() and not list(path.parent.glob(".del-*"))
    finally:
        srv.stop()


def test_viewer_token_reads_only_tokens_are_hashed_and_writes_are_audited(tmp_path, samples):  # noqa: F811
    """Three tokens: the single API token of old (full access, 'api-token'), a read-only viewer token,
    and a named one from a file that holds only its SHA-256. The viewer reads but cannot write (403);
    each write is logged with its token's name, and neither tokens nor file names reach the log."""
    import hashlib

    tokens = tmp_path / "tokens.txt"
    digest = hashlib.sha256(b"bridge-secret-0123456789").hexdigest()
    tokens.write_text(f"# name role digest\npacs-bridge write sha256:{digest}\n")
    assert "bridge-secret" not in tokens.read_text()
    env = {"CXR_VIEWER_TOKEN": "viewer-secret-0123456789", "CXR_TOKENS_FILE": str(tokens)}
    srv = LiveServer(tmp_path / "data", env=env, token="admin-secret-0123456789").wait_ready()
    film = ("Doe^John_1970.jpeg", _film(samples, "tok"))
    try:
        sid = srv.client.post(f"{API}/studies", files={"files": film}).json()["id"]
        _done(srv.client, sid)
        with httpx.Client(base_url=srv.url, headers={"Authorization": "Bearer viewer-secret-0123456789"}) as viewer:
            assert viewer.get(f"{API}/studies").status_code == 200
            assert viewer.get(f"{API}/studies/{sid}/image.png").status_code == 200
            up = viewer.post(f"{API}/studies", files={"files": ("v.jpeg", _film(samples, "v"))})
            assert up.status_code == 403 and "read-only" in up.json()["message"], up.text
            assert viewer.delete(f"{API}/studies/{sid}").status_code == 403
            assert viewer.post(f"{API}/studies/{sid}/analyze", params={"wait": 0}).status_code == 403
        with httpx.Client(base_url=srv.url, headers={"X-API-Token": "bridge-secret-0123456789"}) as bridge:
            assert bridge.post(f"{API}/studies/{sid}/analyze", params={"wait": 0}).status_code in (200, 202)
        assert httpx.get(f"{srv.url}{API}/studies", headers={"Authorization": "Bearer nope"}).status_code == 401
        assert srv.client.delete(f"{API}/studies/{sid}").status_code == 204
        time.sleep(0.3)
        log = srv.log()
        assert "token=api-token POST /api/v1/studies -> 201" in log, log[-2000:]
        assert f"token=pacs-bridge POST /api/v1/studies/{{study_id}}/analyze study={sid}" in log
        assert f"token=api-token DELETE /api/v1/studies/{{study_id}} study={sid} -> 204" in log
        assert "refused token=viewer role=read POST" in log
        for secret in ("admin-secret", "viewer-secret", "bridge-secret", "Doe^John", "Doe"):
            assert secret not in log, secret
    finally:
        srv.stop()


def test_a_tokens_file_with_a_plain_token_is_refused_at_start(tmp_path):
    import subprocess
    import sys

    from serve_fixtures import ROOT

    bad = tmp_path / "tokens.txt"
    bad.write_text("viewer read my-plain-token\n")
    out = subprocess.run([sys.executable, "-m", "cxrtriage", "serve", "--data-dir", str(tmp_path / "d"),
                          "--no-samples", "--port", "0"], capture_output=True, text=True, timeout=30, cwd=ROOT,
                         env={**__import__("os").environ, "CXR_TOKENS_FILE": str(bad)})
    assert out.returncode != 0 and "sha256:HEX" in out.stderr and "my-plain-token" not in out.stderr, out.stderr
