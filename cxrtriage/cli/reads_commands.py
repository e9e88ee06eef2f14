"""``cxr reads import``: readers' labels from the RIS into a service (all or nothing)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from cxrtriage.cli.common import console, err, fail

reads_app = typer.Typer(help="Readers' labels: import them from the RIS.", no_args_is_help=True)


@reads_app.command("import")
def import_reads(
    csv_file: Path = typer.Argument(..., exists=True, dir_okay=False, help="CSV: a study column (study id, "
                                    "sop_instance_uid, study_instance_uid or file), label[, findings separated by |]."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="The service's data folder (the service may "
                                            "be running)."),
    url: Optional[str] = typer.Option(None, "--url", help="Instead of --data-dir: a running service's URL."),
    token: Optional[str] = typer.Option(None, "--token", envvar="CXR_API_TOKEN",
                                        help="--url: a write token (also CXR_API_TOKEN)."),
    reader: str = typer.Option("ris-import", "--reader", help="--data-dir: the reader name stored with the reads "
                               "(over --url, the token's name)."),
) -> None:
    """Import reads; unknown studies and labels are listed and nothing is imported (exit 1)."""
    if (data_dir is None) == (url is None):
        fail("give either --data-dir DIR or --url URL")
    text = csv_file.read_text(encoding="utf-8-sig")
    if url is not None:
        imported, errors = _over_http(url, token, text)
    else:
        imported, errors = _into_folder(data_dir, text, reader)  # type: ignore[arg-type]
    if errors:
        for e in errors:
            err.print(f"line {e.get('line', '?')}: {e.get('study', '')}: {e.get('error')}")
        err.print(f"[bold red]nothing imported:[/] {len(errors)} row(s) cannot be imported")
        raise typer.Exit(1)
    console.print(f"{imported} read(s) imported")


def _into_folder(data_dir: Path, text: str, reader: str) -> tuple[int, list[dict]]:
    from cxrtriage.serve.metrics import Metrics
    from cxrtriage.serve.reads import ReadError, parse_reads_csv
    from cxrtriage.serve.site import ImportRefused, SiteLoop
    from cxrtriage.serve.store import DataDirError, Store

    if not (data_dir / "cxr.sqlite3").is_file():
        fail(f"{data_dir} is not a service data folder")
    try:
        store = Store(data_dir)
    except DataDirError as exc:
        fail(str(exc))
    try:
        ids = SiteLoop(store, Metrics()).import_reads(parse_reads_csv(text), reader)
    except ImportRefused as exc:
        return 0, exc.errors
    except ReadError as exc:
        fail(str(exc))
    finally:
        store.close()
    return len(ids), []


def _over_http(url: str, token: Optional[str], text: str) -> tuple[int, list[dict]]:
    import httpx

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        r = httpx.post(url.rstrip("/") + "/api/v1/reads/import", json={"csv": text}, headers=headers, timeout=120)
    except httpx.HTTPError as exc:
        fail(f"the service at {url} does not answer: {type(exc).__name__}")
    body = r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
    if r.status_code == 201:
        return int(body["imported"]), []
    if r.status_code == 422 and body.get("errors"):
        return 0, body["errors"]
    print(f"error: {r.status_code}: {body.get('message', r.text[:200])}", file=sys.stderr)
    raise typer.Exit(2)
