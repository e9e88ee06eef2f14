"""The results of a bulk job: one row per image, written as a folder of Parquet parts.

Each part is written whole under a temporary name and renamed, so a stopped job leaves only
complete parts; a rerun skips every path that already has a row.
"""

from __future__ import annotations

import datetime as _dt
import os
import re
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cxrtriage.bulk.sources import BulkError
from cxrtriage.contract import Prediction

#: Columns of every result row, before the per-class probabilities ``p_<class>``.
BASE_COLUMNS = ("path", "sop_instance_uid", "study_instance_uid", "series_instance_uid", "label", "score",
                "priority", "threshold", "gate_accepted", "gate_reason", "gate_distance", "model_name",
                "model_version", "routed_by", "modality", "view_position", "error", "error_type", "scored_at")
_FLOAT = {"score", "threshold", "gate_distance"}


def class_column(name: str) -> str:
    return "p_" + (re.sub(r"[^0-9a-z]+", "_", name.lower()).strip("_") or "class")


def class_columns(classes: tuple[str, ...] | list[str]) -> list[str]:
    """One probability column per class name; routed models' classes of the same name (a pediatric
    "pneumonia", an adult "Pneumonia") share one, filled by whichever model judged the film."""
    return list(dict.fromkeys(class_column(c) for c in classes))


def result_schema(classes: tuple[str, ...] | list[str]):
    """The Arrow schema of the result rows for a model with ``classes``."""
    import pyarrow as pa

    fields = []
    for name in BASE_COLUMNS:
        if name in _FLOAT:
            t = pa.float64()
        elif name == "gate_accepted":
            t = pa.bool_()
        elif name == "scored_at":
            t = pa.timestamp("ms", tz="UTC")
        else:
            t = pa.string()
        fields.append(pa.field(name, t))
        if name == "score":
            fields += [pa.field(col, pa.float64()) for col in class_columns(classes)]
    return pa.schema(fields)


def prediction_row(item: dict[str, Any], pred: Prediction, classes: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """One result row from a source item and its :class:`~cxrtriage.contract.Prediction`."""
    gate = pred.gate or {}
    meta = pred.meta or {}
    row: dict[str, Any] = {
        "path": item["path"],
        "sop_instance_uid": item.get("sop_instance_uid") or meta.get("sop_instance_uid"),
        "study_instance_uid": item.get("study_instance_uid"),
        "series_instance_uid": item.get("series_instance_uid"),
        "label": pred.label, "score": pred.score, "priority": pred.priority.value, "threshold": pred.threshold,
        "gate_accepted": gate.get("accepted"), "gate_reason": gate.get("reason"),
        "gate_distance": gate.get("distance"),
        "model_name": (pred.model or {}).get("name"), "model_version": (pred.model or {}).get("version"),
        "routed_by": (pred.model or {}).get("routed_by"),
        "modality": meta.get("modality"), "view_position": meta.get("view_position"),
        "error": pred.error, "error_type": pred.error_type,
        "scored_at": _dt.datetime.now(_dt.timezone.utc),
    }
    row.update(dict.fromkeys(class_columns(classes)))
    for c, p in (pred.probabilities or {}).items():
        if class_column(c) in row:
            row[class_column(c)] = p
    return row


def rows_table(rows: list[dict[str, Any]], schema):
    import pyarrow as pa

    return pa.Table.from_pylist(rows, schema=schema)


@dataclass
class ResultStore:
    """A folder of Parquet parts; :meth:`write` adds one part atomically."""

    out: Path
    run_id: str = field(default_factory=lambda: time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6])
    _seq: int = 0

    def __post_init__(self):
        self.out = Path(self.out)
        if self.out.exists() and not self.out.is_dir():
            raise BulkError(f"{self.out} exists and is not a folder (results are a folder of Parquet parts)")

    def parts(self) -> list[Path]:
        return sorted(self.out.glob("*.parquet")) if self.out.is_dir() else []

    def scored(self, models: set[tuple[str, str]] | None = None) -> set[str]:
        """Paths already holding a row. Refuses results made by a model (name, version) not in ``models``."""
        import pyarrow.parquet as pq

        done: set[str] = set()
        for part in self.parts():
            t = pq.read_table(part, columns=["path", "model_name", "model_version"])
            if models is not None and t.num_rows:
                versions = set(zip(t.column("model_name").to_pylist(), t.column("model_version").to_pylist()))
                other = versions - models
                if other:
                    name, version = sorted(other, key=str)[0]
                    wanted = " or ".join(f"{n} {v}" for n, v in sorted(models))
                    raise BulkError(f"{self.out} holds results of model {name} {version}, not "
                                    f"{wanted}: write to another --out")
            done.update(t.column("path").to_pylist())
        return done

    def write(self, table) -> Path | None:
        import pyarrow.parquet as pq

        if table.num_rows == 0:
            return None
        self.out.mkdir(parents=True, exist_ok=True)
        self._seq += 1
        final = self.out / f"part-{self.run_id}-{self._seq:05d}.parquet"
        tmp = self.out / f".{final.name}.tmp"
        pq.write_table(table, tmp)
        os.replace(tmp, final)
        return final

