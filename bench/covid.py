"""COVID-19 / other pneumonia / normal (`cxr-covid3`'s recipe) across sources, and its shortcut checks.

Films: `covid-multisource` (ieee8023, COVID-CXNet, Figure1), `covid-hannover` (all COVID-19) and
`nih-cxr14` (adults: "No Finding" -> normal, "Pneumonia" -> other pneumonia). The recipe is a frozen
ImageNet trunk (EfficientNet-Lite0 at 320 px by default) and a multinomial logistic regression on
its pooled features; features are extracted once per film and input variant, so each held-out fit
below refits only the head. Every AUC is COVID-19 vs rest on P(COVID-19), with a 95% bootstrap CI
that resamples patients.

1. internal: patient-wise stratified 5-fold cross-validation;
2. leave-one-source-out: each held-out group holds both labels where the data allow (a source that
   is all one label says nothing about COVID-vs-rest by itself): ieee8023; Figure1; the two
   hospitals NIH + Hannover (with the other collections' Hannover films); COVID-CXNet (all COVID-19,
   only in the pooled AUC). Pooled: every film scored by a head that never saw its source;
3. leave-one-site-out: each site with >= 20 films alone, the smaller sites in five buckets;
4. source probe: among films of one label, how well a linear probe tells the sources apart, on
   the trunk's features and on the head's three outputs (what the decision reads);
5. lungs blanked / border blanked: the internal-CV heads on the same held-out films with the lung
   fields (a two-ellipse template) or the outer 15% filled with the film's median grey;
6. JPEG vs PNG: every film decoded, re-encoded as JPEG (quality 75) or PNG at its own size, decoded
   and resized; scored by the heads fitted on the films as they are, and refitted on the variant.

    python bench/covid.py [--data ../shared/data] [--arch lite0_probe] [--size 320] [--intensity clahe]
                          [--C 0.003] [--sources balanced|nulled|"as is"] [--json out.json]
    python bench/covid.py --compare [--trunks lite0_probe:clahe,lite1_probe:clahe]
"""

from __future__ import annotations

import argparse
import json
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

from cxrtriage.data.covid_sources import HANNOVER_SITE, Film, covid3_films, describe
from cxrtriage.evaluate.metrics import macro_auc
from cxrtriage.train.covid_checks import (
    CLASSES,
    COVID,
    SOURCE_HANDLING,
    Trunk,
    held_out_groups,
    internal_cv,
    labels_of,
    patient_auc,
    predict,
    source_probe,
    trunk_features,
)
from cxrtriage.train.covid_report import format_report, three_class_report

FEATURES = Path("runs/bench-covid")
SHIP_AUC = 0.75  # leave-one-source-out COVID-vs-rest AUC a model must reach to ship


def source_groups() -> dict[str, Callable[[Film], bool]]:
    return {
        "ieee8023": lambda f: f.source == "ieee8023",
        "figure1": lambda f: f.source == "figure1",
        "hospitals: nih + hannover": lambda f: f.source in ("nih", "hannover") or f.site == HANNOVER_SITE,
        "covid-cxnet": lambda f: f.source == "covid-cxnet" and f.site != HANNOVER_SITE,
    }


def site_of(f: Film) -> str:
    return f"unknown ({f.source})" if f.site == "unknown" else f.site


def site_groups(films: list[Film], min_films: int = 20, buckets: int = 5) -> dict[str, Callable[[Film], bool]]:
    """Each site with ``min_films`` films alone; the rest in ``buckets`` groups of whole sites."""
    n: dict[str, int] = {}
    for f in films:
        n[site_of(f)] = n.get(site_of(f), 0) + 1
    big = sorted(s for s, k in n.items() if k >= min_films)
    groups: dict[str, Callable[[Film], bool]] = {s: (lambda f, s=s: site_of(f) == s) for s in big}
    for b in range(buckets):
        groups[f"small sites, bucket {b + 1}"] = (
            lambda f, b=b: site_of(f) not in big and zlib.crc32(site_of(f).encode()) % buckets == b)
    return groups


def by_source(films: list[Film]) -> dict[str, np.ndarray]:
    return {s: np.array([i for i, f in enumerate(films) if f.source == s]) for s in sorted({f.source for f in films})}


def nan_if_none(v: float | None) -> float:
    return float("nan") if v is None else v


def fmt_auc(auc: float | None, ci: list[float] | None) -> str:
    if auc is None:
        return "-"
    return f"{auc:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def covid_auc(films: list[Film], p: np.ndarray, idx: np.ndarray | None = None, n_boot: int = 1000):
    idx = np.arange(len(films)) if idx is None else idx
    idx = idx[np.isfinite(p[idx, COVID])]
    return patient_auc(labels_of([films[i] for i in idx]) == COVID, p[idx, COVID],
                       [films[i].patient_id for i in idx], n_boot)


