"""The training loop: cached data, augmentation, class weighting, AdamW + warmup/cosine,
an optional moving average of the weights, early stopping on validation AUC, a checkpoint
every epoch, resume, DDP under torchrun, mixed precision on CUDA. Ends by choosing the
threshold on validation and exporting ONNX (:mod:`cxrtriage.train.export`).

:func:`train` runs the steps in order: :func:`prepare_data`, :func:`loss_weights`,
:func:`build_fit` (network, optimiser, moving average), then per epoch :func:`train_epoch`,
:func:`validate` and :func:`save_epoch`.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler
from tqdm.auto import tqdm

from cxrtriage.contract import normalise, standardise
from cxrtriage.data import Task, get_task, load_cached
from cxrtriage.data.samples import write_manifest
from cxrtriage.evaluate.metrics import macro_auc, triage_auc
from cxrtriage.evaluate.multilabel import validation_summary
from cxrtriage.models.archs import build_model, get_arch
from cxrtriage.models.backbones import backbone_parameters, is_backbone, set_backbone_frozen
from cxrtriage.models.export import output_probs
from cxrtriage.models.weights import init_weights
from cxrtriage.train import distributed as dist
from cxrtriage.train.augment import AugmentConfig, augment_batch, sample_seeds
from cxrtriage.train.config import TrainConfig
from cxrtriage.train.dataset import load_samples, of_split, pixel_stats, split_images, targets
from cxrtriage.train.distill import distill_loss, teacher_probs
from cxrtriage.train.export import export_run
from cxrtriage.train.losses import multilabel_loss, positive_weights, weighted_cross_entropy
from cxrtriage.train.mixup import check_alpha, mix_draw, mix_images, mix_targets
from cxrtriage.train.probe import train_probe
from cxrtriage.train.runtime import hardware_name, pick_device, save_whole, seed_everything, write_history
from cxrtriage.train.sampler import epoch_order, rare_label_probs

BEST_KEYS = ("arch", "classes", "image_size", "mean", "std", "task", "epoch", "config", "hardware", "torch")


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
        x = images[idx[s:s + batch]].to(device).float().unsqueeze(1)
        out.append(output_probs(model(normalise(x, mean, std)).float(), multilabel))
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


@dataclass
class Run:
    """Where and how one training runs: its configuration, task, folder, device and process."""

    cfg: TrainConfig
    task: Task
    out: Path
    device: torch.device
    rank: int
    world_size: int
    size: int
    progress: bool

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def multilabel(self) -> bool:
        return self.task.kind == "multilabel"

    @property
    def local_batch(self) -> int:
        return self.cfg.batch_size // self.world_size


@dataclass
class RunData:
    """The run's images (uint8 tensors), targets and the normalisation measured on training images."""

    x_train: torch.Tensor
    x_val: torch.Tensor
    y_train: torch.Tensor  # class indices, or 0/1 float rows (multi-label)
    y_val: np.ndarray
    mean: float
    std: float
    teacher_p: torch.Tensor | None = None  # a teacher's probabilities on the training images (distillation)


@dataclass
class LossWeights:
    """Class weights (single-label), or per-finding positive weights and a rare-finding sampler."""

    class_w: torch.Tensor | None = None
    pos_w: torch.Tensor | None = None
    draw_p: np.ndarray | None = None


@dataclass
class Fit:
    """What is trained: the network (DDP-wrapped under torchrun), its moving average and optimiser."""

    model: torch.nn.Module
    net: torch.nn.Module
    ema: torch.optim.swa_utils.AveragedModel | None
    opt: torch.optim.Optimizer
    base_lrs: list[float]

    @property
    def scored(self) -> torch.nn.Module:
        """What is validated, checkpointed as best and exported."""
        return self.ema.module if self.ema is not None else self.net


@dataclass
class LoopState:
    """Progress across epochs (saved in last.pt, restored on resume)."""

    start_epoch: int = 0
    step: int = 0
    best: float = -1.0
    stale: int = 0
    history: list[dict] = field(default_factory=list)
    elapsed: float = 0.0


