"""The training loop: cached data, augmentation, class weighting, AdamW + warmup/cosine,
an optional moving average of the weights, early stopping on validation AUC, a checkpoint
every epoch, resume, DDP under torchrun, mixed precision on CUDA. Ends by choosing the
threshold on validation and exporting ONNX.
"""

from __future__ import annotations

import csv
import json
import math
import os
import platform
import random
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler
from tqdm.auto import tqdm

from cxrtriage import __version__
from cxrtriage.data import get_task, kermany_samples, load_cached, patient_split, read_manifest
from cxrtriage.data.samples import Sample, write_manifest
from cxrtriage.models.archs import CamNet, build_model, get_arch
from cxrtriage.models.backbones import backbone_parameters, init_weights, is_backbone, set_backbone_frozen
from cxrtriage.models.checkpoint import model_from_checkpoint
from cxrtriage.train import distributed as dist
from cxrtriage.train.augment import AugmentConfig, augment_batch, sample_seeds
from cxrtriage.train.config import TrainConfig
from cxrtriage.train.losses import multilabel_loss, positive_weights, weighted_cross_entropy
from cxrtriage.train.mixup import check_alpha, mix_draw, mix_images, mix_targets
from cxrtriage.train.sampler import epoch_order, rare_label_probs


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def hardware_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def load_samples(cfg: TrainConfig) -> list[Sample]:
    """Samples with split set: from the manifest, or a fresh patient-wise split of ``data``."""
    if cfg.manifest:
        samples = read_manifest(cfg.manifest)
        if not any(s.split == "val" for s in samples):
            from cxrtriage.data.generic import carve_validation

            samples = carve_validation(samples, cfg.task, cfg.val_fraction, cfg.seed)
        return [s for s in samples if s.split in ("train", "val")]
    if not cfg.data:
        raise ValueError("give --data ROOT (Kermany layout) or --manifest CSV")
    return patient_split(kermany_samples(cfg.data, "train", cfg.task), cfg.val_fraction, cfg.seed)


def triage_auc(y: np.ndarray, probs: np.ndarray) -> float:
    """ROC AUC of the triage score 1 - P(normal) against 'any abnormal class'."""
    pos = y != 0
    if pos.all() or not pos.any():
        return float("nan")
    return float(roc_auc_score(pos, 1.0 - probs[:, 0]))


def macro_auc(y: np.ndarray, probs: np.ndarray) -> float:
    try:
        return float(roc_auc_score(y, probs, multi_class="ovr", average="macro"))
    except ValueError:
        return float("nan")


def lr_factor(progress: float, warmup: float) -> float:
    """Linear warmup then cosine decay to zero, over progress in [0, 1]."""
    if progress < warmup:
        return max(progress / warmup, 0.01)
    p = min(1.0, (progress - warmup) / max(1e-8, 1 - warmup))
    return 0.5 * (1 + math.cos(math.pi * p))


def make_optimizer(model: torch.nn.Module, name: str, lr: float, wd: float,
                   backbone_lr_mult: float | None = None) -> torch.optim.Optimizer:
    """AdamW/Adam/SGD; with ``backbone_lr_mult`` the trunk of a CamNet gets its own groups (tagged
    ``trunk``) at ``lr * backbone_lr_mult`` (discriminative learning rates)."""
    net = model.module if hasattr(model, "module") else model
    trunk = {id(p) for p in backbone_parameters(net)} if backbone_lr_mult is not None else set()
    groups = []
    for in_trunk in (False, True):
        ps = [p for p in model.parameters() if (id(p) in trunk) == in_trunk]
        extra = {"lr": lr * backbone_lr_mult, "trunk": True} if in_trunk and trunk else {}
        groups += [g for g in ({"params": [p for p in ps if p.ndim > 1], "weight_decay": wd, **extra},
                               {"params": [p for p in ps if p.ndim <= 1], "weight_decay": 0.0, **extra}) if g["params"]]
    if name == "adam" and trunk:
        return torch.optim.Adam([{**g, "weight_decay": 0.0} for g in groups], lr=lr)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    if name == "adam":
        return torch.optim.Adam(model.parameters(), lr=lr)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=0.9, nesterov=True)
    raise ValueError(f"unknown optimizer {name!r} (adamw, adam, sgd)")


