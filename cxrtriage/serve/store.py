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
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from cxrtriage.serve.queue import MAX_ATTEMPTS, Job, QueueFullError, QueueMixin, check_room, prediction_from_row
from cxrtriage.serve.reads import ReadsMixin
from cxrtriage.serve.schema import SOURCES, JobState, Source, StudyStatus, migrate

__all__ = ["DB_NAME", "MAX_ATTEMPTS", "PENDING_RANK", "SOURCES", "DataDirBusyError", "DataDirError", "Job",
           "JobState", "QueueFullError", "Source", "Store", "StudyStatus", "heatmap_from_row", "prediction_from_row"]

DB_NAME = "cxr.sqlite3"
# Rank used to sort the worklist: results by PRIORITY_ORDER, studies still waiting between
# 'review' and 'routine' (unread work is shown above what the model called routine).
PENDING_RANK = 1.5


class DataDirBusyError(RuntimeError):
    """Another service process holds the data directory."""


class DataDirError(RuntimeError):
    """The data directory cannot be created, read or written (the message names it and says why)."""


def _why(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    return str(exc) or type(exc).__name__


class Store(QueueMixin, ReadsMixin):
    """SQLite + file store of one data directory, and its work queue. Safe to use from many threads."""

    def __init__(self, data_dir: str | Path, fsync: bool = True):
        self.root = Path(data_dir)
        self.objects = self.root / "objects"
        self.tmp = self.root / "tmp"
        self.fsync = fsync
        self.db_path = self.root / DB_NAME
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._conns_lock = threading.Lock()
        try:
            self._open()
        except (OSError, sqlite3.Error) as exc:
            self.close()
            raise DataDirError(f"the data folder {self.root.resolve()} cannot be used: {_why(exc)}; it must be a "
                               "writable folder (set --data-dir or CXR_DATA_DIR)") from None

    def _open(self) -> None:
        for d in (self.root, self.objects, self.tmp):
            d.mkdir(parents=True, exist_ok=True)
        for i in range(256):  # the fan-out folders, made once rather than checked on every write
            (self.objects / f"{i:02x}").mkdir(exist_ok=True)
        probe = self.tmp / f".probe-{os.getpid()}"  # a read-only folder with a database in it reads fine
        probe.write_bytes(b"ok")
        probe.unlink()
        self.created = not self.db_path.exists()
        migrate(self.conn())
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
            try:
                c.execute("ROLLBACK")
            except sqlite3.Error:  # a full disk may refuse the rollback too; the original error is what counts
                pass
            raise
        try:
            c.execute("COMMIT")
        except sqlite3.Error:  # e.g. the disk filled up: leave no transaction open on this connection
            if c.in_transaction:
                try:
                    c.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
            raise

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

    def insert_study(self, fields: dict[str, Any], max_pending: int | None = None) -> tuple[str, bool, int | None]:
        """Insert a study and queue its first job. Returns (id, created, job id).

        When a study with the same sha256 exists, nothing is written and its id is returned. When
        ``max_pending`` jobs are already waiting or running, :class:`QueueFullError` (nothing written).
        """
        now = time.time()
        sid = secrets.token_hex(8)
        cols = {**fields, "id": sid, "created_at": now, "status": StudyStatus.QUEUED.value,
                "priority_rank": PENDING_RANK}
        cols["source"] = Source(cols.get("source") or Source.UPLOAD).value
        names = ", ".join(cols)
        marks = ", ".join("?" for _ in cols)
        try:
            with self.tx() as c:
                check_room(c, max_pending)
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
        """Delete a study, its jobs, results and file, all or nothing; returns its sha256 (None when unknown).

        The file is first renamed aside in its own folder, inside the database transaction: when the
        folder refuses (read-only, full), the transaction rolls back and the study stays whole; when
        the commit fails, the file is put back. Only then is the renamed file removed (a leftover
        from a crash there is swept at the next start)."""
        aside: Path | None = None
        path: Path | None = None
        try:
            with self.tx() as c:
                row = c.execute("SELECT sha256 FROM studies WHERE id = ?", (study_id,)).fetchone()
                if row is None:
                    return None
                c.execute("DELETE FROM studies WHERE id = ?", (study_id,))
                path = self.object_path(row["sha256"])
                aside = path.with_name(f".del-{path.name}-{secrets.token_hex(4)}")
                try:
                    os.rename(path, aside)
                except FileNotFoundError:  # the file was already gone: the rows go all the same
                    aside = None
        except BaseException:
            if aside is not None and path is not None:
                try:
                    os.rename(aside, path)
                except OSError:
                    pass
            raise
        if aside is not None:
            try:
                aside.unlink()
            except OSError:  # removed at the next start (sweep)
                pass
        return row["sha256"]

    def counts(self) -> dict[str, int]:
        c = self.conn()
        out = {f"studies_{k}": v for k, v in c.execute("SELECT status, COUNT(*) FROM studies GROUP BY status")}
        out.update({f"jobs_{k}": v for k, v in c.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state")})
        return out


def heatmap_from_row(row: sqlite3.Row | None) -> np.ndarray | None:
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
