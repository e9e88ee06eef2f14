"""Adult 14-finding recipe (`cxr-adult14`) in patient-wise k-fold cross-validation on the NIH set.

The frozen EfficientNet-Lite trunk's features (Lite0 as shipped; ``--arch lite1_probe|lite2_probe``)
are extracted once per film (320 px); each fold fits the recipe's head (one logistic regression per finding on standardised features, the L2
strength the shipped model chose on its validation split) on the other folds' patients and scores
the held-out patients. Prints, per finding, the mean and spread of the held-out AUC across folds
beside CheXNet's published AUC (Rajpurkar et al. 2017, NIH official test, 78k training films),
and the "any finding" triage AUC.

    python bench/adult.py --data ../shared/data/nih-cxr14 [--folds 5] [--C 0.003] [--arch lite2_probe] [--intensity clahe]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.multiclass import OneVsRestClassifier
from sklearn.preprocessing import StandardScaler

from cxrtriage.contract import Kind, triage_score, triage_target
from cxrtriage.data import get_task, load_cached
from cxrtriage.data.generic import csv_samples
from cxrtriage.models.archs import build_model
from cxrtriage.models.weights import init_weights
from cxrtriage.train.dataset import pixel_stats
from cxrtriage.train.probe import FeatureExtractor

# CheXNet (Rajpurkar et al., 2017, arXiv:1711.05225, Table 1): AUC per finding on the NIH test set.
CHEXNET = {"Atelectasis": 0.8094, "Cardiomegaly": 0.9248, "Effusion": 0.8638, "Infiltration": 0.7345,
           "Mass": 0.8676, "Nodule": 0.7802, "Pneumonia": 0.7680, "Pneumothorax": 0.8887,
           "Consolidation": 0.7901, "Edema": 0.8878, "Emphysema": 0.9371, "Fibrosis": 0.8047,
           "Pleural_Thickening": 0.8062, "Hernia": 0.9164}


def features(paths: list[str], size: int, tmp: Path, arch: str = "lite0_probe", intensity: str = "none") -> np.ndarray:
    model = build_model(arch, 14, size).eval()
    init_weights(model, arch, pretrained=True)
    imgs = torch.from_numpy(np.array(load_cached(paths, size, progress=True, intensity=intensity)))
    mean, std = pixel_stats(imgs)
    return FeatureExtractor(model, mean, std, size, tmp)(imgs, desc="features")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("../shared/data/nih-cxr14"))
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--C", type=float, default=0.003)
    ap.add_argument("--size", type=int, default=320)
    ap.add_argument("--arch", default="lite0_probe", help="the frozen trunk: lite0_probe, lite1_probe or lite2_probe")
    ap.add_argument("--intensity", default="none", help="intensity step before the trunk: none, equalise or clahe")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    task = get_task("nih14")
    films = csv_samples(args.data / "labels.csv", task)
    y = np.stack([task.multi_hot(s.label) for s in films]).astype(int)
    groups = np.array([s.patient_id for s in films])
    out = Path("runs/bench-adult")
    out.mkdir(parents=True, exist_ok=True)
    f = features([s.path for s in films], args.size, out, args.arch, args.intensity)
    folds = StratifiedGroupKFold(args.folds, shuffle=True, random_state=args.seed)
    per: dict[str, list[float]] = {c: [] for c in task.classes}
    triage = []
    for k, (tr, te) in enumerate(folds.split(f, triage_target(y, Kind.MULTILABEL), groups)):
        scaler = StandardScaler().fit(f[tr])
        clf = OneVsRestClassifier(LogisticRegression(C=args.C, max_iter=5000)).fit(scaler.transform(f[tr]), y[tr])
        p = clf.predict_proba(scaler.transform(f[te]))
        for j, c in enumerate(task.classes):
            if 0 < y[te, j].sum() < len(te):
                per[c].append(float(roc_auc_score(y[te, j], p[:, j])))
        triage.append(float(roc_auc_score(triage_target(y[te], Kind.MULTILABEL), triage_score(p, Kind.MULTILABEL))))
        print(f"fold {k + 1}: {len(te)} films, any-finding AUC {triage[-1]:.3f}")
    print(f"\n{len(films)} films, {len(set(groups))} patients, {args.folds} patient-wise folds, "
          f"{args.arch} at {args.size} px, intensity {args.intensity}, C={args.C}")
    print(f"{'finding':20} {'positives':>9} {'AUC mean':>9} {'sd':>6} {'folds':>6} {'CheXNet':>8}")
    for j, c in enumerate(task.classes):
        v = per[c]
        print(f"{c:20} {int(y[:, j].sum()):>9} {np.mean(v):>9.3f} {np.std(v):>6.3f} {len(v):>6} {CHEXNET[c]:>8.3f}")
    means = [np.mean(v) for v in per.values() if v]
    print(f"{'mean of findings':20} {'':>9} {np.mean(means):>9.3f} {'':>6} {'':>6} {np.mean(list(CHEXNET.values())):>8.3f}")
    print(f"{'any finding':20} {int(triage_target(y, Kind.MULTILABEL).sum()):>9} {np.mean(triage):>9.3f} "
          f"{np.std(triage):>6.3f} {len(triage):>6}")
    if args.json:
        args.json.write_text(json.dumps({"per_finding": per, "any_finding": triage, "chexnet": CHEXNET}, indent=2))


if __name__ == "__main__":
    main()
