"""torchrun / DistributedDataParallel plumbing (gloo on CPU, NCCL on GPU)."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def world() -> tuple[int, int, int]:
    """(rank, local_rank, world_size) from torchrun's environment; (0, 0, 1) otherwise."""
    return (
        int(os.environ.get("RANK", 0)),
        int(os.environ.get("LOCAL_RANK", 0)),
        int(os.environ.get("WORLD_SIZE", 1)),
    )


def init(device: torch.device) -> None:
    """Join the process group when launched by torchrun with more than one process."""
    if world()[2] > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")


def check_gpu_share(nproc: int, n_gpus: int) -> None:
    """Refuse more GPU training processes on a machine than it has GPUs.

    Processes that time-share one GPU each run many times slower than one alone (four
    EfficientNet-Lite0 trainings on one H200: 115 s per epoch each, against 5 s for one)."""
    if nproc > n_gpus:
        raise ValueError(f"{nproc} GPU training processes but {n_gpus} GPU(s) on this machine: one process per "
                         f"GPU (--nproc-per-node {max(n_gpus, 1)}); processes sharing a GPU run many times slower")


def gather_cat(t: torch.Tensor) -> torch.Tensor:
    """Concatenate a tensor from every rank (rank order); identity when not distributed."""
    if not (dist.is_available() and dist.is_initialized()):
        return t
    parts = [torch.zeros_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts)


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def max_across(value: float) -> float:
    """The largest ``value`` over all ranks (the value itself when not distributed)."""
    if not (dist.is_available() and dist.is_initialized()):
        return value
    t = torch.tensor([value], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


# -- batch norm over the global batch on CPU ------------------------------------------------


class _SumAcrossRanks(torch.autograd.Function):
    """all_reduce(SUM) with a gradient: the gradient of a sum over ranks is the sum over ranks
    of the gradients flowing into it."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, group) -> torch.Tensor:  # type: ignore[override]
        ctx.group = group
        out = tensor.clone()
        dist.all_reduce(out, group=group)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        grad = grad.clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


class GlooSyncBatchNorm(torch.nn.BatchNorm2d):
    """Batch normalisation over the global batch for CPU training with gloo.

    ``torch.nn.SyncBatchNorm`` runs on GPUs only (DDP refuses it on CPU). This layer keeps
    BatchNorm2d's parameters and buffers (same state dict), and in training mode normalises
    with the mean and biased variance of the whole batch across ranks (two-pass, like
    BatchNorm), updating the running statistics with the unbiased variance. Its reductions
    use a process group of their own so they never interleave with DDP's gradient buckets.
    In evaluation mode, or outside a process group, it is a plain BatchNorm2d.
    """

    group = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        c = x.shape[1]
        dims = [0, *range(2, x.dim())]
        shape = (1, c) + (1,) * (x.dim() - 2)
        n_local = torch.full((1,), float(x.numel() // c), dtype=x.dtype)
        total = _SumAcrossRanks.apply(torch.cat([x.sum(dims), n_local]), self.group)
        count = total[-1].detach()
        mean = total[:c] / count
        centred = x - mean.view(shape)
        var = _SumAcrossRanks.apply((centred * centred).sum(dims), self.group) / count
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * (count / (count - 1).clamp_min(1)), alpha=m)
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


def sync_batchnorm(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """BatchNorm over the global batch: torch's SyncBatchNorm on GPUs, GlooSyncBatchNorm on CPU.

    Collective: call on every rank, in the same order."""
    if device.type == "cuda":
        return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    group = dist.new_group(backend="gloo")

    def convert(module: torch.nn.Module) -> torch.nn.Module:
        if isinstance(module, torch.nn.BatchNorm2d) and not isinstance(module, GlooSyncBatchNorm):
            new = GlooSyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                                    module.track_running_stats)
            new.load_state_dict(module.state_dict())
            new.group = group
            new.train(module.training)
            return new
        for name, child in module.named_children():
            setattr(module, name, convert(child))
        return module

    return convert(model)
