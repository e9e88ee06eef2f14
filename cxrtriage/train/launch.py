"""One-machine data-parallel training through torch's own launcher (torchrun).

``cxr train --nproc-per-node N`` writes its configuration to a file and starts
``python -m torch.distributed.run --standalone --nproc-per-node N -m cxrtriage.train.launch FILE``;
each of the N processes runs :func:`cxrtriage.train.trainer.train` with torchrun's
RANK / LOCAL_RANK / WORLD_SIZE (gloo on CPU, NCCL on GPU). On several machines, run
``torchrun`` with ``cxr train`` directly (see docs/scaling.md).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from cxrtriage.train.config import TrainConfig
from cxrtriage.train.distributed import check_gpu_share
from cxrtriage.train.runtime import pick_device
from cxrtriage.train.trainer import train


def torchrun_command(config_file: str | Path, nproc: int, resume: bool = False, progress: bool = True,
                     extra: list[str] | None = None) -> list[str]:
    """The torchrun command line that trains ``config_file`` with ``nproc`` processes on this machine."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           *(extra or []), "-m", "cxrtriage.train.launch", str(config_file)]
    if resume:
        cmd.append("--resume")
    if not progress:
        cmd.append("--quiet")
    return cmd


def run_torchrun(cfg: TrainConfig, nproc: int, resume: bool = False, progress: bool = True) -> int:
    """Train ``cfg`` with ``nproc`` processes on this machine; returns torchrun's exit status.

    CPU training gives each process an equal share of the cores (``OMP_NUM_THREADS``, unless
    set) instead of torchrun's default of one thread each."""
    if nproc < 1:
        raise ValueError("--nproc-per-node must be at least 1")
    if cfg.batch_size % nproc:
        raise ValueError(f"batch size {cfg.batch_size} must divide by the number of processes {nproc}")
    if pick_device(cfg.device).type == "cuda":
        check_gpu_share(nproc, torch.cuda.device_count())
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    with tempfile.TemporaryDirectory(prefix="cxr-train-") as tmp:
        path = Path(tmp) / "config.json"
        cfg.save(path)
        return subprocess.call(torchrun_command(path, nproc, resume, progress), env=env)


def main(argv: list[str] | None = None) -> None:
    """Entry point of every process torchrun starts: ``FILE [--resume] [--quiet]``."""
    args = list(sys.argv[1:] if argv is None else argv)
    flags = {a for a in args if a.startswith("--")}
    files = [a for a in args if not a.startswith("--")]
    if len(files) != 1 or flags - {"--resume", "--quiet"}:
        sys.exit("usage: python -m cxrtriage.train.launch CONFIG.json [--resume] [--quiet]")
    train(TrainConfig.load(files[0]), resume="--resume" in flags, progress="--quiet" not in flags)


if __name__ == "__main__":
    main()