@torch.no_grad()
def predict_arrays(model: torch.nn.Module, images: torch.Tensor, mean: float, std: float,
                   device: torch.device, batch: int = 256, multilabel: bool = False,
                   shard: bool = False) -> np.ndarray:
    """Softmax (multi-label: sigmoid) probabilities for uint8 images (N, S, S).

    ``shard``: every rank of a torchrun job calls this together; each scores its share and
    all get the gathered result. Without it (e.g. rank 0 exporting alone) nothing is shared."""
    rank, _, ws = dist.world() if shard else (0, 0, 1)
    n = images.shape[0]
    per = math.ceil(n / ws)
    idx = torch.arange(rank * per, min(n, (rank + 1) * per))
    model.eval()
    out = []
    for s in range(0, len(idx), batch):
        x = images[idx[s:s + batch]].to(device).float().unsqueeze(1) / 255.0
        logits = model((x - mean) / std).float()
        out.append(torch.sigmoid(logits) if multilabel else torch.softmax(logits, dim=1))
    if not out:  # this rank's shard is empty (fewer images than ranks): learn the width from one image
        width = model(torch.zeros(1, 1, *images.shape[1:], device=device)).shape[1]
        out = [torch.zeros(0, width, device=device)]
    probs = torch.cat(out)
    if ws > 1:
        pad = per - probs.shape[0]
        if pad:
            probs = torch.cat([probs, torch.zeros(pad, probs.shape[1], device=probs.device)])
        probs = dist.gather_cat(probs)[:n]
    return probs.cpu().numpy()


