"""Build a small ensemble from finished training runs: one ONNX graph, one sidecar, one gate.

Members must share the task and the patient-wise split (same ``split.csv``), so the
threshold is chosen on validation images that no member trained on.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from cxrtriage.about import __version__
from cxrtriage.contract import InputSpec, ModelSpec, SpecError
from cxrtriage.data import Task, get_task, load_cached, read_manifest
from cxrtriage.models.checkpoint import load_checkpoint
from cxrtriage.models.ensemble import EnsembleGraph, Member
from cxrtriage.models.export import export_graph, run_onnx
from cxrtriage.train.config import TrainConfig
from cxrtriage.train.dataset import of_split, targets
from cxrtriage.train.export import (
    GATE_FIT_IMAGES,
    gate_from_embeddings,
    score_rule,
    validation_decision,
    validation_facts,
    write_val_predictions,
)


def members_of(runs: list[str | Path], input_size: int | None = None) -> tuple[list[Member], int]:
    """The ensemble members of ``runs`` (their best checkpoints) and the ensemble's input size."""
    loaded = [load_checkpoint(r) for r in runs]
    size = input_size or max(meta["image_size"] for _, meta in loaded)
    return [Member(net, meta["image_size"], meta["mean"], meta["std"], size) for net, meta in loaded], size


def load_ensemble(folder: str | Path) -> EnsembleGraph:
    """The torch graph of an ensemble folder written by :func:`build_ensemble` (needs its member runs)."""
    spec = json.loads((Path(folder) / "ensemble.json").read_text())
    members, size = members_of(spec["runs"], spec["input_size"])
    return EnsembleGraph(members, size, heatmap_from=spec.get("heatmap_from"), groups=spec.get("groups")).eval()


def _split_of(run: Path) -> list[tuple[str, str]]:
    return [(s.path, s.split) for s in read_manifest(run / "split.csv")]


def build_ensemble(runs: list[str | Path], out: str | Path, threshold_method: str = "youden-plateau",
                   target_sensitivity: float | None = None, cache_dir: str | None = None,
                   seed: int = 0, progress: bool = False, onnx_path: str | Path | None = None,
                   name: str | None = None, heatmap_from: list[int] | None = None,
                   half_weights: bool = False, population: str | None = None, task: str | None = None,
                   border: str | None = None) -> Path:
    """Combine the best checkpoints of ``runs`` into ``<out>/model.onnx`` (or ``onnx_path``) with its
    sidecar and gate; ``out`` also gets the validation predictions, the split and ensemble.json.
    ``task``: a coarser task than the members' (``pneumonia`` from ``pneumonia3`` runs); ``border``:
    the border step in serving (default: the one the runs were trained with; when it differs, the
    sidecar says so)."""
    runs = [Path(r) for r in runs]
    loaded, member_task = _checked_runs(runs)
    task, groups = _coarse_task(member_task, task)
    members, size = members_of(runs)
    graph = EnsembleGraph(members, size, heatmap_from=heatmap_from, groups=groups).eval()

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    samples = read_manifest(runs[0] / "split.csv")
    cfg0 = TrainConfig.load(runs[0] / "config.json")
    intensity = _common_setting(runs, "intensity")
    trained_border = _common_setting(runs, "border")
    border = border or trained_border
    arr = load_cached([s.path for s in samples], size, cache_dir or cfg0.cache_dir, progress=progress,
                      intensity=intensity, border=border)
    is_val = np.array([s.split == "val" for s in samples])
    val_s = of_split(samples, "val")
    y_val = targets(task, val_s)
    exported = export_graph(graph, Path(onnx_path) if onnx_path else out / "model.onnx",
                            InputSpec(size=size, normalisation="per member, inside the graph", intensity=intensity,
                                      border=border),
                            ["probs", "cam", "embedding"], half_weights=half_weights)
    val_out = run_onnx(exported.path, arr[is_val], ["probs", "embedding"])
    probs = val_out["probs"]
    rng = np.random.default_rng(seed)
    train_idx = np.sort(rng.permutation(np.flatnonzero(~is_val))[:GATE_FIT_IMAGES])
    emb_train = run_onnx(exported.path, arr[train_idx], ["embedding"])["embedding"]

    decision = validation_decision(task, y_val, probs, threshold_method, target_sensitivity)
    write_val_predictions(out / "val_predictions.csv", task, val_s, probs)
    (out / "split.csv").write_bytes((runs[0] / "split.csv").read_bytes())
    archs = [meta["arch"] for _, meta in loaded]
    member_facts = [_member_facts(r, meta) for r, (_, meta) in zip(runs, loaded)]
    seconds = [m["training"].get("seconds") for m in member_facts if m["training"]]
    spec = exported.model_spec(
        name=name or f"cxr-{task.name}-ensemble", task=task.name, classes=task.classes, kind=task.kind,
        arch="ensemble(" + " + ".join(archs) + ")", decision=decision,
        score=score_rule(task.kind, "P = mean of the members' probabilities"),
        provenance={
            "members": member_facts,
            "heatmap_source": "class activation map of " + " + ".join(archs[i] for i in graph.heatmap_from),
            **({"border_in_training": trained_border} if border != trained_border else {}),
            **({"trained_as": {"task": member_task.name, "classes": list(member_task.classes), "groups": groups}}
               if groups else {}),
            "cxr_triage_version": __version__,
            "training": {"members": len(runs), "seconds": round(float(sum(s for s in seconds if s)), 1),
                         "n_train": int((~is_val).sum()), "seed": seed},
            "validation": validation_facts(task, y_val, probs),
            "gate": gate_from_embeddings(exported.path, emb_train, val_out["embedding"]),
            **({"population": population} if population else {}),
        },
    )
    spec.save(exported.path)
    (out / "ensemble.json").write_text(json.dumps({"runs": [str(r.resolve()) for r in runs], "input_size": size,
                                                   "heatmap_from": graph.heatmap_from, "groups": groups,
                                                   "threshold_method": threshold_method,
                                                   "target_sensitivity": target_sensitivity}, indent=2))
    return exported.path


