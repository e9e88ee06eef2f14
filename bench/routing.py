"""Routing without a DICOM age: how often one model's look settles a film, and whether the
decisions equal the full look (every routable model scores every film, the accepting one with the
smallest gate distance / threshold wins).

    python bench/routing.py [--shared ../shared/data] [--n 300]

Prints, per film set, the share of films settled by the first model, the network runs per film
(1.0 = a single model's cost; the full look costs 2.0), the agreement of the routed decision with
the full look, and the refusal rate; then, per population, the gate-ratio quantiles that set
``DECISIVE_RATIO`` (a model's ratio on the other population's films).
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import numpy as np

from cxrtriage.infer import Engine, Router
from cxrtriage.infer.router import DECISIVE_OTHER, DECISIVE_RATIO
from cxrtriage.io import IMAGE_SUFFIXES, read_radiograph


def film_sets(shared: Path, n: int) -> dict[str, list[Path]]:
    """Up to ``n`` films of each set, drawn with a fixed seed."""
    globs = {"kermany test-dev (pediatric)": "kermany-224/test-dev", "nih-cxr14 (adult)": "nih-cxr14/images",
             "covid-multisource (adult)": "covid-multisource/images", "covid-hannover (adult)": "covid-hannover"}
    out = {}
    for name, sub in globs.items():
        files = sorted(p for p in (shared / sub).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if files:
            out[name] = random.Random(0).sample(files, min(n, len(files)))
    return out


def ratio(p) -> float:
    """Gate distance / threshold (above 1: refused); inf where the gate measured nothing."""
    return p.gate["distance"] / p.gate["threshold"] if "distance" in p.gate else float("inf")


def full_look(engines: dict[str, Engine], rgs) -> tuple[list[str], dict[str, np.ndarray]]:
    """The decision when every model scores every film, and each model's gate ratios."""
    preds = {pop: [p for i in range(0, len(rgs), 32) for p in e.predict_radiographs(rgs[i:i + 32], heatmap=False)]
             for pop, e in engines.items()}
    ratios = {pop: np.array([ratio(p) for p in ps]) for pop, ps in preds.items()}
    decided = []
    for k in range(len(rgs)):
        accepted = [pop for pop in engines if preds[pop][k].ok]
        best = min(accepted, key=lambda pop: ratios[pop][k]) if accepted else None
        decided.append(engines[best].spec.name if best else "refused")
    return decided, ratios


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", type=Path, default=Path("../shared/data"))
    ap.add_argument("--n", type=int, default=300, help="films per set")
    ap.add_argument("--batch", type=int, default=16, help="films per call, as the service batches them")
    args = ap.parse_args()
    sets = film_sets(args.shared, args.n)
    if not sets:
        raise SystemExit(f"no films under {args.shared}")
    ped = next((v for k, v in sets.items() if "pediatric" in k), [])
    adult = [f for k, v in sets.items() if "adult" in k for f in v]
    if ped and adult:  # a pediatric ward's stream with adult films among them, in a seeded order
        mixed = ped[: int(args.n * 0.95)] + random.Random(1).sample(adult, max(1, args.n // 20))
        random.Random(2).shuffle(mixed)
        sets["mixed: 95% pediatric, 5% adult"] = mixed
    router = Router()
    other = {"pediatric": "adult", "adult": "pediatric"}
    print(f"DECISIVE_RATIO {DECISIVE_RATIO}, DECISIVE_OTHER {DECISIVE_OTHER}")
    print(f"{'films':<28} {'n':>4} {'one look':>9} {'runs/film':>9} {'agree':>7} {'refused':>8}")
    for name, files in sets.items():
        rgs = [read_radiograph(f) for f in files]
        truth, ratios = full_look(router.engines, rgs)
        router.recent.clear()
        router.looks.update(films=0, second_looks=0)
        preds = [p for i in range(0, len(rgs), args.batch)
                 for p in router.predict_radiographs(rgs[i:i + args.batch], heatmap=False)]
        got = [p.model["name"] if p.ok else "refused" for p in preds]
        second = router.looks["second_looks"] / max(1, router.looks["films"])
        agree = np.mean([a == b for a, b in zip(got, truth)])
        print(f"{name:<28} {len(rgs):>4} {1 - second:>9.3f} {1 + second:>9.2f} {agree:>7.3f} "
              f"{got.count('refused') / len(got):>8.3f}")
        if name.startswith("mixed"):
            continue
        population = "pediatric" if "pediatric" in name else "adult"
        r = ratios[other[population]]
        r = r[np.isfinite(r)]
        if len(r):
            q = np.percentile(r, [1, 5, 50])
            print(f"{'':<28} {other[population]} gate ratio on these films: 1st pct {q[0]:.2f}, 5th {q[1]:.2f}, "
                  f"median {q[2]:.2f} (decisive below {DECISIVE_RATIO[other[population]]:.2f})")


if __name__ == "__main__":
    main()