def group_table(title: str, films: list[Film], p: np.ndarray, members: dict[str, np.ndarray]) -> dict:
    """One row per held-out group: what it holds, its AUC, mean P(COVID-19) per class, then the pooled AUC."""
    print(f"\n{title}")
    print(f"{'held-out group':42} {'films: label films/patients':54} {'AUC [95% CI]':24} "
          f"{'P(COVID) covid / rest':>22} {'called COVID covid / rest':>26}")
    rows = {}
    for name, idx in members.items():
        fl = [films[i] for i in idx]
        auc, ci = covid_auc(films, p, idx)
        is_c = labels_of(fl) == COVID
        called = p[idx].argmax(1) == COVID
        mp = [float(p[idx][m, COVID].mean()) if m.any() else float("nan") for m in (is_c, ~is_c)]
        cr = [float(called[m].mean()) if m.any() else float("nan") for m in (is_c, ~is_c)]
        print(f"{name[:42]:42} {describe(fl)[:54]:54} {fmt_auc(auc, ci):24} {mp[0]:>10.2f} / {mp[1]:<9.2f}"
              f" {cr[0]:>12.2f} / {cr[1]:<9.2f}")
        rows[name] = {"contents": describe(fl), "auc": auc, "ci": ci, "mean_p_covid": mp, "called_covid": cr}
    auc, ci = covid_auc(films, p)
    scored = describe([films[i] for i in np.flatnonzero(np.isfinite(p[:, 0]))])
    print(f"{'pooled (each film held out once)':42} {scored[:54]:54} "
          f"{fmt_auc(auc, ci):24}")
    rows["pooled"] = {"auc": auc, "ci": ci}
    return rows


TRUNKS = (("lite0_probe", "none"), ("lite0_probe", "clahe"), ("lite1_probe", "clahe"), ("lite2_probe", "clahe"))


def three_classes(title: str, films: list[Film], p: np.ndarray) -> dict:
    """The three-class report (patient-grouped CIs) of the films ``p`` scores."""
    keep = np.flatnonzero(np.isfinite(p[:, 0]))
    r = three_class_report(labels_of([films[i] for i in keep]), p[keep], [films[i].patient_id for i in keep], CLASSES)
    print(f"\nThree classes, {title} (arg-max class; CIs resample patients)\n{format_report(r)}")
    return r


def compare(films: list[Film], args: argparse.Namespace) -> None:
    """Internal CV and leave-one-source-out AUC of each recipe of a small grid."""
    print(f"\n{'trunk':28} {'C':>6} {'sources':9} {'internal AUC [CI]':24} {'macro AUC':>9} "
          f"{'LOSO pooled [CI]':24} {'ieee8023':>9} {'hospitals':>9} {'figure1':>8}")
    trunks = [t for t in TRUNKS if not args.trunks or f"{t[0]}:{t[1]}" in args.trunks.split(",")]
    for arch, intensity in trunks:
        f = trunk_features([x.path for x in films], Trunk(arch, args.size, intensity), "as is", FEATURES)
        for c in (0.0003, 0.001, 0.003, 0.01, 0.03):
            for bal in SOURCE_HANDLING:
                p, _ = internal_cv(films, f, c, sources=bal)
                lp, members = held_out_groups(films, f, source_groups(), c, sources=bal)
                per = {g: covid_auc(films, lp, members[g], n_boot=0)[0]
                       for g in ("ieee8023", "hospitals: nih + hannover", "figure1")}
                print(f"{arch + ' ' + intensity:28} {c:>6g} {bal:9} "
                      f"{fmt_auc(*covid_auc(films, p)):24} {macro_auc(labels_of(films), p):>9.3f} "
                      f"{fmt_auc(*covid_auc(films, lp)):24} {per['ieee8023']:>9.3f} "
                      f"{per['hospitals: nih + hannover']:>9.3f} {per['figure1']:>8.3f}", flush=True)


def probes(films: list[Film], f: np.ndarray, p_oof: np.ndarray) -> dict:
    """The source probe on the trunk's features and on the head's outputs, per label."""
    print("\nSource probe among films of one label (patient-wise 5-fold; sources with >= 8 films)")
    print(f"{'label':16} {'features':27} {'sources (films)':58} {'balanced acc (chance)':>22} {'mean AUC':>9}")
    out = {}
    logp = np.log(np.clip(p_oof, 1e-6, 1.0))
    for label in CLASSES:
        for what, x in (("trunk (pooled, 1280-d)", f), ("model outputs (3 log-probs)", logp)):
            r = source_probe(films, x, label, min_films=8)
            if r is None:
                continue
            src = ", ".join(f"{k} {v}" for k, v in r["sources"].items())
            print(f"{label:16} {what:27} {src[:58]:58} {r['balanced_accuracy']:>14.3f} ({r['chance']:.2f}) "
                  f"{r['mean_auc']:>9.3f}")
            out[f"{label}|{what}"] = r
    return out


