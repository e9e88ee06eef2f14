"""Bulk triage of whole archives: one Parquet row per image, resumable, on Ray Data or locally.

Sources
-------
* a folder: every image file below it (DICOM, JPEG, PNG, ... and files without a suffix,
  as DICOM archives often store them);
* a CSV of paths: the ``path`` column (else the first column); relative paths are taken
  from the CSV's folder;
* a DICOMweb server (``http://`` or ``https://``): the CR and DX instances QIDO-RS lists,
  fetched by the workers with WADO-RS.

Engines
-------
``ray``: Ray Data; a pool of actors, each holding one :class:`~cxrtriage.infer.Engine`
(``map_batches`` with a callable class), on a local Ray or an existing cluster (``address``).
The model files travel with the actors, so cluster nodes need the package but not the model.
``local``: the same per-batch work in this process (no Ray), e.g. as a baseline.

Results
-------
``out`` (e.g. ``results.parquet``) is a Parquet dataset: a folder of part files, each written
whole under a temporary name and renamed, so a stopped job leaves only complete parts. Read it
with ``pandas.read_parquet(out)``, ``pyarrow.parquet.read_table(out)``, DuckDB
(``out/*.parquet``), Spark or ``ray.data.read_parquet``. A rerun skips every path that already
has a row (resume); a bad file is a row with ``error`` set, never a failed job.

Ray and pyarrow are the ``ray`` extra; importing this module needs neither.
"""

from __future__ import annotations

import csv
import datetime as _dt
import os
import re
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cxrtriage.contract import ModelSpec
from cxrtriage.infer.bundle import load_spec, resolve_model
from cxrtriage.infer.gate import gate_path

DICOMWEB_PREFIXES = ("http://", "https://")
#: Columns of every result row, before the per-class probabilities ``p_<class>``.
BASE_COLUMNS = ("path", "sop_instance_uid", "study_instance_uid", "series_instance_uid", "label", "score",
                "priority", "threshold", "gate_accepted", "gate_reason", "gate_distance", "model_name",
                "model_version", "modality", "view_position", "error", "error_type", "scored_at")
_FLOAT = {"score", "threshold", "gate_distance"}


class BulkError(RuntimeError):
    """The job cannot start (bad source, results made by another model, Ray missing, ...)."""


# -- sources ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class DicomwebSource:
    """A DICOMweb server to read from (``url`` + ``root``, as the PACS commands take it)."""

    url: str
    user: str | None = None
    password: str | None = None
    token: str | None = None
    root: str = "/dicom-web"
    modalities: tuple[str, ...] = ("CR", "DX")

    def client(self):
        from cxrtriage.pacs.dicomweb import dicomweb_client

        return dicomweb_client(self.url, self.user, self.password, self.token, self.root)

    def to_kwargs(self) -> dict[str, Any]:
        return {"url": self.url, "user": self.user, "password": self.password, "token": self.token,
                "root": self.root, "modalities": tuple(self.modalities)}


def is_dicomweb(source: str | Path) -> bool:
    return str(source).startswith(DICOMWEB_PREFIXES)


def _image_files(folder: Path) -> list[str]:
    from cxrtriage.io import IMAGE_SUFFIXES

    return sorted(str(f) for f in folder.rglob("*")
                  if f.is_file() and not f.name.startswith(".") and (f.suffix.lower() in IMAGE_SUFFIXES or not f.suffix))


def _csv_paths(path: Path) -> list[str]:
    with path.open(newline="") as fh:
        rows = [r for r in csv.reader(fh) if r and any(c.strip() for c in r)]
    if not rows:
        return []
    header = [c.strip().lower() for c in rows[0]]
    col, body = (header.index("path"), rows[1:]) if "path" in header else (0, rows)
    out = []
    for r in body:
        p = Path(r[col].strip()).expanduser()
        out.append(str(p if p.is_absolute() else (path.parent / p)))
    return out


