"""Training benchmark: decode+cache time, seconds per epoch and validation metrics of the
default recipe and the two reference networks, each trained under the same time budget on
the same patient-wise split. Prints a side-by-side table (and writes JSON).

``default`` is the bundled model's recipe within the budget: the ``lite0_probe`` linear
probe first, then ``cxrnet`` for the rest of the budget, combined by ``cxr ensemble``; its
two members get their own rows too. Any single architecture can be listed as well.

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
from cxrtriage.train.config import TrainConfig
from cxrtriage.train.trainer import train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="../shared/data/kermany-224")
    ap.add_argument("--budget-min", type=float, default=5.0, help="training minutes per architecture")
    ap.add_argument("--archs", default="default,ref_cnn150,ref_vgg200")
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

    def run_arch(arch: str, run: Path, budget_s: float) -> dict:
        cfg = TrainConfig(out_dir=str(run), data=args.data, task=args.task, arch=arch, epochs=args.epochs,
                          time_budget_s=budget_s, patience=args.epochs, cache_dir=str(cache), device=device)
        t0 = time.perf_counter()
        train(cfg, progress=False)
        return row(arch, run, time.perf_counter() - t0)

    def row(arch: str, run: Path, wall: float) -> dict:
        hist = list(csv.DictReader((run / "metrics.csv").open())) if (run / "metrics.csv").exists() else []
        preds = list(csv.DictReader((run / "val_predictions.csv").open()))
        meta = json.loads((run / "model.json").read_text())
        y = np.array([p["label"] != "normal" for p in preds], int)
        score = 1.0 - np.array([float(p["p_normal"]) for p in preds])
        m = binary_metrics(y, score, meta["threshold"], n_boot=200)
        secs = [float(h["seconds"]) for h in hist if "C" not in h]
        return {
            "arch": arch, "image_size": meta["input"]["size"], "epochs": len(secs) or None,
            "s_per_epoch": float(np.mean(secs)) if secs else None, "wall_s": wall,
            "roc_auc": m["roc_auc"], "roc_auc_ci": m["ci"].get("roc_auc"), "accuracy": m["accuracy"],
            "sensitivity": m["sensitivity"], "specificity": m["specificity"], "threshold": meta["threshold"],
        }

    rows = []
    budget = args.budget_min * 60
    for arch in args.archs.split(","):
        if arch != "default":
            rows.append(run_arch(arch, out / arch, budget))
            continue
        from cxrtriage.train.ensemble import build_ensemble

        t0 = time.perf_counter()
        probe = run_arch("lite0_probe", out / "default-probe", budget)
        cnn = run_arch("cxrnet", out / "default-cxrnet", max(30.0, budget - (time.perf_counter() - t0)))
        build_ensemble([out / "default-cxrnet", out / "default-probe"], out / "default", cache_dir=str(cache))
        rows.append(row("default", out / "default", time.perf_counter() - t0))
        rows += [dict(probe, arch="  probe"), dict(cnn, arch="  cxrnet")]
    head = f"{'recipe':<12} {'px':>4} {'epochs':>6} {'s/epoch':>8} {'wall s':>7} {'ROC AUC':>8} {'95% CI':>15} " \
           f"{'acc':>6} {'sens':>6} {'spec':>6}"
    print("\nvalidation (patient-wise split, threshold chosen on validation)")
    print(head)
    print("-" * len(head))
    for r in rows:
        ci = r["roc_auc_ci"] or [float("nan")] * 2
        ep = "-" if r["epochs"] is None else str(r["epochs"])
        spe = "-" if r["s_per_epoch"] is None else f"{r['s_per_epoch']:.1f}"
        print(f"{r['arch']:<12} {r['image_size']:>4} {ep:>6} {spe:>8} {r['wall_s']:>7.0f} {r['roc_auc']:>8.4f} "
              f"{f'[{ci[0]:.3f}, {ci[1]:.3f}]':>15} {r['accuracy']:>6.3f} {r['sensitivity']:>6.3f} "
              f"{r['specificity']:>6.3f}")
    base = rows[0]
    for r in rows[1:]:
        if r["arch"].startswith(" "):
            continue  # a member of the default recipe
        print(f"{base['arch']} vs {r['arch']}: AUC difference {base['roc_auc'] - r['roc_auc']:+.4f}, "
              f"wall time ratio {r['wall_s'] / base['wall_s']:.2f}x")
    (out / "bench.json").write_text(json.dumps({"decode_cache_s": decode_s, "device": device,
                                                "budget_min": args.budget_min, "rows": rows}, indent=2))
    print(f"\nruns and bench.json in {out}")


if __name__ == "__main__":
    main()