def train(cfg: TrainConfig, resume: bool = False, progress: bool = True) -> Path:
    """Run one training; returns the run folder."""
    device, rank, ws = _start_processes(cfg)
    out = Path(cfg.out_dir)
    if resume and (out / "config.json").exists():
        saved = TrainConfig.load(out / "config.json")
        saved.epochs, saved.time_budget_s, saved.stop_after = cfg.epochs, cfg.time_budget_s, cfg.stop_after
        cfg = saved
    dist.barrier()  # every rank has read config.json before rank 0 rewrites it
    spec = get_arch(cfg.arch)
    if spec.linear_probe:  # a frozen trunk: features once, then a fitted head
        if ws > 1:
            raise ValueError(f"{cfg.arch} is a linear probe; it runs in one process (drop --nproc-per-node)")
        cfg.pretrained = not cfg.weights
        return train_probe(cfg, load_samples(cfg), progress=progress)
    run = Run(cfg, get_task(cfg.task), out, device, rank, ws, cfg.image_size or spec.image_size, progress)
    aug_cfg = _check_options(cfg, ws)
    seed_everything(cfg.seed)
    if run.main:
        out.mkdir(parents=True, exist_ok=True)
        cfg.save(out / "config.json")
    data = prepare_data(run)
    weights = loss_weights(run, data)
    fit = build_fit(run, fresh=not resume or not (out / "last.pt").exists())
    steps_per_epoch = len(data.y_train) // cfg.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"batch size {cfg.batch_size} is larger than the {len(data.y_train)} training images")
    state = _resumed_state(run, fit) if resume and (out / "last.pt").exists() else LoopState()
    stop_reason = "epochs"
    for epoch in range(state.start_epoch, cfg.epochs):
        stop_reason = _stop_reason(cfg, state, epoch)
        if stop_reason:
            break
        t_epoch = time.time()
        train_loss, lr = train_epoch(run, data, weights, fit, state, epoch, steps_per_epoch, aug_cfg)
        metrics = validate(run, data, fit.scored)
        epoch_s = dist.max_across(time.time() - t_epoch)
        state.elapsed += epoch_s
        score = metrics["val_macro_auc"] if metrics["val_macro_auc"] is not None else metrics["val_auc"]
        improved = score > state.best + 1e-5
        state.best, state.stale = (score, 0) if improved else (state.best, state.stale + 1)
        state.history.append({"epoch": epoch + 1, "train_loss": train_loss, **metrics, "lr": lr, "seconds": epoch_s})
        if run.main:
            save_epoch(run, data, fit, state, epoch, improved)
        dist.barrier()
    else:
        stop_reason = "epochs"
    if run.main and stop_reason != "paused":
        export_run(out, stop_reason=stop_reason, progress=progress)
    dist.barrier()
    dist.cleanup()
    return out


def _start_processes(cfg: TrainConfig) -> tuple[torch.device, int, int]:
    """The device, rank and world size of this process (one GPU per process under torchrun)."""
    device = pick_device(cfg.device)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    dist.init(device)
    rank, local_rank, ws = dist.world()
    if device.type == "cuda" and ws > 1:
        dist.check_gpu_share(int(os.environ.get("LOCAL_WORLD_SIZE", local_rank + 1)), torch.cuda.device_count())
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    return device, rank, ws


def _check_options(cfg: TrainConfig, ws: int) -> AugmentConfig:
    """Refuse bad options before any work; returns the augmentation settings."""
    aug_cfg = cfg.augmentation()  # refuses a bad flip, strength or zoom
    if cfg.mixup is not None:
        check_alpha(cfg.mixup)
    if cfg.teacher and (cfg.mixup is not None or get_task(cfg.task).kind == "multilabel"):
        raise ValueError("distillation (--teacher) works on single-label tasks without mixup")
    if cfg.teacher and (not 0.0 < cfg.distill_weight <= 1.0 or cfg.distill_temperature <= 0):
        raise ValueError("--distill-weight must be in (0, 1] and --distill-temperature positive")
    if cfg.batch_size % ws:
        raise ValueError(f"batch size {cfg.batch_size} must divide by the number of processes {ws}")
    return aug_cfg


def _stop_reason(cfg: TrainConfig, state: LoopState, epoch: int) -> str:
    """Why training stops before ``epoch`` ('' to go on)."""
    if cfg.stop_after is not None and epoch - state.start_epoch >= cfg.stop_after:
        return "paused"
    if state.stale >= cfg.patience:
        return "early stopping"
    if cfg.time_budget_s and state.elapsed >= cfg.time_budget_s:
        return "time budget"
    return ""