def shortcuts(films: list[Film], trunk: Trunk, heads: list, args: argparse.Namespace, p_oof: np.ndarray) -> dict:
    """The internal-CV heads on held-out films with lungs blanked, border blanked, re-encoded."""
    paths = [x.path for x in films]
    y = labels_of(films)
    print("\nInput variants, scored by the internal-CV heads fitted on the films as they are "
          "(refit: heads fitted and scored on the variant)")
    print(f"{'input':16} {'AUC [95% CI]':24} {'P(COVID) covid / rest':>22} {'called COVID covid / rest':>26} "
          f"{'refit internal':>15} {'refit LOSO':>11}")
    out = {}
    for variant in ("as is", "lungs blanked", "border blanked", "jpeg q75", "png"):
        fv = trunk_features(paths, trunk, variant, FEATURES)
        p = np.zeros_like(p_oof)
        for te, head in heads:
            p[te] = predict(head, fv[te])
        auc, ci = covid_auc(films, p)
        is_c = y == COVID
        mp = [float(p[m, COVID].mean()) for m in (is_c, ~is_c)]
        cr = [float((p[m].argmax(1) == COVID).mean()) for m in (is_c, ~is_c)]
        refit = loso = None
        if variant in ("jpeg q75", "png", "as is"):
            refit = covid_auc(films, internal_cv(films, fv, args.C, sources=args.sources)[0], n_boot=0)[0]
            loso = covid_auc(films, held_out_groups(films, fv, source_groups(), args.C, args.sources)[0],
                             n_boot=0)[0]
        print(f"{variant:16} {fmt_auc(auc, ci):24} {mp[0]:>10.2f} / {mp[1]:<9.2f} {cr[0]:>12.2f} / {cr[1]:<9.2f}"
              f" {nan_if_none(refit):>15.3f} {nan_if_none(loso):>11.3f}")
        out[variant] = {"auc": auc, "ci": ci, "mean_p_covid": mp, "called_covid": cr, "refit_internal": refit,
                        "refit_loso": loso}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("../shared/data"), help="the folder holding covid-multisource, "
                    "covid-hannover and nih-cxr14")
    ap.add_argument("--arch", default="lite0_probe")
    ap.add_argument("--size", type=int, default=320)
    ap.add_argument("--intensity", default="clahe", help="none, equalise or clahe (before the trunk)")
    ap.add_argument("--C", type=float, default=0.003)
    ap.add_argument("--sources", default="balanced", choices=SOURCE_HANDLING,
                    help="balanced: every source counts alike within a class; nulled: also project the "
                         "within-label source directions out of the features")
    ap.add_argument("--compare", action="store_true", help="the recipe grid only")
    ap.add_argument("--trunks", help="with --compare: a comma list of arch:intensity (default: all four)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    films = covid3_films(args.data)
    print(f"{len(films)} films of {len({f.patient_id for f in films})} patients: {describe(films)}")
    for src in sorted({f.source for f in films}):
        print(f"  {src:12} {describe([f for f in films if f.source == src])}")
    if args.compare:
        compare(films, args)
        return
    trunk = Trunk(args.arch, args.size, args.intensity)
    f = trunk_features([x.path for x in films], trunk, "as is", FEATURES)
    print(f"\nrecipe: {args.arch} at {args.size} px, intensity {args.intensity}, C={args.C}, "
          f"sources {args.sources}")
    report: dict = {"recipe": vars(args) | {"data": str(args.data), "json": None}}
    p, heads = internal_cv(films, f, args.C, sources=args.sources)
    report["internal"] = group_table("Internal: patient-wise 5-fold CV (held-out folds; rows: films by source)",
                                     films, p, by_source(films))
    report["internal"]["three_class"] = three_classes("internal CV", films, p)
    lp, members = held_out_groups(films, f, source_groups(), args.C, args.sources)
    report["leave_one_source_out"] = group_table("Leave-one-source-out", films, lp, members)
    report["leave_one_source_out"]["three_class"] = three_classes("leave-one-source-out", films, lp)
    sp, smembers = held_out_groups(films, f, site_groups(films), args.C, args.sources)
    report["leave_one_site_out"] = group_table("Leave-one-site-out (sites with >= 20 films alone)", films, sp, smembers)
    report["source_probe"] = probes(films, f, p)
    report["variants"] = shortcuts(films, trunk, heads, args, p)
    ship = min(v["auc"] for k, v in report["leave_one_source_out"].items()
               if v.get("auc") is not None and k in ("pooled", "ieee8023", "hospitals: nih + hannover"))
    print(f"\nlowest leave-one-source-out AUC (pooled, ieee8023, hospitals): {ship:.3f} -> "
          f"{'ships' if ship >= SHIP_AUC else 'does not ship'} (rule: >= {SHIP_AUC})")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=float))


if __name__ == "__main__":
    main()
