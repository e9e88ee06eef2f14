"""From a finished run to a served model: export the graph, choose the decision on validation,
compose the sidecar (:class:`~cxrtriage.contract.ModelSpec`) and save it, fit the quality gate.

Used by training (:func:`export_run`) and by the ensemble builder; the graph itself is written
by :mod:`cxrtriage.models.export`.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cxrtriage.about import __version__
from cxrtriage.contract import GATE_QUANTILE, Decision, Kind, ModelSpec, SpecError, triage_score, triage_target
from cxrtriage.data import Task, get_task, load_cached, read_manifest
from cxrtriage.data.generic import unlabelled_films
from cxrtriage.data.samples import Sample
from cxrtriage.evaluate.metrics import macro_auc, triage_auc
from cxrtriage.evaluate.multilabel import label_thresholds, validation_summary
from cxrtriage.evaluate.thresholds import operating_points
from cxrtriage.infer.gate import attach_gate, fit_feature_gate
from cxrtriage.models.checkpoint import model_from_checkpoint
from cxrtriage.models.export import export_onnx, run_onnx
from cxrtriage.train.config import TrainConfig
from cxrtriage.train.dataset import of_split, split_images, targets

GATE_FIT_IMAGES = 4000  # training images whose embeddings fit the quality gate


def export_run(out: str | Path, onnx_path: str | Path | None = None, stop_reason: str = "",
               progress: bool = False) -> Path:
    """Reload a run's best checkpoint, choose the threshold on its validation split, fit the
    quality gate and export ONNX + sidecar (``<run>/model.onnx`` unless ``onnx_path``)."""
    out = Path(out)
    cfg = TrainConfig.load(out / "config.json")
    task = get_task(cfg.task)
    best = torch.load(out / "best.pt", map_location="cpu", weights_only=False)
    model, ck = model_from_checkpoint(best)
    last = torch.load(out / "last.pt", map_location="cpu", weights_only=False) if (out / "last.pt").exists() else best
    samples = read_manifest(out / "split.csv")
    x_train, x_val = split_images(samples, ck["image_size"], cfg.cache_dir, progress=progress,
                                    intensity=cfg.intensity, border=cfg.border)
    val_s = of_split(samples, "val")
    onnx_path = Path(onnx_path) if onnx_path else out / "model.onnx"
    previous = _previous_training(onnx_path)
    # export first, then score validation with ONNX Runtime (what serving runs, and much faster
    # than torch eager on a CPU)
    graph = export_onnx(model, onnx_path, ck["image_size"], ck["mean"], ck["std"], multilabel=task.kind == "multilabel",
                        intensity=cfg.intensity, border=cfg.border)
    has_gate = "embedding" in graph.outputs
    val_out = run_onnx(onnx_path, x_val.numpy(), ["probs", "embedding"] if has_gate else ["probs"])
    probs, y_val = val_out["probs"], targets(task, val_s)
    decision = validation_decision(task, y_val, probs, cfg.threshold_method, cfg.target_sensitivity)
    write_val_predictions(out / "val_predictions.csv", task, val_s, probs)
    training = _training_facts(cfg, best, last, int(len(x_train)), stop_reason, previous)
    validation = validation_facts(task, y_val, probs)
    provenance = {"cxr_triage_version": __version__, "training": training, "validation": validation}
    if cfg.population:
        provenance["population"] = cfg.population
    if has_gate:
        idx = torch.randperm(len(x_train), generator=torch.Generator().manual_seed(cfg.seed))[:GATE_FIT_IMAGES]
        emb_train = run_onnx(onnx_path, x_train[idx].numpy(), ["embedding"])["embedding"]
        extra = (extra_gate_embeddings(onnx_path, cfg.gate_extra, ck["image_size"], cfg.intensity, cfg.cache_dir,
                                       cfg.seed, cfg.border) if cfg.gate_extra else None)
        provenance["gate"] = gate_from_embeddings(onnx_path, emb_train, val_out["embedding"], cfg.gate_quantile, extra)
    spec = graph.model_spec(
        name=f"cxr-{task.name}-{ck['arch']}", task=task.name, classes=task.classes, kind=task.kind,
        arch=ck["arch"], decision=decision, score=score_rule(task.kind), provenance=provenance,
    )
    spec.save(onnx_path)
    print(f"best epoch {best['epoch'] + 1}; validation ROC AUC {validation['roc_auc'] or float('nan'):.4f}; "
          f"threshold {decision.threshold:.3f}; model: {onnx_path}")
    return onnx_path


def score_rule(kind: Kind | str, detail: str = "") -> str:
    """The sidecar's description of the triage score."""
    rule = "max over findings of P(finding)" if Kind(kind) is Kind.MULTILABEL else "1 - P(normal)"
    return f"{rule}, {detail}" if detail else rule


def method_description(method: str, target_sensitivity: float | None) -> str:
    """How the threshold was chosen, as the sidecar records it."""
    return (f"sensitivity>={target_sensitivity}" if target_sensitivity else method) + " on validation"