def prepare_data(run: Run) -> RunData:
    """The split (written as split.csv), the cached images, targets and the input normalisation."""
    samples = load_samples(run.cfg)
    train_s, val_s = of_split(samples, "train"), of_split(samples, "val")
    if not train_s or not val_s:
        raise ValueError("need both training and validation images (check the split)")
    if run.main:
        write_manifest(samples, run.out / "split.csv")
        load_cached([s.path for s in samples], run.size, run.cfg.cache_dir, progress=run.progress)  # fill the cache
    dist.barrier()
    x_train, x_val = split_images(samples, run.size, run.cfg.cache_dir, intensity=run.cfg.intensity,
                                  border=run.cfg.border)
    y_train = torch.from_numpy(targets(run.task, train_s))
    mean, std = pixel_stats(x_train)
    teacher = (torch.from_numpy(teacher_probs(run.cfg.teacher, [s.path for s in train_s], run.task.classes,
                                              run.cfg.cache_dir, progress=run.main and run.progress))
               if run.cfg.teacher else None)
    return RunData(x_train, x_val, y_train, targets(run.task, val_s), mean=mean, std=std, teacher_p=teacher)


def loss_weights(run: Run, data: RunData) -> LossWeights:
    """Multi-label: a sampler keeping rare findings present and BCE weighted per finding;
    single-label: inverse class frequencies (refuses a class without training images)."""
    cfg, task = run.cfg, run.task
    if run.multilabel:
        if cfg.sampler not in ("rare", "uniform"):
            raise ValueError(f"unknown sampler {cfg.sampler!r} (rare, uniform)")
        y = data.y_train.numpy()
        draw_p = rare_label_probs(y) if cfg.sampler == "rare" else None
        pos_w = torch.from_numpy(positive_weights(y, draw_p)).to(run.device) if cfg.class_weights else None
        absent = [c for c, n in zip(task.classes, data.y_train.sum(0).tolist()) if n == 0]
        if absent and run.main:
            print(f"warning: no training images with finding(s) {absent}; they cannot be learnt")
        return LossWeights(pos_w=pos_w, draw_p=draw_p)
    counts = torch.bincount(data.y_train, minlength=task.num_classes).float()
    if (counts == 0).any():
        missing = [c for c, n in zip(task.classes, counts) if n == 0]
        raise ValueError(f"no training images of class(es) {missing}")
    class_w = counts.sum() / (task.num_classes * counts) if cfg.class_weights else torch.ones_like(counts)
    return LossWeights(class_w=class_w.to(run.device))


def build_fit(run: Run, fresh: bool) -> Fit:
    """The network (initial weights when ``fresh``), DDP, the moving average and the optimiser."""
    cfg = run.cfg
    spec = get_arch(cfg.arch)
    model = build_model(cfg.arch, run.task.num_classes, run.size)
    if fresh:
        loaded = init_weights(model, cfg.arch, cfg.pretrained, cfg.weights)
        if loaded and run.main:
            print(f"initialised {cfg.arch} from {loaded['source']} ({loaded['loaded']} tensors)")
    lr_mult = cfg.backbone_lr_mult if cfg.backbone_lr_mult is not None else (
        0.1 if cfg.pretrained or cfg.weights else 1.0)
    if cfg.dropout is not None:
        for m in model.modules():
            if isinstance(m, torch.nn.Dropout):
                m.p = cfg.dropout
    model.to(run.device)
    if run.world_size > 1:
        model = dist.sync_batchnorm(model, run.device)  # BatchNorm over the global batch, as with one process
        model = DistributedDataParallel(model, device_ids=[run.device.index] if run.device.type == "cuda" else None)
    net = model.module if run.world_size > 1 else model
    ema = weight_average(net, cfg.ema_decay) if cfg.ema_decay is not None else None
    opt = make_optimizer(model, cfg.optimizer or spec.optimizer, cfg.lr or spec.lr, cfg.weight_decay,
                         lr_mult if is_backbone(cfg.arch) or cfg.freeze_epochs else None)
    return Fit(model, net, ema, opt, [g["lr"] for g in opt.param_groups])


def _resumed_state(run: Run, fit: Fit) -> LoopState:
    """Weights, optimiser, moving average, RNG and progress from last.pt."""
    ck = torch.load(run.out / "last.pt", map_location=run.device, weights_only=False)
    fit.net.load_state_dict(ck["model"])
    fit.opt.load_state_dict(ck["optimizer"])
    if fit.ema is not None:
        fit.ema.load_state_dict(ck["ema"])
    torch.set_rng_state(ck["rng"])
    if run.main:
        print(f"resumed from {run.out / 'last.pt'} at epoch {ck['epoch'] + 1}")
    return LoopState(ck["epoch"] + 1, ck["step"], ck["best"], ck["stale"], ck["history"], ck.get("elapsed", 0.0))


