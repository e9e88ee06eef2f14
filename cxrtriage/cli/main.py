"""The ``cxr`` command line: a thin layer over the package's stages."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from cxrtriage import DISCLAIMER, __version__

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
console = Console()
err = Console(stderr=True, soft_wrap=True)


def fail(msg: str, code: int = 2) -> None:
    err.print(f"[bold red]error:[/] {msg}")
    raise typer.Exit(code)


@app.callback(invoke_without_command=True)
def _root(version: bool = typer.Option(False, "--version", help="Print the version and exit.")) -> None:
    if version:
        console.print(f"cxr-triage {__version__}")
        raise typer.Exit()


@data_app.command("split")
def data_split(
    root: Path = typer.Argument(..., help="Dataset root in the Kermany layout (<root>/train/{NORMAL,PNEUMONIA}), "
                                "or the release/folder/CSV that --source names."),
    out: Path = typer.Option(Path("split.csv"), "--out", "-o", help="Manifest CSV to write."),
    task: str = typer.Option("pneumonia", help="pneumonia, pneumonia3, covid3 or nih14."),
    val_fraction: float = typer.Option(0.2, help="Fraction of patients held out for validation."),
    seed: int = typer.Option(0, help="Random seed of the split."),
    split: str = typer.Option("train", help="Which split folder of the release to divide."),
    source: str = typer.Option("kermany", help="kermany, covid (COVID-19 image data collection), nih "
                               "(ChestX-ray14), folder (one folder per class) or csv (path,label[,patient_id])."),
    normals: Optional[Path] = typer.Option(None, help="covid: a Kermany-layout folder whose NORMAL images "
                                           "complete covid3."),
    max_normals: Optional[int] = typer.Option(None, help="covid: at most this many borrowed normals."),
    test_fraction: float = typer.Option(0.0, help="Also hold out this fraction of patients as 'test' "
                                        "(covid, folder, csv; nih keeps its official test list)."),
) -> None:
    """Make a patient-wise, stratified, seeded train/validation split and write it as a manifest CSV."""
    from collections import Counter

    from cxrtriage.data import kermany_samples, patient_split, write_manifest
    from cxrtriage.data.generic import dataset_samples
    from cxrtriage.data.split import carve_validation, task_split

    try:
        if source == "kermany":
            samples = patient_split(kermany_samples(root, split, task), val_fraction, seed)
        elif source == "nih":
            from cxrtriage.data.nih import nih_samples

            samples = nih_samples(root, task, val_fraction, seed)
        else:
            if source == "covid":
                from cxrtriage.data.covid import covid3_samples

                samples = covid3_samples(root, normals, task, max_normals=max_normals, seed=seed)
            else:
                samples = dataset_samples(source, root, task, split=split)
            if any(s.split for s in samples):  # the export carries its own split: keep it
                samples = carve_validation(samples, task, val_fraction, seed)
            else:
                samples = task_split(samples, task, val_fraction, seed, test_fraction)
    except (FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    write_manifest(samples, out)
    counts = Counter((s.split, lab) for s in samples for lab in s.label.split("|"))  # per finding if multi-label
    pats = {sp: len({s.patient_id for s in samples if s.split == sp}) for sp in ("train", "val", "test")}
    for sp in ("train", "val", "test"):
        if not pats[sp]:
            continue
        per = ", ".join(f"{lab} {n}" for (s, lab), n in sorted(counts.items()) if s == sp)
        n_img = sum(s.split == sp for s in samples)
        console.print(f"{sp}: {n_img} images, {pats[sp]} patients ({per})")
    console.print(f"manifest written to {out}")


@app.command()
def train(
    out: Path = typer.Option(..., "--out", "-o", help="Run folder (config, metrics, curves, checkpoints, model)."),
    data: Optional[Path] = typer.Option(None, help="Dataset root (Kermany layout); split patient-wise on the fly."),
    manifest: Optional[Path] = typer.Option(None, help="Manifest CSV from `cxr data split` (preferred)."),
    task: str = typer.Option("pneumonia", help="pneumonia, pneumonia3, covid3 or nih14 (multi-label)."),
    arch: str = typer.Option("cxrnet", help="cxrnet (default), cxrnet_wide, ref_cnn150, ref_vgg200, lite0_probe "
                             "(frozen ImageNet features + logistic regression), or a transfer "
                             "backbone: efficientnet_lite0/1/2, efficientnet_b0, resnet18, resnet50, densenet121, "
                             "mobilenet_v2, mobilenet_v3_large, mobilenet_v3_small, inception_v3."),
    image_size: Optional[int] = typer.Option(None, help="Input size in px (default: the architecture's)."),
    epochs: int = typer.Option(20),
    batch_size: int = typer.Option(64),
    lr: Optional[float] = typer.Option(None, help="Peak learning rate (default: the architecture's)."),
    optimizer: Optional[str] = typer.Option(None, help="adamw, adam or sgd (default: the architecture's)."),
    seed: int = typer.Option(0),
    patience: int = typer.Option(6, help="Early stopping: epochs without validation AUC gain."),
    time_budget: Optional[float] = typer.Option(None, help="Stop after this many minutes of training."),
    target_sensitivity: Optional[float] = typer.Option(None, help="Choose the threshold for this sensitivity."),
    threshold_method: str = typer.Option("youden-plateau", help="youden-plateau (Youden's J averaged over +-1 logit: "
                                         "the middle of the ROC's flat top) or youden (its maximum)."),
    no_augment: bool = typer.Option(False, "--no-augment", help="Disable augmentation."),
    augment_strength: float = typer.Option(1.0, min=0.0, help="Scale every augmentation range (rotation, shift, "
                                           "zoom, exposure, blur, noise); 0.5 halves them."),
    hflip: float = typer.Option(0.0, min=0.0, max=1.0, help="Probability of a left-right flip in augmentation "
                                "(default 0: the heart's side carries meaning)."),
    mixup: Optional[float] = typer.Option(None, "--mixup", help="Mixup: blend image pairs and their labels with "
                                          "weights drawn from Beta(alpha, alpha); this is alpha (e.g. 0.2)."),
    ema_decay: Optional[float] = typer.Option(None, "--ema-decay", help="Validate, keep and export an exponential "
                                              "moving average of the weights with this decay (e.g. 0.998)."),
    class_weights: bool = typer.Option(True, help="Weight the loss by inverse class frequency."),
    dropout: Optional[float] = typer.Option(None, help="Override the network's dropout."),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
    cache_dir: Optional[Path] = typer.Option(None, help="Preprocessed image cache folder."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint."),
    stop_after: Optional[int] = typer.Option(None, help="Pause after this many epochs (continue with --resume)."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
    pretrained: bool = typer.Option(False, "--pretrained", help="Backbones: start from ImageNet weights "
                                    "(EfficientNet-Lite0/1/2 offline; others via torch's download cache)."),
    weights: Optional[Path] = typer.Option(None, "--weights", help="Start from a local file: a backbone's state "
                                           "dict, or a `cxr train` checkpoint of the same network (e.g. to "
                                           "fine-tune a run at a larger size)."),
    freeze_epochs: int = typer.Option(0, "--freeze-epochs", help="Train only the head for the first N epochs."),
    backbone_lr_mult: Optional[float] = typer.Option(None, "--backbone-lr-mult", help="Backbone LR = lr x this "
                                                     "(default 0.1 with pretrained weights, else 1)."),
    probe_views: int = typer.Option(1, "--probe-views", min=0, help="Linear probes: augmented copies of the "
                                    "training set added to it."),
    loss: str = typer.Option("bce", help="Multi-label loss: bce (per-finding positive weights) or focal."),
    sampler: str = typer.Option("rare", help="Multi-label sampler: rare (keeps rare findings present) or uniform."),
    nproc_per_node: int = typer.Option(1, "--nproc-per-node", min=1, help="Data-parallel processes on this machine "
                                       "(re-launched through torchrun; --batch-size stays the global batch)."),
) -> None:
    """Train a classifier; writes config, per-epoch metrics, curves, checkpoints and an ONNX model.

    Also runs under torchrun (one process per GPU or CPU share, on one machine or many)."""
    from cxrtriage.train.config import TrainConfig
    from cxrtriage.train.trainer import train as run

    cfg = TrainConfig(
        out_dir=str(out), data=str(data) if data else None, manifest=str(manifest) if manifest else None,
        task=task, arch=arch, image_size=image_size, epochs=epochs, batch_size=batch_size, lr=lr,
        optimizer=optimizer, seed=seed, patience=patience,
        time_budget_s=time_budget * 60 if time_budget else None, target_sensitivity=target_sensitivity,
        threshold_method=threshold_method,
        augment=not no_augment, augment_strength=augment_strength, hflip=hflip, mixup=mixup, ema_decay=ema_decay,
        class_weights=class_weights, dropout=dropout,
        stop_after=stop_after, device=device, cache_dir=str(cache_dir) if cache_dir else None,
        pretrained=pretrained, weights=str(weights) if weights else None, freeze_epochs=freeze_epochs,
        backbone_lr_mult=backbone_lr_mult, loss=loss, sampler=sampler, probe_views=probe_views,
    )
    if nproc_per_node > 1 and "LOCAL_RANK" not in os.environ:  # not yet under torchrun: re-launch through it
        _relaunch_under_torchrun(cfg, nproc_per_node, resume, progress=not quiet)
        return
    try:
        run(cfg, resume=resume, progress=not quiet)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        fail(str(exc))


def _relaunch_under_torchrun(cfg, nproc: int, resume: bool, progress: bool) -> None:
    """Train ``cfg`` with ``nproc`` processes through torchrun; fails with its exit status."""
    from cxrtriage.train.launch import run_torchrun

    try:
        code = run_torchrun(cfg, nproc, resume=resume, progress=progress)
    except ValueError as exc:
        fail(str(exc))
    if code:
        fail(f"distributed training failed (torchrun exit status {code}; see the ranks' errors above)", code)


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


@app.command()
def predict(
    inputs: list[str] = typer.Argument(..., help="Image files (DICOM, JPEG, PNG) and/or folders. With --engine: "
                                       "one SOURCE, a folder, a CSV of paths or a DICOMweb server URL."),
    model: Optional[Path] = typer.Option(None, "--model", "-m", help="Model (.onnx, sidecar .json or run folder); default: bundled."),
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
    """Triage images: label, probability and priority for each file.

    With --engine ray (or local), triage a whole archive into a Parquet dataset instead: one row
    per image (path, SOP Instance UID, label, probabilities, gate verdict, model version, error)."""
    if engine is not None:
        _bulk_predict(inputs, engine, out, model, batch_size, threads, address, workers, pacs_user, pacs_password,
                      pacs_token, dicomweb_root, modality, as_json)
        return
    if out is not None:
        fail("--out writes bulk results: add --engine ray (or --engine local)")
    from rich.table import Table

    from cxrtriage.infer import PRIORITY_ORDER, Engine, ModelNotFoundError

    files = _collect([Path(i) for i in inputs])
    try:
        engine = Engine(model, threads=threads, tta=tta)
    except ModelNotFoundError as exc:
        fail(str(exc))
    preds = engine.predict_files(files, batch_size=batch_size, progress=not as_json and len(files) > 20)
    if as_json:
        for p in preds:
            sys.stdout.write(json.dumps(p.to_dict()) + "\n")
        return
    if sort:
        preds = sorted(preds, key=lambda p: (PRIORITY_ORDER[p.priority], -(p.score or 0.0)))
    colours = {"urgent": "bold red", "review": "yellow", "routine": "green", "refused": "magenta", "error": "red"}
    table = Table(title=f"Triage with {engine.spec.name} ({engine.spec.version}), threshold {engine.spec.threshold:.3f}")
    for col in ("file", "label", "P(abnormal)", "priority", "note"):
        table.add_column(col, justify="right" if col == "P(abnormal)" else "left")
    for p in preds:
        note = p.error or (p.gate.get("reason") if p.priority == "refused" else "") or ""
        table.add_row(Path(p.source).name, p.label or "-", f"{p.score:.3f}" if p.score is not None else "-",
                      f"[{colours[p.priority]}]{p.priority}[/]", note)
    console.print(table)
    console.print(f"[dim]{DISCLAIMER}[/]")


def _bulk_predict(inputs: list[str], engine: str, out: Optional[Path], model: Optional[Path], batch_size: int,
                  threads: Optional[int], address: Optional[str], workers: Optional[int], user: Optional[str],
                  password: Optional[str], token: Optional[str], dicomweb_root: str,
                  modality: Optional[list[str]], as_json: bool) -> None:
    from cxrtriage.bulk import BulkError, DicomwebSource, bulk_triage, is_dicomweb
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
        dicomweb = DicomwebSource(PacsConnection(source, user, password, token, dicomweb_root),
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


@app.command()
def export(
    run: Path = typer.Argument(..., help="Training run folder (with best.pt, config.json, split.csv)."),
    fmt: str = typer.Option("onnx", "--format", help="Export format (onnx)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="ONNX file to write (default: <run>/model.onnx)."),
) -> None:
    """Export a trained run to ONNX + JSON sidecar (+ quality gate), choosing the threshold on validation."""
    if fmt != "onnx":
        fail(f"unknown format {fmt!r} (supported: onnx)")
    from cxrtriage.train.export import export_run

    try:
        path = export_run(run, out)
    except (FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    console.print(f"wrote {path} and {path.with_suffix('.json')}")


@app.command()
def ensemble(
    runs: list[Path] = typer.Argument(..., help="Two or more finished training runs (same task and split.csv)."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the ensemble's model.onnx, sidecar and gate."),
    target_sensitivity: Optional[float] = typer.Option(None, help="Choose the threshold for this sensitivity."),
    threshold_method: str = typer.Option("youden-plateau", help="youden-plateau or youden (see cxr train)."),
    cache_dir: Optional[Path] = typer.Option(None, help="Preprocessed image cache folder."),
    onnx: Optional[Path] = typer.Option(None, "--onnx", help="Write the model here (default: OUT/model.onnx)."),
    name: Optional[str] = typer.Option(None, help="Model name in the sidecar (default: cxr-TASK-ensemble)."),
    heatmap_from: Optional[list[int]] = typer.Option(None, "--heatmap-from", help="Heatmap from these members "
                                                     "only (0-based positions in RUNS; repeatable; default: all)."),
    half_weights: bool = typer.Option(False, "--half-weights", help="Store the weights as float16 (half the "
                                      "file; computation stays float32)."),
) -> None:
    """Combine trained runs into one model (mean probability, mean heatmap); threshold chosen on validation."""
    from cxrtriage.train.ensemble import build_ensemble

    try:
        path = build_ensemble(runs, out, threshold_method=threshold_method, target_sensitivity=target_sensitivity,
                              cache_dir=str(cache_dir) if cache_dir else None, progress=True, onnx_path=onnx,
                              name=name, heatmap_from=heatmap_from or None, half_weights=half_weights)
    except (FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    from cxrtriage.contract import ModelSpec

    spec = ModelSpec.load(path)
    v = spec.provenance["validation"]
    console.print(f"wrote {path}: validation ROC AUC {v['roc_auc']:.4f}"
                  + (f", macro AUC {v['macro_auc']:.4f}" if v.get("macro_auc") is not None else "")
                  + f", accuracy {v['accuracy']:.4f}, threshold {spec.threshold:.3f}")


@app.command()
def explain(
    inputs: list[Path] = typer.Argument(..., help="Image files and/or folders."),
    out: Path = typer.Option(Path("explanations"), "--out", "-o", help="Folder for the overlay PNGs."),
    model: Optional[Path] = typer.Option(None, "--model", "-m", help="Model (default: bundled). A run folder of a "
                                         "network without an in-graph map uses Grad-CAM (needs torch)."),
    npy: bool = typer.Option(False, "--npy", help="Also save each raw heatmap as .npy."),
    opacity: float = typer.Option(0.5, min=0.0, max=1.0, help="Heatmap opacity."),
) -> None:
    """Write, per image, a PNG of the heatmap over the radiograph with the call and its probability."""
    import numpy as np

    from cxrtriage.explain import overlay_for
    from cxrtriage.infer import Engine, ModelNotFoundError
    from cxrtriage.io import ImageReadError, read_radiograph

    files = _collect(inputs)
    try:
        engine = Engine(model)
    except ModelNotFoundError as exc:
        fail(str(exc))
    gradcam_model = None
    if not engine.spec.has_cam:
        from cxrtriage.models.checkpoint import load_checkpoint

        run = Path(model) if model and Path(model).is_dir() else engine.onnx_path.parent
        try:
            gradcam_model = load_checkpoint(run)
        except FileNotFoundError:
            fail(f"{engine.spec.name} has no in-graph heatmap and no checkpoint beside it for Grad-CAM")
    out.mkdir(parents=True, exist_ok=True)
    failed = 0
    for f in files:
        try:
            rg = read_radiograph(f)
        except ImageReadError as exc:
            err.print(f"[red]skipped[/] {f}: {exc}")
            failed += 1
            continue
        pred = engine.predict_radiographs([rg], heatmap=True)[0]
        if gradcam_model is not None and pred.ok:
            import torch

            from cxrtriage.data import to_model_input
            from cxrtriage.explain.gradcam import gradcam

            net, meta = gradcam_model
            x = torch.from_numpy(to_model_input(rg, meta["image_size"])).float()[None, None] / 255.0
            target = 1 + int(np.argmax([pred.probabilities[c] for c in engine.spec.classes[1:]]))
            pred.heatmap = gradcam(net, (x - meta["mean"]) / meta["std"], target)[0]
        png = out / f"{f.stem}.heatmap.png"
        overlay_for(rg.pixels, pred, opacity=opacity).save(png)
        if npy and pred.heatmap is not None:
            np.save(out / f"{f.stem}.heatmap.npy", pred.heatmap)
        console.print(f"{f.name}: {pred.label or pred.priority} "
                      f"{'' if pred.score is None else f'{pred.score:.3f} '}-> {png}")
    if failed:
        raise typer.Exit(1)


def _eval_samples(data: Optional[Path], manifest: Optional[Path], split: str, task: str, seed: int):
    from cxrtriage.data import kermany_samples, patient_split, read_manifest

    if manifest:
        samples = read_manifest(manifest)
        if any(s.split for s in samples):
            samples = [s for s in samples if s.split == split]
        return samples
    if data is None:
        fail("give --data ROOT (Kermany layout) or --manifest CSV")
    if split == "val":  # the same patient-wise split training made
        return [s for s in patient_split(kermany_samples(data, "train", task), 0.2, seed) if s.split == "val"]
    return kermany_samples(data, split, task)


@app.command()
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
    from cxrtriage.infer import Engine, ModelNotFoundError

    try:
        engine = Engine(model, gate=False, tta=tta)
    except ModelNotFoundError as exc:
        fail(str(exc))
    info = engine.spec
    try:
        task = get_task(info.task)
        samples = _eval_samples(data, manifest, split, task.name, info.training_seed)
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
    result = evaluate_predictions(task.name, list(info.classes), y[keep], probs, info.threshold, out, meta,
                                  n_boot=n_boot, label_thresholds=info.decision.label_thresholds)
    if as_json:
        sys.stdout.write(json.dumps(result) + "\n")
        return
    ci = result.get("roc_auc_ci") or [float("nan")] * 2
    console.print(f"[bold]{task.name}[/] on {split}: n={result['n']}  ROC AUC {result['roc_auc']:.4f} "
                  f"[{ci[0]:.4f}, {ci[1]:.4f}]  accuracy {result['accuracy']:.4f}  "
                  f"sensitivity {result['sensitivity']:.4f}  specificity {result['specificity']:.4f}  "
                  f"threshold {result['threshold']:.3f}")
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


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", help="Address to listen on (0.0.0.0 for all interfaces: set a token)."),
    port: int = typer.Option(8000, help="TCP port."),
    model: Optional[Path] = typer.Option(None, help="Model (.onnx, its .json or a run folder); default: the bundled one."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Database and uploads (default: $CXR_DATA_DIR or ./cxr-data)."),
    token_file: Optional[Path] = typer.Option(None, "--token-file", help="File holding the API token (or set CXR_API_TOKEN)."),
    max_upload_mb: Optional[float] = typer.Option(None, "--max-upload-mb", help="Request size limit in MiB (default 64)."),
    cors_origin: Optional[list[str]] = typer.Option(None, "--cors-origin", help="Allow this browser origin (repeatable; default: none)."),
    samples: Optional[bool] = typer.Option(None, "--samples/--no-samples", help="Offer the bundled sample radiographs on first start (default: yes, or $CXR_SAMPLES)."),
    pacs_url: Optional[str] = typer.Option(None, "--pacs-url", help="DICOMweb PACS whose studies the worklist lists and opens (or $CXR_PACS_URL; credentials: $CXR_PACS_USER/$CXR_PACS_PASSWORD or $CXR_PACS_TOKEN)."),
    threads: Optional[int] = typer.Option(None, "--threads", help="ONNX Runtime threads (default: $CXR_THREADS or half the cores)."),
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


@pacs_app.command("watch")
def pacs_watch(
    url: str = typer.Option(..., "--url", help="PACS base URL, e.g. http://orthanc:8042"),
    user: Optional[str] = typer.Option(None, "--user", help="HTTP Basic user."),
    password: Optional[str] = typer.Option(None, "--password", envvar="CXR_PACS_PASSWORD", help="HTTP Basic password."),
    token: Optional[str] = typer.Option(None, "--token", envvar="CXR_PACS_TOKEN", help="Bearer token (instead of user/password)."),
    mode: str = typer.Option("changes", "--mode", help="changes (Orthanc's change feed) or dicomweb (QIDO-RS polling)."),
    poll: float = typer.Option(1.0, "--poll", help="Seconds between polls."),
    state: Optional[Path] = typer.Option(None, "--state", help="SQLite state file (default ~/.cache/cxr-triage/pacs-state.sqlite)."),
    model: Optional[Path] = typer.Option(None, "--model", "-m", help="Model (.onnx, sidecar .json or run folder); default: bundled."),
    once: bool = typer.Option(False, "--once", help="One pass over what is new, then exit."),
    dicomweb_root: str = typer.Option("/dicom-web", "--dicomweb-root", help="DICOMweb path under --url."),
    store: str = typer.Option("stow", "--store", help="stow (STOW-RS) or rest (Orthanc POST /instances)."),
    workers: int = typer.Option(1, "--workers", help="Triage processes (each loads the model)."),
    batch_size: int = typer.Option(8, "--batch-size"),
    no_backfill: bool = typer.Option(False, "--no-backfill", help="On the first run, ignore what is already in the PACS."),
    lookback_days: Optional[int] = typer.Option(None, "--lookback-days", help="dicomweb mode: only studies of the last N days."),
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


@pacs_app.command("listen")
def pacs_listen(
    port: int = typer.Option(..., "--port", help="TCP port of the C-STORE receiver."),
    ae_title: str = typer.Option("CXRTRIAGE", "--ae-title", help="Our AE title."),
    forward: Optional[str] = typer.Option(None, "--forward", help="Send results with C-STORE to AE@host:port."),
    model: Optional[Path] = typer.Option(None, "--model", "-m", help="Model; default: bundled."),
    host: str = typer.Option("0.0.0.0", "--host", help="Address to listen on."),
    spool: Optional[Path] = typer.Option(None, "--spool", help="Spool folder (default ~/.cache/cxr-triage/listen-spool)."),
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


from cxrtriage.cli import model_commands  # noqa: E402  (commands kept in their own module)

app.command("models")(model_commands.models)
app.command("calibrate")(model_commands.calibrate)
