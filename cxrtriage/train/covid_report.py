"""A three-class report with confidence intervals that resample patients, not films.

Films of one patient (follow-ups, re-crops of one figure) are not independent, so each bootstrap
draw takes whole patients with replacement. Reports the 3 x 3 confusion matrix (arg-max class),
per class sensitivity / specificity / PPV (one class against the other two) and one-vs-rest AUC,
macro AUC, and COVID-19-vs-rest AUC, each with its 95% CI.

    python -m cxrtriage.train.covid_report --model runs/covid3 --manifest runs/covid3/split.csv --split val
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cxrtriage.evaluate.metrics import patient_weights, percentile_ci, weighted_roc_auc


def _rates(w: np.ndarray, y: np.ndarray, pred: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """Sensitivity, specificity and PPV of class ``k`` for each row of film weights ``w`` (B, N)."""
    pos, called = y == k, pred == k
    tp = (w * (pos & called)).sum(1)
    fn = (w * (pos & ~called)).sum(1)
    fp = (w * (~pos & called)).sum(1)
    tn = (w * (~pos & ~called)).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return {"sensitivity": tp / (tp + fn), "specificity": tn / (tn + fp), "ppv": tp / (tp + fp)}


def three_class_report(y: np.ndarray, probs: np.ndarray, patients: Sequence[str], classes: Sequence[str],
                       n_boot: int = 1000, seed: int = 0) -> dict:
    """The report of class indices ``y`` (N,) against probabilities (N, C); CIs resample ``patients``."""
    y, p = np.asarray(y, dtype=int), np.asarray(probs, dtype=float)
    if p.shape != (len(y), len(classes)) or len(patients) != len(y):
        raise ValueError(f"need probs of shape ({len(y)}, {len(classes)}) and one patient per film")
    if len(y) == 0:
        raise ValueError("no films")
    pred = p.argmax(1)
    n_pat = len(np.unique(np.asarray(patients)))
    w_boot = patient_weights(np.asarray(patients), n_boot, seed)
    ones = np.ones((1, len(y)))
    out: dict = {"n": int(len(y)), "patients": int(n_pat), "classes": list(classes),
                 "confusion_matrix": [[int(((y == i) & (pred == j)).sum()) for j in range(len(classes))]
                                      for i in range(len(classes))],
                 "accuracy": float((pred == y).mean()), "per_class": {}}
    aucs, auc_reps = [], []
    for k, name in enumerate(classes):
        point = {m: float(v[0]) for m, v in _rates(ones, y, pred, k).items()}
        reps = _rates(w_boot, y, pred, k) if n_boot > 0 else {}
        row = {m: point[m] for m in point} | {f"{m}_ci": percentile_ci(reps[m]) if reps else None for m in point}
        row["n"] = int((y == k).sum())
        if 0 < row["n"] < len(y):
            row["auc"] = float(weighted_roc_auc(ones, (y == k).astype(int), p[:, k])[0])
            r = weighted_roc_auc(w_boot, (y == k).astype(int), p[:, k]) if n_boot > 0 else np.zeros(0)
            row["auc_ci"] = percentile_ci(r)
            aucs.append(row["auc"])
            auc_reps.append(r)
        out["per_class"][name] = row
    present = len(aucs) == len(classes)
    out["macro_auc"] = float(np.mean(aucs)) if present else None
    out["macro_auc_ci"] = percentile_ci(np.mean(auc_reps, axis=0)) if present and n_boot > 0 else None
    return out


def format_report(r: dict) -> str:
    """The report as text: confusion matrix, then one row per class."""
    c = r["classes"]
    width = max(len(x) for x in c) + 2
    lines = [f"{r['n']} films of {r['patients']} patients; accuracy {r['accuracy']:.3f}; macro AUC "
             + (f"{r['macro_auc']:.3f}" if r["macro_auc"] is not None else "-")
             + (f" [{r['macro_auc_ci'][0]:.3f}, {r['macro_auc_ci'][1]:.3f}]" if r.get("macro_auc_ci") else ""),
             "confusion matrix (rows: true, columns: called)",
             " " * width + "".join(f"{x:>{width}}" for x in c)]
    lines += [f"{x:<{width}}" + "".join(f"{v:>{width}}" for v in row) for x, row in zip(c, r["confusion_matrix"])]

    def ci(v: float, band: list[float] | None) -> str:
        return f"{v:.3f}" + (f" [{band[0]:.2f}, {band[1]:.2f}]" if band else "") if np.isfinite(v) else "-"

    lines.append(f"{'class':<{width}} {'n':>5} " + " ".join(f"{h:>20}" for h in
                                                         ("sensitivity", "specificity", "PPV", "AUC (vs rest)")))
    for x in c:
        e = r["per_class"][x]
        lines.append(f"{x:<{width}} {e['n']:>5} {ci(e['sensitivity'], e['sensitivity_ci']):>20} "
                     f"{ci(e['specificity'], e['specificity_ci']):>20} {ci(e['ppv'], e['ppv_ci']):>20} "
                     f"{ci(e['auc'], e.get('auc_ci')) if 'auc' in e else '-':>20}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Score a manifest's films with an exported model (the ONNX graph, after the sidecar's input steps)."""
    from cxrtriage.contract import ModelSpec
    from cxrtriage.data import load_cached, read_manifest
    from cxrtriage.models.export import run_onnx

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, required=True, help="a run folder or an .onnx file with its sidecar")
    ap.add_argument("--manifest", type=Path, required=True, help="path,label,patient_id[,split]")
    ap.add_argument("--split", default=None, help="only the films of this split (val, test, ...)")
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    onnx = args.model / "model.onnx" if args.model.is_dir() else args.model
    spec = ModelSpec.load(onnx)
    samples = [s for s in read_manifest(args.manifest) if args.split is None or s.split == args.split]
    if not samples:
        raise SystemExit(f"{args.manifest}: no films" + (f" in split {args.split!r}" if args.split else ""))
    y = np.array([spec.classes.index(s.label) if s.label in spec.classes else -1 for s in samples])
    if (y < 0).any():
        bad = sorted({s.label for s, k in zip(samples, y) if k < 0})
        raise SystemExit(f"{args.manifest}: labels {bad} are not classes of {spec.name} ({', '.join(spec.classes)})")
    x = load_cached([s.path for s in samples], spec.input.size, progress=False, intensity=spec.input.intensity,
                    border=spec.input.border)
    probs = spec.calibrated(run_onnx(onnx, x, ["probs"])["probs"])
    r = three_class_report(y, probs, [s.patient_id for s in samples], spec.classes, args.n_boot)
    print(json.dumps(r) if args.json else format_report(r))


if __name__ == "__main__":
    main()