def _epoch_order(run: Run, weights: LossWeights, n: int, epoch: int) -> torch.Tensor:
    """This rank's image order for ``epoch`` (multi-label: rare findings drawn more often, the same
    order on every rank)."""
    cfg, ws = run.cfg, run.world_size
    if weights.draw_p is not None:
        full = epoch_order(weights.draw_p, n, cfg.seed, epoch)
        return torch.from_numpy(full[:len(full) // ws * ws][run.rank::ws])
    sampler = DistributedSampler(range(n), num_replicas=ws, rank=run.rank, shuffle=True, seed=cfg.seed,
                                 drop_last=True)
    sampler.set_epoch(epoch)
    return torch.tensor(list(iter(sampler)))


def _batch_loss(run: Run, logits: torch.Tensor, y: torch.Tensor, weights: LossWeights,
                mix: tuple[float, torch.Tensor] | None, teacher_p: torch.Tensor | None = None) -> torch.Tensor:
    """The batch's loss, against both images' labels in a mixup's proportion (and a teacher's
    probabilities, when distilling)."""
    cfg = run.cfg
    if teacher_p is not None:
        w = cfg.distill_weight
        per = ((1 - w) * weighted_cross_entropy(logits, y, weights.class_w, cfg.label_smoothing)
               + w * distill_loss(logits, teacher_p, cfg.distill_temperature))
        return per.sum() / run.local_batch
    if run.multilabel:
        target = mix_targets(y, *mix) if mix is not None else y
        return multilabel_loss(logits, target, weights.pos_w, cfg.loss, cfg.focal_gamma, cfg.label_smoothing)
    per = weighted_cross_entropy(logits, y, weights.class_w, cfg.label_smoothing)
    if mix is not None:  # the same mix of the losses against both images' labels
        lam, perm = mix
        per = lam * per + (1.0 - lam) * weighted_cross_entropy(logits, y[perm.to(run.device)], weights.class_w,
                                                               cfg.label_smoothing)
    return per.sum() / run.local_batch


def train_epoch(run: Run, data: RunData, weights: LossWeights, fit: Fit, state: LoopState, epoch: int,
                steps: int, aug_cfg: AugmentConfig) -> tuple[float, float]:
    """One pass over the training images; returns (mean loss over ranks, the learning rate reached)."""
    cfg, device, ws = run.cfg, run.device, run.world_size
    order = _epoch_order(run, weights, len(data.y_train), epoch)
    fit.model.train()
    frozen = epoch < cfg.freeze_epochs  # head only; the trunk's batch-norm statistics stay as loaded
    if cfg.freeze_epochs:
        set_backbone_frozen(fit.net, frozen, use_requires_grad=ws == 1)
    use_amp = device.type == "cuda"
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    total_steps, t_epoch = steps * cfg.epochs, time.time()
    losses: list[float] = []
    bar = tqdm(range(steps), desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not (run.main and run.progress),
               leave=True, dynamic_ncols=True)
    for b in bar:
        idx = order[b * run.local_batch:(b + 1) * run.local_batch]
        x = data.x_train[idx].to(device, non_blocking=True).float().unsqueeze(1) / 255.0
        if cfg.augment:
            x = augment_batch(x, sample_seeds(cfg.seed, epoch, idx), aug_cfg)
        x = standardise(x, data.mean, data.std)  # the augmented batch is already in 0..1
        mix = mix_draw(len(idx), cfg.mixup, cfg.seed, epoch, b * ws + run.rank) if cfg.mixup else None
        if mix is not None:
            x = mix_images(x, *mix)
        frac = state.step / max(1, total_steps)
        if cfg.time_budget_s:
            spent = dist.max_across(state.elapsed + time.time() - t_epoch)  # the same clock on every rank
            frac = max(frac, spent / cfg.time_budget_s)
        f = lr_factor(frac, cfg.warmup_fraction)
        for g, base in zip(fit.opt.param_groups, fit.base_lrs):
            g["lr"] = 0.0 if frozen and g.get("trunk") else base * f
        with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
            logits = fit.model(x).float()
        loss = _batch_loss(run, logits, data.y_train[idx].to(device), weights, mix,
                           data.teacher_p[idx].to(device) if data.teacher_p is not None else None)
        fit.opt.zero_grad(set_to_none=True)
        loss.backward()
        fit.opt.step()
        if fit.ema is not None:
            fit.ema.update_parameters(fit.net)
        state.step += 1
        losses.append(loss.item())
        if b % 5 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}", lr=f"{fit.base_lrs[0] * f:.1e}",
                            val_auc=f"{state.history[-1]['val_auc']:.4f}" if state.history else "-")
        if cfg.time_budget_s and dist.max_across(state.elapsed + time.time() - t_epoch) >= cfg.time_budget_s:
            break
    train_loss = float(np.mean(losses)) if losses else float("nan")
    if ws > 1:
        tl = torch.tensor([train_loss], device=device)
        torch.distributed.all_reduce(tl)
        train_loss = float(tl.item() / ws)
    return train_loss, fit.base_lrs[0] * f