def list_source(source: str | Path, dicomweb: DicomwebSource | None = None) -> list[dict[str, str | None]]:
    """The items to triage: ``{"path", "sop_instance_uid", "study_instance_uid", "series_instance_uid"}``.

    For DICOMweb, ``path`` is the instance's WADO-RS URL (its stable key)."""
    if is_dicomweb(source):
        from cxrtriage.pacs.dicomweb import qido_instances

        dw = dicomweb or DicomwebSource(str(source))
        client = dw.client()
        base = client.base_url.rstrip("/")
        return [{"path": f"{base}/studies/{r.study_uid}/series/{r.series_uid}/instances/{r.sop_uid}",
                 "sop_instance_uid": r.sop_uid, "study_instance_uid": r.study_uid,
                 "series_instance_uid": r.series_uid} for r in qido_instances(client, tuple(dw.modalities))]
    p = Path(source).expanduser()
    if p.is_dir():
        paths = _image_files(p)
    elif p.is_file() and p.suffix.lower() in (".csv", ".txt"):
        paths = _csv_paths(p)
    elif p.exists():
        raise BulkError(f"{p}: give a folder, a CSV of paths or a DICOMweb URL (http://...)")
    else:
        raise BulkError(f"{p}: no such folder or file")
    seen: set[str] = set()
    items = []
    for path in paths:
        if path not in seen:
            seen.add(path)
            items.append({"path": path, "sop_instance_uid": None, "study_instance_uid": None,
                          "series_instance_uid": None})
    return items


# -- result rows -----------------------------------------------------------------------------


def class_column(name: str) -> str:
    return "p_" + (re.sub(r"[^0-9a-z]+", "_", name.lower()).strip("_") or "class")


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
            fields += [pa.field(class_column(c), pa.float64()) for c in classes]
    return pa.schema(fields)


