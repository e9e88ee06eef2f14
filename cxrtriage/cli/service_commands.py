"""``cxr serve`` and ``cxr pacs watch|listen``: the HTTP service and the PACS bridge."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from cxrtriage.cli.common import fail


def serve(
    host: str = typer.Option("127.0.0.1", help="Address to listen on (0.0.0.0 for all interfaces: set a token)."),
    port: int = typer.Option(8000, help="TCP port."),
    model: Optional[Path] = typer.Option(
        None, help="Model (.onnx, its .json or a run folder); default: the bundled one."),
    data_dir: Optional[Path] = typer.Option(
        None, "--data-dir", help="Database and uploads (default: $CXR_DATA_DIR or ./cxr-data)."),
    token_file: Optional[Path] = typer.Option(
        None, "--token-file", help="File holding the API token (or set CXR_API_TOKEN)."),
    max_upload_mb: Optional[float] = typer.Option(
        None, "--max-upload-mb", help="Request size limit in MiB (default 64)."),
    cors_origin: Optional[list[str]] = typer.Option(
        None, "--cors-origin", help="Allow this browser origin (repeatable; default: none)."),
    samples: Optional[bool] = typer.Option(
        None, "--samples/--no-samples",
        help="Offer the bundled sample radiographs on first start (default: yes, or $CXR_SAMPLES)."),
    pacs_url: Optional[str] = typer.Option(
        None, "--pacs-url",
        help="DICOMweb PACS whose studies the worklist lists and opens (or $CXR_PACS_URL; "
             "credentials: $CXR_PACS_USER/$CXR_PACS_PASSWORD or $CXR_PACS_TOKEN)."),
    threads: Optional[int] = typer.Option(
        None, "--threads", help="ONNX Runtime threads (default: $CXR_THREADS or half the cores)."),
    log_level: str = typer.Option("info", help="debug, info, warning or error."),
    access_log: bool = typer.Option(True, "--access-log/--no-access-log", help="Log every request."),
) -> None:
    """Run the triage service: HTTP API (docs at /docs), worklist and viewer, background inference."""
    from cxrtriage.serve import SettingsError
    from cxrtriage.serve import serve as run_service

    try:
        run_service(host, port, model, data_dir, None, token_file=token_file,
                    max_upload_bytes=int(max_upload_mb * 1024 * 1024) if max_upload_mb else None,
                    cors_origins=cors_origin, threads=threads, samples=samples, pacs_url=pacs_url,
                    log_level=log_level, access_log=access_log)
    except SettingsError as exc:
        fail(str(exc))


def pacs_watch(
    url: str = typer.Option(..., "--url", help="PACS base URL, e.g. http://orthanc:8042"),
    user: Optional[str] = typer.Option(None, "--user", help="HTTP Basic user."),
    password: Optional[str] = typer.Option(
        None, "--password", envvar="CXR_PACS_PASSWORD", help="HTTP Basic password."),
    token: Optional[str] = typer.Option(
        None, "--token", envvar="CXR_PACS_TOKEN", help="Bearer token (instead of user/password)."),
    mode: str = typer.Option(
        "changes", "--mode", help="changes (Orthanc's change feed) or dicomweb (QIDO-RS polling)."),
    poll: float = typer.Option(1.0, "--poll", help="Seconds between polls."),
    state: Optional[Path] = typer.Option(
        None, "--state", help="SQLite state file (default ~/.cache/cxr-triage/pacs-state.sqlite)."),
    model: Optional[Path] = typer.Option(
        None, "--model", "-m", help="Model (.onnx, sidecar .json or run folder); default: bundled."),
    once: bool = typer.Option(False, "--once", help="One pass over what is new, then exit."),
    dicomweb_root: str = typer.Option("/dicom-web", "--dicomweb-root", help="DICOMweb path under --url."),
    store: str = typer.Option("stow", "--store", help="stow (STOW-RS) or rest (Orthanc POST /instances)."),
    workers: int = typer.Option(1, "--workers", help="Triage processes (each loads the model)."),
    batch_size: int = typer.Option(8, "--batch-size"),
    no_backfill: bool = typer.Option(
        False, "--no-backfill", help="On the first run, ignore what is already in the PACS."),
    lookback_days: Optional[int] = typer.Option(
        None, "--lookback-days", help="dicomweb mode: only studies of the last N days."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log every instance."),
) -> None:
    """Follow a PACS; triage each new CR/DX radiograph; store an overlay (SC) and a TID 1500 SR in its study."""
    import json
    import logging
    import sys

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("cxrtriage.pacs").setLevel(logging.INFO)
    from cxrtriage.infer import ModelNotFoundError
    from cxrtriage.pacs.connection import PacsConnection
    from cxrtriage.pacs.watch import watch

    try:
        stats = watch(PacsConnection(url, user, password, token, dicomweb_root), mode=mode, poll_s=poll,
                      state_path=state, model=model, once=once, store=store, workers=workers,
                      batch_size=batch_size, backfill=not no_backfill, lookback_days=lookback_days)
    except (ValueError, ModelNotFoundError) as exc:
        fail(str(exc))
    sys.stdout.write(json.dumps(stats.to_dict()) + "\n")
    if once and stats.errors:
        raise typer.Exit(1)


def pacs_listen(
    port: int = typer.Option(..., "--port", help="TCP port of the C-STORE receiver."),
    ae_title: str = typer.Option("CXRTRIAGE", "--ae-title", help="Our AE title."),
    forward: Optional[str] = typer.Option(None, "--forward", help="Send results with C-STORE to AE@host:port."),
    model: Optional[Path] = typer.Option(None, "--model", "-m", help="Model; default: bundled."),
    host: str = typer.Option("0.0.0.0", "--host", help="Address to listen on."),
    spool: Optional[Path] = typer.Option(
        None, "--spool", help="Spool folder (default ~/.cache/cxr-triage/listen-spool)."),
    out_dir: Optional[Path] = typer.Option(None, "--out-dir", help="Also write the results as DICOM files here."),
) -> None:
    """Receive images with C-STORE, triage them, and forward the SC + SR with C-STORE."""
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    from cxrtriage.infer import ModelNotFoundError
    from cxrtriage.pacs.listen import listen

    try:
        listen(port, ae_title, forward=forward, model=model, host=host, spool_dir=spool, out_dir=out_dir)
    except (ValueError, ModelNotFoundError) as exc:
        fail(str(exc))
