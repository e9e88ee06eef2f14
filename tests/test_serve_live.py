"""The real server as a subprocess: crash and resume, streaming size limit, logs."""

from __future__ import annotations

import select
import socket
import sqlite3
import time
from pathlib import Path

import pytest

from serve_fixtures import LiveServer, dicom_bytes, gray, samples, unique_jpeg  # noqa: F401

pytestmark = pytest.mark.slow
API = "/api/v1"
MiB = 1024 * 1024


def _db(data_dir: Path, sql: str, *args):
    with sqlite3.connect(data_dir / "cxr.sqlite3") as conn:
        return conn.execute(sql, args).fetchall()


def test_kill_mid_queue_then_resume_gives_each_study_one_result(tmp_path, samples):
    data_dir = tmp_path / "data"
    n = 8
    srv = LiveServer(data_dir, env={"CXR_WORKER_DELAY_S": "0.4", "CXR_WORKER_BATCH": "2"}).wait_ready()
    try:
        ids = []
        for i in range(n):
            src = samples["raster"][i % len(samples["raster"])]
            r = srv.client.post(f"{API}/studies", files={"files": (f"s{i}.jpeg", unique_jpeg(src.read_bytes(), f"crash-{i}"))})
            assert r.status_code == 201, r.text
            ids.append(r.json()["id"])
        # wait until the worker has finished some and holds the next batch, then kill it without warning
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            done = _db(data_dir, "SELECT COUNT(*) FROM results")[0][0]
            running = _db(data_dir, "SELECT COUNT(*) FROM jobs WHERE state = 'running'")[0][0]
            if done >= 2 and running:
                break
            time.sleep(0.02)
        srv.kill()
    finally:
        srv.stop()
    results_before = _db(data_dir, "SELECT COUNT(*) FROM results")[0][0]
    states = dict(_db(data_dir, "SELECT state, COUNT(*) FROM jobs GROUP BY state"))
    assert 2 <= results_before < n, f"kill did not land mid-queue: {results_before} results"
    assert states.get("running", 0) + states.get("pending", 0) == n - results_before
    assert states.get("running", 0) >= 1, "kill did not land while a batch was being worked on"

    srv2 = LiveServer(data_dir).wait_ready()
    try:
        for sid in ids:
            r = srv2.client.get(f"{API}/studies/{sid}", params={"wait": 30})
            assert r.status_code == 200 and r.json()["status"] == "done", r.text
            assert r.json()["result"]["label"]
        assert "queued again" in srv2.log()
    finally:
        srv2.stop()
    per_study = dict(_db(data_dir, "SELECT study_id, COUNT(*) FROM results GROUP BY study_id"))
    assert per_study == {sid: 1 for sid in ids}, "every study must get exactly one result"
    assert _db(data_dir, "SELECT state, COUNT(*) FROM jobs GROUP BY state") == [("done", n)]
    assert _db(data_dir, "SELECT COUNT(*) FROM results r JOIN jobs j ON j.id = r.job_id")[0][0] == n
    assert _db(data_dir, "PRAGMA integrity_check") == [("ok",)]


def _raw_upload(port: int, head: bytes, chunks, limit_s: float = 20.0) -> tuple[bytes, int]:
    """Send ``head`` then body chunks until the server answers; returns (answer, body bytes sent)."""
    sent = 0
    answer = b""
    with socket.create_connection(("127.0.0.1", port), timeout=limit_s) as s:
        s.sendall(head)
        deadline = time.monotonic() + limit_s
        for chunk in chunks:
            readable, _, _ = select.select([s], [], [], 0)
            if readable or time.monotonic() > deadline:
                break
            try:
                s.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(chunk)
        s.settimeout(10)
        try:
            while b"\r\n\r\n" not in answer or len(answer) < answer.index(b"\r\n\r\n") + 60:
                part = s.recv(65536)
                if not part:
                    break
                answer += part
        except (ConnectionResetError, socket.timeout):
            pass
    return answer, sent


def test_oversized_uploads_are_refused_while_streaming(tmp_path, samples):
    srv = LiveServer(tmp_path / "data").wait_ready()
    try:
        boundary = b"cxrtestboundary"
        part_head = (b"--" + boundary + b"\r\nContent-Disposition: form-data; name=\"files\"; "
                     b"filename=\"huge.dcm\"\r\nContent-Type: application/dicom\r\n\r\n")
        one_mib = bytes(MiB)

        # 100 MiB announced in Content-Length: refused at once, before the body is read
        head = (b"POST /api/v1/studies HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Content-Type: multipart/form-data; boundary=" + boundary + b"\r\n"
                b"Content-Length: " + str(100 * MiB).encode() + b"\r\n\r\n" + part_head)
        t0 = time.monotonic()
        answer, sent = _raw_upload(srv.port, head, (one_mib for _ in range(100)))
        assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
        assert b"limit of 64 MiB" in answer
        assert sent < 100 * MiB, "the server should answer before the whole body is sent"
        assert time.monotonic() - t0 < 15

        # no Content-Length (chunked): counted as it arrives, refused once past 64 MiB
        head = (b"POST /api/v1/studies HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Content-Type: multipart/form-data; boundary=" + boundary + b"\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n")

        def chunked():
            yield f"{len(part_head):x}\r\n".encode() + part_head + b"\r\n"
            for _ in range(100):
                yield f"{len(one_mib):x}\r\n".encode() + one_mib + b"\r\n"

        answer, sent = _raw_upload(srv.port, head, chunked())
        assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
        assert 64 * MiB <= sent < 100 * MiB, sent

        # the server keeps serving, and never wrote the refused bodies to its store
        assert srv.client.get("/healthz").status_code == 200
        src = samples["raster"][0].read_bytes()
        r = srv.client.post(f"{API}/studies", files={"files": ("ok.jpeg", src)})
        assert r.status_code == 201, r.text
        assert srv.client.get(f"{API}/studies/{r.json()['id']}", params={"wait": 20}).json()["status"] == "done"
        stored = [p for p in (srv.data_dir / "objects").rglob("*") if p.is_file()]
        assert len(stored) == 1 and stored[0].stat().st_size == len(src)

        # patient identifiers in an uploaded DICOM never reach the log
        g = gray(samples["raster"][1])
        dcm = dicom_bytes(g, patient_name="Roe^Richard", patient_id="PID-LIVE-4242", patient_birth_date="19610101")
        r = srv.client.post(f"{API}/studies", files={"files": ("Roe_Richard.dcm", dcm)})
        assert r.status_code == 201
        srv.client.get(f"{API}/studies/{r.json()['id']}", params={"wait": 20})
        srv.client.post(f"{API}/studies", files={"files": ("Roe_Richard_cut.dcm", dcm[: len(dcm) // 2])})
    finally:
        srv.stop()
    log = srv.log()
    assert "POST /api/v1/studies" in log  # the access log is on
    for value in ("Roe", "Richard", "PID-LIVE-4242", "19610101"):
        assert value not in log, f"{value!r} appears in the server log"
