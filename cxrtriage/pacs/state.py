"""Persistent watcher state (SQLite): what was seen, done or skipped, and when to retry.

An item is keyed by where it came from (``orthanc:<id>`` for Orthanc's change feed,
``sop:<SOP Instance UID>`` for DICOMweb and C-STORE) and moves from ``pending`` to
``done``, ``skipped`` or ``failed``. Only ``pending`` items whose retry time has come
are handed out, so an instance is never processed twice across restarts, and the feed
cursor is saved in the same transaction as the items it enqueued, so nothing is lost.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cxrtriage.contract import StrEnum


class JobStatus(StrEnum):
    """Where an item stands."""

    PENDING = "pending"  # waiting for its (next) turn
    DONE = "done"        # results stored
    SKIPPED = "skipped"  # not for triage, or gone from the PACS
    FAILED = "failed"    # given up after too many attempts


PENDING, DONE, SKIPPED, FAILED = JobStatus.PENDING, JobStatus.DONE, JobStatus.SKIPPED, JobStatus.FAILED

_SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    key TEXT PRIMARY KEY,
    ref TEXT NOT NULL DEFAULT '{}',
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_try REAL NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    detail TEXT,
    outputs TEXT
);
CREATE INDEX IF NOT EXISTS items_due ON items (status, next_try);
CREATE TABLE IF NOT EXISTS cursors (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


def backoff_delay(attempt: int, base: float = 1.0, cap: float = 60.0) -> float:
    """Exponential backoff: base, 2*base, 4*base, ... capped at ``cap`` seconds."""
    return min(cap, base * (2 ** max(0, attempt - 1)))


@dataclass
class Item:
    key: str
    ref: dict[str, Any]
    status: JobStatus
    attempts: int
    next_try: float
    created: float
    updated: float
    detail: str | None
    outputs: list[str]


def default_state_path() -> Path:
    return Path.home() / ".cache" / "cxr-triage" / "pacs-state.sqlite"


class State:
    """Thread-safe SQLite store of watcher progress (WAL mode, so others can read it while it runs)."""

    def __init__(self, path: str | Path | None = None, max_attempts: int = 8, backoff_base: float = 1.0,
                 backoff_cap: float = 60.0):
        self.path = Path(path) if path else default_state_path()
        if str(self.path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_attempts = max_attempts
        self.backoff_base, self.backoff_cap = backoff_base, backoff_cap
        self._lock = threading.RLock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, timeout=30.0, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> State:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- cursors -------------------------------------------------------------------------
    def cursor(self, name: str, default: str | None = None) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM cursors WHERE name=?", (name,)).fetchone()
        return row[0] if row else default

    def enqueue(self, items: list[tuple[str, dict[str, Any]]], cursor: tuple[str, str] | None = None,
                status: JobStatus = PENDING, detail: str | None = None) -> int:
        """Add unseen items (others are left alone) and optionally move a cursor, atomically."""
        now = time.time()
        with self._lock:
            cur = self._db.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                before = self._db.total_changes
                cur.executemany(
                    "INSERT OR IGNORE INTO items (key, ref, status, created, updated, detail) VALUES (?,?,?,?,?,?)",
                    [(k, json.dumps(r), status, now, now, detail) for k, r in items])
                added = self._db.total_changes - before
                if cursor is not None:
                    cur.execute("INSERT INTO cursors (name, value) VALUES (?, ?) "
                                "ON CONFLICT(name) DO UPDATE SET value=excluded.value", cursor)
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise
        return added

    def known_keys(self, keys: list[str]) -> set[str]:
        out: set[str] = set()
        with self._lock:
            for s in range(0, len(keys), 500):
                chunk = keys[s:s + 500]
                q = f"SELECT key FROM items WHERE key IN ({','.join('?' * len(chunk))})"
                out.update(r[0] for r in self._db.execute(q, chunk))
        return out

    # -- work ----------------------------------------------------------------------------
    def due(self, limit: int = 16, now: float | None = None) -> list[Item]:
        """Pending items whose retry time has come, oldest first."""
        now = time.time() if now is None else now
        with self._lock:
            rows = self._db.execute(
                "SELECT key, ref, status, attempts, next_try, created, updated, detail, outputs FROM items "
                "WHERE status=? AND next_try<=? ORDER BY created, key LIMIT ?", (PENDING, now, limit)).fetchall()
        return [_item(r) for r in rows]

    def next_due_in(self, now: float | None = None, exclude: set[str] | frozenset[str] = frozenset()) -> float | None:
        """Seconds until the next pending item is due (0 if one is due now), None if none pending.

        ``exclude``: keys being worked on now (not waiting for a turn).
        """
        now = time.time() if now is None else now
        exclude = set(exclude)
        with self._lock:
            rows = self._db.execute("SELECT key, next_try FROM items WHERE status=? ORDER BY next_try LIMIT ?",
                                    (PENDING, len(exclude) + 1)).fetchall()
        for key, next_try in rows:
            if key not in exclude:
                return max(0.0, next_try - now)
        return None

    def _set(self, key: str, status: JobStatus, detail: str | None, outputs: list[str] | None = None,
             attempts: int | None = None, next_try: float = 0.0) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE items SET status=?, detail=?, outputs=COALESCE(?, outputs), "
                "attempts=COALESCE(?, attempts), next_try=?, updated=? WHERE key=?",
                (status, detail, json.dumps(outputs) if outputs is not None else None, attempts, next_try,
                 time.time(), key))

    def mark_done(self, key: str, outputs: list[str], detail: str | None = None) -> None:
        self._set(key, DONE, detail, outputs)

    def mark_skipped(self, key: str, reason: str) -> None:
        self._set(key, SKIPPED, reason)

    def mark_retry(self, item: Item, error: str, permanent_after: bool = True) -> JobStatus:
        """Schedule another attempt with backoff; returns the new status.

        ``permanent_after=False`` (the PACS is unreachable) never gives up: an outage must
        not lose work. Other errors give up after ``max_attempts``.
        """
        attempts = item.attempts + 1
        if permanent_after and attempts >= self.max_attempts:
            self._set(item.key, FAILED, error, attempts=attempts)
            return FAILED
        delay = backoff_delay(attempts, self.backoff_base, self.backoff_cap)
        self._set(item.key, PENDING, error, attempts=attempts, next_try=time.time() + delay)
        return PENDING

    # -- reporting -----------------------------------------------------------------------
    def counts(self) -> dict[JobStatus, int]:
        with self._lock:
            rows = self._db.execute("SELECT status, COUNT(*) FROM items GROUP BY status").fetchall()
        return {JobStatus(s): n for s, n in rows}

    def get(self, key: str) -> Item | None:
        with self._lock:
            r = self._db.execute("SELECT key, ref, status, attempts, next_try, created, updated, detail, outputs "
                                 "FROM items WHERE key=?", (key,)).fetchone()
        return _item(r) if r else None


def _item(r: tuple) -> Item:
    return Item(r[0], json.loads(r[1] or "{}"), JobStatus(r[2]), r[3], r[4], r[5], r[6], r[7], json.loads(r[8] or "[]"))