def weight_average(net: torch.nn.Module, decay: float) -> torch.optim.swa_utils.AveragedModel:
    """An exponential moving average of ``net``'s weights and batch-norm statistics (torch's
    AveragedModel). The decay ramps up as (1 + n) / (10 + n) towards ``decay`` so that the
    random initial weights fade out early in a short run."""
    if not 0.0 < decay < 1.0:
        raise ValueError(f"EMA decay must be between 0 and 1, got {decay}")

    def ema(avg: torch.Tensor, new: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        d = min(decay, (1.0 + float(n)) / (10.0 + float(n)))
        return avg + (new - avg) * (1.0 - d)

    return torch.optim.swa_utils.AveragedModel(net, avg_fn=ema, use_buffers=True)


def _save_whole(obj: dict, path: Path) -> None:
    """torch.save to a temporary file, then rename over `path` (never a half-written checkpoint)."""
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


def _plot_curves(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [r["epoch"] for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    a.plot(ep, [r["train_loss"] for r in rows], label="train loss")
    a.plot(ep, [r["val_loss"] for r in rows], label="validation loss")
    a.set_xlabel("epoch"); a.legend(); a.set_title("Loss"); a.grid(alpha=0.3)
    b.plot(ep, [r["val_auc"] for r in rows], label="validation ROC AUC", color="C2")
    if rows and rows[0].get("val_macro_auc") is not None:
        b.plot(ep, [r["val_macro_auc"] for r in rows], label="validation macro AUC", color="C3")
    b.plot(ep, [r["val_acc"] for r in rows], label="validation accuracy", color="C1")
    b.set_xlabel("epoch"); b.legend(); b.set_title("Validation"); b.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def train(cfg: TrainConfig, resume: bool = False, progress: bool = True) -> Path:
    """Run one training; returns the run folder."""
    device = pick_device(cfg.device)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    dist.init(device)
    rank, local_rank, ws = dist.world()
    if device.type == "cuda" and ws > 1:
        dist.check_gpu_share(int(os.environ.get("LOCAL_WORLD_SIZE", local_rank + 1)), torch.cuda.device_count())
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    main = rank == 0
    out = Path(cfg.out_dir)
    if resume and (out / "config.json").exists():
        saved = TrainConfig.load(out / "config.json")
        saved.epochs, saved.time_budget_s, saved.stop_after = cfg.epochs, cfg.time_budget_s, cfg.stop_after
        cfg = saved
    dist.barrier()  # every rank has read config.json before rank 0 rewrites it
    task = get_task(cfg.task)
    spec = get_arch(cfg.arch)
    if spec.linear_probe:  # a frozen trunk: features once, then a fitted head
        from cxrtriage.train.probe import train_probe

        if ws > 1:
            raise ValueError(f"{cfg.arch} is a linear probe; it runs in one process (drop --nproc-per-node)")
        cfg.pretrained = not cfg.weights
        return train_probe(cfg, load_samples(cfg), progress=progress)
    size = cfg.image_size or spec.image_size
    lr = cfg.lr or spec.lr
    opt_name = cfg.optimizer or spec.optimizer
    aug_cfg = AugmentConfig(hflip_p=cfg.hflip).scaled(cfg.augment_strength)  # refuses a bad flip or strength
    if cfg.mixup is not None:
        check_alpha(cfg.mixup)
    if cfg.batch_size % ws:
        raise ValueError(f"batch size {cfg.batch_size} must divide by the number of processes {ws}")
    local_bs = cfg.batch_size // ws
    seed_everything(cfg.seed)
    if main:
        out.mkdir(parents=True, exist_ok=True)
        cfg.save(out / "config.json")

    samples = load_samples(cfg)
    train_s = [s for s in samples if s.split == "train"]
    val_s = [s for s in samples if s.split == "val"]
    if not train_s or not val_s:
        raise ValueError("need both training and validation images (check the split)")
    if main:
        write_manifest(samples, out / "split.csv")
        load_cached([s.path for s in samples], size, cfg.cache_dir, progress=progress)
    dist.barrier()
    arr = load_cached([s.path for s in samples], size, cfg.cache_dir, progress=False)
    is_val = np.array([s.split == "val" for s in samples])
    x_train = torch.from_numpy(np.ascontiguousarray(arr[~is_val]))
    x_val = torch.from_numpy(np.ascontiguousarray(arr[is_val]))
    multilabel = task.kind == "multilabel"
    if multilabel:  # 0/1 float targets (N, labels)
        y_train = torch.from_numpy(np.stack([task.multi_hot(s.label) for s in train_s]))
        y_val = np.stack([task.multi_hot(s.label) for s in val_s])
    else:
        y_train = torch.tensor([task.index(s.label) for s in train_s])
        y_val = np.array([task.index(s.label) for s in val_s])
    mean = float(x_train.float().mean() / 255.0)
    std = float(x_train.float().std() / 255.0)

    draw_p = pos_w = None
    if multilabel:  # a sampler that keeps rare findings present, BCE weighted per finding
        if cfg.sampler not in ("rare", "uniform"):
            raise ValueError(f"unknown sampler {cfg.sampler!r} (rare, uniform)")
        draw_p = rare_label_probs(y_train.numpy()) if cfg.sampler == "rare" else None
        pos_w = torch.from_numpy(positive_weights(y_train.numpy(), draw_p)).to(device) if cfg.class_weights else None
        absent = [c for c, n in zip(task.classes, y_train.sum(0).tolist()) if n == 0]
        if absent and main:
            print(f"warning: no training images with finding(s) {absent}; they cannot be learnt")
    else:
        counts = torch.bincount(y_train, minlength=task.num_classes).float()
        if (counts == 0).any():
            missing = [c for c, n in zip(task.classes, counts) if n == 0]
            raise ValueError(f"no training images of class(es) {missing}")
        class_w = (counts.sum() / (task.num_classes * counts) if cfg.class_weights
                   else torch.ones_like(counts)).to(device)

    model = build_model(cfg.arch, task.num_classes, size)
    if not resume or not (out / "last.pt").exists():
        loaded = init_weights(model, cfg.arch, cfg.pretrained, cfg.weights)
        if loaded and main:
            print(f"initialised {cfg.arch} from {loaded['source']} ({loaded['loaded']} tensors)")
    transfer = is_backbone(cfg.arch)
    lr_mult = cfg.backbone_lr_mult if cfg.backbone_lr_mult is not None else (
        0.1 if cfg.pretrained or cfg.weights else 1.0)
    if cfg.dropout is not None:
        for m in model.modules():
            if isinstance(m, torch.nn.Dropout):
                m.p = cfg.dropout
    model.to(device)
    if ws > 1:
        model = dist.sync_batchnorm(model, device)  # BatchNorm over the global batch, as with one process
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    net = model.module if ws > 1 else model
    ema = weight_average(net, cfg.ema_decay) if cfg.ema_decay is not None else None
    scored = ema.module if ema is not None else net  # what is validated, checkpointed as best and exported
    opt = make_optimizer(model, opt_name, lr, cfg.weight_decay, lr_mult if transfer or cfg.freeze_epochs else None)
    base_lrs = [g["lr"] for g in opt.param_groups]
    use_amp = device.type == "cuda"
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16

    steps_per_epoch = len(y_train) // cfg.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"batch size {cfg.batch_size} is larger than the {len(y_train)} training images")
    total_steps = steps_per_epoch * cfg.epochs
    history: list[dict] = []
    start_epoch, step, best, stale, elapsed_before = 0, 0, -1.0, 0, 0.0
    ckpt_last = out / "last.pt"
    if resume and ckpt_last.exists():
        ck = torch.load(ckpt_last, map_location=device, weights_only=False)
        net.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        if ema is not None:
            ema.load_state_dict(ck["ema"])
        start_epoch, step, best, stale = ck["epoch"] + 1, ck["step"], ck["best"], ck["stale"]
        history, elapsed_before = ck["history"], ck.get("elapsed", 0.0)
        torch.set_rng_state(ck["rng"])
        if main:
            print(f"resumed from {ckpt_last} at epoch {start_epoch}")

    stop_reason = "epochs"
    elapsed = elapsed_before
    for epoch in range(start_epoch, cfg.epochs):
        if cfg.stop_after is not None and epoch - start_epoch >= cfg.stop_after:
            stop_reason = "paused"
            break
        if stale >= cfg.patience:
            stop_reason = "early stopping"
            break
        if cfg.time_budget_s and elapsed >= cfg.time_budget_s:
            stop_reason = "time budget"
            break
        t_epoch = time.time()
        sampler = DistributedSampler(
            range(len(y_train)), num_replicas=ws, rank=rank, shuffle=True, seed=cfg.seed, drop_last=True
        )
        sampler.set_epoch(epoch)
        order = torch.tensor(list(iter(sampler)))
        if draw_p is not None:  # multi-label: rare findings drawn more often (same order on every rank)
            full = epoch_order(draw_p, len(y_train), cfg.seed, epoch)
            order = torch.from_numpy(full[:len(full) // ws * ws][rank::ws])
        model.train()
        frozen = epoch < cfg.freeze_epochs  # head only; the trunk's batch-norm statistics stay as loaded
        if cfg.freeze_epochs:
            set_backbone_frozen(net, frozen, use_requires_grad=ws == 1)
        losses = []
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not (main and progress),
                   leave=True, dynamic_ncols=True)
        for b in bar:
            idx = order[b * local_bs:(b + 1) * local_bs]
            x = x_train[idx].to(device, non_blocking=True).float().unsqueeze(1) / 255.0
            if cfg.augment:
                x = augment_batch(x, sample_seeds(cfg.seed, epoch, idx), aug_cfg)
            x = (x - mean) / std
            y = y_train[idx].to(device)
            mix = mix_draw(len(idx), cfg.mixup, cfg.seed, epoch, b * ws + rank) if cfg.mixup else None
            if mix is not None:
                x = mix_images(x, *mix)
            frac = step / max(1, total_steps)
            if cfg.time_budget_s:
                spent = dist.max_across(elapsed + time.time() - t_epoch)  # the same clock on every rank
                frac = max(frac, spent / cfg.time_budget_s)
            f = lr_factor(frac, cfg.warmup_fraction)
            for g, base in zip(opt.param_groups, base_lrs):
                g["lr"] = 0.0 if frozen and g.get("trunk") else base * f
            with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
                logits = model(x).float()
            if multilabel:
                target = mix_targets(y, *mix) if mix is not None else y
                loss = multilabel_loss(logits, target, pos_w, cfg.loss, cfg.focal_gamma, cfg.label_smoothing)
            else:
                per = weighted_cross_entropy(logits, y, class_w, cfg.label_smoothing)
                if mix is not None:  # the same mix of the losses against both images' labels
                    lam, perm = mix
                    per = lam * per + (1.0 - lam) * weighted_cross_entropy(logits, y[perm.to(device)], class_w,
                                                                           cfg.label_smoothing)
                loss = per.sum() / local_bs
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if ema is not None:
                ema.update_parameters(net)
            step += 1
            losses.append(loss.item())
            if b % 5 == 0:
                bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}", lr=f"{base_lrs[0] * f:.1e}",
                                val_auc=f"{history[-1]['val_auc']:.4f}" if history else "-")
            if cfg.time_budget_s and dist.max_across(elapsed + time.time() - t_epoch) >= cfg.time_budget_s:
                break
        train_loss = float(np.mean(losses)) if losses else float("nan")
        if ws > 1:
            tl = torch.tensor([train_loss], device=device)
            torch.distributed.all_reduce(tl)
            train_loss = float(tl.item() / ws)
        probs = predict_arrays(scored, x_val, mean, std, device, multilabel=multilabel, shard=True)
        if multilabel:  # early stopping on the mean per-finding AUC
            from cxrtriage.evaluate.multilabel import validation_summary

            vs = validation_summary(y_val, probs, list(task.classes))
            val_loss, acc, mauc = vs["loss"], vs["accuracy"], vs["mean_auc"]
            auc = vs["roc_auc"] if vs["roc_auc"] is not None else float("nan")
        else:
            val_loss = float(F.nll_loss(torch.log(torch.from_numpy(probs).clamp_min(1e-8)), torch.from_numpy(y_val)))
            auc = triage_auc(y_val, probs)
            mauc = macro_auc(y_val, probs) if task.num_classes > 2 else None
            acc = float((probs.argmax(1) == y_val).mean())
        epoch_s = dist.max_across(time.time() - t_epoch)
        elapsed += epoch_s
        score = mauc if mauc is not None else auc
        improved = score > best + 1e-5
        if improved:
            best, stale = score, 0
        else:
            stale += 1
        row = {"epoch": epoch + 1, "train_loss": train_loss, "val_loss": val_loss, "val_auc": auc,
               "val_macro_auc": mauc, "val_acc": acc, "lr": base_lrs[0] * f, "seconds": epoch_s}
        history.append(row)
        if main:
            state = {"model": net.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch, "step": step,
                     "best": best, "stale": stale, "history": history, "rng": torch.get_rng_state(),
                     "elapsed": elapsed, "config": asdict(cfg), "arch": cfg.arch, "classes": task.classes,
                     "hardware": hardware_name(device), "torch": torch.__version__,
                     "image_size": size, "mean": mean, "std": std, "task": task.name}
            if ema is not None:
                state["ema"] = ema.state_dict()
            # best before last, each written whole then renamed: a run killed at any point resumes
            # from a last.pt whose best.pt is complete
            if improved:
                keep = ("arch", "classes", "image_size", "mean", "std", "task", "epoch", "config", "hardware", "torch")
                _save_whole({"model": scored.state_dict(), **{k: state[k] for k in keep}}, out / "best.pt")
            _save_whole(state, ckpt_last)
            with (out / "metrics.csv").open("w", newline="") as fh:
                w = csv.DictWriter(fh, fieldnames=list(row))
                w.writeheader()
                w.writerows(history)
            _plot_curves(history, out / "curves.png")
            msg = (f"epoch {epoch + 1}: loss {train_loss:.4f} val_loss {val_loss:.4f} val_auc {auc:.4f} "
                   + (f"macro_auc {mauc:.4f} " if mauc is not None else "") + f"acc {acc:.4f} ({epoch_s:.0f}s)")
            tqdm.write(msg) if progress else print(msg)
        dist.barrier()
    else:
        stop_reason = "epochs"

    if main and stop_reason != "paused":
        export_run(out, stop_reason=stop_reason, progress=progress)
    dist.barrier()
    dist.cleanup()
    return out


def export_run(out: str | Path, onnx_path: str | Path | None = None, stop_reason: str = "",
               progress: bool = False) -> Path:
    """Reload a run's best checkpoint, choose the threshold on its validation split, fit the
    quality gate and export ONNX + sidecar (``<run>/model.onnx`` unless ``onnx_path``)."""
    from cxrtriage.models.export import export_onnx, run_onnx, update_sidecar

    out = Path(out)
    cfg = TrainConfig.load(out / "config.json")
    task = get_task(cfg.task)
    best = torch.load(out / "best.pt", map_location="cpu", weights_only=False)
    model, ck = model_from_checkpoint(best)
    last = torch.load(out / "last.pt", map_location="cpu", weights_only=False) if (out / "last.pt").exists() else best
    history = last.get("history", [])
    samples = read_manifest(out / "split.csv")
    arr = load_cached([s.path for s in samples], ck["image_size"], cfg.cache_dir, progress=progress)
    is_val = np.array([s.split == "val" for s in samples])
    x_train = torch.from_numpy(np.ascontiguousarray(arr[~is_val]))
    x_val = torch.from_numpy(np.ascontiguousarray(arr[is_val]))
    val_s = [s for s in samples if s.split == "val"]
    multilabel = task.kind == "multilabel"
    onnx_path = Path(onnx_path) if onnx_path else out / "model.onnx"
    previous = json.loads(onnx_path.with_suffix(".json").read_text()).get("training", {}) \
        if onnx_path.with_suffix(".json").exists() else {}
    # export first, then score validation with ONNX Runtime (what serving runs, and much faster
    # than torch eager on a CPU); the sidecar is completed below
    export_onnx(model, onnx_path, ck["image_size"], ck["mean"], ck["std"], {"kind": task.kind})
    is_cam = isinstance(model, CamNet)
    val_out = run_onnx(onnx_path, x_val.numpy(), ["probs", "embedding"] if is_cam else ["probs"])
    probs = val_out["probs"]
    if multilabel:  # triage score = the highest finding probability; positive = any finding
        y_val = np.stack([task.multi_hot(s.label) for s in val_s])
        score, pos = probs.max(axis=1), y_val.any(axis=1).astype(int)
    else:
        y_val = np.array([task.index(s.label) for s in val_s])
        score = 1.0 - probs[:, 0]
        pos = (y_val != 0).astype(int)
    thr, thr_high = operating_points(pos, score, cfg.threshold_method, cfg.target_sensitivity)
    write_val_predictions(out / "val_predictions.csv", task, val_s, probs)
    sidecar = {
        "name": f"cxr-{task.name}-{ck['arch']}",
        "task": task.name, "kind": task.kind, "classes": list(task.classes),
        "arch": ck["arch"], "threshold": float(thr), "threshold_high": float(thr_high),
        "threshold_method": (f"sensitivity>={cfg.target_sensitivity}" if cfg.target_sensitivity
                             else cfg.threshold_method) + " on validation",
        "score": "1 - P(normal)",
        "cxr_triage_version": __version__,
        "training": {"epochs_run": len(history), "n_train": int(len(x_train)), "best_epoch": best["epoch"] + 1,
                     "seconds": round(float(last.get("elapsed", 0.0)), 1), "stop": stop_reason or None,
                     "hardware": best.get("hardware"), "torch": best.get("torch"), "seed": cfg.seed},
        "validation": validation_facts(task, y_val, probs) if not multilabel else {},
    }
    if multilabel:
        sidecar.update(_multilabel_sidecar(task, cfg, y_val, probs))
    if cfg.pretrained or cfg.weights:
        sidecar["training"]["init"] = cfg.weights or "ImageNet"
    if not history and previous:  # exporting a run whose last checkpoint was not kept
        sidecar["training"] = {**previous, "best_epoch": best["epoch"] + 1}
    update_sidecar(onnx_path, sidecar)
    if is_cam:
        idx = torch.randperm(len(x_train), generator=torch.Generator().manual_seed(cfg.seed))[:4000]
        emb_train = run_onnx(onnx_path, x_train[idx].numpy(), ["embedding"])["embedding"]
        gate_from_embeddings(onnx_path, emb_train, val_out["embedding"])
    print(f"best epoch {best['epoch'] + 1}; validation ROC AUC {sidecar['validation']['roc_auc'] or float('nan'):.4f}; "
          f"threshold {thr:.3f}; model: {onnx_path}")
    return onnx_path


def operating_points(pos: np.ndarray, score: np.ndarray, method: str,
                     target_sensitivity: float | None) -> tuple[float, float]:
    """(threshold, "urgent" threshold) chosen on validation labels ``pos`` and scores ``score``."""
    from cxrtriage.evaluate.thresholds import choose_threshold, high_priority_threshold

    thr = choose_threshold(pos, score, method=method, target_sensitivity=target_sensitivity)
    return thr, max(thr, high_priority_threshold(pos, score, specificity=0.995))


def write_val_predictions(path: Path, task, val_s: list[Sample], probs: np.ndarray) -> None:
    """One row per validation image: path, patient, label and the class probabilities."""
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "patient_id", "label", *[f"p_{c}" for c in task.classes]])
        for s, p in zip(val_s, probs):
            w.writerow([s.path, s.patient_id, s.label, *[f"{v:.6f}" for v in p]])


