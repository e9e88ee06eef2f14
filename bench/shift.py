"""Shift benchmark: how the default recipe's members and their ensemble hold up on normals
from an acquisition batch they never saw.

Kermany's normals come in two batches (`IM-*` and `NORMAL2-IM-*`). Everything here trains on
the patient-wise split of `train/` without the `NORMAL2-*` images, chooses the threshold on
its validation part, then scores the held-out batch of normals together with the validation
pneumonias: ROC AUC, sensitivity and specificity at the validation threshold. A stand-in for
a new hospital; the official test split stays untouched.

    python bench/shift.py --data ../shared/data/kermany-224 --out runs/bench-shift
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from cxrtriage.data import kermany_samples, load_cached, patient_split, write_manifest
from cxrtriage.evaluate.thresholds import choose_threshold
from cxrtriage.infer import Engine
from cxrtriage.train.config import TrainConfig
from cxrtriage.train.ensemble import build_ensemble
from cxrtriage.train.trainer import train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="../shared/data/kermany-224")
    ap.add_argument("--out", default="runs/bench-shift")
    ap.add_argument("--epochs", type=int, default=30, help="cxrnet epochs (the default recipe's 30)")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cache = out / "cache"
    samples = patient_split(kermany_samples(args.data, "train"), 0.2, 0)
    held = [s for s in samples if "NORMAL2-" in Path(s.path).name]
    kept = [s for s in samples if "NORMAL2-" not in Path(s.path).name]
    manifest = write_manifest(kept, out / "split-without-normal2.csv")
    shifted = held + [s for s in kept if s.split == "val" and s.label != "normal"]

    runs = {"cxrnet": out / "cxrnet", "lite0_probe": out / "probe"}
    for arch, run in runs.items():
        if (run / "model.onnx").exists():
            print(f"{arch}: reusing {run}")
            continue
        cfg = TrainConfig(out_dir=str(run), manifest=str(manifest), arch=arch, epochs=args.epochs,
                          patience=args.epochs, seed=0, device=args.device, cache_dir=str(cache))
        train(cfg, progress=False)
    runs["ensemble"] = out / "ensemble"
    if not (runs["ensemble"] / "model.onnx").exists():
        build_ensemble([runs["cxrnet"], runs["lite0_probe"]], runs["ensemble"], cache_dir=str(cache))

    val = [s for s in kept if s.split == "val"]
    rows = []
    for name, run in runs.items():
        engine = Engine(run, gate=False)
        size = engine.spec.input_size

        def score(group):
            imgs = np.asarray(load_cached([s.path for s in group], size, cache, progress=False))
            return 1.0 - engine.run_arrays(imgs)["probs"][:, 0], np.array([s.label != "normal" for s in group], int)

        sv, yv = score(val)
        ss, ys = score(shifted)
        row = {"model": name, "val_auc": roc_auc_score(yv, sv), "shift_auc": roc_auc_score(ys, ss)}
        for method in ("youden", "youden-plateau"):
            t = choose_threshold(yv, sv, method=method)
            row[method] = {"threshold": t, "sensitivity": float((ss[ys == 1] >= t).mean()),
                           "specificity": float((ss[ys == 0] < t).mean())}
        rows.append(row)

    print(f"\nheld-out batch: {len(held)} NORMAL2 normals + {len(shifted) - len(held)} validation pneumonias; "
          f"validation without NORMAL2: {len(val)} images")
    head = (f"{'model':<12} {'val AUC':>8} {'shift AUC':>9}   {'youden: thr':>11} {'sens':>6} {'spec':>6}"
            f"   {'plateau: thr':>12} {'sens':>6} {'spec':>6}")
    print(head)
    print("-" * len(head))
    for r in rows:
        y, p = r["youden"], r["youden-plateau"]
        print(f"{r['model']:<12} {r['val_auc']:>8.4f} {r['shift_auc']:>9.4f}   {y['threshold']:>11.3f} "
              f"{y['sensitivity']:>6.3f} {y['specificity']:>6.3f}   {p['threshold']:>12.3f} "
              f"{p['sensitivity']:>6.3f} {p['specificity']:>6.3f}")
    (out / "shift.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
