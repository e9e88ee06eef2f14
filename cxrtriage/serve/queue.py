"""The persisted work queue: jobs claimed, finished with their result, put back, or given up.

A job is claimed 'running' (its ``attempts`` counted), then ends 'done' with exactly one result
row (``results.job_id`` is unique) or 'failed'. A write that fails (disk full, read-only
folder) puts the job back to 'pending' with ``retries`` counted and the reason in ``error``.
When the process dies mid-batch, the batch's jobs come back marked ``solo``: each is then
claimed alone, so a file that crashes the process fails by itself, not with its batch.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from cxrtriage.contract import PRIORITY_ORDER, Prediction
from cxrtriage.serve.schema import JobState, StudyStatus

MAX_ATTEMPTS = 3
_PENDING, _RUNNING = JobState.PENDING.value, JobState.RUNNING.value


class QueueFullError(RuntimeError):
    """The queue holds as many jobs as the service allows; ``retry_after``: seconds worth waiting."""

    def __init__(self, message: str, retry_after: int = 5):
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True)
class Job:
    id: int
    study_id: str
    sha256: str
    kind: str
    created_at: float
    solo: bool = False


class QueueMixin:
    """The queue half of :class:`cxrtriage.serve.store.Store` (needs its ``tx`` and ``conn``)."""

    def enqueue(self, study_id: str, kind: str = "analyze", max_pending: int | None = None) -> int | None:
        """Queue another run for a study; returns the job id (None when the study is unknown). A job of
        the study still waiting is that run (requests merge into it); a new one beyond ``max_pending``
        jobs waiting or running raises :class:`QueueFullError`."""
        now = time.time()
        with self.tx() as c:
            if c.execute("SELECT 1 FROM studies WHERE id = ?", (study_id,)).fetchone() is None:
                return None
            waiting = c.execute("SELECT id FROM jobs WHERE study_id = ? AND state = ? ORDER BY id LIMIT 1",
                                (study_id, _PENDING)).fetchone()
            if waiting is not None:
                return waiting[0]
            check_room(c, max_pending)
            cur = c.execute("INSERT INTO jobs (study_id, kind, created_at) VALUES (?, ?, ?)", (study_id, kind, now))
            c.execute("UPDATE studies SET status = ? WHERE id = ?", (StudyStatus.QUEUED.value, study_id))
            return cur.lastrowid

    def waiting_job(self, study_id: str) -> int | None:
        """The id of a job of the study not yet started, if any."""
        row = self.conn().execute("SELECT id FROM jobs WHERE study_id = ? AND state = ? ORDER BY id LIMIT 1",
                                  (study_id, _PENDING)).fetchone()
        return None if row is None else row[0]

    def pending_count(self) -> int:
        return self.conn().execute("SELECT COUNT(*) FROM jobs WHERE state IN (?, ?)",
                                   (_PENDING, _RUNNING)).fetchone()[0]

    def recover(self) -> dict[str, int]:
        """After a restart: jobs that were running when the process died go back to the queue, one
        by one (``solo``), unless tried MAX_ATTEMPTS times (then they fail, so a file that crashes
        the process cannot stop the service nor take its batch with it)."""
        now = time.time()
        with self.tx() as c:
            poison = c.execute("SELECT id, study_id FROM jobs WHERE state = ? AND attempts >= ?",
                               (_RUNNING, MAX_ATTEMPTS)).fetchall()
            for job in poison:
                self._finish_failed(c, job["id"], job["study_id"], now,
                                    f"inference stopped {MAX_ATTEMPTS} times on this study; not retried")
            n = c.execute("UPDATE jobs SET state = ?, solo = 1 WHERE state = ?", (_PENDING, _RUNNING)).rowcount
            c.execute("UPDATE studies SET status = ? WHERE status = ? AND id IN (SELECT study_id FROM jobs"
                      " WHERE state = ?)", (StudyStatus.QUEUED.value, StudyStatus.RUNNING.value, _PENDING))
        return {"requeued": n, "failed": len(poison)}

    def claim(self, limit: int) -> list[Job]:
        """Take up to ``limit`` pending jobs, oldest first, marking them running. A ``solo`` job (one
        of a batch the process died on) is taken alone, before the others."""
        now = time.time()
        with self.tx() as c:
            rows = c.execute(
                "SELECT j.id, j.study_id, j.kind, j.created_at, j.solo, s.sha256 FROM jobs j"
                " JOIN studies s ON s.id = j.study_id WHERE j.state = ? ORDER BY j.solo DESC, j.id LIMIT ?",
                (_PENDING, limit)).fetchall()
            if not rows:
                return []
            if rows[0]["solo"]:
                rows = rows[:1]
            ids = [r["id"] for r in rows]
            marks = ",".join("?" for _ in ids)
            c.execute(f"UPDATE jobs SET state = ?, attempts = attempts + 1, started_at = ? WHERE id IN ({marks})",
                      (_RUNNING, now, *ids))
            c.execute(f"UPDATE studies SET status = ? WHERE id IN (SELECT study_id FROM jobs WHERE id IN ({marks}))",
                      (StudyStatus.RUNNING.value, *ids))
        return [Job(r["id"], r["study_id"], r["sha256"], r["kind"], r["created_at"], bool(r["solo"])) for r in rows]

    def finish(self, done: Iterable[tuple[Job, Prediction]]) -> list[tuple[Job, int]]:
        """Record results and close their jobs in one transaction. Returns (job, result id) of those
        written (a job whose study was deleted meanwhile is dropped)."""
        now = time.time()
        written = []
        with self.tx() as c:
            for job, p in done:
                state = c.execute("SELECT state FROM jobs WHERE id = ?", (job.id,)).fetchone()
                if state is None or state["state"] != _RUNNING:
                    continue
                rid = _insert_result(c, job, p, now)
                c.execute("UPDATE jobs SET state = ?, finished_at = ?, error = NULL WHERE id = ?",
                          (JobState.DONE.value, now, job.id))
                still = c.execute("SELECT 1 FROM jobs WHERE study_id = ? AND state IN (?, ?)",
                                  (job.study_id, _PENDING, _RUNNING)).fetchone()
                prio = p.priority.value
                c.execute("UPDATE studies SET result_id = ?, priority = ?, priority_rank = ?, score = ?, label = ?,"
                          " judged_by = ?, completed_at = ?, status = ? WHERE id = ?",
                          (rid, prio, PRIORITY_ORDER.get(prio, 9), p.score, p.label, judged_by(p), now,
                           (StudyStatus.QUEUED if still else StudyStatus.DONE).value, job.study_id))
                written.append((job, rid))
        return written

    def requeue(self, jobs: Iterable[Job], reason: str) -> None:
        """Put jobs back to pending after a failure that is not theirs (a write that failed):
        the attempt is not counted against them, ``retries`` is, and ``error`` keeps the reason."""
        with self.tx() as c:
            for job in jobs:
                c.execute("UPDATE jobs SET state = ?, attempts = MAX(0, attempts - 1), retries = retries + 1,"
                          " error = ? WHERE id = ? AND state = ?", (_PENDING, reason[:500], job.id, _RUNNING))
                c.execute("UPDATE studies SET status = ? WHERE id = ? AND status = ?",
                          (StudyStatus.QUEUED.value, job.study_id, StudyStatus.RUNNING.value))

    def reclaim(self, held: Iterable[int], reason: str = "reclaimed: left running by a failed write") -> int:
        """Put back to pending the 'running' jobs no worker holds (``held``: the jobs this
        process's worker is scoring). One service owns a data folder, so any other running job
        was left behind (for example when even recording its failure failed)."""
        held = set(held)
        rows = self.conn().execute("SELECT id, study_id, kind, created_at, solo FROM jobs WHERE state = ?",
                                   (_RUNNING,)).fetchall()
        stale = [Job(r["id"], r["study_id"], "", r["kind"], r["created_at"], bool(r["solo"]))
                 for r in rows if r["id"] not in held]
        if stale:
            self.requeue(stale, reason)
        return len(stale)

    def isolate(self, jobs: Iterable[Job], reason: str) -> None:
        """Put a batch that raised back to pending, each job to be claimed alone (attempts kept)."""
        with self.tx() as c:
            for job in jobs:
                c.execute("UPDATE jobs SET state = ?, solo = 1, error = ? WHERE id = ? AND state = ?",
                          (_PENDING, reason[:500], job.id, _RUNNING))
                c.execute("UPDATE studies SET status = ? WHERE id = ? AND status = ?",
                          (StudyStatus.QUEUED.value, job.study_id, StudyStatus.RUNNING.value))

    def fail(self, jobs: Iterable[Job], error: str) -> None:
        """Give jobs up after an unexpected failure (the study keeps its previous result, if any)."""
        now = time.time()
        with self.tx() as c:
            for job in jobs:
                self._finish_failed(c, job.id, job.study_id, now, error)

    @staticmethod
    def _finish_failed(c: sqlite3.Connection, job_id: int, study_id: str, now: float, error: str) -> None:
        c.execute("UPDATE jobs SET state = ?, finished_at = ?, error = ? WHERE id = ?",
                  (JobState.FAILED.value, now, error, job_id))
        has_result = c.execute("SELECT result_id FROM studies WHERE id = ?", (study_id,)).fetchone()
        status = StudyStatus.DONE if has_result is not None and has_result[0] is not None else StudyStatus.FAILED
        c.execute("UPDATE studies SET status = ? WHERE id = ?", (status.value, study_id))

    def job_state(self, job_id: int) -> str | None:
        row = self.conn().execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else row[0]

    def job_row(self, job_id: int) -> sqlite3.Row | None:
        return self.conn().execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()


def check_room(c: sqlite3.Connection, max_pending: int | None) -> None:
    """Raise :class:`QueueFullError` when ``max_pending`` jobs are waiting or running (inside a write
    transaction, so concurrent requests cannot pass the bound together)."""
    if max_pending is None:
        return
    n = c.execute("SELECT COUNT(*) FROM jobs WHERE state IN (?, ?)", (_PENDING, _RUNNING)).fetchone()[0]
    if n >= max_pending:
        raise QueueFullError(f"the queue is full ({n} studies waiting; the limit is {max_pending})")


def judged_by(p: Prediction) -> str | None:
    """The worklist's "model" cell: the model's name, and why it was chosen when routed."""
    name = p.model.get("name")
    if not name:
        return None
    return f"{name} ({p.model['routed_by']})" if p.model.get("routed_by") else name


def _insert_result(c: sqlite3.Connection, job: Job, p: Prediction, now: float) -> int:
    hm = p.heatmap
    cur = c.execute(
        "INSERT INTO results (study_id, job_id, created_at, model_name, model_version, routed_by, label, score,"
        " finding, rule, priority, threshold, probabilities, gate, timings, error, error_type, heatmap, heatmap_h,"
        " heatmap_w) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (job.study_id, job.id, now, p.model.get("name"), p.model.get("version"), p.model.get("routed_by"),
         p.label, p.score, p.finding, p.rule,
         p.priority.value, p.threshold, json.dumps(p.probabilities or {}), json.dumps(p.gate or {}),
         json.dumps(p.timings_ms or {}), p.error, p.error_type,
         None if hm is None else np.asarray(hm, dtype=np.float32).tobytes(),
         None if hm is None else int(hm.shape[0]), None if hm is None else int(hm.shape[1])))
    return cur.lastrowid


def prediction_from_row(row: sqlite3.Row) -> Prediction:
    """The :class:`Prediction` a stored result row holds (the one result type, read back)."""
    hm = None
    if row["heatmap"] is not None:
        hm = np.frombuffer(row["heatmap"], dtype=np.float32).reshape(row["heatmap_h"], row["heatmap_w"])
    return Prediction(
        source=row["study_id"], label=row["label"], score=row["score"],
        probabilities=json.loads(row["probabilities"] or "{}"), threshold=row["threshold"],
        priority=row["priority"], gate=json.loads(row["gate"] or "{}"),
        model={"name": row["model_name"], "version": row["model_version"],
               **({"routed_by": row["routed_by"]} if row["routed_by"] else {})},
        timings_ms=json.loads(row["timings"] or "{}"), error=row["error"], error_type=row["error_type"], heatmap=hm,
        finding=row["finding"], rule=row["rule"])
