"""Training benchmark: decode+cache time, seconds per epoch and validation metrics of the
default architecture and the two reference networks, each trained under the same time
budget on the same patient-wise split. Prints a side-by-side table (and writes JSON).

    python bench/train.py --data ../shared/data/kermany-224 --budget-min 5
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from cxrtriage.data import kermany_samples, load_cached, patient_split
from cxrtriage.evaluate.metrics import binary_metrics
from cxrtriage.models.archs import get_arch
from cxrtriage.train.config import TrainConfig
from cxrtriage.train.trainer import train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="../shared/data/kermany-224")
    ap.add_argument("--budget-min", type=float, default=5.0, help="training minutes per architecture")
    ap.add_argument("--archs", default="cxrnet,ref_cnn150,ref_vgg200")
    ap.add_argument("--task", default="pneumonia")
    ap.add_argument("--epochs", type=int, default=100, help="upper bound; the budget usually stops first")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", default=None, help="folder for the runs and bench.json (default: a temp folder)")
    args = ap.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="cxr-bench-"))
    out.mkdir(parents=True, exist_ok=True)
    cache = out / "cache"

    samples = patient_split(kermany_samples(args.data, "train", args.task), 0.2, 0)
    paths = [s.path for s in samples]
    t0 = time.perf_counter()
    load_cached(paths, 128, cache, progress=False)
    decode_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    load_cached(paths, 128, cache, progress=False)
    cached_s = time.perf_counter() - t0
    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else (
        "cpu" if args.device == "auto" else args.device)
    print(f"images: {len(paths)}; decode+cache at 128 px: {decode_s:.1f} s; reopening the cache: {cached_s:.3f} s")
    print(f"device: {torch.cuda.get_device_name(0) if device.startswith('cuda') else 'CPU'}; "
          f"torch threads: {torch.get_num_threads()}; budget per architecture: {args.budget_min} min")

    rows = []
    for arch in args.archs.split(","):
        run = out / arch
        cfg = TrainConfig(out_dir=str(run), data=args.data, task=args.task, arch=arch, epochs=args.epochs,
                          time_budget_s=args.budget_min * 60, patience=args.epochs, cache_dir=str(cache),
                          device=device)
        t0 = time.perf_counter()
        train(cfg, progress=False)
        wall = time.perf_counter() - t0
        hist = list(csv.DictReader((run / "metrics.csv").open()))
        preds = list(csv.DictReader((run / "val_predictions.csv").open()))
        meta = json.loads((run / "model.json").read_text())
        y = np.array([p["label"] != "normal" for p in preds], int)
        score = 1.0 - np.array([float(p["p_normal"]) for p in preds])
        m = binary_metrics(y, score, meta["threshold"], n_boot=200)
        rows.append({
            "arch": arch, "image_size": get_arch(arch).image_size, "epochs": len(hist),
            "s_per_epoch": float(np.mean([float(h["seconds"]) for h in hist])), "wall_s": wall,
            "roc_auc": m["roc_auc"], "roc_auc_ci": m["ci"].get("roc_auc"), "accuracy": m["accuracy"],
            "sensitivity": m["sensitivity"], "specificity": m["specificity"], "threshold": meta["threshold"],
        })
    head = f"{'architecture':<12} {'px':>4} {'epochs':>6} {'s/epoch':>8} {'ROC AUC':>8} {'95% CI':>15} " \
           f"{'acc':>6} {'sens':>6} {'spec':>6}"
    print("\nvalidation (patient-wise split, threshold chosen on validation)")
    print(head)
    print("-" * len(head))
    for r in rows:
        ci = r["roc_auc_ci"] or [float("nan")] * 2
        print(f"{r['arch']:<12} {r['image_size']:>4} {r['epochs']:>6} {r['s_per_epoch']:>8.1f} {r['roc_auc']:>8.4f} "
              f"{f'[{ci[0]:.3f}, {ci[1]:.3f}]':>15} {r['accuracy']:>6.3f} {r['sensitivity']:>6.3f} "
              f"{r['specificity']:>6.3f}")
    base = rows[0]
    for r in rows[1:]:
        print(f"{base['arch']} vs {r['arch']}: AUC difference {base['roc_auc'] - r['roc_auc']:+.4f}, "
              f"epoch time ratio {r['s_per_epoch'] / base['s_per_epoch']:.2f}x")
    (out / "bench.json").write_text(json.dumps({"decode_cache_s": decode_s, "device": device,
                                                "budget_min": args.budget_min, "rows": rows}, indent=2))
    print(f"\nruns and bench.json in {out}")


if __name__ == "__main__":
    main()