def validate(run: Run, data: RunData, scored: torch.nn.Module) -> dict[str, float | None]:
    """Validation loss, triage AUC, macro (multi-label: mean per-finding) AUC and accuracy."""
    probs = predict_arrays(scored, data.x_val, data.mean, data.std, run.device, multilabel=run.multilabel,
                           shard=True)
    y_val = data.y_val
    if run.multilabel:  # early stopping on the mean per-finding AUC
        vs = validation_summary(y_val, probs, list(run.task.classes))
        auc = vs["roc_auc"] if vs["roc_auc"] is not None else float("nan")
        return {"val_loss": vs["loss"], "val_auc": auc, "val_macro_auc": vs["mean_auc"], "val_acc": vs["accuracy"]}
    val_loss = float(F.nll_loss(torch.log(torch.from_numpy(probs).clamp_min(1e-8)), torch.from_numpy(y_val)))
    return {"val_loss": val_loss, "val_auc": triage_auc(y_val, probs),
            "val_macro_auc": macro_auc(y_val, probs) if run.task.num_classes > 2 else None,
            "val_acc": float((probs.argmax(1) == y_val).mean())}


def save_epoch(run: Run, data: RunData, fit: Fit, state: LoopState, epoch: int, improved: bool) -> None:
    """Checkpoints (best.pt when improved, then last.pt), metrics.csv, curves.png and a line of progress."""
    cfg = run.cfg
    ck = {"model": fit.net.state_dict(), "optimizer": fit.opt.state_dict(), "epoch": epoch, "step": state.step,
          "best": state.best, "stale": state.stale, "history": state.history, "rng": torch.get_rng_state(),
          "elapsed": state.elapsed, "config": asdict(cfg), "arch": cfg.arch, "classes": run.task.classes,
          "hardware": hardware_name(run.device), "torch": torch.__version__,
          "image_size": run.size, "mean": data.mean, "std": data.std, "task": run.task.name}
    if fit.ema is not None:
        ck["ema"] = fit.ema.state_dict()
    # best before last, each written whole then renamed: a run killed at any point resumes
    # from a last.pt whose best.pt is complete
    if improved:
        save_whole({"model": fit.scored.state_dict(), **{k: ck[k] for k in BEST_KEYS}}, run.out / "best.pt")
    save_whole(ck, run.out / "last.pt")
    write_history(state.history, run.out / "metrics.csv")
    _plot_curves(state.history, run.out / "curves.png")
    row = state.history[-1]
    mauc = row["val_macro_auc"]
    msg = (f"epoch {epoch + 1}: loss {row['train_loss']:.4f} val_loss {row['val_loss']:.4f} "
           f"val_auc {row['val_auc']:.4f} " + (f"macro_auc {mauc:.4f} " if mauc is not None else "")
           + f"acc {row['val_acc']:.4f} ({row['seconds']:.0f}s)")
    tqdm.write(msg) if run.progress else print(msg)


def _plot_curves(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [r["epoch"] for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    a.plot(ep, [r["train_loss"] for r in rows], label="train loss")
    a.plot(ep, [r["val_loss"] for r in rows], label="validation loss")
    a.set_xlabel("epoch")
    a.legend()
    a.set_title("Loss")
    a.grid(alpha=0.3)
    b.plot(ep, [r["val_auc"] for r in rows], label="validation ROC AUC", color="C2")
    if rows and rows[0].get("val_macro_auc") is not None:
        b.plot(ep, [r["val_macro_auc"] for r in rows], label="validation macro AUC", color="C3")
    b.plot(ep, [r["val_acc"] for r in rows], label="validation accuracy", color="C1")
    b.set_xlabel("epoch")
    b.legend()
    b.set_title("Validation")
    b.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


