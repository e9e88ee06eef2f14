"""The per-batch work of a bulk job: source items in, result rows out, with one engine (or, with no
model named, the router over the bundled models).

Ray Data builds one :class:`BulkScorer` per actor; the local engine uses one in-process.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from cxrtriage.bulk.results import prediction_row, result_schema, rows_table
from cxrtriage.bulk.sources import DicomwebArchive
from cxrtriage.contract import Prediction
from cxrtriage.infer import Input, Predictor, load_model, resolve_model
from cxrtriage.infer.gate import gate_path


def model_files(model: str | Path | None) -> dict[str, bytes]:
    """The model bundle (ONNX, sidecar, quality gate) as ``{file name: bytes}``, to ship to workers."""
    onnx = resolve_model(model)
    files = [onnx, onnx.with_suffix(".json"), gate_path(onnx)]
    return {f.name: f.read_bytes() for f in files if f.is_file()}


class BulkScorer:
    """Triage a batch of source items into result rows with one :class:`~cxrtriage.infer.Engine`, or
    with the :class:`~cxrtriage.infer.Router` when no model is named (and the gates are on).

    Ray Data builds one per actor (``map_batches(BulkScorer, fn_constructor_kwargs=...)``);
    ``model`` is a path, a bundled name, the bundle as bytes from :func:`model_files`, or None. Never
    raises for a bad image: every item comes back as exactly one row, with ``error`` set when it failed."""

    def __init__(self, model: str | Path | dict[str, bytes] | None = None, threads: int = 1, gate: bool = True,
                 dicomweb: DicomwebArchive | None = None, batch_size: int = 16, fetch_retries: int = 2):
        self._tmp = None
        if isinstance(model, dict):  # shipped bytes: materialise the bundle in a private folder
            self._tmp = tempfile.TemporaryDirectory(prefix="cxr-model-")
            for name, data in model.items():
                (Path(self._tmp.name) / name).write_bytes(data)
            model = next(Path(self._tmp.name) / n for n in model if n.endswith(".onnx"))
        self.engine: Predictor = load_model(model, threads=threads, gate=gate)
        self.classes = self.engine.classes
        self.schema = result_schema(self.classes)
        self.batch_size = batch_size
        self.fetch_retries = fetch_retries
        self.dicomweb = dicomweb
        self._client = None

    # Ray Data hands a batch as a dict of columns (numpy arrays) or an Arrow table.
    def __call__(self, batch) -> Any:
        return rows_table(self.rows(_items(batch)), self.schema)

    def rows(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if self.dicomweb is not None:
            preds = self._predict_dicomweb(items)
        else:
            preds = self._predict([it["path"] for it in items], None)
        return [prediction_row(it, p, self.classes) for it, p in zip(items, preds)]

    def _failed(self, source: str, exc: BaseException) -> Prediction:
        pred = Prediction.failed(source, exc, self.engine.model_ref)
        pred.error = pred.error or pred.error_type
        return pred

    def _predict(self, items: list[Input], names: list[str] | None) -> list[Prediction]:
        """The engine's pipeline over ``items``; an unexpected failure is found item by item."""
        try:
            return self.engine.predict_batch(items, names, heatmap=False, batch_size=self.batch_size)
        except Exception:  # noqa: BLE001 - a bad file is a row, never a failed job
            out = []
            for i, item in enumerate(items):
                name = names[i] if names else None
                try:
                    out.append(self.engine.predict_batch([item], [name], heatmap=False)[0])
                except Exception as exc:  # noqa: BLE001
                    out.append(self._failed(name or str(item), exc))
            return out

    def _predict_dicomweb(self, items: list[dict[str, Any]]) -> list[Prediction]:
        fetched = [self._fetch(it) for it in items]
        ok = [(it["path"], data) for it, data in zip(items, fetched) if isinstance(data, bytes)]
        scored = iter(self._predict([data for _, data in ok], [path for path, _ in ok]) if ok else [])
        return [next(scored) if isinstance(data, bytes) else data for data in fetched]

    def _fetch(self, item: dict[str, Any]) -> bytes | Prediction:
        """The instance's bytes (WADO-RS), or the failure as a prediction; network trouble is retried."""
        from cxrtriage.pacs.dicomweb import InstanceRef, wado_instance
        from cxrtriage.pacs.orthanc import PacsUnavailable

        assert self.dicomweb is not None
        ref = InstanceRef(item["study_instance_uid"], item["series_instance_uid"], item["sop_instance_uid"])
        for attempt in range(self.fetch_retries + 1):
            try:
                if self._client is None:
                    self._client = self.dicomweb.client()
                return wado_instance(self._client, ref)
            except PacsUnavailable as exc:  # network trouble: back off and try again
                self._client = None
                if attempt == self.fetch_retries:
                    return self._failed(item["path"], exc)
                time.sleep(0.5 * 2 ** attempt)
            except Exception as exc:  # noqa: BLE001 - refused by the PACS, not found, ...
                return self._failed(item["path"], exc)
        raise AssertionError("unreachable")


def _items(batch) -> list[dict[str, Any]]:
    if hasattr(batch, "to_pylist"):  # pyarrow.Table
        return batch.to_pylist()
    if hasattr(batch, "to_dict") and hasattr(batch, "columns"):  # pandas.DataFrame
        return batch.to_dict("records")
    cols = list(batch)
    n = len(batch[cols[0]]) if cols else 0
    return [{c: _plain(batch[c][i]) for c in cols} for i in range(n)]


def _plain(v: Any) -> Any:
    if v is None:
        return None
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and v != v:  # NaN stands for a missing value in numpy batches
        return None
    return v
