"""``cxr models`` and ``cxr calibrate``: what ships, and fitting a model to a site."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from cxrtriage.about import DISCLAIMER
from cxrtriage.cli.common import console, err, fail, table


def models(as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")) -> None:
    """List the bundled models: name, task, classes, version, size, model card."""
    from cxrtriage.infer import bundled_models, load_spec
    from cxrtriage.infer.bundle import model_card
    from cxrtriage.infer.gate import gate_path

    rows = []
    for name, onnx in bundled_models().items():
        spec = load_spec(onnx)
        size = sum(p.stat().st_size for p in (onnx, onnx.with_suffix(".json"), gate_path(onnx)) if p.exists())
        card = model_card(onnx)
        rows.append({"name": name, "task": spec.task, "kind": spec.kind.value, "classes": list(spec.classes),
                     "version": spec.version, "size_mb": round(size / 2**20, 2), "input_size": spec.input_size,
                     "threshold": spec.threshold, "card": str(card) if card else None, "default": not rows})
    if as_json:
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
        return
    t = table("Bundled models (cxr models --json for every field)")
    t.add_column("name", no_wrap=True)
    t.add_column("task", no_wrap=True)
    t.add_column("classes", overflow="fold")
    t.add_column("size", no_wrap=True, justify="right")
    t.add_column("version", overflow="fold")
    t.add_column("card", overflow="fold")
    for r in rows:
        classes = " / ".join(r["classes"]) if len(r["classes"]) <= 3 else f"{len(r['classes'])} findings"
        t.add_row(r["name"] + ("\n(default)" if r["default"] else ""), r["task"], classes, f"{r['size_mb']:.1f} MB",
                  r["version"], Path(r["card"]).name if r["card"] else "-")
    console.print(t)


def _service_sample(data_dir: Path, out: Path, model: Optional[str]) -> tuple[str, Path]:
    """The sample CSV of a service's reads (under ``out``) and the model to calibrate."""
    from cxrtriage.calibrate.from_service import ServiceSampleError, service_sample
    from cxrtriage.infer import ModelNotFoundError

    csv_path = out / "service-sample.csv"
    try:
        model, facts = service_sample(data_dir, csv_path, model)
    except (ServiceSampleError, ModelNotFoundError) as exc:
        fail(str(exc))
    skipped = ", ".join(f"{n} {why}" for why, n in facts["skipped"].items())
    err.print(f"{facts['reads']} read(s) in {data_dir}: {facts['taken']} taken for {model} "
              f"({', '.join(f'{c} {n}' for c, n in facts['per_class'].items()) or 'none'}; "
              f"{facts['patients']} patients)" + (f"; left out: {skipped}" if skipped else ""))
    return str(model), csv_path


def calibrate(
    data: Optional[Path] = typer.Option(None, "--data", help="The site's labelled sample: a Kermany-layout folder "
                                        "(NORMAL/, PNEUMONIA/), one folder per class, or a path,label[,patient_id] "
                                        "CSV."),
    from_service: Optional[Path] = typer.Option(None, "--from-service", metavar="DATA_DIR",
                                                help="Instead of --data: the studies readers have labelled in a "
                                                "service's data folder (patient-wise by its patient references); "
                                                "the sample is written to OUT/service-sample.csv."),
    out: Path = typer.Option(..., "--out", help="Folder for the recalibrated model, calibration.json and "
                             "calibration.html."),
    model: Optional[str] = typer.Option(None, "--model", help="Bundled model name, .onnx file or run folder "
                                        "(default: the bundled default model)."),
    target_sensitivity: float = typer.Option(0.95, "--target-sensitivity", min=0.5, max=1.0,
                                             help="Sensitivity the operating point keeps on the sample."),
    n_boot: int = typer.Option(1000, "--n-boot", min=100, help="Bootstrap resamples for the 95% CIs."),
    class_bias: bool = typer.Option(True, "--class-bias/--no-class-bias",
                                    help="Single-label models: also fit one offset per class (takes the "
                                    "sample's class mix as the site's; turn off for a sample balanced by hand)."),
    head: bool = typer.Option(False, "--head", help="Single-label models: also refit the last layer on the "
                              "sample (a correction on the network's embedding, shrunk toward the model; "
                              "writes a new graph). Operating point and temperature are then fitted on "
                              "cross-fitted scores. Wants a few hundred films."),
    head_l2: float = typer.Option(0.1, "--head-l2", min=0.0, help="--head: the penalty that keeps the "
                                  "correction small (larger: closer to the model as it was)."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Refit a model's operating point(s), probability temperature and class offsets (and, with
    --head, its last layer) on a site's own labelled films."""
    from cxrtriage.calibrate import CalibrationError
    from cxrtriage.calibrate import calibrate as run_calibration
    from cxrtriage.infer import ModelNotFoundError

    if (data is None) == (from_service is None):
        fail("give either --data SAMPLE or --from-service DATA_DIR")
    if from_service is not None:
        model, data = _service_sample(from_service, out, model)
    try:
        s = run_calibration(model, data, out, target_sensitivity=target_sensitivity, n_boot=n_boot,
                            class_bias=class_bias, head=head, head_l2=head_l2)
    except (CalibrationError, ModelNotFoundError) as exc:
        fail(str(exc))
    if as_json:
        sys.stdout.write(json.dumps(s) + "\n")
        return
    for bad in s.get("unreadable_films") or []:
        err.print(f"[yellow]left out[/] {bad['path']}: {bad['error']}")
    exp = s["expected"]
    console.print(f"[bold]{s['model']}[/] {s['version']}: {s['films']} films "
                  f"({', '.join(f'{c} {n}' for c, n in s['films_per_class'].items())}), temperature "
                  f"{s['temperature']:.3f}, threshold {s['after']['threshold']:.3f}")
    if s.get("class_bias"):
        console.print("  class offsets " + ", ".join(f"{c} {b:+.2f}" for c, b in s["class_bias"].items()))
    if s.get("accuracy"):
        console.print(f"  {len(s['films_per_class'])}-class accuracy on the sample "
                      f"{s['accuracy']['before']:.3f} -> {s['accuracy']['after']:.3f}")
    if s.get("site_head"):
        h = s["site_head"]
        console.print(f"  site head on {h['features']} embedding features (L2 {h['l2']:g}), scores cross-fitted "
                      f"over {h['folds']} patient-wise folds")
    where = "cross-fitted on the sample" if s.get("site_head") else "on the sample itself"
    for k in ("sensitivity", "specificity"):
        lo, hi = exp[k]["ci95"] or (float("nan"), float("nan"))
        console.print(f"  expected {k} {exp[k]['value']:.3f} [{lo:.3f}, {hi:.3f}] ({where})")
    console.print(f"model: {s['onnx']}  report: {Path(s['onnx']).parent / 'calibration.html'}")
    console.print(f"[dim]{DISCLAIMER}[/]")
