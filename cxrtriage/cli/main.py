"""The ``cxr`` command line: a thin layer over the package's stages."""

from __future__ import annotations

import typer

from cxrtriage.about import DISCLAIMER, __version__
from cxrtriage.cli import (
    data_commands,
    import_commands,
    model_commands,
    predict_commands,
    service_commands,
    train_commands,
)
from cxrtriage.cli.common import console
from cxrtriage.cli.reads_commands import reads_app

app = typer.Typer(
    name="cxr",
    help="Chest X-ray triage: score radiographs for pneumonia, show where the model looked, "
    "sort the reading queue.\n\n" + DISCLAIMER,
    no_args_is_help=True,
    rich_markup_mode="rich",
    add_completion=False,
)
data_app = typer.Typer(help="Datasets: patient-wise splits and manifests.", no_args_is_help=True)
app.add_typer(data_app, name="data")
pacs_app = typer.Typer(help="PACS: triage radiographs arriving in a PACS and write results back as DICOM.",
                       no_args_is_help=True)
app.add_typer(pacs_app, name="pacs")
app.add_typer(reads_app, name="reads")


@app.callback(invoke_without_command=True)
def _root(version: bool = typer.Option(False, "--version", help="Print the version and exit.")) -> None:
    if version:
        console.print(f"cxr-triage {__version__}")
        raise typer.Exit()


data_app.command("split")(data_commands.data_split)
app.command()(train_commands.train)
app.command()(predict_commands.predict)
app.command()(train_commands.export)
app.command()(train_commands.ensemble)
app.command()(predict_commands.explain)
app.command()(predict_commands.evaluate)
app.command()(service_commands.serve)
pacs_app.command("watch")(service_commands.pacs_watch)
pacs_app.command("listen")(service_commands.pacs_listen)
app.command("models")(model_commands.models)
app.command("calibrate")(model_commands.calibrate)
app.add_typer(import_commands.app, name="import")
