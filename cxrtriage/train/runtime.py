"""Where a run executes: the device, a readable name of its hardware, seeding, and checkpoint files
written whole."""

from __future__ import annotations

import csv
import platform
import random
from pathlib import Path

import numpy as np
import torch


def pick_device(name: str) -> torch.device:
    """``auto``: CUDA when present, else the CPU; any other name as torch reads it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def hardware_name(device: torch.device) -> str:
    """The GPU's name, or the CPU and its thread count (recorded in checkpoints and sidecars)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's generators."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def save_whole(obj: dict, path: Path) -> None:
    """torch.save to a temporary file, then rename over ``path`` (never a half-written checkpoint)."""
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


def write_history(rows: list[dict], path: Path) -> None:
    """The per-epoch (or per-candidate) metrics as a CSV, one row each."""
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
