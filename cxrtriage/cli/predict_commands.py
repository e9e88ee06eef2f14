"""``cxr predict``, ``cxr explain``, ``cxr evaluate``: triage, heatmaps and metrics on labelled films."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from cxrtriage.about import DISCLAIMER
from cxrtriage.cli.common import EXIT_REFUSED, EXIT_UNREADABLE, console, err, fail, table


def _collect(inputs: list[Path]) -> list[Path]:
    from cxrtriage.io import IMAGE_SUFFIXES

    files: list[Path] = []
    for p in inputs:
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        elif p.exists():
            files.append(p)
        else:
            fail(f"{p}: no such file or folder")
    if not files:
        fail("no images found")
    return files


def predict(
    inputs: list[str] = typer.Argument(..., help="Image files (DICOM, JPEG, PNG) and/or folders. With --engine: "
                                       "one SOURCE, a folder, a CSV of paths or a DICOMweb server URL."),
    model: Optional[Path] = typer.Option(None, "--model", "-m", help="A bundled model's name, an .onnx file, its "
                                         "sidecar .json or a run folder; default: each film routed to the bundled "
                                         "model that can judge it."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object per line instead of a table."),
    batch_size: int = typer.Option(32),
    threads: Optional[int] = typer.Option(None, help="ONNX Runtime threads (with --engine: per worker, default 1)."),
    sort: bool = typer.Option(True, help="Sort the table by triage priority (most urgent first)."),
    tta: bool = typer.Option(False, "--tta", help="Test-time augmentation: average over 7 shifted/zoomed views "
                             "(7x the model time)."),
    engine: Optional[str] = typer.Option(None, "--engine", help="Bulk triage into --out (Parquet, resumable): ray "
                                         "(Ray Data; pip install 'cxr-triage[ray]') or local (this process)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="With --engine: results folder of Parquet parts "
                                       "(e.g. results.parquet); images already in it are skipped."),
    address: Optional[str] = typer.Option(None, "--address", help="With --engine ray: an existing Ray cluster "
                                          "(auto, HOST:6379 or ray://HOST:10001); default: a local Ray."),
    workers: Optional[int] = typer.Option(None, "--workers", min=1, help="With --engine ray: engine actors "
                                          "(default: the cluster's CPUs / --threads)."),
    pacs_user: Optional[str] = typer.Option(None, "--pacs-user", envvar="CXR_PACS_USER",
                                            help="DICOMweb source: HTTP Basic user (or $CXR_PACS_USER)."),
    pacs_password: Optional[str] = typer.Option(None, "--pacs-password", envvar="CXR_PACS_PASSWORD",
                                                help="DICOMweb source: HTTP Basic password (or $CXR_PACS_PASSWORD)."),
    pacs_token: Optional[str] = typer.Option(None, "--pacs-token", envvar="CXR_PACS_TOKEN",
                                             help="DICOMweb source: bearer token (or $CXR_PACS_TOKEN)."),
    dicomweb_root: str = typer.Option("/dicom-web", "--dicomweb-root", help="DICOMweb source: path of the "
                                      "DICOMweb service on the server (Orthanc: /dicom-web)."),
    modality: Optional[list[str]] = typer.Option(None, "--modality", help="DICOMweb source: modalities to "
                                                 "triage (repeatable; default CR and DX)."),
) -> None:
    """Triage images: label, score and priority for each file.

    Without --model each film goes to the bundled model that can judge it (by DICOM patient age,
    else by the models' quality gates); every result names the model that scored it.

    With --engine ray (or local), triage a whole archive into a Parquet dataset instead: one row
    per image (path, SOP Instance UID, label, probabilities, gate verdict, model version, error).

    Exit status: 0 every film scored; 2 the command could not run; 3 some input could not be
    read; 4 the quality gates refused some film. Every result is printed either way."""
    if engine is not None:
        _bulk_predict(inputs, engine, out, model, batch_size, threads, address, workers, pacs_user, pacs_password,
                      pacs_token, dicomweb_root, modality, as_json)
        return
    if out is not None:
        fail("--out writes bulk results: add --engine ray (or --engine local)")
    from cxrtriage.infer import PRIORITY_ORDER, ModelNotFoundError, load_model

    files = _collect([Path(i) for i in inputs])
    try:
        engine = load_model(model, threads=threads, tta=tta)
    except ModelNotFoundError as exc:
        fail(str(exc))
    preds = engine.predict_files(files, batch_size=batch_size, progress=not as_json and len(files) > 20)
    if as_json:
        for p in preds:
            sys.stdout.write(json.dumps(p.to_dict()) + "\n")
        _exit_for(preds)
        return
    if sort:
        preds = sorted(preds, key=lambda p: (PRIORITY_ORDER[p.priority], -(p.score or 0.0)))
    _print_table(engine, preds)
    _exit_for(preds)


def _print_table(engine, preds) -> None:
    """The results as a table that stays readable at 80 columns (long names and notes wrap)."""
    from cxrtriage.infer import Engine

    colours = {"urgent": "bold red", "review": "yellow", "routine": "green", "refused": "magenta", "error": "red"}
    single = isinstance(engine, Engine)
    title = (f"{engine.spec.name} ({engine.spec.version}), threshold {engine.spec.threshold:.3f}" if single
             else "the bundled models, each film routed by patient age or the models' quality gates")
    t = table(f"Triage with {title}")
    t.add_column("file", overflow="fold")
    t.add_column("label", overflow="fold")
    t.add_column("score", justify="right", no_wrap=True)
    t.add_column("priority", no_wrap=True)
    if not single:
        t.add_column("model", no_wrap=True)
    if any(_note(p) for p in preds):
        t.add_column("note", overflow="fold", ratio=1)
    for p in preds:
        cells = [Path(p.source).name, (p.label or "-").replace("|", " | "),
                 f"{p.score:.3f}" if p.score is not None else "-", f"[{colours[p.priority]}]{p.priority}[/]"]
        if not single:
            cells.append(str(p.model.get("name", "-")) if p.priority not in ("error", "refused") else "-")
        if len(t.columns) > len(cells):
            cells.append(_note(p))
        t.add_row(*cells)
    console.print(t)
    console.print("[dim]score: P(abnormal), or for a multi-label model the probability of its lead finding; "
                  "--json gives every probability and the routing.[/]")
    console.print(f"[dim]{DISCLAIMER}[/]")


def _note(p) -> str:
    if p.error:
        return p.error
    return str((p.gate.get("reason") if p.priority == "refused" else p.gate.get("warning")) or "")


def _exit_for(preds) -> None:
    """Exit status for scripts: 0 every film scored, 3 some could not be read, 4 some were refused
    by the quality gates (and none unreadable)."""
    if any(p.error for p in preds):
        raise typer.Exit(EXIT_UNREADABLE)
    if any(p.priority == "refused" for p in preds):
        raise typer.Exit(EXIT_REFUSED)


def _bulk_predict(inputs: list[str], engine: str, out: Optional[Path], model: Optional[Path], batch_size: int,
                  threads: Optional[int], address: Optional[str], workers: Optional[int], user: Optional[str],
                  password: Optional[str], token: Optional[str], dicomweb_root: str,
                  modality: Optional[list[str]], as_json: bool) -> None:
    from cxrtriage.bulk import BulkError, DicomwebArchive, bulk_triage, is_dicomweb
    from cxrtriage.infer import ModelNotFoundError
    from cxrtriage.pacs.connection import PacsConnection

    if engine not in ("ray", "local"):
        fail(f"unknown engine {engine!r} (ray or local)")
    if len(inputs) != 1:
        fail("--engine takes one SOURCE: a folder, a CSV of paths or a DICOMweb server URL")
    if out is None:
        fail("--engine needs --out (e.g. --out results.parquet)")
    if address and engine != "ray":
        fail("--address is for --engine ray")
    source = inputs[0]
    try:
        dicomweb = DicomwebArchive(PacsConnection(source, user, password, token, dicomweb_root),
                                  tuple(modality or ("CR", "DX"))) if is_dicomweb(source) else None
    except (ValueError, BulkError) as exc:
        fail(str(exc))
    bars: list = []

    def start(listed: int, todo: int) -> None:
        if not as_json and todo:
            from tqdm.auto import tqdm

            bars.append(tqdm(total=todo, desc="triage", unit="img", dynamic_ncols=True))

    def rows(n: int) -> None:
        for bar in bars:
            bar.update(n)

    try:
        summary = bulk_triage(source, out, model=model, engine=engine, address=address, workers=workers,
                              threads=threads or 1, batch_size=batch_size, dicomweb=dicomweb, on_start=start,
                              on_rows=rows)
    except (BulkError, ModelNotFoundError) as exc:
        fail(str(exc))
    finally:
        for bar in bars:
            bar.close()
    if as_json:
        sys.stdout.write(json.dumps(summary.to_dict()) + "\n")
        return
    console.print(f"{summary.listed} image(s) in {source}: {summary.skipped} already scored, {summary.scored} "
                  f"scored now ({summary.errors} unreadable, {summary.refused} refused by the quality gate) in "
                  f"{summary.seconds:.1f}s with {summary.workers} {engine} worker(s) -> {out}")
    console.print(f"[dim]{DISCLAIMER}[/]")


def explain(
    inputs: list[Path] = typer.Argument(..., help="Image files and/or folders."),
    out: Path = typer.Option(Path("explanations"), "--out", "-o", help="Folder for the overlay PNGs."),
    model: Optional[Path] = typer.Option(None, "--model", "-m", help="Model (default: each film routed to the "
                                         "bundled model that can judge it, as cxr predict does). A run folder of "
                                         "a network without an in-graph map uses Grad-CAM (needs torch)."),
    npy: bool = typer.Option(False, "--npy", help="Also save each raw heatmap as .npy."),
    opacity: float = typer.Option(0.5, min=0.0, max=1.0, help="Heatmap opacity."),
) -> None:
    """Write, per image, a PNG of the heatmap over the radiograph with the call and its probability.

    The model is chosen as cxr predict chooses it. Exit status as cxr predict's: 0 every film
    explained; 3 some input could not be read; 4 the quality gates refused some film."""
    import numpy as np

    from cxrtriage.explain import overlay_for
    from cxrtriage.infer import Engine, ModelNotFoundError, load_model

    files = _collect(inputs)
    try:
        predictor = load_model(model)
    except ModelNotFoundError as exc:
        fail(str(exc))
    gradcam_model = _gradcam_fallback(predictor, model) if isinstance(predictor, Engine) else None
    out.mkdir(parents=True, exist_ok=True)
    preds = []
    for f in files:
        scored = predictor.score([f], heatmap=True)[0]
        pred, rg = scored.prediction, scored.radiograph
        preds.append(pred)
        if rg is None:
            err.print(f"[red]unreadable[/] {f}: {pred.error}")
            continue
        if gradcam_model is not None and pred.ok:
            pred.heatmap = _gradcam(predictor, gradcam_model, rg, pred)
        png = out / f"{f.stem}.heatmap.png"
        overlay_for(rg.pixels, pred, opacity=opacity).save(png)
        if npy and pred.heatmap is not None:
            np.save(out / f"{f.stem}.heatmap.npy", pred.heatmap)
        by = pred.model.get("name", "?")
        if pred.ok:
            console.print(f"{f.name}: {pred.label} {pred.score:.3f} ({by}) -> {png}")
        else:
            console.print(f"{f.name}: [magenta]refused[/] by {by}: {_note(pred)} -> {png}")
    _exit_for(preds)


def _gradcam_fallback(engine, model: Optional[Path]):
    """The torch network for Grad-CAM when ``engine``'s graph has no in-graph map, else None."""
    if engine.spec.has_cam:
        return None
    from cxrtriage.models.checkpoint import load_checkpoint

    run = Path(model) if model and Path(model).is_dir() else engine.onnx_path.parent
    try:
        return load_checkpoint(run)
    except FileNotFoundError:
        fail(f"{engine.spec.name} has no in-graph heatmap and no checkpoint beside it for Grad-CAM")


def _gradcam(engine, gradcam_model, rg, pred):
    """Grad-CAM of the film as the graph saw it (border and intensity steps), put back on the film."""
    import torch

    from cxrtriage.explain.gradcam import gradcam

    net, meta = gradcam_model
    prepared = engine.prepare([rg])
    x = torch.from_numpy(prepared.images).float()[:, None] / 255.0
    target = engine.spec.decide([pred.probabilities[c] for c in engine.spec.classes]).finding_index
    return prepared.restore(gradcam(net, (x - meta["mean"]) / meta["std"], target))[0]


def _eval_samples(data: Optional[Path], manifest: Optional[Path], split: str, task: str, seed: int,
                  split_task: Optional[str] = None):
    from cxrtriage.data import DEFAULT_VAL_FRACTION, kermany_samples, patient_split, read_manifest

    if manifest:
        samples = read_manifest(manifest)
        if any(s.split for s in samples):
            samples = [s for s in samples if s.split == split]
        return samples
    if data is None:
        fail("give --data ROOT (Kermany layout) or --manifest CSV")
    if split == "val":  # the same patient-wise split training made (stratified by the classes it trained on)
        films = kermany_samples(data, "train", split_task or task)
        return [s for s in patient_split(films, DEFAULT_VAL_FRACTION, seed) if s.split == "val"]
    return kermany_samples(data, split, task)


def evaluate(
    model: Optional[Path] = typer.Option(None, "--model", "-m", help="Model (default: bundled)."),
    data: Optional[Path] = typer.Option(None, help="Dataset root in the Kermany layout."),
    manifest: Optional[Path] = typer.Option(None, help="Manifest CSV (path,label,patient_id[,split])."),
    split: str = typer.Option("test", help="test, train, or val (the patient-wise validation split of train/)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Folder for metrics.json, plots and report.html."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object with the metrics."),
    n_boot: int = typer.Option(1000, help="Bootstrap resamples for the 95% confidence intervals."),
    batch_size: int = typer.Option(64),
    tta: bool = typer.Option(False, "--tta", help="Test-time augmentation: average over 7 shifted/zoomed views "
                             "(7x the model time)."),
) -> None:
    """Score a labelled split: sensitivity, specificity, PPV/NPV, ROC/PR AUC with 95% CIs, calibration, report."""
    import numpy as np

    from cxrtriage.data import get_task
    from cxrtriage.evaluate import evaluate_predictions
    from cxrtriage.infer import ModelNotFoundError, load_engine

    try:
        engine = load_engine(model, gate=False, tta=tta)
    except ModelNotFoundError as exc:
        fail(str(exc))
    info = engine.spec
    try:
        task = get_task(info.task)
        samples = _eval_samples(data, manifest, split, task.name, info.training_seed, info.split_task)
        y = (np.stack([task.multi_hot(s.label) for s in samples]).astype(int) if task.kind == "multilabel"
             else np.array([task.index(s.label) for s in samples]))
    except (FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    if not len(samples):
        fail(f"no images in split {split!r}")
    preds = engine.predict_files([s.path for s in samples], batch_size=batch_size, progress=not as_json)
    bad = [p for p in preds if p.error]
    if bad:
        err.print(f"[yellow]{len(bad)} unreadable image(s) left out[/], e.g. {bad[0].source}: {bad[0].error}")
    keep = np.array([p.error is None for p in preds])
    probs = np.array([[p.probabilities[c] for c in info.classes] for p in preds if p.error is None])
    meta = {"model": info.name, "model_version": info.version, "data": str(manifest or data), "split": split,
            "threshold_method": info.decision.method,
            "task_description": task.description, "unreadable": len(bad), "tta": tta}
    ids = [s.patient_id for s, k in zip(samples, keep) if k]
    groups = np.array(ids) if all(ids) else None  # CIs resample whole patients when every film names one
    result = evaluate_predictions(task.name, list(info.classes), y[keep], probs, info.threshold, out, meta,
                                  n_boot=n_boot, label_thresholds=info.decision.label_thresholds, groups=groups)
    if as_json:
        sys.stdout.write(json.dumps(result) + "\n")
        return
    ci = result.get("roc_auc_ci") or [float("nan")] * 2
    console.print(f"[bold]{task.name}[/] on {split}: n={result['n']}  ROC AUC {result['roc_auc']:.4f} "
                  f"[{ci[0]:.4f}, {ci[1]:.4f}]  accuracy {result['accuracy']:.4f}  "
                  f"sensitivity {result['sensitivity']:.4f}  specificity {result['specificity']:.4f}  "
                  f"threshold {result['threshold']:.3f}")
    if result.get("ci_resampling"):
        console.print(f"[dim]95% CIs: bootstrap over {result['ci_resampling']}[/]")
    if result.get("macro_auc") is not None:
        console.print(f"macro one-vs-rest AUC {result['macro_auc']:.4f}")
    if result.get("multilabel"):
        ml = result["multilabel"]
        for name in ml["labels"]:
            e = ml["per_label"][name]
            auc = f"{e['roc_auc']:.4f}" if e["roc_auc"] is not None else e["status"]
            console.print(f"  {name:<20} n+={e['n_pos']:<6} AUC {auc}")
        mean = ml["mean_auc"]
        console.print(f"mean AUC over {ml['n_labels_scored']} findings: "
                      + (f"{mean:.4f}" if mean is not None else "none scored"))
    if out:
        console.print(f"report: {out / 'report.html'}")
