"""Adult 14-finding recipes (`cxr-adult14`) in patient-wise k-fold cross-validation on the NIH films.

Trunk features are extracted once per (trunk, size, intensity) for every adult film (NIH plus,
as evidence for Pneumonia only, the COVID-19 collections) and cached in ``runs/adult-features``;
each recipe's probes are fitted on cached features (see ``cxrtriage.train.adult_probe``). Every
fold scores NIH films of patients its fit never saw; the COVID-19 films only ever join the fit.

Prints one row per recipe: the fold-mean of the mean per-finding AUC (as the card's "5-fold CV"),
the pooled out-of-fold mean per-finding AUC and any-finding AUC with patient-bootstrap 95% CIs, and
the per-finding AUC against only films with other findings as negatives ("hard negatives": what
separates a finding from the rest of the abnormal films, not from normal films). ``--diagnose``
adds the label mix per fold and why a fold estimate can flatter.

    python bench/adult.py [--data ../shared/data] [--folds 5] [--recipes all|NAME,...] [--json out.json] [--diagnose]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedGroupKFold

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cxrtriage.data import get_task  # noqa: E402
from cxrtriage.train.adult_data import adult_films, trunk_features  # noqa: E402
from cxrtriage.train.adult_probe import Recipe, fit_predict, parse_trunk  # noqa: E402

# CheXNet (Rajpurkar et al., 2017, arXiv:1711.05225, Table 1): AUC per finding on the NIH test set.
CHEXNET = {"Atelectasis": 0.8094, "Cardiomegaly": 0.9248, "Effusion": 0.8638, "Infiltration": 0.7345,
           "Mass": 0.8676, "Nodule": 0.7802, "Pneumonia": 0.7680, "Pneumothorax": 0.8887,
           "Consolidation": 0.7901, "Edema": 0.8878, "Emphysema": 0.9371, "Fibrosis": 0.8047,
           "Pleural_Thickening": 0.8062, "Hernia": 0.9164}

L0, L0_448, L1, L2 = "lite0_probe@320", "lite0_probe@448", "lite1_probe@384", "lite2_probe@320"
RECIPES = [
    Recipe("lite0-320 (shipped before)", (L0,)),
    Recipe("lite0-448", (L0_448,)),
    Recipe("lite0-512", ("lite0_probe@512",)),
    Recipe("lite0-320 CLAHE", ("lite0_probe@320/clahe",)),
    Recipe("lite1-384", (L1,)),
    Recipe("lite2-320", (L2,)),
    Recipe("lite2-448", ("lite2_probe@448",)),
    Recipe("lite0-320 +covid", (L0,), extra=True),
    Recipe("lite0-320 smooth 0.1", (L0,), smooth=0.1),
    Recipe("lite0-320 C=0.01", (L0,), C=0.01),
    Recipe("lite0-320 C=0.001", (L0,), C=0.001),
    Recipe("lite0-320 balanced", (L0,), class_weight="balanced"),
    Recipe("ens lite0-320+448", (L0, L0_448)),
    Recipe("ens lite0+1+2", (L0, L1, L2)),
    Recipe("ens lite0-320+448+1+2", (L0, L0_448, L1, L2)),
    Recipe("ens lite0-320+448+1+2 +covid", (L0, L0_448, L1, L2), extra=True),
    Recipe("ens lite0-320+448+1+2 smooth 0.1", (L0, L0_448, L1, L2), smooth=0.1),
    Recipe("ens lite0-320+448+1+2 +covid smooth 0.1", (L0, L0_448, L1, L2), smooth=0.1, extra=True),
    Recipe("ens lite0-320+448+1+2 smooth 0.2", (L0, L0_448, L1, L2), smooth=0.2),
    Recipe("ens lite0-320+448+1+2 smooth 0.1 C=0.01", (L0, L0_448, L1, L2), smooth=0.1, C=0.01),
    Recipe("ens lite0-320+448+1+2 smooth 0.1 balanced", (L0, L0_448, L1, L2), smooth=0.1, class_weight="balanced"),
    Recipe("ens lite0+1+2 smooth 0.1", (L0, L1, L2), smooth=0.1),
    Recipe("ens lite0-320+2-320 smooth 0.1", (L0, L2), smooth=0.1),
    Recipe("ens lite0-320+448+1+2+2-448 smooth 0.1", (L0, L0_448, L1, L2, "lite2_probe@448"), smooth=0.1),
]


def auc(y: np.ndarray, p: np.ndarray) -> float | None:
    return float(roc_auc_score(y, p)) if 0 < y.sum() < len(y) else None


def summary(y: np.ndarray, p: np.ndarray) -> tuple[dict[str, float | None], float, float]:
    """(per-finding AUC, their mean, any-finding AUC) of labels y (N, K) and probabilities p."""
    per = {c: auc(y[:, j], p[:, j]) for j, c in enumerate(CHEXNET)}
    vals = [v for v in per.values() if v is not None]
    return per, float(np.mean(vals)), float(roc_auc_score(y.max(1), p.max(1)))


def bootstrap(y: np.ndarray, p: np.ndarray, patients: np.ndarray, n: int = 200, seed: int = 0) -> np.ndarray:
    """95% CIs of (mean per-finding AUC, any-finding AUC), resampling patients."""
    rng = np.random.default_rng(seed)
    uniq, inv = np.unique(patients, return_inverse=True)
    rows = [np.flatnonzero(inv == k) for k in range(len(uniq))]
    out = []
    for _ in range(n):
        idx = np.concatenate([rows[k] for k in rng.integers(0, len(uniq), len(uniq))])
        out.append(summary(y[idx], p[idx])[1:])
    return np.percentile(np.array(out), [2.5, 97.5], axis=0)


def hard_negative_auc(y: np.ndarray, p: np.ndarray) -> float:
    """Mean per-finding AUC with only films that carry some other finding as negatives."""
    vals = []
    for j in range(y.shape[1]):
        keep = (y[:, j] == 1) | ((y[:, j] == 0) & (y.sum(1) > 0))
        a = auc(y[keep, j], p[keep, j])
        if a is not None:
            vals.append(a)
    return float(np.mean(vals))


def run_recipe(recipe: Recipe, feats: dict, y: np.ndarray, nih: np.ndarray, folds: list) -> dict:
    oof = np.zeros((int(nih.sum()), y.shape[1]))
    nih_rows = np.flatnonzero(nih)
    extra_rows = np.flatnonzero(~nih) if recipe.extra else np.array([], dtype=int)
    fold_means = []
    for tr, te in folds:
        p = fit_predict(recipe, feats, y, np.r_[nih_rows[tr], extra_rows], nih_rows[te])
        oof[te] = p
        fold_means.append(summary(y[nih_rows[te]], p)[1])
    return {"oof": oof, "fold_mean": float(np.mean(fold_means)), "fold_sd": float(np.std(fold_means))}


def diagnose(y: np.ndarray, folds: list, oof: np.ndarray) -> None:
    """Label mix per fold and how the CV estimate is made up."""
    classes = list(CHEXNET)
    print("\npositives per held-out fold (NIH films):")
    print(f"{'fold':>4} {'films':>6} " + " ".join(f"{c[:6]:>6}" for c in classes))
    for k, (_, te) in enumerate(folds):
        print(f"{k + 1:>4} {len(te):>6} " + " ".join(f"{int(v):>6}" for v in y[te].sum(0)))
    per, mean, _ = summary(y, oof)
    few = [c for j, c in enumerate(classes) if y[:, j].sum() < 40]
    print(f"\nfindings with < 40 positives in all {len(y)} films: {', '.join(few)}")
    print(f"mean AUC over them {np.mean([per[c] for c in few]):.3f}, over the rest "
          f"{np.mean([v for c, v in per.items() if c not in few]):.3f}")
    normal = y.sum(1) == 0
    print(f"'No Finding' share: {normal.mean():.0%} (NIH at large: ~54%); Pneumonia share {y[:, 6].mean():.0%} "
          f"(NIH at large: ~1.3%)")
    print(f"mean per-finding AUC, all negatives {mean:.3f}; only films with other findings as negatives "
          f"{hard_negative_auc(y, oof):.3f}")


def load_features(films, trunks: set[str], cache: Path) -> dict[str, np.ndarray]:
    feats = {}
    for t in sorted(trunks):
        arch, size, intensity = parse_trunk(t)
        feats[t] = trunk_features(films.paths, arch, size, cache, intensity)["f"]
    return feats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("../shared/data"))
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--recipes", default="all", help="'all' or recipe names separated by commas")
    ap.add_argument("--cache", type=Path, default=Path("runs/adult-features"))
    ap.add_argument("--boot", type=int, default=200)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--diagnose", action="store_true")
    args = ap.parse_args()
    recipes = RECIPES if args.recipes == "all" else [r for r in RECIPES if r.name in args.recipes.split(",")]
    if not recipes:
        raise SystemExit(f"no recipe named {args.recipes!r}; known: {', '.join(r.name for r in RECIPES)}")
    films = adult_films(args.data)
    assert tuple(get_task("nih14").classes) == tuple(CHEXNET)
    feats = load_features(films, {t for r in recipes for t in r.trunks}, args.cache)
    nih = films.nih
    y_nih, groups = films.y[nih], films.patients[nih]
    split = StratifiedGroupKFold(args.folds, shuffle=True, random_state=args.seed)
    folds = list(split.split(y_nih, y_nih.max(1), groups))
    print(f"{int(nih.sum())} NIH films ({len(set(groups))} patients), {int((~nih).sum())} COVID-19 films "
          f"(Pneumonia only), {args.folds} patient-wise folds\n")
    print(f"{'recipe':42} {'CV mean':>8} {'pooled mean [95% CI]':>22} {'any finding [95% CI]':>22} {'hard neg':>8}")
    rows = {}
    for r in recipes:
        res = run_recipe(r, feats, films.y, nih, folds)
        per, mean, anyf = summary(y_nih, res["oof"])
        ci = bootstrap(y_nih, res["oof"], groups, args.boot)
        hard = hard_negative_auc(y_nih, res["oof"])
        print(f"{r.name:42} {res['fold_mean']:>8.3f} {mean:>7.3f} [{ci[0, 0]:.3f}, {ci[1, 0]:.3f}] "
              f"{anyf:>7.3f} [{ci[0, 1]:.3f}, {ci[1, 1]:.3f}] {hard:>8.3f}", flush=True)
        rows[r.name] = {"cv_fold_mean": res["fold_mean"], "cv_fold_sd": res["fold_sd"], "pooled_mean_auc": mean,
                        "pooled_mean_auc_ci": ci[:, 0].tolist(), "any_finding_auc": anyf,
                        "any_finding_auc_ci": ci[:, 1].tolist(), "hard_negative_mean_auc": hard, "per_finding": per}
        last = res["oof"]
    if args.diagnose:
        diagnose(y_nih, folds, last)
    if args.json:
        args.json.write_text(json.dumps({"recipes": rows, "chexnet": CHEXNET}, indent=2))


if __name__ == "__main__":
    main()
