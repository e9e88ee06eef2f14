"""Readers' reads on the real service: record, change (history kept), list, the tokens' roles, the
RIS import (all or nothing) and nothing lost across a restart or a full disk."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from serve_fixtures import ROOT, LiveServer, SmallDisk, samples, unique_jpeg  # noqa: F401
from cxrtriage.serve.tokens import hashed_line

API = "/api/v1"
WRITE, READ = "reads-test-writer-token-0123456789", "reads-test-viewer-token-0123456789"


def _tokens(tmp_path):
    f = tmp_path / "tokens.txt"
    f.write_text(hashed_line("dr-house", "write", WRITE) + "\n" + hashed_line("wall", "read", READ) + "\n")
    return {"CXR_TOKENS_FILE": str(f)}


def _done(srv: LiveServer, sid: str) -> dict:
    body = srv.client.get(f"{API}/studies/{sid}", params={"wait": 30}).json()
    assert body["status"] == "done", body
    return body


def _live(data_dir, env) -> LiveServer:
    srv = LiveServer(data_dir, env=env)
    srv.client.headers["Authorization"] = f"Bearer {WRITE}"
    return srv.wait_ready()


def _upload(srv: LiveServer, name: str, data: bytes) -> str:
    r = srv.client.post(f"{API}/studies", files={"files": (name, data, "image/jpeg")})
    assert r.status_code in (200, 201), r.text
    return r.json()["id"]


@pytest.fixture
def server(tmp_path):
    srv = _live(tmp_path / "data", _tokens(tmp_path))
    yield srv
    srv.stop()


def test_record_change_and_list_reads_with_the_reader_and_model_version(server, samples):
    sid = _upload(server, "a.jpeg", samples["raster"][0].read_bytes())
    study = _done(server, sid)
    ai = study["result"]
    r = server.client.put(f"{API}/studies/{sid}/read", json={"agree": True, "source": "viewer"})
    assert r.status_code == 200, r.text
    cur = r.json()["current"]
    assert cur["label"] == ai["label"] and cur["agree"] is True and cur["reader"] == "dr-house"
    assert cur["model"] == {"name": ai["model"]["name"], "version": ai["model"]["version"]}
    other = "normal" if ai["label"] != "normal" else "pneumonia"
    r = server.client.put(f"{API}/studies/{sid}/read", json={"label": other, "agree": False})
    body = r.json()
    assert body["current"]["label"] == other and body["current"]["replaces"] == cur["id"]
    assert [h["current"] for h in body["history"]] == [True, False]
    assert server.client.get(f"{API}/studies/{sid}").json()["read_label"] == other
    listed = server.client.get(f"{API}/reads").json()
    assert listed["total"] == 1 and listed["items"][0]["label"] == other
    assert server.client.get(f"{API}/reads", params={"history": True}).json()["total"] == 2
    bad = server.client.put(f"{API}/studies/{sid}/read", json={"label": "broken leg"})
    assert bad.status_code == 422 and "normal" in bad.json()["message"]
    assert server.client.put(f"{API}/studies/nope/read", json={"label": "normal"}).status_code == 404
    paths = server.client.get("/openapi.json").json()["paths"]
    assert {"get", "put"} <= set(paths[f"{API}/studies/{{study_id}}/read"]) and f"{API}/reads/import" in paths


def test_a_read_only_token_reads_but_cannot_write(server, samples):
    sid = _upload(server, "b.jpeg", samples["raster"][1].read_bytes())
    _done(server, sid)
    viewer = {"Authorization": f"Bearer {READ}"}
    r = server.client.put(f"{API}/studies/{sid}/read", json={"label": "normal"}, headers=viewer)
    assert r.status_code == 403
    r = server.client.post(f"{API}/reads/import", json={"csv": f"study,label\n{sid},normal\n"}, headers=viewer)
    assert r.status_code == 403
    assert server.client.get(f"{API}/studies/{sid}/read", headers=viewer).json()["current"] is None
    assert "refused token=wall" in server.log()


def test_import_is_all_or_nothing_and_names_what_is_wrong(server, samples, tmp_path):
    ids = [_upload(server, f"r{i}.jpeg", unique_jpeg(samples["raster"][0].read_bytes(), f"imp{i}")) for i in range(2)]
    for sid in ids:
        _done(server, sid)
    bad = tmp_path / "bad.csv"
    bad.write_text(f"study,label\n{ids[0]},normal\nnot-a-study,normal\n{ids[1]},fracture\n")
    cmd = [sys.executable, "-m", "cxrtriage", "reads", "import", str(bad), "--url", server.url]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={"CXR_API_TOKEN": WRITE, "PATH": ""})
    assert out.returncode == 1, out.stderr
    assert "line 3: not-a-study: unknown study" in out.stderr and "fracture" in out.stderr
    assert server.client.get(f"{API}/reads").json()["total"] == 0  # nothing half-imported
    good = tmp_path / "good.csv"
    good.write_text("file,label\nr0.jpeg,pneumonia\nr1.jpeg,normal\n")  # by file name, as a RIS export may have it
    out = subprocess.run(cmd[:5] + [str(good), "--data-dir", str(server.data_dir), "--reader", "ris"], cwd=ROOT,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    reads = server.client.get(f"{API}/reads").json()["items"]
    assert sorted((r["label"], r["reader"], r["source"]) for r in reads) == [("normal", "ris", "import"),
                                                                            ("pneumonia", "ris", "import")]


def test_a_read_survives_a_restart(tmp_path, samples):
    env = _tokens(tmp_path)
    srv = _live(tmp_path / "data", env)
    try:
        sid = _upload(srv, "c.jpeg", samples["raster"][2].read_bytes())
        _done(srv, sid)
        assert srv.client.put(f"{API}/studies/{sid}/read", json={"label": "normal"}).status_code == 200
        srv.kill()  # SIGKILL straight after the answer: the answer means it is stored
    finally:
        srv.stop()
    again = _live(tmp_path / "data", env)
    try:
        r = again.client.get(f"{API}/studies/{sid}/read", headers={"Authorization": f"Bearer {WRITE}"})
        assert r.json()["current"]["label"] == "normal"
    finally:
        again.stop()


def test_a_read_on_a_full_disk_is_refused_with_the_reason_then_stored(tmp_path, samples):
    disk = SmallDisk(tmp_path / "disk", size=8 * 1024 * 1024)
    try:
        srv = _live(disk.path / "data", {**_tokens(tmp_path), "CXR_FSYNC": "0"})
        try:
            sid = _upload(srv, "d.jpeg", samples["raster"][0].read_bytes())
            _done(srv, sid)
            disk.fill()
            r = srv.client.put(f"{API}/studies/{sid}/read", json={"label": "normal"})
            assert r.status_code in (503, 507), r.text
            assert "the read was not stored" in r.json()["message"] and r.headers["retry-after"]
            disk.free()
            time.sleep(0.2)
            assert srv.client.get(f"{API}/studies/{sid}/read").json()["current"] is None  # refused means not stored
            assert srv.client.put(f"{API}/studies/{sid}/read", json={"label": "normal"}).status_code == 200
        finally:
            srv.stop()
    finally:
        disk.unmount()
