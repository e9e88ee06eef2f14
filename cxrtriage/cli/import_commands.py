"""``cxr import torchxrayvision``: a TorchXRayVision DenseNet as a model folder every verb takes.

The conversion needs torch and torchxrayvision (the ``xrv`` extra); when they are not importable
here it runs in ``.venv-xrv`` beside the checkout (made by ``scripts/bootstrap_xrv.sh``, or named by
``$CXR_XRV_PYTHON``), else it says how to install them. The folder it writes is served without either.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from typing import Optional

import typer

from cxrtriage.cli.common import console, fail

app = typer.Typer(help="Bring a model from elsewhere in as a model folder every verb takes "
                  "(predict, explain, evaluate, calibrate, serve, pacs).", no_args_is_help=True)

INSTALL_HINT = ("torchxrayvision is not installed here: run scripts/bootstrap_xrv.sh (it makes .venv-xrv "
                "beside the checkout: torchxrayvision needs torchvision, built here for another torch than "
                "the project's), or pip install 'cxr-triage\\[xrv]' into an environment with torch and "
                "torchvision; $CXR_XRV_PYTHON may name that environment's python")


def xrv_python() -> Path | None:
    """The python of the environment that has torchxrayvision: ``$CXR_XRV_PYTHON``, else
    ``.venv-xrv/bin/python`` beside the checkout; None when there is none."""
    named = os.environ.get("CXR_XRV_PYTHON")
    cand = Path(named) if named else Path(__file__).resolve().parents[2] / ".venv-xrv" / "bin" / "python"
    return cand if cand.is_file() and os.access(cand, os.X_OK) else None


def _here() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("torch", "torchvision", "torchxrayvision"))


@app.command("torchxrayvision")
def torchxrayvision(
    weights: str = typer.Argument(..., help="A TorchXRayVision DenseNet weights name (e.g. "
                                  "densenet121-res224-all: TorchXRayVision downloads it into its cache) or a "
                                  "local weights file (its own download, or a state dict)."),
    out: Path = typer.Option(..., "--out", help="The model folder to write (model.onnx, model.json, gate)."),
    labels_of: Optional[str] = typer.Option(None, "--labels-of", help="For a weights file: the xrv weights "
                                            "name whose labels and operating points it has (default: found "
                                            "from the file's name, else xrv's 18 default pathologies)."),
    findings: str = typer.Option("auto", "--findings", help="nih14: the 14 NIH findings only (task nih14: "
                                 "cxr evaluate and cxr calibrate take it); all: every named output, the "
                                 "others under xrv's names; auto: nih14 when the weights have all 14."),
    reference: Optional[Path] = typer.Option(None, "--reference", help="The site's films (folder or CSV, no "
                                             "labels) to fit the quality gate on; without it no gate."),
    check: Optional[list[Path]] = typer.Option(None, "--check", help="Films to check the ONNX graph against "
                                               "torch on (repeatable; default: the bundled samples)."),
    name: Optional[str] = typer.Option(None, "--name", help="The model's name (default: xrv-<weights>)."),
    urgent: float = typer.Option(0.5, "--urgent", min=0.0, max=1.0, help="Probability of the lead finding "
                                 "from which a flagged film is urgent."),
) -> None:
    """Import TorchXRayVision weights: ONNX graph, sidecar with xrv's preprocessing, NIH names, xrv's
    operating points as per-finding thresholds, a gate on --reference films, provenance and licence note."""
    argv = [weights, "--out", str(out), "--findings", findings, "--urgent", str(urgent)]
    for flag, value in (("--labels-of", labels_of), ("--reference", reference), ("--name", name)):
        if value is not None:
            argv += [flag, str(value)]
    for c in check or []:
        argv += ["--check", str(c)]
    if _here():
        from cxrtriage.models.xrv_import import main

        raise typer.Exit(main(argv))
    py = xrv_python()
    if py is None:
        fail(INSTALL_HINT)
    console.print(f"[dim]running in {py.parent.parent} (torchxrayvision)[/]")
    rc = subprocess.run([str(py), "-m", "cxrtriage.models.xrv_import", *argv], check=False).returncode
    if rc:
        sys.stderr.flush()
    raise typer.Exit(rc)
