"""How much a site head (`cxr calibrate --head`) adds, and how that grows with the films it is fitted on.

The model's graph (without any site head it carries) scores test-dev once; patient-wise k-fold
splits (repeated with other seeds) fit a head on k-1 folds and rank the held-out fold. Prints, for
each k, the held-out ROC AUC without and with the head (mean over folds and repeats) and in how many
folds the head ranked better; for each L2 given, the same at k = 2 (half and half); and small
samples: N films of each class (whole patients, drawn 20 times) against all other patients' films.

    python bench/site_head.py --model runs/p3to2-trim/cxr-pneumonia.onnx [--folds 2 3 4 8] [--l2 0.03 0.1 0.3 1] [--per-class 30 60]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedGroupKFold

from cxrtriage.calibrate.head import DEFAULT_L2, fit_site_head, network_engine
from cxrtriage.contract import triage_score, triage_target
from cxrtriage.data import get_task, kermany_samples
from cxrtriage.infer import Engine
from cxrtriage.io import read_radiograph


def graph_outputs(model: str, data: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str], Engine]:
    engine = network_engine(Engine(model, gate=False))
    task = get_task(engine.spec.task)
    films = kermany_samples(data, "test-dev", task.name)
    probs, emb = [], []
    for i in range(0, len(films), 64):
        x = engine.prepare([read_radiograph(s.path) for s in films[i:i + 64]]).images
        out = engine.run_arrays(x)
        probs.append(out["probs"])
        emb.append(out["embedding"])
    y = np.array([task.index(s.label) for s in films])
    return np.concatenate(probs), np.concatenate(emb), y, [s.patient_id for s in films], engine


def held_out(probs, emb, y, groups, kind, k: int, l2: float, repeats: int) -> tuple[float, float, int, int]:
    pos = triage_target(y, kind)
    base, head = [], []
    for rep in range(repeats):
        for fit, held in StratifiedGroupKFold(k, shuffle=True, random_state=rep).split(emb, y, groups):
            h = fit_site_head(probs[fit], emb[fit], y[fit], l2)
            base.append(roc_auc_score(pos[held], triage_score(probs[held], kind)))
            head.append(roc_auc_score(pos[held], triage_score(h.apply(probs[held], emb[held]), kind)))
    better = int(np.sum(np.array(head) > np.array(base)))
    return float(np.mean(base)), float(np.mean(head)), better, len(base)


def small_sample(probs, emb, y, groups, kind, n: int, l2: float, draws: int = 20) -> tuple[float, float, int, int]:
    """``n`` films of each class from whole patients drawn at random fit the head; every film of
    the other patients is held out."""
    rng = np.random.default_rng(0)
    pos, groups = triage_target(y, kind), np.asarray(groups)
    base, head = [], []
    for _ in range(draws):
        order = {g: i for i, g in enumerate(rng.permutation(np.unique(groups)))}
        fit = np.concatenate([sorted(np.where(y == c)[0], key=lambda i: order[groups[i]])[:n] for c in np.unique(y)])
        held = np.where(~np.isin(groups, groups[fit]))[0]
        h = fit_site_head(probs[fit], emb[fit], y[fit], l2)
        base.append(roc_auc_score(pos[held], triage_score(probs[held], kind)))
        head.append(roc_auc_score(pos[held], triage_score(h.apply(probs[held], emb[held]), kind)))
    return float(np.mean(base)), float(np.mean(head)), int(np.sum(np.array(head) > np.array(base))), draws


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="runs/p3to2-trim/cxr-pneumonia.onnx",
                    help="bundled name, .onnx or run folder (a site head it carries is taken off first)")
    ap.add_argument("--data", type=Path, default=Path("../shared/data/kermany-224"))
    ap.add_argument("--folds", type=int, nargs="+", default=[2, 3, 4, 8])
    ap.add_argument("--l2", type=float, nargs="+", default=[0.03, DEFAULT_L2, 0.3, 1.0])
    ap.add_argument("--repeats", type=int, default=6)
    ap.add_argument("--per-class", type=int, nargs="*", default=[30, 60],
                    help="small samples: this many films of each class fit the head")
    args = ap.parse_args()
    probs, emb, y, groups, engine = graph_outputs(args.model, args.data)
    kind = engine.spec.kind
    print(f"{engine.spec.name} ({engine.spec.version}): test-dev {len(y)} films, {emb.shape[1]} embedding features; "
          f"held-out ROC AUC of the triage score, mean over folds x {args.repeats} repeats")
    print(f"{'fitted on':>22} {'L2':>6} {'network':>8} {'+ head':>8} {'head better':>12}")
    rows = [(k, DEFAULT_L2) for k in args.folds] + [(2, l2) for l2 in args.l2 if l2 != DEFAULT_L2]
    for k, l2 in rows:
        b, h, better, n = held_out(probs, emb, y, groups, kind, k, l2, args.repeats)
        share = f"{(k - 1) / k:.0%} ({int(len(y) * (k - 1) / k)} films)"
        print(f"{share:>22} {l2:>6g} {b:>8.4f} {h:>8.4f} {f'{better}/{n}':>12}")
    for n_per in args.per_class:
        b, h, better, n = small_sample(probs, emb, y, groups, kind, n_per, DEFAULT_L2)
        print(f"{f'{n_per} films per class':>22} {DEFAULT_L2:>6g} {b:>8.4f} {h:>8.4f} {f'{better}/{n}':>12}")


if __name__ == "__main__":
    main()
