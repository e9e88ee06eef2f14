"""Build the bundled adult model from a recipe of ``bench/adult.py``: probes on frozen trunks, one
ONNX graph (the mean of the members' per-finding probabilities), its sidecar and its gate.

Each member is a frozen ImageNet trunk whose head is one logistic regression per finding, fitted on
the cached features of the split's training films (``cxrtriage.train.adult_probe``). Thresholds are
chosen on the split's validation films: the triage ("any finding") and urgent thresholds as for
every model, and each finding's own threshold for a stated specificity. The gate is fitted on the
training films plus half of the Hannover patients' films (films only, no labels).

    python -m cxrtriage.train.adult_build --manifest runs/nih-split.csv --out runs/adult14-ens \\
        [--trunks lite0_probe@320,lite0_probe@448,lite1_probe@384,lite2_probe@320] [--smooth 0.1] [--C 0.003] [--half]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from cxrtriage.about import __version__
from cxrtriage.contract import InputSpec, Kind, triage_score, triage_target
from cxrtriage.data import get_task, load_cached, read_manifest
from cxrtriage.evaluate.multilabel import specificity_thresholds
from cxrtriage.evaluate.thresholds import operating_points
from cxrtriage.models.archs import build_model
from cxrtriage.models.ensemble import EnsembleGraph, Member
from cxrtriage.models.export import export_graph, run_onnx
from cxrtriage.models.weights import init_weights
from cxrtriage.train.adult_data import adult_films, trunk_features
from cxrtriage.train.adult_probe import fit_findings, parse_trunk
from cxrtriage.train.export import extra_gate_embeddings, gate_from_embeddings, score_rule, validation_facts

DEFAULT_TRUNKS = ("lite0_probe@320", "lite0_probe@448", "lite1_probe@384", "lite2_probe@320")
FINDING_SPECIFICITY = 0.9
GATE_EXTRA = "covid-hannover/labels.csv"


def members(trunks: list[str], data: Path, train_paths: list[str], y_train: np.ndarray, C: float, smooth: float,
            cache: Path, input_size: int) -> list[Member]:
    """One member per trunk, its head fitted on the cached features of the training films."""
    films = adult_films(data)
    row = {p: i for i, p in enumerate(films.paths)}
    missing = [p for p in train_paths if p not in row]
    if missing:
        raise ValueError(f"{len(missing)} training film(s) are not among the adult films of {data}, e.g. {missing[0]}")
    idx = np.array([row[p] for p in train_paths])
    out = []
    for t in trunks:
        arch, size, intensity = parse_trunk(t)
        if intensity != "none":
            raise ValueError(f"{t}: the members share one input; intensity steps are not supported here")
        cached = trunk_features(films.paths, arch, size, cache, intensity)
        probe = fit_findings(cached["f"][idx], y_train, C, smooth)
        net = build_model(arch, y_train.shape[1], size).eval()
        init_weights(net, arch, pretrained=True)
        w, b = probe.coef()
        net.head.weight.data = _tensor(w)
        net.head.bias.data = _tensor(b)
        mean, std = (float(v) for v in cached["mean_std"])
        out.append(Member(net, size, mean, std, input_size))
        print(f"{t}: fitted on {len(idx)} films ({cached['f'].shape[1]} features)")
    return out


def _tensor(a: np.ndarray):
    import torch

    return torch.tensor(a, dtype=torch.float32)


def build(manifest: Path, out: Path, data: Path, trunks: list[str], C: float, smooth: float, cache: Path,
          specificity: float = FINDING_SPECIFICITY, seed: int = 0, half: bool = False) -> Path:
    task = get_task("nih14")
    samples = read_manifest(manifest)
    train = [s for s in samples if s.split == "train"]
    val = [s for s in samples if s.split == "val"]
    y_train = np.stack([task.multi_hot(s.label) for s in train]).astype(float)
    y_val = np.stack([task.multi_hot(s.label) for s in val]).astype(int)
    size = max(parse_trunk(t)[1] for t in trunks)
    graph = EnsembleGraph(members(trunks, data, [str(Path(s.path).resolve()) for s in train], y_train, C, smooth,
                                  cache, size), size, multilabel=True).eval()
    out.mkdir(parents=True, exist_ok=True)
    exported = export_graph(graph, out / "model.onnx",
                            InputSpec(size=size, normalisation="per member, inside the graph"),
                            ["probs", "cam", "embedding"], half_weights=half)
    val_out = run_onnx(exported.path, load_cached([s.path for s in val], size, progress=False), ["probs", "embedding"])
    probs = val_out["probs"]
    threshold, urgent = operating_points(triage_target(y_val, Kind.MULTILABEL), triage_score(probs, Kind.MULTILABEL),
                                         "youden-plateau")
    from cxrtriage.contract import Decision

    decision = Decision(threshold=float(threshold), threshold_high=float(urgent),
                        method="youden-plateau on validation",
                        label_thresholds=specificity_thresholds(y_val, probs, list(task.classes), specificity))
    rng = np.random.default_rng(seed)
    fit_idx = np.sort(rng.permutation(len(train))[:1000])
    emb_train = run_onnx(exported.path, load_cached([train[i].path for i in fit_idx], size, progress=False),
                         ["embedding"])["embedding"]
    extra = extra_gate_embeddings(exported.path, str(data / GATE_EXTRA), size, "none", None, seed)
    spec = exported.model_spec(
        name="cxr-adult14", task=task.name, classes=task.classes, kind=task.kind,
        arch="ensemble(" + " + ".join(trunks) + ")", decision=decision,
        score=score_rule(task.kind, "P = mean of the members' probabilities"),
        provenance={
            "label_thresholds_method": f"per finding: the lowest threshold with specificity >= {specificity} "
                                      f"on the {len(val)} val films of {manifest.name}",
            "members": [{"arch": parse_trunk(t)[0], "image_size": parse_trunk(t)[1]} for t in trunks],
            "cxr_triage_version": __version__,
            "training": {"recipe": {"trunks": trunks, "C": C, "label_smoothing": smooth,
                                    "head": "one logistic regression per finding on standardised frozen features"},
                         "n_train": len(train), "seed": seed, "init": "ImageNet",
                         "command": f"python -m cxrtriage.train.adult_build --manifest {manifest} --out {out}"
                                    + (" --half" if half else "")},
            "validation": validation_facts(task, y_val, probs),
            "gate": gate_from_embeddings(exported.path, emb_train, val_out["embedding"], 0.99, extra),
            "population": "adult",
        },
    )
    spec.save(exported.path)
    return exported.path


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--manifest", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--data", type=Path, required=True,
                    help="the folder holding nih-cxr14/ (and covid-multisource/, covid-hannover/ for the gate)")
    ap.add_argument("--trunks", default=",".join(DEFAULT_TRUNKS))
    ap.add_argument("--C", type=float, default=0.003)
    ap.add_argument("--smooth", type=float, default=0.1)
    ap.add_argument("--specificity", type=float, default=FINDING_SPECIFICITY)
    ap.add_argument("--cache", type=Path, default=Path("runs/adult-features"))
    ap.add_argument("--half", action="store_true", help="store the weights as float16 (half the file)")
    args = ap.parse_args(argv)
    path = build(args.manifest, args.out, args.data.resolve(), args.trunks.split(","), args.C, args.smooth,
                 args.cache, args.specificity, half=args.half)
    print(f"model: {path}")


if __name__ == "__main__":
    main()