def _checked_runs(runs: list[Path]) -> tuple[list[tuple[Any, dict]], Task]:
    """The runs' best checkpoints and their common task; refuses runs that cannot be combined."""
    if len(runs) < 2:
        raise ValueError("an ensemble needs at least two training runs")
    for r in runs:
        if not (r / "best.pt").exists() or not (r / "split.csv").exists():
            raise FileNotFoundError(f"{r}: not a finished training run (best.pt and split.csv needed)")
    loaded = [load_checkpoint(r) for r in runs]
    tasks = {meta["task"] for _, meta in loaded}
    if len(tasks) != 1:
        raise ValueError(f"the runs were trained for different tasks: {sorted(tasks)}")
    task = get_task(tasks.pop())
    if task.kind == "multilabel":
        raise ValueError("ensembles of multi-label runs are not supported")
    split = _split_of(runs[0])
    for r in runs[1:]:
        if _split_of(r) != split:
            raise ValueError(f"{r} was trained on a different split than {runs[0]}; "
                             "train the members from the same manifest (cxr data split)")
    return loaded, task


def _coarse_task(member_task: Task, name: str | None) -> tuple[Task, list[list[int]] | None]:
    """The ensemble's task and, when it is coarser than the members', which member classes make up
    each of its classes."""
    if name is None or name == member_task.name:
        return member_task, None
    coarse = get_task(name)
    if coarse.kind != "single" or member_task.kind != "single":
        raise ValueError("only single-label runs can answer a coarser task")
    try:
        owner = [coarse.index(c) for c in member_task.classes]
    except ValueError as exc:
        raise ValueError(f"runs trained for {member_task.name!r} cannot answer {coarse.name!r}: {exc}") from None
    groups = [[i for i, j in enumerate(owner) if j == k] for k in range(coarse.num_classes)]
    if not all(groups):
        raise ValueError(f"runs trained for {member_task.name!r} have no class for "
                         f"{[c for c, g in zip(coarse.classes, groups) if not g]} of {coarse.name!r}")
    return coarse, groups


def _common_setting(runs: list[Path], name: str) -> str:
    """A preprocessing setting every member was trained with (the ensemble has one input)."""
    found = {str(getattr(TrainConfig.load(r / "config.json"), name)) for r in runs}
    if len(found) != 1:
        raise ValueError(f"the runs were trained with different {name} settings ({', '.join(sorted(found))}); "
                         "an ensemble's members must share it")
    return found.pop()


def _member_facts(run: Path, meta: dict) -> dict[str, Any]:
    """What the sidecar records of one member: its run, network, input size, training and validation."""
    try:
        prov = ModelSpec.load(run / "model.json").provenance
    except (FileNotFoundError, SpecError):
        prov = {}
    return {"run": run.name, "arch": meta["arch"], "image_size": meta["image_size"],
            "training": prov.get("training"), "validation": prov.get("validation")}
