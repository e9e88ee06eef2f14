"""COVID-19 / other pneumonia / normal on adult films, and the shortcut it may learn instead.

COVID-19 films come from one hospital (Hannover, CLAHE-processed, mostly bedside AP); normals
and other pneumonias from another (NIH). A network can tell the hospitals apart without looking
at the lungs, so this bench measures, on the frozen EfficientNet-Lite0 features of the shipped
adult recipe (320 px), in patient-wise 5-fold cross-validation:

* COVID-vs-rest AUC of the three-class head;
* the source control: how well a head tells Hannover from NIH when trained on NIH normals
  against Hannover films (no lung findings needed), and its AUC on NIH pneumonias vs Hannover;
* how much of the COVID score the source score explains (Spearman correlation on held-out films);
* all of it again with every film histogram-equalised first (one intensity normalisation for all
  inputs) and with a 12% border blanked (markers and text at the edges).

    python bench/covid.py --nih ../shared/data/nih-cxr14 --covid ../shared/data/covid-hannover
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from scipy.stats import spearmanr
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.preprocessing import StandardScaler

from cxrtriage.data import load_cached
from cxrtriage.models.archs import build_model
from cxrtriage.models.weights import init_weights
from cxrtriage.train.dataset import pixel_stats
from cxrtriage.train.probe import FeatureExtractor

CLASSES = ("normal", "covid19", "other_pneumonia")


def films(nih: Path, covid: Path) -> list[tuple[str, str, str, str]]:
    """(path, label, patient, source) for every film of the three classes."""
    out = []
    with (covid / "labels.csv").open() as fh:
        for r in csv.DictReader(fh):
            out.append((str(covid / r["path"]), "covid19", r["patient_id"], "hannover"))
    with (nih / "labels.csv").open() as fh:
        for r in csv.DictReader(fh):
            found = set(r["label"].split("|"))
            if found == {"No Finding"}:
                out.append((str(nih / r["path"]), "normal", r["patient_id"], "nih"))
            elif found & {"Pneumonia", "Consolidation"}:
                out.append((str(nih / r["path"]), "other_pneumonia", r["patient_id"], "nih"))
    return out


def variant(images: np.ndarray, name: str) -> np.ndarray:
    """The films as given, histogram-equalised, or equalised with a blanked border."""
    if name == "as given":
        return images
    eq = np.stack([np.asarray(ImageOps.equalize(Image.fromarray(a))) for a in images])
    if name == "equalised":
        return eq
    b = int(round(0.12 * eq.shape[1]))
    eq = eq.copy()
    eq[:, :b], eq[:, -b:], eq[:, :, :b], eq[:, :, -b:] = 0, 0, 0, 0
    return eq


def features(images: np.ndarray, size: int, tmp: Path) -> np.ndarray:
    model = build_model("lite0_probe", 3, size).eval()
    init_weights(model, "lite0_probe", pretrained=True)
    x = torch.from_numpy(np.array(images))
    mean, std = pixel_stats(x)
    return FeatureExtractor(model, mean, std, size, tmp)(x, desc="features", progress=False)


def head(f_tr: np.ndarray, y_tr: np.ndarray, c: float) -> tuple[StandardScaler, LogisticRegression]:
    scaler = StandardScaler().fit(f_tr)
    return scaler, LogisticRegression(C=c, max_iter=5000).fit(scaler.transform(f_tr), y_tr)


def cross_validate(f: np.ndarray, y: np.ndarray, src: np.ndarray, groups: np.ndarray, c: float,
                   folds: int, seed: int) -> dict[str, float]:
    covid_auc, source_normals, source_pneumonia, rho = [], [], [], []
    for tr, te in StratifiedGroupKFold(folds, shuffle=True, random_state=seed).split(f, y, groups):
        scaler, clf = head(f[tr], y[tr], c)
        p = clf.predict_proba(scaler.transform(f[te]))
        covid = p[:, CLASSES.index("covid19")]
        covid_auc.append(roc_auc_score(y[te] == 1, covid))
        # source control: trained on NIH normals vs Hannover only, no pneumonia in sight
        keep = tr[(y[tr] == 0) | (src[tr] == 1)]
        s_scaler, s_clf = head(f[keep], src[keep], c)
        s = s_clf.predict_proba(s_scaler.transform(f[te]))[:, 1]
        normal_or_h = (y[te] == 0) | (src[te] == 1)
        pneu_or_h = (y[te] == 2) | (src[te] == 1)
        source_normals.append(roc_auc_score(src[te][normal_or_h], s[normal_or_h]))
        source_pneumonia.append(roc_auc_score(src[te][pneu_or_h], s[pneu_or_h]))
        rho.append(spearmanr(covid, s).correlation)
    m = lambda v: float(np.mean(v))  # noqa: E731
    return {"covid_vs_rest_auc": m(covid_auc), "covid_auc_sd": float(np.std(covid_auc)),
            "source_auc_normals": m(source_normals), "source_auc_pneumonias": m(source_pneumonia),
            "spearman_covid_vs_source": m(rho)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nih", type=Path, default=Path("../shared/data/nih-cxr14"))
    ap.add_argument("--covid", type=Path, default=Path("../shared/data/covid-hannover"))
    ap.add_argument("--size", type=int, default=320)
    ap.add_argument("--C", type=float, default=0.003)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rows = films(args.nih, args.covid)
    y = np.array([CLASSES.index(r[1]) for r in rows])
    src = np.array([r[3] == "hannover" for r in rows]).astype(int)
    groups = np.array([r[2] for r in rows])
    images = np.asarray(load_cached([r[0] for r in rows], args.size, progress=False))
    tmp = Path("runs/bench-covid")
    tmp.mkdir(parents=True, exist_ok=True)
    counts = {c: int((y == i).sum()) for i, c in enumerate(CLASSES)}
    print(f"{len(rows)} films ({counts}), {len(set(groups))} patients; {args.folds} patient-wise folds; "
          f"EfficientNet-Lite0 probe at {args.size} px")
    print(f"{'input':28} {'COVID-vs-rest AUC':>18} {'source AUC (normals)':>21} {'source AUC (pneumonias)':>24} "
          f"{'Spearman(COVID, source)':>24}")
    for name in ("as given", "equalised", "equalised, border blanked"):
        r = cross_validate(features(variant(images, name), args.size, tmp), y, src, groups, args.C, args.folds,
                           args.seed)
        print(f"{name:28} {r['covid_vs_rest_auc']:>12.3f} ({r['covid_auc_sd']:.3f}) {r['source_auc_normals']:>21.3f} "
              f"{r['source_auc_pneumonias']:>24.3f} {r['spearman_covid_vs_source']:>24.3f}")


if __name__ == "__main__":
    main()