def validation_facts(task, y_val: np.ndarray, probs: np.ndarray) -> dict:
    """The sidecar's validation summary of a single-label model."""
    return {"n": int(len(y_val)), "roc_auc": triage_auc(y_val, probs),
            "macro_auc": macro_auc(y_val, probs) if task.num_classes > 2 else None,
            "accuracy": float((probs.argmax(1) == y_val).mean())}


def _multilabel_sidecar(task, cfg: TrainConfig, y_val: np.ndarray, probs: np.ndarray) -> dict:
    """Sidecar entries of a multi-label model: per-finding thresholds chosen on validation
    (None where a finding is absent there: the engine then flags it at 0.5) and validation AUCs."""
    from cxrtriage.evaluate.multilabel import label_thresholds, validation_summary

    labels = list(task.classes)
    vs = validation_summary(y_val, probs, labels)
    return {
        "score": "max over findings of P(finding)",
        "label_thresholds": label_thresholds(y_val, probs, labels, cfg.threshold_method, cfg.target_sensitivity),
        "validation": {"n": int(len(y_val)), "roc_auc": vs["roc_auc"], "mean_auc": vs["mean_auc"],
                       "per_label_auc": vs["per_label_auc"], "accuracy": vs["accuracy"],
                       "label_positives": {c: int(n) for c, n in zip(labels, y_val.sum(axis=0))}},
    }


def gate_from_embeddings(onnx_path: Path, tr: np.ndarray, va: np.ndarray) -> None:
    """Fit the gate on training embeddings ``tr``; threshold on even validation rows, report on odd ones."""
    from cxrtriage.infer.gate import attach_gate, fit_feature_gate

    gate = fit_feature_gate(tr, va[0::2])
    held = va[1::2]
    refused = float((gate.distance(held) > gate.threshold).mean())
    attach_gate(onnx_path, gate, {"val_false_refusal_rate": refused, "n_fit": int(len(tr)),
                                  "n_threshold": int(len(va[0::2])), "n_heldout": int(len(held))})