def validation_decision(task: Task, y_val: np.ndarray, probs: np.ndarray, method: str,
                        target_sensitivity: float | None) -> Decision:
    """The decision chosen on validation: the operating and "urgent" thresholds of the triage
    score, and for a multi-label model each finding's own threshold (None where it is absent)."""
    threshold, urgent = operating_points(triage_target(y_val, task.kind), triage_score(probs, task.kind), method,
                                         target_sensitivity)
    per_label = (label_thresholds(y_val, probs, list(task.classes), method, target_sensitivity)
                 if task.kind == "multilabel" else None)
    return Decision(threshold=float(threshold), threshold_high=float(urgent),
                    method=method_description(method, target_sensitivity), label_thresholds=per_label)


def validation_facts(task: Task, y_val: np.ndarray, probs: np.ndarray) -> dict[str, Any]:
    """The sidecar's validation summary: AUCs, accuracy and (multi-label) per-finding counts."""
    if task.kind == "multilabel":
        labels = list(task.classes)
        vs = validation_summary(y_val, probs, labels)
        return {"n": int(len(y_val)), "roc_auc": vs["roc_auc"], "mean_auc": vs["mean_auc"],
                "per_label_auc": vs["per_label_auc"], "accuracy": vs["accuracy"],
                "label_positives": {c: int(n) for c, n in zip(labels, y_val.sum(axis=0))}}
    return {"n": int(len(y_val)), "roc_auc": triage_auc(y_val, probs),
            "macro_auc": macro_auc(y_val, probs) if task.num_classes > 2 else None,
            "accuracy": float((probs.argmax(1) == y_val).mean())}


def write_val_predictions(path: Path, task: Task, val_s: list[Sample], probs: np.ndarray) -> None:
    """One row per validation image: path, patient, label and the class probabilities."""
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "patient_id", "label", *[f"p_{c}" for c in task.classes]])
        for s, p in zip(val_s, probs):
            w.writerow([s.path, s.patient_id, s.label, *[f"{v:.6f}" for v in p]])


def gate_from_embeddings(onnx_path: Path, tr: np.ndarray, va: np.ndarray, quantile: float = GATE_QUANTILE,
                         extra: tuple[np.ndarray, np.ndarray, str] | None = None) -> dict[str, Any]:
    """Fit the gate on training embeddings ``tr``; threshold on even validation rows, report on odd ones.
    ``extra``: (fit half, other half, source) of films from elsewhere the model should accept: the
    first half joins the fit, the other's even rows the threshold, its odd rows are reported.
    Saves the gate beside the model and returns its sidecar entry."""
    fit, thr_rows = tr, va[0::2]
    if extra is not None:
        fit, thr_rows = np.concatenate([tr, extra[0]]), np.concatenate([thr_rows, extra[1][0::2]])
    gate = fit_feature_gate(fit, thr_rows, quantile=quantile)
    held = va[1::2]
    stats: dict[str, Any] = {"val_false_refusal_rate": float((gate.distance(held) > gate.threshold).mean()),
                             "n_fit": int(len(fit)), "n_threshold": int(len(thr_rows)), "n_heldout": int(len(held))}
    if extra is not None:
        other = extra[1][1::2]
        stats["extra_films"] = {"source": extra[2], "n_fit": int(len(extra[0])),
                                "n_threshold": int(len(extra[1][0::2])), "n_heldout": int(len(other)),
                                "false_refusal_rate": float((gate.distance(other) > gate.threshold).mean())}
    return attach_gate(onnx_path, gate, stats)


def extra_gate_embeddings(onnx_path: Path, source: str, size: int, intensity: str, cache_dir: str | None,
                          seed: int, border: str = "keep") -> tuple[np.ndarray, np.ndarray, str]:
    """Embeddings of the films in ``source`` (folder or CSV, no labels needed), in two patient-wise halves."""
    films = unlabelled_films(source)
    patients = sorted({s.patient_id for s in films})
    first = set(np.random.default_rng(seed).permutation(patients)[: len(patients) // 2].tolist())
    halves = [[s.path for s in films if (s.patient_id in first) == want] for want in (True, False)]
    if not halves[0] or not halves[1]:
        raise ValueError(f"{source}: the gate's extra films need at least two patients")
    emb = [run_onnx(onnx_path, load_cached(h, size, cache_dir, progress=False, intensity=intensity, border=border),
                    ["embedding"])["embedding"] for h in halves]
    return emb[0], emb[1], str(source)


def _previous_training(onnx_path: Path) -> dict[str, Any]:
    """The training facts of a sidecar already at ``onnx_path`` (empty when there is none)."""
    try:
        return dict(ModelSpec.load(onnx_path).provenance.get("training") or {})
    except (FileNotFoundError, SpecError):
        return {}


def _training_facts(cfg: TrainConfig, best: dict, last: dict, n_train: int, stop_reason: str,
                    previous: dict[str, Any]) -> dict[str, Any]:
    """The sidecar's training summary; a run whose last checkpoint was not kept keeps the earlier one."""
    history = last.get("history", [])
    if not history and previous:
        return {**previous, "best_epoch": best["epoch"] + 1}
    facts = {"epochs_run": len(history), "n_train": n_train, "best_epoch": best["epoch"] + 1,
             "seconds": round(float(last.get("elapsed", 0.0)), 1), "stop": stop_reason or None,
             "hardware": best.get("hardware"), "torch": best.get("torch"), "seed": cfg.seed}
    if cfg.pretrained or cfg.weights:
        facts["init"] = cfg.weights or "ImageNet"
    return facts
