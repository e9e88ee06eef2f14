"""Radiologists' reads: stored with the study, the reader (the token's name), the time and the model
version whose result they read; a change is a new row that replaces the last (history kept).

A read is written in one transaction with the study's ``read_label``; an import is one transaction
for the whole file, so nothing is half-imported.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cxrtriage.contract import Kind, ModelSpec
from cxrtriage.serve.schema import ReadSource

NORMAL_LABELS = ("normal", "no finding")


class ReadError(ValueError):
    """A read that cannot be stored (unknown label or finding); the message says which and what is allowed."""


@dataclass(frozen=True)
class ReadIn:
    """One reader's label for one study, checked against the labels of the model that scored it."""

    study_id: str
    label: str
    findings: tuple[str, ...] = ()
    agree: bool | None = None


def allowed_labels(spec: ModelSpec | None) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(labels, findings) a reader may give for a study scored by ``spec``: a single-label model's
    classes (and 'pneumonia' where the model tells bacterial from viral); for a multi-label model
    'no finding' or 'abnormal' with its findings."""
    if spec is None:
        return ("normal", "pneumonia"), ()
    if spec.kind is Kind.MULTILABEL:
        return ("no finding", "abnormal"), tuple(spec.classes)
    labels = tuple(spec.classes)
    if len(labels) > 2 and "pneumonia" not in labels:
        labels += ("pneumonia",)
    return labels, ()


def check_read(read: ReadIn, spec: ModelSpec | None) -> ReadIn:
    """The read with its label normalised, or :class:`ReadError`."""
    labels, findings = allowed_labels(spec)
    label = read.label.strip().lower()
    given = tuple(dict.fromkeys(f.strip() for f in read.findings if f.strip()))
    if findings and label not in labels and label:  # a multi-label read may give findings as its label
        given = tuple(dict.fromkeys(given + tuple(x.strip() for x in read.label.split(",") if x.strip())))
        label = "abnormal"
    if label not in labels:
        raise ReadError(f"unknown label '{read.label}' for study {read.study_id}: expected one of {', '.join(labels)}")
    unknown = [f for f in given if f not in findings]
    if unknown:
        raise ReadError(f"unknown finding(s) {', '.join(unknown)} for study {read.study_id}"
                        + (f": expected among {', '.join(findings)}" if findings else ": this model has none"))
    if label == "no finding" and given:
        raise ReadError(f"study {read.study_id}: 'no finding' with findings ({', '.join(given)})")
    return ReadIn(read.study_id, label, given, read.agree)


def abnormal(label: str) -> bool:
    """The reader's call: anything but normal / no finding."""
    return label not in NORMAL_LABELS


class ReadsMixin:
    """The reads half of :class:`cxrtriage.serve.store.Store` (needs its ``tx`` and ``conn``)."""

    def record_reads(self, reads: Sequence[ReadIn], reader: str, source: ReadSource) -> list[int]:
        """Store reads, all in one transaction (all or none); each replaces the study's current read.
        Returns the new read ids. Unknown studies raise KeyError (nothing stored)."""
        now = time.time()
        ids = []
        with self.tx() as c:  # type: ignore[attr-defined]
            for r in reads:
                ids.append(_insert_read(c, r, reader, source, now))
        return ids

    def reads_of(self, study_id: str) -> list[sqlite3.Row]:
        """Every read of a study, newest first (the first is the current one)."""
        return self.conn().execute("SELECT * FROM reads WHERE study_id = ? ORDER BY id DESC",  # type: ignore[attr-defined]
                                   (study_id,)).fetchall()

    def list_reads(self, limit: int = 100, offset: int = 0, current: bool = True) -> tuple[int, list[sqlite3.Row]]:
        where = "WHERE current = 1" if current else ""
        c = self.conn()  # type: ignore[attr-defined]
        total = c.execute(f"SELECT COUNT(*) FROM reads {where}").fetchone()[0]
        rows = c.execute(f"SELECT * FROM reads {where} ORDER BY id DESC LIMIT ? OFFSET ?", (limit, offset)).fetchall()
        return total, rows

    def read_results(self, since: float = 0.0) -> list[sqlite3.Row]:
        """Current reads with the study's latest result (for the monitor and calibration)."""
        return self.conn().execute(  # type: ignore[attr-defined]
            "SELECT r.*, s.sha256, s.format, s.patient_ref, s.name AS study_name, res.priority AS result_priority,"
            " res.model_name AS result_model, res.model_version AS result_version FROM reads r"
            " JOIN studies s ON s.id = r.study_id LEFT JOIN results res ON res.id = s.result_id"
            " WHERE r.current = 1 AND r.created_at >= ? ORDER BY r.id", (since,)).fetchall()

    def find_study_by_ref(self, ref: str) -> sqlite3.Row | None:
        """A study by its id, its sender's reference (SOP Instance UID), a PACS Study Instance UID
        it was opened from (its first image), or its file name."""
        c = self.conn()  # type: ignore[attr-defined]
        for sql in ("SELECT * FROM studies WHERE id = ?", "SELECT * FROM studies WHERE external_ref = ?",
                    "SELECT * FROM studies WHERE name = ? ORDER BY created_at"):
            row = c.execute(sql, (ref,)).fetchone()
            if row is not None:
                return row
        raw = self.meta_get("pacs_study:" + ref)  # type: ignore[attr-defined]
        if raw:
            for sid in json.loads(raw):
                row = c.execute("SELECT * FROM studies WHERE id = ?", (sid,)).fetchone()
                if row is not None:
                    return row
        return None


