"""Radiograph augmentation on batches of tensors (one affine warp per batch, in torch).

Small rotation, translation and zoom; exposure (brightness, contrast, gamma), blur and
noise for acquisition differences. No vertical flip, no horizontal flip by default
(the heart's side carries meaning). Each sample's parameters come from its own seed
(run seed, epoch, sample index), so results do not depend on how batches are split
across processes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentConfig:
    rotate_deg: float = 8.0
    translate: float = 0.06
    scale: tuple[float, float] = (0.9, 1.15)
    brightness: float = 0.12
    contrast: float = 0.2
    gamma: float = 0.25
    blur_p: float = 0.2
    noise_std: float = 0.03
    hflip_p: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.hflip_p <= 1.0:
            raise ValueError(f"hflip is a probability (0 to 1), got {self.hflip_p}")
        lo, hi = self.scale
        if not 0.0 < lo <= hi:
            raise ValueError(f"zoom range must be two factors 0 < low <= high (1: as acquired), got {lo}, {hi}")

    def scaled(self, strength: float) -> AugmentConfig:
        """Every range and probability times ``strength`` (0: none, 1: these defaults); the
        zoom range shrinks towards 1 and the flip probability is kept."""
        if strength < 0:
            raise ValueError(f"augmentation strength must be >= 0, got {strength}")
        lo, hi = self.scale
        return replace(self, rotate_deg=self.rotate_deg * strength, translate=self.translate * strength,
                       scale=(1 + (lo - 1) * strength, 1 + (hi - 1) * strength),
                       brightness=self.brightness * strength, contrast=self.contrast * strength,
                       gamma=self.gamma * strength, blur_p=min(1.0, self.blur_p * strength),
                       noise_std=self.noise_std * strength)


def _sample_params(seeds: list[int], shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Ten uniform numbers and a noise image per sample, reproducible from its seed."""
    rows, noise = [], []
    for s in seeds:
        g = torch.Generator().manual_seed(int(s) % (2**63))
        rows.append(torch.rand(10, generator=g))
        noise.append(torch.randn(shape, generator=g))
    return torch.stack(rows), torch.stack(noise)


def sample_seeds(seed: int, epoch: int, indices: torch.Tensor) -> list[int]:
    return [(seed * 1_000_003 + epoch) * 10_000_019 + int(i) for i in indices.tolist()]


def augment_batch(x: torch.Tensor, seeds: list[int], cfg: AugmentConfig = AugmentConfig()) -> torch.Tensor:
    """Augment a batch ``x`` (N,1,H,W) with values in [0, 1]."""
    n = x.shape[0]
    u, noise = _sample_params(seeds, tuple(x.shape[1:]))
    u, noise = u.to(x.device), noise.to(x.device)
    ang = (u[:, 0] * 2 - 1) * math.radians(cfg.rotate_deg)
    lo, hi = cfg.scale
    zoom = lo + u[:, 1] * (hi - lo)
    tx = (u[:, 2] * 2 - 1) * cfg.translate * 2
    ty = (u[:, 3] * 2 - 1) * cfg.translate * 2
    flip = torch.where(u[:, 9] < cfg.hflip_p, -1.0, 1.0)
    cos, sin = torch.cos(ang) / zoom, torch.sin(ang) / zoom
    theta = torch.stack(
        [torch.stack([cos * flip, -sin, tx], 1), torch.stack([sin * flip, cos, ty], 1)], 1
    ).to(x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    # exposure: gamma, contrast around the mean, brightness
    gamma = torch.exp((u[:, 4] * 2 - 1) * cfg.gamma).view(n, 1, 1, 1)
    x = x.clamp(1e-4, 1.0) ** gamma
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    c = (1 + (u[:, 5] * 2 - 1) * cfg.contrast).view(n, 1, 1, 1)
    b = ((u[:, 6] * 2 - 1) * cfg.brightness).view(n, 1, 1, 1)
    x = (x - mean) * c + mean + b
    # blur a fraction of the batch with a 3x3 box-ish kernel
    blur = (u[:, 7] < cfg.blur_p).view(n, 1, 1, 1).to(x.dtype)
    if blur.any():
        k = torch.tensor([[1, 2, 1], [2, 4, 2], [1, 2, 1]], dtype=x.dtype, device=x.device) / 16
        xb = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), k.view(1, 1, 3, 3))
        x = blur * xb + (1 - blur) * x
    # sensor noise with a per-sample strength
    x = x + noise * (u[:, 8] * cfg.noise_std).view(n, 1, 1, 1)
    return x.clamp(0.0, 1.0)
