"""Running a bulk job: list the source, skip what is already scored, triage the rest on Ray
Data (a pool of actors, each holding one engine, or the router when no model is named) or in
this process, and write the rows."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cxrtriage.bulk.results import ResultStore, rows_table
from cxrtriage.bulk.scorer import BulkScorer, model_files
from cxrtriage.bulk.sources import BulkError, DicomwebArchive, is_dicomweb, list_source
from cxrtriage.infer import load_spec, routed_identities
from cxrtriage.pacs.connection import PacsConnection

ENGINES = ("ray", "local")


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


def _local_batches(todo: list[dict], scorer: BulkScorer, chunk: int) -> Iterator[Any]:
    for s in range(0, len(todo), chunk):
        yield rows_table(scorer.rows(todo[s:s + chunk]), scorer.schema)


def _ray_batches(todo: list[dict], model: str | Path | None, workers: int | None, threads: int, gate: bool,
                 dicomweb: DicomwebArchive | None, batch_size: int, address: str | None,
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
        BulkScorer,
        fn_constructor_kwargs={"model": None if _routed(model, gate) else model_files(model), "threads": threads,
                               "gate": gate,
                               "dicomweb": dicomweb, "batch_size": batch_size},
        batch_size=batch_size, batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=size),
        num_cpus=threads, zero_copy_batch=True,
    )

    def done() -> None:
        if started:
            ray.shutdown()

    return ds.iter_batches(batch_size=None, batch_format="pyarrow"), size, done


def bulk_triage(source: str | Path, out: str | Path, model: str | Path | None = None, engine: str = "ray",
                address: str | None = None, workers: int | None = None, threads: int = 1, gate: bool = True,
                batch_size: int = 16, dicomweb: DicomwebArchive | None = None, flush_rows: int = 512,
                flush_s: float = 10.0, progress: bool = False, on_start: Callable[[int, int], None] | None = None,
                on_rows: Callable[[int], None] | None = None) -> BulkSummary:
    """Triage every image of ``source`` into the Parquet dataset ``out``; see the module docs.

    ``model``: a bundled name, an ONNX file or a run folder; None sends each film to the bundled
    model that can judge it (patient age, else the quality gates; ``routed_by`` says which), or,
    with ``gate=False``, to the default model. A rerun refuses an ``out`` holding other models' rows.
    ``workers``: Ray actors (default: the cluster's CPUs / ``threads``); ``threads``: ONNX
    Runtime threads per worker (``engine='local'``: of the single engine). Rows reach ``out``
    in parts of about ``flush_rows`` rows, or every ``flush_s`` seconds, whichever is first.
    ``on_start(listed, to_score)`` and ``on_rows(n)`` report progress."""
    if engine not in ENGINES:
        raise BulkError(f"unknown engine {engine!r} (ray, local)")
    _require_pyarrow()
    if is_dicomweb(source) and dicomweb is None:
        dicomweb = DicomwebArchive(PacsConnection(str(source)))
    if _routed(model, gate):
        models = routed_identities()
    else:
        spec = load_spec(model)
        models = {(spec.name, spec.version)}
    store = ResultStore(Path(out))
    items = list_source(source, dicomweb)
    done = store.scored(models)
    todo = [it for it in items if it["path"] not in done]
    if on_start:
        on_start(len(items), len(todo))
    t0 = time.perf_counter()
    counts, n_workers = (0, 0, 0), workers or 1
    if todo:
        if engine == "local":
            scorer = BulkScorer(model, threads=threads, gate=gate, dicomweb=dicomweb, batch_size=batch_size)
            batches, finish = _local_batches(todo, scorer, batch_size), (lambda: None)
        else:
            batches, n_workers, finish = _ray_batches(todo, model, workers, threads, gate, dicomweb, batch_size,
                                                      address, progress)
        try:
            counts = _write(batches, store, flush_rows, flush_s, on_rows)
        finally:
            finish()
    return BulkSummary(Path(out), len(items), len(items) - len(todo), *counts, time.perf_counter() - t0,
                       n_workers, engine)


def _routed(model: str | Path | None, gate: bool) -> bool:
    """Whether each film goes to the bundled model that can judge it (no model named, gates on);
    the actors then build the router from the bundled models they have installed."""
    return model is None and gate


def _write(batches: Iterator[Any], store: ResultStore, flush_rows: int, flush_s: float,
           on_rows: Callable[[int], None] | None) -> tuple[int, int, int]:
    """Write the row tables as they come, a part every ``flush_rows`` rows or ``flush_s`` seconds;
    returns (rows written, errors, refused)."""
    scored = errors = refused = 0
    pending: list[Any] = []
    rows_pending, last = 0, time.monotonic()
    try:
        for table in batches:
            pending.append(table)
            rows_pending += table.num_rows
            errors += sum(e is not None for e in table.column("error").to_pylist())
            refused += table.column("priority").to_pylist().count("refused")
            if on_rows:
                on_rows(table.num_rows)
            if rows_pending >= flush_rows or time.monotonic() - last >= flush_s:
                scored += _flush(store, pending)
                pending, rows_pending, last = [], 0, time.monotonic()
    finally:  # rows already computed are kept, even when the job is interrupted
        scored += _flush(store, pending)
    return scored, errors, refused


def _flush(store: ResultStore, tables: list[Any]) -> int:
    import pyarrow as pa

    if not tables:
        return 0
    table = pa.concat_tables(tables)
    store.write(table)
    return table.num_rows
