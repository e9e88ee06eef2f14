"""``cxr train``, ``cxr export``, ``cxr ensemble``: training runs and their serving models."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer

from cxrtriage.cli.common import console, fail
from cxrtriage.contract import GATE_QUANTILE

# options defined apart, so the command's signature stays readable
_INTENSITY = typer.Option("none", help="Intensity normalisation of every image, the same in serving: none, "
    "equalise (histogram equalisation: removes exposure and processing differences) or clahe (the same, "
    "tile by tile: local contrast too).")
_BORDER = typer.Option("keep", "--border", help="keep, or trim: cut uniform edge rows and columns "
    "(collimation, padding) off every image before the network, the same in serving.")
_TEACHER = typer.Option(None, "--teacher", help="Distil: also learn this model's probabilities "
    "(a bundled name, an .onnx, a run or ensemble folder), e.g. an ensemble "
    "too slow to serve.")
_DISTILL_WEIGHT = typer.Option(0.5, "--distill-weight", help="Share of the teacher's term in the loss.")
_DISTILL_TEMPERATURE = typer.Option(2.0, "--distill-temperature", help="Softening temperature of the "
    "teacher's and the student's probabilities.")
_GATE_EXTRA = typer.Option(None, "--gate-extra", help="Films from other hospitals the quality "
    "gate should also accept (folder or CSV with a path column; no "
    "labels): half join its fit, half set and check its threshold.")
_GATE_QUANTILE = typer.Option(GATE_QUANTILE, "--gate-quantile", min=0.5, max=1.0, help="Gate threshold: this "
    "quantile of the validation films' distances (x 1.05).")
_PROBE_VIEWS = typer.Option(1, "--probe-views", min=0, help="Linear probes: augmented copies of the "
    "training set added to it.")
_LOSS = typer.Option("bce", help="Multi-label loss: bce (per-finding positive weights) or focal.")
_SAMPLER = typer.Option("rare", help="Multi-label sampler: rare (keeps rare findings present) or uniform.")
_POPULATION = typer.Option(None, "--population", help="Who the films came from: pediatric or adult (recorded in "
                           "the sidecar; routing by DICOM patient age uses it).")
_NPROC_PER_NODE = typer.Option(1, "--nproc-per-node", min=1, help="Data-parallel processes on this machine "
    "(re-launched through torchrun; --batch-size stays the global batch).")
_AUGMENT_STRENGTH = typer.Option(1.0, min=0.0, help="Scale every augmentation range (rotation, shift, "
    "zoom, exposure, blur, noise); 0.5 halves them.")
_ZOOM = typer.Option(None, "--zoom", help="Zoom range of augmentation, two factors LOW HIGH (> 1 magnifies; "
    "default 0.9 1.15 times --augment-strength), e.g. 0.8 1.4 so the field of view carries no label.")
_HFLIP = typer.Option(0.0, min=0.0, max=1.0, help="Probability of a left-right flip in augmentation "
    "(default 0: the heart's side carries meaning).")
_MIXUP = typer.Option(None, "--mixup", help="Mixup: blend image pairs and their labels with "
    "weights drawn from Beta(alpha, alpha); this is alpha (e.g. 0.2).")
_EMA_DECAY = typer.Option(None, "--ema-decay", help="Validate, keep and export an exponential "
    "moving average of the weights with this decay (e.g. 0.998).")
_WEIGHTS = typer.Option(None, "--weights", help="Start from a local file: a backbone's state "
    "dict, or a `cxr train` checkpoint of the same network (e.g. to "
    "fine-tune a run at a larger size).")
_BACKBONE_LR_MULT = typer.Option(None, "--backbone-lr-mult", help="Backbone LR = lr x this "
    "(default 0.1 with pretrained weights, else 1).")
_THRESHOLD_METHOD = typer.Option("youden-plateau", help="youden-plateau (Youden's J averaged over +-1 logit: "
    "the middle of the ROC's flat top) or youden (its maximum).")
_ARCH = typer.Option("cxrnet", help="cxrnet (default), cxrnet_wide, ref_cnn150, ref_vgg200, lite0_probe, "
    "lite1_probe, lite2_probe "
    "(frozen ImageNet features + logistic regression), or a transfer "
    "backbone: efficientnet_lite0/1/2, efficientnet_b0, resnet18, resnet50, densenet121, "
    "mobilenet_v2, mobilenet_v3_large, mobilenet_v3_small, inception_v3.")


def train(
    out: Path = typer.Option(..., "--out", "-o", help="Run folder (config, metrics, curves, checkpoints, model)."),
    data: Optional[Path] = typer.Option(None, help="Dataset root (Kermany layout); split patient-wise on the fly."),
    manifest: Optional[Path] = typer.Option(None, help="Manifest CSV from `cxr data split` (preferred)."),
    task: str = typer.Option("pneumonia", help="pneumonia, pneumonia3, covid3 or nih14 (multi-label)."),
    arch: str = _ARCH,
    image_size: Optional[int] = typer.Option(None, help="Input size in px (default: the architecture's)."),
    epochs: int = typer.Option(20),
    batch_size: int = typer.Option(64),
    lr: Optional[float] = typer.Option(None, help="Peak learning rate (default: the architecture's)."),
    optimizer: Optional[str] = typer.Option(None, help="adamw, adam or sgd (default: the architecture's)."),
    seed: int = typer.Option(0),
    patience: int = typer.Option(6, help="Early stopping: epochs without validation AUC gain."),
    time_budget: Optional[float] = typer.Option(None, help="Stop after this many minutes of training."),
    target_sensitivity: Optional[float] = typer.Option(None, help="Choose the threshold for this sensitivity."),
    threshold_method: str = _THRESHOLD_METHOD,
    no_augment: bool = typer.Option(False, "--no-augment", help="Disable augmentation."),
    augment_strength: float = _AUGMENT_STRENGTH,
    zoom: Optional[tuple[float, float]] = _ZOOM,
    hflip: float = _HFLIP,
    mixup: Optional[float] = _MIXUP,
    ema_decay: Optional[float] = _EMA_DECAY,
    intensity: str = _INTENSITY,
    border: str = _BORDER,
    class_weights: bool = typer.Option(True, help="Weight the loss by inverse class frequency."),
    dropout: Optional[float] = typer.Option(None, help="Override the network's dropout."),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
    cache_dir: Optional[Path] = typer.Option(None, help="Preprocessed image cache folder."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint."),
    stop_after: Optional[int] = typer.Option(None, help="Pause after this many epochs (continue with --resume)."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
    pretrained: bool = typer.Option(False, "--pretrained", help="Backbones: start from ImageNet weights "
                                    "(EfficientNet-Lite0/1/2 offline; others via torch's download cache)."),
    weights: Optional[Path] = _WEIGHTS,
    freeze_epochs: int = typer.Option(0, "--freeze-epochs", help="Train only the head for the first N epochs."),
    backbone_lr_mult: Optional[float] = _BACKBONE_LR_MULT,
    probe_views: int = _PROBE_VIEWS,
    loss: str = _LOSS,
    sampler: str = _SAMPLER,
    teacher: Optional[str] = _TEACHER,
    distill_weight: float = _DISTILL_WEIGHT,
    distill_temperature: float = _DISTILL_TEMPERATURE,
    gate_extra: Optional[Path] = _GATE_EXTRA,
    gate_quantile: float = _GATE_QUANTILE,
    population: Optional[str] = _POPULATION,
    nproc_per_node: int = _NPROC_PER_NODE,
) -> None:
    """Train a classifier; writes config, per-epoch metrics, curves, checkpoints and an ONNX model.

    Also runs under torchrun (one process per GPU or CPU share, on one machine or many)."""
    from cxrtriage.contract import BORDERS, INTENSITIES
    from cxrtriage.train.config import TrainConfig
    from cxrtriage.train.trainer import train as run

    _one_of("--intensity", intensity, INTENSITIES)
    _one_of("--border", border, BORDERS)
    cfg = TrainConfig(
        out_dir=str(out), data=str(data) if data else None, manifest=str(manifest) if manifest else None,
        task=task, arch=arch, image_size=image_size, epochs=epochs, batch_size=batch_size, lr=lr,
        optimizer=optimizer, seed=seed, patience=patience,
        time_budget_s=time_budget * 60 if time_budget else None, target_sensitivity=target_sensitivity,
        threshold_method=threshold_method,
        augment=not no_augment, augment_strength=augment_strength, zoom=zoom, hflip=hflip, mixup=mixup,
        ema_decay=ema_decay,
        class_weights=class_weights, dropout=dropout, intensity=intensity, border=border,
        stop_after=stop_after, device=device, cache_dir=str(cache_dir) if cache_dir else None,
        pretrained=pretrained, weights=str(weights) if weights else None, freeze_epochs=freeze_epochs,
        backbone_lr_mult=backbone_lr_mult, loss=loss, sampler=sampler, probe_views=probe_views,
        gate_extra=str(gate_extra) if gate_extra else None, gate_quantile=gate_quantile,
        teacher=teacher, distill_weight=distill_weight, distill_temperature=distill_temperature,
        population=_checked_population(population),
    )
    if nproc_per_node > 1 and "LOCAL_RANK" not in os.environ:  # not yet under torchrun: re-launch through it
        _relaunch_under_torchrun(cfg, nproc_per_node, resume, progress=not quiet)
        return
    try:
        run(cfg, resume=resume, progress=not quiet)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        fail(str(exc))


def _one_of(option: str, value: str | None, allowed: tuple[str, ...]) -> str | None:
    """``value`` when it is None or one of ``allowed``; else the command fails naming the choices."""
    if value is not None and value not in allowed:
        fail(f"unknown {option} {value!r}; choose one of: {', '.join(allowed)}")
    return value


def _checked_population(population: str | None) -> str | None:
    from cxrtriage.contract import POPULATIONS

    return _one_of("--population", population, POPULATIONS)


def _relaunch_under_torchrun(cfg, nproc: int, resume: bool, progress: bool) -> None:
    """Train ``cfg`` with ``nproc`` processes through torchrun; fails with its exit status."""
    from cxrtriage.train.launch import run_torchrun

    try:
        code = run_torchrun(cfg, nproc, resume=resume, progress=progress)
    except ValueError as exc:
        fail(str(exc))
    if code:
        fail(f"distributed training failed (torchrun exit status {code}; see the ranks' errors above)", code)


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
    population: Optional[str] = _POPULATION,
    task: Optional[str] = typer.Option(None, "--task", help="Answer a coarser task than the runs were trained "
                                       "for (e.g. pneumonia from pneumonia3 runs: P(pneumonia) = P(bacterial) "
                                       "+ P(viral)); default: the runs' own."),
    border: Optional[str] = typer.Option(None, "--border", help="keep or trim (uniform frame borders cut off "
                                         "in serving); default: what the runs were trained with."),
) -> None:
    """Combine trained runs into one model (mean probability, mean heatmap); threshold chosen on validation."""
    from cxrtriage.train.ensemble import build_ensemble

    try:
        path = build_ensemble(runs, out, threshold_method=threshold_method, target_sensitivity=target_sensitivity,
                              cache_dir=str(cache_dir) if cache_dir else None, progress=True, onnx_path=onnx,
                              name=name, heatmap_from=heatmap_from or None, half_weights=half_weights,
                              population=_checked_population(population), task=task, border=border)
    except (FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    from cxrtriage.contract import ModelSpec

    spec = ModelSpec.load(path)
    v = spec.provenance["validation"]
    console.print(f"wrote {path}: validation ROC AUC {v['roc_auc']:.4f}"
                  + (f", macro AUC {v['macro_auc']:.4f}" if v.get("macro_auc") is not None else "")
                  + f", accuracy {v['accuracy']:.4f}, threshold {spec.threshold:.3f}")
