"""Quality-gate benchmark: false refusals on validation radiographs and refusals of images
that are not frontal chest radiographs (scikit-image's photographs and others, inverted and
rotated radiographs, noise).

    python bench/gate.py --data ../shared/data/kermany-224 [--model M]
"""

from __future__ import annotations

import argparse

import numpy as np

import sys as _sys
from pathlib import Path as _Path

_sys.path.insert(0, str(_Path(__file__).resolve().parents[1]))  # the checkout's testkit/

from cxrtriage.data import kermany_samples, load_cached, patient_split, to_model_input
from cxrtriage.infer import Engine
from testkit.ood_samples import skimage_images, synthetic, transformed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="../shared/data/kermany-224")
    ap.add_argument("--model", default=None)
    args = ap.parse_args()
    engine = Engine(args.model)
    gate = engine.feature_gate
    if gate is None:
        raise SystemExit("this model has no fitted quality gate")
    info = engine.spec
    seed = info.training_seed
    samples = patient_split(kermany_samples(args.data, "train", info.split_task), 0.2, seed)
    val = [s for s in samples if s.split == "val"]
    size = info.input_size
    arr = np.asarray(load_cached([s.path for s in val], size, progress=False, intensity=info.input.intensity,
                                 border=info.input.border))

    def refused(images: np.ndarray) -> np.ndarray:
        return gate.distance(engine.run_arrays(images)["embedding"]) > gate.threshold

    print(f"model {info.name} {info.version}; gate threshold {gate.threshold:.2f} "
          f"(quantile {gate.quantile} of half the validation radiographs)")
    r = refused(arr)
    print(f"validation radiographs: {r.mean():.2%} refused ({r.sum()}/{len(r)}; all validation) ;"
          f" held-out half: {r[1::2].mean():.2%} (target <= 1%)")
    sk = skimage_images()
    rs = refused(info.input.prepare(list(sk.values())).images)
    print(f"scikit-image non-radiographs: {rs.mean():.0%} refused ({rs.sum()}/{len(rs)}; target 100%)")
    for name, ok in zip(sk, rs):
        if not ok:
            print(f"   accepted: {name}")
    for name, imgs in {**transformed(arr[:300]), **synthetic(50, size)}.items():
        print(f"{name:>16}: {refused(imgs).mean():.1%} refused")


if __name__ == "__main__":
    main()
