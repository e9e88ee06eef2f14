"""Fit (or check) the pediatric model's domain check: how much a film looks like an adult film,
read from the pediatric network's own embedding, so the router can settle a film the pediatric
gate accepted without a margin (see ``cxrtriage/infer/domain.py``).

    python scripts/routing_domain.py --data DATA_ROOT [--write]

(``DATA_ROOT`` holds ``kermany-224/``, ``nih-cxr14/``, ``covid-multisource/`` and ``covid-hannover/``.)

Fitted on films of one patient-wise half of each adult collection (NIH ChestX-ray14,
covid-multisource, covid-hannover) against Kermany ``train/`` films; checked on films it never
saw: Kermany ``test-dev`` and the other half of each adult collection. Prints, per held-out set,
the share of films under the router's ``DECISIVE_OTHER`` (pediatric films should be, adult films
must not be) and quantiles of P(adult). ``--write`` stores it beside the bundled model.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import random
import sys
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cxrtriage.infer import Engine  # noqa: E402
from cxrtriage.infer.domain import DomainCheck, domain_path  # noqa: E402
from cxrtriage.infer.router import DECISIVE_OTHER  # noqa: E402
from cxrtriage.io import read_radiograph  # noqa: E402


def _half(patient: str) -> int:
    """0 or 1: which patient-wise half a patient falls in (stable, by hash)."""
    return hashlib.sha256(patient.encode()).digest()[0] % 2


def adult_films(data: Path) -> dict[str, dict[int, list[Path]]]:
    """Each adult collection's films, split into two patient-wise halves."""
    out: dict[str, dict[int, list[Path]]] = {}
    nih = sorted((data / "nih-cxr14" / "images").glob("*.jpg"))
    out["nih-cxr14"] = {h: [f for f in nih if _half(f.stem.split("_")[0]) == h] for h in (0, 1)}
    for name in ("covid-multisource", "covid-hannover"):
        rows = list(csv.DictReader((data / name / "labels.csv").open()))
        out[name] = {h: [data / name / r["path"] for r in rows if _half(r["patient_id"]) == h] for h in (0, 1)}
    return out


def embeddings(engine: Engine, files: list[Path]) -> np.ndarray:
    chunks = []
    for i in range(0, len(files), 32):
        rgs = [read_radiograph(f) for f in files[i:i + 32]]
        chunks.append(engine.run_arrays(engine.prepare(rgs).images)["embedding"])
    return np.concatenate(chunks)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="the folder holding the four collections")
    ap.add_argument("--model", default="cxr-pneumonia")
    ap.add_argument("--pediatric-films", type=int, default=1200, help="Kermany train/ films to fit on")
    ap.add_argument("--write", action="store_true", help="store the fit beside the model")
    args = ap.parse_args()
    engine = Engine(args.model, gate=False)
    kermany = sorted((args.data / "kermany-224" / "train").glob("*/*.jpeg"))
    kermany = random.Random(0).sample(kermany, min(args.pediatric_films, len(kermany)))
    adults = adult_films(args.data)
    fit_adult = [f for halves in adults.values() for f in halves[0]]
    x = np.concatenate([embeddings(engine, kermany), embeddings(engine, fit_adult)])
    y = np.r_[np.zeros(len(kermany)), np.ones(len(fit_adult))]
    scaler = StandardScaler().fit(x)
    clf = LogisticRegression(C=0.1, max_iter=5000, class_weight="balanced").fit(scaler.transform(x), y)
    check = DomainCheck(scaler.mean_, scaler.scale_, clf.coef_[0], float(clf.intercept_[0]), "adult")
    held = {"kermany test-dev (pediatric)": sorted((args.data / "kermany-224" / "test-dev").glob("*/*.jpeg")),
            **{f"{name} other half (adult)": halves[1] for name, halves in adults.items()}}
    print(f"fitted on {len(kermany)} Kermany train/ films and {len(fit_adult)} adult films (one patient-wise half)")
    for name, files in held.items():
        p = check.p_other(embeddings(engine, files))
        q = np.percentile(p, [1, 5, 50, 95, 99])
        print(f"{name:<36} n={len(files):>4}  under {DECISIVE_OTHER}: {np.mean(p < DECISIVE_OTHER):.3f}  "
              f"P(adult) 1/5/50/95/99%: {' '.join(f'{v:.3f}' for v in q)}")
    if args.write:
        out = domain_path(engine.onnx_path)
        check.save(out)
        print(f"-> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
