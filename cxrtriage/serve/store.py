"""Persistence: SQLite (WAL) for studies, the work queue and results; files in a content-addressed store.

Layout of the data directory::

    cxr.sqlite3 (+ -wal, -shm)   studies, jobs (the persisted queue), results, meta
    objects/ab/cdef...           uploaded files, named by the sha256 of their bytes
    tmp/                         temporary files, renamed into objects/ once complete
    secret.key                   random key for the pseudonymous patient reference

Files are never named after what the client called them. Every write of a file goes to
``tmp/`` first, is flushed (and fsynced unless disabled) and then renamed into place, so a
crash leaves either the whole file or nothing. A study row and its first job are inserted
in one transaction; a result row and the end of its job too, and ``results.job_id`` is
unique, so a job yields exactly one result however often the process dies.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cxrtriage.contract import PRIORITY_ORDER

DB_NAME = "cxr.sqlite3"
SCHEMA_VERSION = 1
SOURCES = ("upload", "pacs", "sample")
MAX_ATTEMPTS = 3
# Rank used to sort the worklist: results by PRIORITY_ORDER, studies still waiting between
# 'review' and 'routine' (unread work is shown above what the model called routine).
PENDING_RANK = 1.5

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS studies (
    id            TEXT PRIMARY KEY,
    sha256        TEXT NOT NULL UNIQUE,
    source        TEXT NOT NULL DEFAULT 'upload',
    external_ref  TEXT,
    name          TEXT,
    size          INTEGER NOT NULL,
    format        TEXT,
    modality      TEXT,
    view_position TEXT,
    photometric   TEXT,
    bits          INTEGER,
    width         INTEGER,
    height        INTEGER,
    patient_ref   TEXT,
    win_center    REAL,
    win_width     REAL,
    value_min     REAL,
    value_max     REAL,
    created_at    REAL NOT NULL,
    status        TEXT NOT NULL DEFAULT 'queued',
    result_id     INTEGER,
    priority      TEXT,
    priority_rank REAL NOT NULL DEFAULT 1.5,
    score         REAL,
    label         TEXT,
    completed_at  REAL
);
CREATE INDEX IF NOT EXISTS studies_by_priority ON studies (priority_rank, created_at DESC);
CREATE INDEX IF NOT EXISTS studies_by_time ON studies (created_at);
CREATE INDEX IF NOT EXISTS studies_by_ref ON studies (source, external_ref);
CREATE TABLE IF NOT EXISTS jobs (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    study_id    TEXT NOT NULL REFERENCES studies (id) ON DELETE CASCADE,
    kind        TEXT NOT NULL,
    state       TEXT NOT NULL DEFAULT 'pending',
    attempts    INTEGER NOT NULL DEFAULT 0,
    created_at  REAL NOT NULL,
    started_at  REAL,
    finished_at REAL,
    error       TEXT
);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, id);
CREATE INDEX IF NOT EXISTS jobs_by_study ON jobs (study_id);
CREATE TABLE IF NOT EXISTS results (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    study_id      TEXT NOT NULL REFERENCES studies (id) ON DELETE CASCADE,
    job_id        INTEGER NOT NULL UNIQUE,
    created_at    REAL NOT NULL,
    model_name    TEXT,
    model_version TEXT,
    label         TEXT,
    score         REAL,
    priority      TEXT NOT NULL,
    threshold     REAL,
    probabilities TEXT,
    gate          TEXT,
    timings       TEXT,
    error         TEXT,
    error_type    TEXT,
    heatmap       BLOB,
    heatmap_h     INTEGER,
    heatmap_w     INTEGER
);
CREATE INDEX IF NOT EXISTS results_by_study ON results (study_id);
"""


class DataDirBusyError(RuntimeError):
    """Another service process holds the data directory."""


@dataclass(frozen=True)
class Job:
    id: int
    study_id: str
    sha256: str
    kind: str
    created_at: float


