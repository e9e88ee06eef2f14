"""Transfer-learning benchmark: the default architecture against transfer-learning backbones,
each trained under the same time budget on the same patient-wise split of the shared
Kermany set. Prints validation ROC AUC (95% CI) and seconds per epoch side by side, and
says whether a GPU was used.

    python bench/transfer.py --data ../shared/data/kermany-224 --budget-min 5

Rows (``--archs``): ``cxrnet`` from scratch; ``efficientnet_lite0`` from its offline
ImageNet weights, head trained alone for the first epoch (``--freeze-epochs``) and the
backbone at a tenth of the head's learning rate; ``mobilenet_v3_small`` likewise when
ImageNet weights are at hand (``--weights mobilenet_v3_small=FILE``, or torch's download
cache; ``--download`` lets torch fetch them), else from scratch, as the table says. All
run at ``--image-size`` (128 px by default, the default network's size; 0 = each
architecture's own). A budget shorter than one epoch ends inside the epoch: the table
then gives the fraction of an epoch done and the time a whole epoch would take.
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
from cxrtriage.models.backbones import BACKBONES
from cxrtriage.models.weights import fetch_pretrained
from cxrtriage.train.config import TrainConfig
from cxrtriage.train.trainer import train


def _init_for(arch: str, weights: dict[str, str], download: bool) -> tuple[dict, str]:
    """TrainConfig fields that initialise ``arch``, and how the table names that start."""
    if arch not in BACKBONES:
        return {}, "scratch"
    if arch in weights:
        return {"weights": weights[arch]}, f"ImageNet ({Path(weights[arch]).name})"
    if arch == "efficientnet_lite0":
        return {"pretrained": True}, "ImageNet (offline package)"
    cached = Path(torch.hub.get_dir()) / "checkpoints" / BACKBONES[arch].url.rsplit("/", 1)[-1]
    if cached.is_file() or download:
        try:
            fetch_pretrained(arch)
            return {"pretrained": True}, "ImageNet (torch hub)"
        except RuntimeError as exc:
            print(f"{arch}: {exc}")
    return {}, "scratch (no weights here)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="../shared/data/kermany-224")
    ap.add_argument("--budget-min", type=float, default=5.0, help="training minutes per architecture")
    ap.add_argument("--archs", default="cxrnet,efficientnet_lite0,mobilenet_v3_small")
    ap.add_argument("--image-size", type=int, default=128, help="input px for every row (0: each arch's own)")
    ap.add_argument("--freeze-epochs", type=int, default=1, help="head-only epochs for pretrained backbones")
    ap.add_argument("--weights", action="append", default=[], metavar="ARCH=FILE", help="local ImageNet weights")
    ap.add_argument("--download", action="store_true", help="let torch fetch ImageNet weights it has not cached")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=100, help="upper bound; the budget usually stops first")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--out", default=None, help="folder for the runs and bench.json (default: a temp folder)")
    args = ap.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="cxr-bench-transfer-"))
    out.mkdir(parents=True, exist_ok=True)
    cache = out / "cache"
    weights = dict(w.split("=", 1) for w in args.weights)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else (
        "cpu" if args.device == "auto" else args.device)
    gpu = device.startswith("cuda")
    hw = torch.cuda.get_device_name(0) if gpu else f"CPU, {torch.get_num_threads()} torch threads"

    samples = patient_split(kermany_samples(args.data, "train", "pneumonia"), 0.2, 0)
    n_train = sum(s.split == "train" for s in samples)
    print(f"images: {len(samples)} ({n_train} train / {len(samples) - n_train} validation, split by patient)")
    print(f"device: {hw}; GPU used: {'yes' if gpu else 'no'}; budget per architecture: {args.budget_min} min")

    rows = []
    for arch in args.archs.split(","):
        size = args.image_size or get_arch(arch).image_size
        t0 = time.perf_counter()
        load_cached([s.path for s in samples], size, cache, progress=False)
        decode_s = time.perf_counter() - t0
        init, init_name = _init_for(arch, weights, args.download)
        transfer = bool(init)
        run = out / arch
        cfg = TrainConfig(out_dir=str(run), data=args.data, task="pneumonia", arch=arch, image_size=size,
                          epochs=args.epochs, batch_size=args.batch_size, time_budget_s=args.budget_min * 60,
                          patience=args.epochs, cache_dir=str(cache), device=device,
                          freeze_epochs=args.freeze_epochs if transfer else 0, **init)
        t0 = time.perf_counter()
        train(cfg, progress=False)
        wall = time.perf_counter() - t0
        last = torch.load(run / "last.pt", map_location="cpu", weights_only=False)
        hist = last["history"]
        images_seen = last["step"] * args.batch_size
        epochs_done = images_seen / max(1, n_train)
        preds = list(csv.DictReader((run / "val_predictions.csv").open()))
        meta = json.loads((run / "model.json").read_text())
        y = np.array([p["label"] != "normal" for p in preds], int)
        score = 1.0 - np.array([float(p["p_normal"]) for p in preds])
        m = binary_metrics(y, score, meta["threshold"], n_boot=200)
        rows.append({
            "arch": arch, "init": init_name, "image_size": size, "epochs": epochs_done,
            "s_per_epoch": last["elapsed"] / max(epochs_done, 1e-9),
            "img_per_s": images_seen / max(last["elapsed"], 1e-9),
            "train_s": last["elapsed"], "wall_s": wall, "decode_cache_s": decode_s,
            "roc_auc": m["roc_auc"], "roc_auc_ci": m["ci"].get("roc_auc"), "accuracy": m["accuracy"],
            "sensitivity": m["sensitivity"], "specificity": m["specificity"],
            "best_epoch": meta["training"]["best_epoch"],
            "val_auc_per_epoch": [h["val_auc"] for h in hist],
        })

    head = (f"{'architecture':<19} {'init':<27} {'px':>4} {'epochs':>6} {'s/epoch':>8} {'img/s':>6} "
            f"{'val AUC':>8} {'95% CI':>15} {'sens':>6} {'spec':>6}")
    print(f"\nvalidation (patient-wise split, threshold chosen on validation); {hw}; "
          f"GPU used: {'yes' if gpu else 'no'}")
    print(head)
    print("-" * len(head))
    for r in rows:
        ci = r["roc_auc_ci"] or [float("nan")] * 2
        print(f"{r['arch']:<19} {r['init']:<27} {r['image_size']:>4} {r['epochs']:>6.2f} {r['s_per_epoch']:>8.1f} "
              f"{r['img_per_s']:>6.1f} {r['roc_auc']:>8.4f} {f'[{ci[0]:.3f}, {ci[1]:.3f}]':>15} "
              f"{r['sensitivity']:>6.3f} {r['specificity']:>6.3f}")
    (out / "bench.json").write_text(json.dumps({"device": device, "hardware": hw, "gpu": gpu,
                                                "budget_min": args.budget_min, "rows": rows}, indent=2))
    print("epochs: epochs of training done in the budget; s/epoch and img/s count the budgeted time, the "
          "validation passes included")
    print(f"\nruns and bench.json in {out}")


if __name__ == "__main__":
    main()
