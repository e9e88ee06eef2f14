"""The database schema of the service and the enums its rows hold (validated where they are built)."""

from __future__ import annotations

import sqlite3

from cxrtriage.contract import StrEnum

SCHEMA_VERSION = 4


class Source(StrEnum):
    """Where a study came from."""

    UPLOAD = "upload"
    PACS = "pacs"
    SAMPLE = "sample"


class StudyStatus(StrEnum):
    """Where a study stands: waiting, being scored, scored, or given up."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class JobState(StrEnum):
    """Where one model run of a study stands in the persisted queue."""

    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


SOURCES = tuple(s.value for s in Source)


class ReadSource(StrEnum):
    """How a reader's label reached the service."""

    VIEWER = "viewer"
    API = "api"
    IMPORT = "import"

SCHEMA = """
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
    judged_by     TEXT,
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
    retries     INTEGER NOT NULL DEFAULT 0,
    solo        INTEGER NOT NULL DEFAULT 0,
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
    routed_by     TEXT,
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
CREATE TABLE IF NOT EXISTS reads (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    study_id      TEXT NOT NULL REFERENCES studies (id) ON DELETE CASCADE,
    label         TEXT NOT NULL,
    findings      TEXT,
    agree         INTEGER,
    reader        TEXT NOT NULL,
    source        TEXT NOT NULL DEFAULT 'api',
    created_at    REAL NOT NULL,
    result_id     INTEGER,
    model_name    TEXT,
    model_version TEXT,
    ai_label      TEXT,
    ai_priority   TEXT,
    replaces      INTEGER,
    current       INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX IF NOT EXISTS reads_by_study ON reads (study_id, id);
CREATE INDEX IF NOT EXISTS reads_current ON reads (current, id);
CREATE TABLE IF NOT EXISTS alarms (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    model_name    TEXT NOT NULL,
    model_version TEXT NOT NULL,
    kind          TEXT NOT NULL,
    started_at    REAL NOT NULL,
    ended_at      REAL,
    detail        TEXT
);
"""

# Columns added since the first schema: (table, column, definition).
_ADDED = (("jobs", "retries", "INTEGER NOT NULL DEFAULT 0"), ("jobs", "solo", "INTEGER NOT NULL DEFAULT 0"),
          ("studies", "judged_by", "TEXT"), ("results", "routed_by", "TEXT"), ("results", "finding", "TEXT"),
          ("results", "rule", "TEXT"), ("studies", "read_label", "TEXT"))


def migrate(c: sqlite3.Connection) -> None:
    """Create what is missing; add the columns a database of an earlier version lacks."""
    c.executescript(SCHEMA)
    for table, column, definition in _ADDED:
        have = {r[1] for r in c.execute(f"PRAGMA table_info({table})")}
        if column not in have:
            c.execute(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")
    c.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