class Store:
    """SQLite + file store of one data directory. Safe to use from many threads."""

    def __init__(self, data_dir: str | Path, fsync: bool = True):
        self.root = Path(data_dir)
        self.objects = self.root / "objects"
        self.tmp = self.root / "tmp"
        self.fsync = fsync
        for d in (self.root, self.objects, self.tmp):
            d.mkdir(parents=True, exist_ok=True)
        for i in range(256):  # the fan-out folders, made once rather than checked on every write
            (self.objects / f"{i:02x}").mkdir(exist_ok=True)
        self.db_path = self.root / DB_NAME
        self.created = not self.db_path.exists()
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._conns_lock = threading.Lock()
        c = self.conn()
        c.executescript(_SCHEMA)
        c.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
        self._secret = self._load_secret()

    def lock(self) -> None:
        """Take the data directory for this process; a second server on the same directory is refused
        (two workers would each think the other's running jobs were left by a crash)."""
        import fcntl

        fh = open(self.root / ".lock", "a+")
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.close()
            raise DataDirBusyError(f"{self.root} is in use by another cxr-triage service") from None
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        self._lock_fh = fh

    def unlock(self) -> None:
        fh = getattr(self, "_lock_fh", None)
        if fh is not None:
            fh.close()
            self._lock_fh = None

    # -- connections and transactions -------------------------------------
    def conn(self) -> sqlite3.Connection:
        c = getattr(self._local, "conn", None)
        if c is None:
            c = sqlite3.connect(self.db_path, timeout=30.0, isolation_level=None, check_same_thread=False)
            c.row_factory = sqlite3.Row
            c.execute("PRAGMA journal_mode=WAL")
            c.execute(f"PRAGMA synchronous={'FULL' if self.fsync else 'NORMAL'}")
            c.execute("PRAGMA foreign_keys=ON")
            c.execute("PRAGMA busy_timeout=30000")
            self._local.conn = c
            with self._conns_lock:
                self._conns.append(c)
        return c

    def relax_sync(self) -> None:
        """synchronous=NORMAL for this thread's connection (the worker's): a result lost to a power cut
        leaves its job unfinished, so it is computed again; uploads keep FULL."""
        self.conn().execute("PRAGMA synchronous=NORMAL")

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """A write transaction (BEGIN IMMEDIATE ... COMMIT, ROLLBACK on error)."""
        c = self.conn()
        c.execute("BEGIN IMMEDIATE")
        try:
            yield c
        except BaseException:
            c.execute("ROLLBACK")
            raise
        c.execute("COMMIT")

    def close(self) -> None:
        self.unlock()
        with self._conns_lock:
            for c in self._conns:
                try:
                    c.close()
                except sqlite3.Error:
                    pass
            self._conns.clear()
        self._local = threading.local()

    def meta_get(self, key: str) -> str | None:
        row = self.conn().execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def meta_set(self, key: str, value: str) -> None:
        self.conn().execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    # -- files ---------------------------------------------------------------
    def _write_atomic(self, target: Path, data: bytes) -> None:
        fd, tmp = _mkstemp(self.tmp)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                if self.fsync:
                    os.fsync(fh.fileno())
            os.replace(tmp, target)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        if self.fsync:
            _fsync_dir(target.parent)

    def _load_secret(self) -> bytes:
        path = self.root / "secret.key"
        if not path.exists():
            self._write_atomic(path, secrets.token_hex(32).encode())
            os.chmod(path, 0o600)
        return bytes.fromhex(path.read_text().strip())

    def pseudonym(self, *parts: str) -> str:
        """A short keyed hash of patient identifiers: the same patient gives the same reference."""
        msg = "\x1f".join(parts).encode("utf-8", "replace")
        return "P-" + hmac.new(self._secret, msg, hashlib.sha256).hexdigest()[:6].upper()

    def object_path(self, sha256: str) -> Path:
        return self.objects / sha256[:2] / sha256[2:]

    def put_object(self, data: bytes, sha256: str | None = None) -> str:
        """Store ``data`` under its sha256 (atomically; a file already there is kept)."""
        sha256 = sha256 or hashlib.sha256(data).hexdigest()
        path = self.object_path(sha256)
        if not path.exists():
            self._write_atomic(path, data)
        return sha256

    def read_object(self, sha256: str) -> bytes:
        return self.object_path(sha256).read_bytes()

    def delete_object(self, sha256: str) -> None:
        try:
            self.object_path(sha256).unlink()
        except FileNotFoundError:
            pass

    def writable(self) -> bool:
        """True when a file can be written and renamed in the data directory and the database takes a write."""
        try:
            probe = self.tmp / f".probe-{os.getpid()}-{threading.get_ident()}"
            probe.write_bytes(b"ok")
            probe.unlink()
            self.meta_set("probe", str(time.time()))
            return True
        except (OSError, sqlite3.Error):
            return False

    def sweep(self) -> dict[str, int]:
        """Remove leftovers of interrupted writes: temp files and files no study refers to."""
        removed_tmp = 0
        for p in self.tmp.iterdir():
            try:
                p.unlink()
                removed_tmp += 1
            except OSError:
                pass
        known = {r[0] for r in self.conn().execute("SELECT sha256 FROM studies")}
        removed = 0
        cutoff = time.time() - 60  # leave files a running upload may be about to register
        for sub in self.objects.iterdir():
            if not sub.is_dir():
                continue
            for p in sub.iterdir():
                if sub.name + p.name not in known and p.stat().st_mtime < cutoff:
                    p.unlink(missing_ok=True)
                    removed += 1
        return {"tmp": removed_tmp, "orphans": removed}

    # -- studies -------------------------------------------------------------
    def find_by_sha(self, sha256: str) -> sqlite3.Row | None:
        return self.conn().execute("SELECT * FROM studies WHERE sha256 = ?", (sha256,)).fetchone()

    def insert_study(self, fields: dict[str, Any]) -> tuple[str, bool, int | None]:
        """Insert a study and queue its first job. Returns (id, created, job id).

        When a study with the same sha256 exists, nothing is written and its id is returned.
        """
        now = time.time()
        sid = secrets.token_hex(8)
        cols = {**fields, "id": sid, "created_at": now, "status": "queued", "priority_rank": PENDING_RANK}
        names = ", ".join(cols)
        marks = ", ".join("?" for _ in cols)
        try:
            with self.tx() as c:
                c.execute(f"INSERT INTO studies ({names}) VALUES ({marks})", tuple(cols.values()))
                cur = c.execute("INSERT INTO jobs (study_id, kind, created_at) VALUES (?, 'upload', ?)", (sid, now))
                job_id = cur.lastrowid
        except sqlite3.IntegrityError:
            row = self.find_by_sha(fields["sha256"])
            if row is None:
                raise
            return row["id"], False, None
        return sid, True, job_id

    def get_study(self, study_id: str) -> sqlite3.Row | None:
        return self.conn().execute("SELECT * FROM studies WHERE id = ?", (study_id,)).fetchone()

    def get_result(self, result_id: int | None) -> sqlite3.Row | None:
        if result_id is None:
            return None
        return self.conn().execute("SELECT * FROM results WHERE id = ?", (result_id,)).fetchone()

    def list_studies(self, sort: str = "priority", limit: int = 50, offset: int = 0,
                     source: str | None = None, status: str | None = None) -> tuple[int, list[sqlite3.Row]]:
        orders = {
            "priority": "priority_rank ASC, created_at DESC",
            "-priority": "priority_rank DESC, created_at DESC",
            "time": "created_at DESC",
            "-time": "created_at DESC",
            "+time": "created_at ASC",
            "score": "score DESC NULLS LAST, created_at DESC",
        }
        order = orders[sort]
        where, args = [], []
        if source:
            where.append("source = ?")
            args.append(source)
        if status:
            where.append("status = ?")
            args.append(status)
        clause = ("WHERE " + " AND ".join(where)) if where else ""
        c = self.conn()
        total = c.execute(f"SELECT COUNT(*) FROM studies {clause}", args).fetchone()[0]
        rows = c.execute(f"SELECT * FROM studies {clause} ORDER BY {order}, id LIMIT ? OFFSET ?",
                         (*args, limit, offset)).fetchall()
        return total, rows

    def delete_study(self, study_id: str) -> str | None:
        """Delete a study, its jobs and results; returns its sha256 (None when unknown)."""
        with self.tx() as c:
            row = c.execute("SELECT sha256 FROM studies WHERE id = ?", (study_id,)).fetchone()
            if row is None:
                return None
            c.execute("DELETE FROM studies WHERE id = ?", (study_id,))
        self.delete_object(row["sha256"])
        return row["sha256"]

    def counts(self) -> dict[str, int]:
        c = self.conn()
        out = {f"studies_{k}": v for k, v in c.execute("SELECT status, COUNT(*) FROM studies GROUP BY status")}
        out.update({f"jobs_{k}": v for k, v in c.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state")})
        return out

    # -- the queue -------------------------------------------------------------
    def enqueue(self, study_id: str, kind: str = "analyze") -> int | None:
        """Queue another run for a study; returns the job id (None when the study is unknown)."""
        now = time.time()
        with self.tx() as c:
            if c.execute("SELECT 1 FROM studies WHERE id = ?", (study_id,)).fetchone() is None:
                return None
            cur = c.execute("INSERT INTO jobs (study_id, kind, created_at) VALUES (?, ?, ?)", (study_id, kind, now))
            c.execute("UPDATE studies SET status = 'queued' WHERE id = ?", (study_id,))
            return cur.lastrowid

    def pending_count(self) -> int:
        return self.conn().execute("SELECT COUNT(*) FROM jobs WHERE state IN ('pending', 'running')").fetchone()[0]

    def recover(self) -> dict[str, int]:
        """After a restart: jobs that were running when the process died go back to the queue,
        unless they have been tried MAX_ATTEMPTS times (then they fail, so a file that crashes
        the process cannot stop the service)."""
        now = time.time()
        with self.tx() as c:
            poison = c.execute("SELECT id, study_id FROM jobs WHERE state = 'running' AND attempts >= ?",
                               (MAX_ATTEMPTS,)).fetchall()
            for job in poison:
                self._finish_failed(c, job["id"], job["study_id"], now,
                                    f"inference stopped {MAX_ATTEMPTS} times on this study; not retried")
            n = c.execute("UPDATE jobs SET state = 'pending' WHERE state = 'running'").rowcount
        return {"requeued": n, "failed": len(poison)}

    def claim(self, limit: int) -> list[Job]:
        """Take up to ``limit`` pending jobs, oldest first, marking them running."""
        now = time.time()
        with self.tx() as c:
            rows = c.execute(
                "SELECT j.id, j.study_id, j.kind, j.created_at, s.sha256 FROM jobs j JOIN studies s ON s.id = j.study_id"
                " WHERE j.state = 'pending' ORDER BY j.id LIMIT ?", (limit,)).fetchall()
            if not rows:
                return []
            ids = [r["id"] for r in rows]
            marks = ",".join("?" for _ in ids)
            c.execute(f"UPDATE jobs SET state = 'running', attempts = attempts + 1, started_at = ? WHERE id IN ({marks})",
                      (now, *ids))
            c.execute(f"UPDATE studies SET status = 'running' WHERE id IN (SELECT study_id FROM jobs WHERE id IN ({marks}))",
                      ids)
        return [Job(r["id"], r["study_id"], r["sha256"], r["kind"], r["created_at"]) for r in rows]

    def finish(self, done: list[tuple[Job, dict[str, Any]]]) -> list[tuple[Job, int]]:
        """Record results and close their jobs in one transaction. Returns (job, result id) of those written
        (a job whose study was deleted meanwhile is dropped)."""
        now = time.time()
        written = []
        with self.tx() as c:
            for job, res in done:
                state = c.execute("SELECT state FROM jobs WHERE id = ?", (job.id,)).fetchone()
                if state is None or state["state"] != "running":
                    continue
                hm = res.get("heatmap")
                cur = c.execute(
                    "INSERT INTO results (study_id, job_id, created_at, model_name, model_version, label, score,"
                    " priority, threshold, probabilities, gate, timings, error, error_type, heatmap, heatmap_h,"
                    " heatmap_w) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (job.study_id, job.id, now, res["model"].get("name"), res["model"].get("version"),
                     res.get("label"), res.get("score"), res["priority"], res.get("threshold"),
                     json.dumps(res.get("probabilities") or {}), json.dumps(res.get("gate") or {}),
                     json.dumps(res.get("timings_ms") or {}), res.get("error"), res.get("error_type"),
                     None if hm is None else np.asarray(hm, dtype=np.float32).tobytes(),
                     None if hm is None else int(hm.shape[0]), None if hm is None else int(hm.shape[1])))
                rid = cur.lastrowid
                c.execute("UPDATE jobs SET state = 'done', finished_at = ? WHERE id = ?", (now, job.id))
                still_queued = c.execute("SELECT 1 FROM jobs WHERE study_id = ? AND state IN ('pending', 'running')",
                                         (job.study_id,)).fetchone()
                c.execute("UPDATE studies SET result_id = ?, priority = ?, priority_rank = ?, score = ?, label = ?,"
                          " completed_at = ?, status = ? WHERE id = ?",
                          (rid, res["priority"], PRIORITY_ORDER.get(res["priority"], 9), res.get("score"),
                           res.get("label"), now, "queued" if still_queued else "done", job.study_id))
                written.append((job, rid))
        return written

    def fail(self, jobs: list[Job], error: str) -> None:
        """Give jobs up after an unexpected failure (the study keeps its previous result, if any)."""
        now = time.time()
        with self.tx() as c:
            for job in jobs:
                self._finish_failed(c, job.id, job.study_id, now, error)

    @staticmethod
    def _finish_failed(c: sqlite3.Connection, job_id: int, study_id: str, now: float, error: str) -> None:
        c.execute("UPDATE jobs SET state = 'failed', finished_at = ?, error = ? WHERE id = ?", (now, error, job_id))
        has_result = c.execute("SELECT result_id FROM studies WHERE id = ?", (study_id,)).fetchone()
        status = "done" if has_result is not None and has_result[0] is not None else "failed"
        c.execute("UPDATE studies SET status = ? WHERE id = ?", (status, study_id))

    def job_state(self, job_id: int) -> str | None:
        row = self.conn().execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else row[0]


def heatmap_from_row(row: sqlite3.Row) -> np.ndarray | None:
    if row is None or row["heatmap"] is None:
        return None
    return np.frombuffer(row["heatmap"], dtype=np.float32).reshape(row["heatmap_h"], row["heatmap_w"])


def _mkstemp(folder: Path) -> tuple[int, str]:
    import tempfile

    return tempfile.mkstemp(prefix=".up-", dir=folder)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