def _insert_read(c: sqlite3.Connection, r: ReadIn, reader: str, source: ReadSource, now: float) -> int:
    study = c.execute("SELECT result_id FROM studies WHERE id = ?", (r.study_id,)).fetchone()
    if study is None:
        raise KeyError(r.study_id)
    res = None
    if study["result_id"] is not None:
        res = c.execute("SELECT id, model_name, model_version, label, priority FROM results WHERE id = ?",
                        (study["result_id"],)).fetchone()
    prev = c.execute("SELECT id FROM reads WHERE study_id = ? AND current = 1 ORDER BY id DESC LIMIT 1",
                     (r.study_id,)).fetchone()
    if prev is not None:
        c.execute("UPDATE reads SET current = 0 WHERE study_id = ? AND current = 1", (r.study_id,))
    vals: dict[str, Any] = {
        "study_id": r.study_id, "label": r.label, "findings": json.dumps(list(r.findings)) if r.findings else None,
        "agree": None if r.agree is None else int(r.agree), "reader": reader, "source": ReadSource(source).value,
        "created_at": now, "result_id": res["id"] if res else None, "model_name": res["model_name"] if res else None,
        "model_version": res["model_version"] if res else None, "ai_label": res["label"] if res else None,
        "ai_priority": res["priority"] if res else None, "replaces": prev["id"] if prev else None, "current": 1}
    cur = c.execute(f"INSERT INTO reads ({', '.join(vals)}) VALUES ({', '.join('?' for _ in vals)})",
                    tuple(vals.values()))
    c.execute("UPDATE studies SET read_label = ? WHERE id = ?", (r.label, r.study_id))
    return int(cur.lastrowid or 0)


@dataclass(frozen=True)
class ImportRow:
    line: int
    ref: str
    label: str
    findings: tuple[str, ...] = ()


_REF_COLUMNS = ("study", "study_id", "sop_instance_uid", "study_instance_uid", "study_uid", "sop_uid", "file",
                "name", "id", "ref")


def parse_reads_csv(text: str) -> list[ImportRow]:
    """Rows of a reads CSV: a study column (study id, SOP or Study Instance UID, or file name), ``label``
    and optionally ``findings`` (separated by ``|`` or ``;``). Raises ReadError naming the line."""
    import csv
    import io

    reader = csv.DictReader(io.StringIO(text.lstrip("\ufeff")))
    cols = {c.strip().lower(): c for c in (reader.fieldnames or [])}
    ref_col = next((cols[c] for c in _REF_COLUMNS if c in cols), None)
    if ref_col is None or "label" not in cols:
        raise ReadError("a reads CSV needs a header with a study column (study, sop_instance_uid, "
                        "study_instance_uid or file) and 'label'")
    out = []
    for n, rec in enumerate(reader, 2):
        ref = (rec.get(ref_col) or "").strip()
        label = (rec.get(cols["label"]) or "").strip()
        if not ref and not label:
            continue
        if not ref or not label:
            raise ReadError(f"line {n}: both a study and a label are needed")
        raw = rec.get(cols["findings"]) or "" if "findings" in cols else ""
        findings = tuple(f.strip() for f in raw.replace(";", "|").split("|") if f.strip())
        out.append(ImportRow(n, ref.rsplit("/", 1)[-1] if ref_col == cols.get("file") else ref, label, findings))
    return out