def prediction_row(item: dict[str, Any], pred, classes: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """One result row from a source item and its :class:`~cxrtriage.infer.Prediction`."""
    gate = pred.gate or {}
    meta = pred.meta or {}
    row: dict[str, Any] = {
        "path": item["path"],
        "sop_instance_uid": item.get("sop_instance_uid") or meta.get("sop_instance_uid"),
        "study_instance_uid": item.get("study_instance_uid"),
        "series_instance_uid": item.get("series_instance_uid"),
        "label": pred.label, "score": pred.score, "priority": pred.priority, "threshold": pred.threshold,
        "gate_accepted": gate.get("accepted"), "gate_reason": gate.get("reason"),
        "gate_distance": gate.get("distance"),
        "model_name": (pred.model or {}).get("name"), "model_version": (pred.model or {}).get("version"),
        "modality": meta.get("modality"), "view_position": meta.get("view_position"),
        "error": pred.error, "error_type": pred.error_type,
        "scored_at": _dt.datetime.now(_dt.timezone.utc),
    }
    for c in classes:
        row[class_column(c)] = (pred.probabilities or {}).get(c)
    return row


def _table(rows: list[dict[str, Any]], schema):
    import pyarrow as pa

    return pa.Table.from_pylist(rows, schema=schema)


# -- the per-batch work (one instance per Ray actor) ------------------------------------------


def model_files(model: str | Path | None) -> dict[str, bytes]:
    """The model bundle (ONNX, sidecar, quality gate) as ``{file name: bytes}``, to ship to workers."""
    onnx = resolve_model(model)
    files = [onnx, onnx.with_suffix(".json"), gate_path(onnx)]
    return {f.name: f.read_bytes() for f in files if f.is_file()}


class Triager:
    """Triage a batch of source items into result rows with one :class:`~cxrtriage.infer.Engine`.

    Ray Data builds one per actor (``map_batches(Triager, fn_constructor_kwargs=...)``);
    ``model`` is a path, or the bundle as bytes from :func:`model_files`. Never raises for a bad
    image: every item comes back as exactly one row, with ``error`` set when it failed."""

    def __init__(self, model: str | Path | dict[str, bytes] | None = None, threads: int = 1, gate: bool = True,
                 dicomweb: dict[str, Any] | None = None, batch_size: int = 16, fetch_retries: int = 2):
        from cxrtriage.infer import Engine

        self._tmp = None
        if isinstance(model, dict):  # shipped bytes: materialise the bundle in a private folder
            self._tmp = tempfile.TemporaryDirectory(prefix="cxr-model-")
            for name, data in model.items():
                (Path(self._tmp.name) / name).write_bytes(data)
            model = next(Path(self._tmp.name) / n for n in model if n.endswith(".onnx"))
        self.engine = Engine(model, threads=threads, gate=gate)
        self.classes = tuple(self.engine.spec.classes)
        self.schema = result_schema(self.classes)
        self.batch_size = batch_size
        self.fetch_retries = fetch_retries
        self.dicomweb = DicomwebSource(**dicomweb) if dicomweb else None
        self._client = None

    # Ray Data hands a batch as a dict of columns (numpy arrays) or an Arrow table.
    def __call__(self, batch) -> Any:
        return _table(self.rows(_items(batch)), self.schema)

    def rows(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if self.dicomweb is not None:
            preds = [self._predict_dicomweb(it) for it in items]
        else:
            preds = self._predict_files([it["path"] for it in items])
        return [prediction_row(it, p, self.classes) for it, p in zip(items, preds)]

    def _error(self, source: str, exc: BaseException):
        from cxrtriage.infer import Prediction

        return Prediction(source=source, model=self.engine.model_ref, error=str(exc) or type(exc).__name__,
                          error_type=type(exc).__name__)

    def _predict_files(self, paths: list[str]) -> list:
        try:
            return self.engine.predict_files(paths, batch_size=self.batch_size)
        except Exception:  # an unexpected failure in the batch: find the culprit file by file
            out = []
            for p in paths:
                try:
                    out.append(self.engine.predict_files([p], batch_size=1)[0])
                except Exception as exc:  # noqa: BLE001 - a bad file is a row, never a failed job
                    out.append(self._error(p, exc))
            return out

    def _predict_dicomweb(self, item: dict[str, Any]):
        from cxrtriage.pacs.dicomweb import InstanceRef, wado_instance
        from cxrtriage.pacs.orthanc import PacsUnavailable

        ref = InstanceRef(item["study_instance_uid"], item["series_instance_uid"], item["sop_instance_uid"])
        for attempt in range(self.fetch_retries + 1):
            try:
                if self._client is None:
                    self._client = self.dicomweb.client()
                data = wado_instance(self._client, ref)
                break
            except PacsUnavailable as exc:  # network trouble: back off and try again
                self._client = None
                if attempt == self.fetch_retries:
                    return self._error(item["path"], exc)
                time.sleep(0.5 * 2 ** attempt)
            except Exception as exc:  # noqa: BLE001 - refused by the PACS, not found, ...
                return self._error(item["path"], exc)
        try:
            return self.engine.predict_bytes(data, name=item["path"], heatmap=False)
        except Exception as exc:  # noqa: BLE001
            return self._error(item["path"], exc)


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


# -- the results folder ----------------------------------------------------------------------


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

    def scored(self, info: ModelSpec | None = None) -> set[str]:
        """Paths already holding a row. Refuses results made by another model version."""
        import pyarrow.parquet as pq

        done: set[str] = set()
        for part in self.parts():
            t = pq.read_table(part, columns=["path", "model_name", "model_version"])
            if info is not None and t.num_rows:
                versions = set(zip(t.column("model_name").to_pylist(), t.column("model_version").to_pylist()))
                other = {v for v in versions if v != (info.name, info.version)}
                if other:
                    name, version = sorted(other, key=str)[0]
                    raise BulkError(f"{self.out} holds results of model {name} {version}, not "
                                    f"{info.name} {info.version}: write to another --out")
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

    def read(self):
        import pyarrow.parquet as pq

        return pq.read_table(self.out)


# -- running a job ---------------------------------------------------------------------------


@dataclass
class BulkSummary:
    out: Path
    listed: int
    skipped: int
    scored: int
    errors: int
    refused: int
    seconds: float
    workers: int
    engine: str

    @property
    def images_per_s(self) -> float:
        return self.scored / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"out": str(self.out), "listed": self.listed, "skipped": self.skipped, "scored": self.scored,
                "errors": self.errors, "refused": self.refused, "seconds": round(self.seconds, 3),
                "images_per_s": round(self.images_per_s, 2), "workers": self.workers, "engine": self.engine}


def _require_pyarrow() -> None:
    try:
        import pyarrow  # noqa: F401
    except ImportError as exc:
        raise BulkError("bulk triage writes Parquet: pip install 'cxr-triage[ray]' (Ray and pyarrow)") from exc


def _local_batches(todo: list[dict], triager: Triager, chunk: int) -> Iterator[Any]:
    for s in range(0, len(todo), chunk):
        yield _table(triager.rows(todo[s:s + chunk]), triager.schema)


def _ray_batches(todo: list[dict], model: str | Path | None, workers: int | None, threads: int, gate: bool,
                 dicomweb: DicomwebSource | None, batch_size: int, address: str | None,
                 progress: bool) -> tuple[Iterator[Any], int, Callable[[], None]]:
    try:
        import ray
        import ray.data
    except ImportError as exc:
        raise BulkError("--engine ray needs Ray: pip install 'cxr-triage[ray]'") from exc
    started = False
    if not ray.is_initialized():
        kw: dict[str, Any] = dict(include_dashboard=False, log_to_driver=False, logging_level="WARNING")
        if address:
            ray.init(address=address, **kw)
        else:
            ray.init(num_cpus=(workers or os.cpu_count() or 1) * threads, **kw)
        started = True
    cpus = int(ray.cluster_resources().get("CPU", 1))
    blocks = max(1, min(20_000, -(-len(todo) // batch_size)))  # about one block per batch: even spreading
    size = min(workers or max(1, cpus // threads), blocks)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = progress
    ctx.execution_options.preserve_order = False
    ds = ray.data.from_items(todo, override_num_blocks=blocks)
    ds = ds.map_batches(
        Triager,
        fn_constructor_kwargs={"model": model_files(model), "threads": threads, "gate": gate,
                               "dicomweb": dicomweb.to_kwargs() if dicomweb else None, "batch_size": batch_size},
        batch_size=batch_size, batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=size),
        num_cpus=threads, zero_copy_batch=True,
    )

    def done() -> None:
        if started:
            ray.shutdown()

    return ds.iter_batches(batch_size=None, batch_format="pyarrow"), size, done


def bulk_triage(source: str | Path, out: str | Path, model: str | Path | None = None, engine: str = "ray",
                address: str | None = None, workers: int | None = None, threads: int = 1, gate: bool = True,
                batch_size: int = 16, dicomweb: DicomwebSource | None = None, flush_rows: int = 512,
                flush_s: float = 10.0, progress: bool = False, on_start: Callable[[int, int], None] | None = None,
                on_rows: Callable[[int], None] | None = None) -> BulkSummary:
    """Triage every image of ``source`` into the Parquet dataset ``out``; see the module docs.

    ``workers``: Ray actors (default: the cluster's CPUs / ``threads``); ``threads``: ONNX
    Runtime threads per worker (``engine='local'``: of the single engine). Rows reach ``out``
    in parts of about ``flush_rows`` rows, or every ``flush_s`` seconds, whichever is first.
    ``on_start(listed, to_score)`` and ``on_rows(n)`` report progress."""
    if engine not in ("ray", "local"):
        raise BulkError(f"unknown engine {engine!r} (ray, local)")
    _require_pyarrow()
    if is_dicomweb(source) and dicomweb is None:
        dicomweb = DicomwebSource(str(source))
    info = load_spec(model)
    store = ResultStore(Path(out))
    items = list_source(source, dicomweb)
    done = store.scored(info)
    todo = [it for it in items if it["path"] not in done]
    if on_start:
        on_start(len(items), len(todo))
    t0 = time.perf_counter()
    scored = errors = refused = 0
    n_workers = workers or 1
    if todo:
        if engine == "local":
            triager = Triager(model, threads=threads, gate=gate, dicomweb=dicomweb.to_kwargs() if dicomweb else None,
                              batch_size=batch_size)
            batches, finish = _local_batches(todo, triager, batch_size), (lambda: None)
        else:
            batches, n_workers, finish = _ray_batches(todo, model, workers, threads, gate, dicomweb, batch_size,
                                                      address, progress)
        pending: list[Any] = []
        rows_pending, last = 0, time.monotonic()
        try:
            for table in batches:
                pending.append(table)
                rows_pending += table.num_rows
                col = table.column("error").to_pylist()
                errors += sum(e is not None for e in col)
                refused += table.column("priority").to_pylist().count("refused")
                if on_rows:
                    on_rows(table.num_rows)
                if rows_pending >= flush_rows or time.monotonic() - last >= flush_s:
                    scored += _flush(store, pending)
                    pending, rows_pending, last = [], 0, time.monotonic()
        finally:  # rows already computed are kept, even when the job is interrupted
            scored += _flush(store, pending)
            finish()
    return BulkSummary(Path(out), len(items), len(items) - len(todo), scored, errors, refused,
                       time.perf_counter() - t0, n_workers, engine)


def _flush(store: ResultStore, tables: list[Any]) -> int:
    import pyarrow as pa

    if not tables:
        return 0
    table = pa.concat_tables(tables)
    store.write(table)
    return table.num_rows
