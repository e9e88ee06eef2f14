"""A calibration sample from a service's data folder: the studies readers have labelled (their
current read), each with its stored file and pseudonymous patient reference, written as the
``path,label,patient_id`` CSV :func:`cxrtriage.calibrate.calibrate` takes. The database is only
read (a running service may hold the folder)."""

from __future__ import annotations

import csv
import sqlite3
from collections import Counter
from pathlib import Path

from cxrtriage.data import get_task
from cxrtriage.infer import bundled_models, load_spec

DB_NAME = "cxr.sqlite3"  # the service's database in its data folder (cxrtriage.serve.store)
_NORMAL_READS = ("normal", "no finding")


class ServiceSampleError(ValueError):
    """The data folder has no usable reads; the message says why."""


def _rows(data_dir: Path) -> list[sqlite3.Row]:
    db = data_dir / DB_NAME
    if not db.is_file():
        raise ServiceSampleError(f"{data_dir} is not a service data folder (no {DB_NAME})")
    c = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    c.row_factory = sqlite3.Row
    try:
        return c.execute(
            "SELECT r.study_id, r.label, r.findings, s.sha256, s.patient_ref, res.model_name FROM reads r"
            " JOIN studies s ON s.id = r.study_id LEFT JOIN results res ON res.id = s.result_id"
            " WHERE r.current = 1 ORDER BY r.id").fetchall()
    except sqlite3.OperationalError as exc:
        raise ServiceSampleError(f"{data_dir}: the service's database has no reads ({exc}); it needs a service "
                                 "of this version") from None
    finally:
        c.close()


def _task_label(label: str, classes: tuple[str, ...]) -> str | None:
    """The reader's label in the task's classes (bacterial / viral read as pneumonia for a two-class task)."""
    if label in classes:
        return label
    if label in _NORMAL_READS:
        return classes[0] if classes[0] in _NORMAL_READS else None
    if "pneumonia" in classes and label in ("bacterial", "viral", "pneumonia"):
        return "pneumonia"
    return None


def service_sample(data_dir: str | Path, out_csv: str | Path, model: str | None = None) -> tuple[str, dict]:
    """Write the sample CSV of a service's reads; returns (model to calibrate, facts). Without
    ``model``, the bundled model that scored most of the read studies. Only the studies that model
    (any version of it) scored are taken; reads the task has no class for are counted, not taken."""
    data_dir = Path(data_dir)
    rows = _rows(data_dir)
    if not rows:
        raise ServiceSampleError(f"{data_dir}: no study has a reader's label yet")
    if model is None:
        named = Counter(r["model_name"] for r in rows if r["model_name"] in bundled_models())
        if not named:
            raise ServiceSampleError(f"{data_dir}: no read study was scored by a bundled model; name one with --model")
        model = named.most_common(1)[0][0]
    spec = load_spec(model)
    task = get_task(spec.task)
    kept, skipped = [], Counter()
    for r in rows:
        if r["model_name"] != spec.name:
            skipped["scored by another model"] += 1
            continue
        label = _task_label(r["label"], tuple(task.classes))
        path = data_dir / "objects" / r["sha256"][:2] / r["sha256"][2:]
        if label is None:
            skipped[f"label '{r['label']}' not in {spec.task}"] += 1
        elif not path.is_file():
            skipped["file missing"] += 1
        else:
            kept.append((str(path), label, r["patient_ref"] or r["study_id"]))
    out_csv = Path(out_csv)
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    with out_csv.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "patient_id"])
        w.writerows(kept)
    facts = {"data_dir": str(data_dir.resolve()), "reads": len(rows), "taken": len(kept),
             "patients": len({k[2] for k in kept}), "skipped": dict(skipped),
             "per_class": dict(Counter(k[1] for k in kept))}
    return model, facts
