"""The Inception V3 trunk (torchvision's layout, without the auxiliary classifier)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class BasicConv(nn.Module):
    def __init__(self, cin: int, cout: int, k, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)), inplace=True)


class _Branches(nn.Module):
    """An Inception module: named branches (each a list of BasicConv specs) concatenated."""

    def __init__(self, cin: int, branches: dict[str, list[tuple]], pool: tuple[str, int] | None = None,
                 max_pool: bool = False, stride2: bool = False):
        super().__init__()
        self.order: list[str] = []
        for name, convs in branches.items():
            c = cin
            for _, (sub, cout, k, *rest) in enumerate(convs):
                setattr(self, f"{name}{sub}", BasicConv(c, cout, k, *rest))
                c = cout
            self.order.append(name)
        self.subs = {name: [f"{name}{sub}" for sub, *_ in convs] for name, convs in branches.items()}
        self.pool = pool  # (branch name, channels) of the avg-pool branch, if any
        if pool:
            setattr(self, pool[0], BasicConv(cin, pool[1], 1))
        self.max_pool = max_pool

    def _run(self, name: str, x: torch.Tensor) -> torch.Tensor:
        for sub in self.subs[name]:
            x = getattr(self, sub)(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = [self._run(n, x) for n in self.order]
        if self.pool:
            out.append(getattr(self, self.pool[0])(F.avg_pool2d(x, 3, 1, 1)))
        if self.max_pool:
            out.append(F.max_pool2d(x, 3, 2))
        return torch.cat(out, 1)


class _InceptionE(nn.Module):
    def __init__(self, cin: int):
        super().__init__()
        self.branch1x1 = BasicConv(cin, 320, 1)
        self.branch3x3_1 = BasicConv(cin, 384, 1)
        self.branch3x3_2a = BasicConv(384, 384, (1, 3), 1, (0, 1))
        self.branch3x3_2b = BasicConv(384, 384, (3, 1), 1, (1, 0))
        self.branch3x3dbl_1 = BasicConv(cin, 448, 1)
        self.branch3x3dbl_2 = BasicConv(448, 384, 3, 1, 1)
        self.branch3x3dbl_3a = BasicConv(384, 384, (1, 3), 1, (0, 1))
        self.branch3x3dbl_3b = BasicConv(384, 384, (3, 1), 1, (1, 0))
        self.branch_pool = BasicConv(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.branch3x3_1(x)
        b = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        return torch.cat([
            self.branch1x1(x), self.branch3x3_2a(a), self.branch3x3_2b(a), self.branch3x3dbl_3a(b),
            self.branch3x3dbl_3b(b), self.branch_pool(F.avg_pool2d(x, 3, 1, 1))], 1)


def _inception_a(cin: int, pool: int) -> _Branches:
    return _Branches(cin, {"branch1x1": [("", 64, 1)], "branch5x5": [("_1", 48, 1), ("_2", 64, 5, 1, 2)],
                           "branch3x3dbl": [("_1", 64, 1), ("_2", 96, 3, 1, 1), ("_3", 96, 3, 1, 1)]},
                     pool=("branch_pool", pool))


def _inception_c(c7: int) -> _Branches:
    return _Branches(768, {
        "branch1x1": [("", 192, 1)],
        "branch7x7": [("_1", c7, 1), ("_2", c7, (1, 7), 1, (0, 3)), ("_3", 192, (7, 1), 1, (3, 0))],
        "branch7x7dbl": [("_1", c7, 1), ("_2", c7, (7, 1), 1, (3, 0)), ("_3", c7, (1, 7), 1, (0, 3)),
                         ("_4", c7, (7, 1), 1, (3, 0)), ("_5", 192, (1, 7), 1, (0, 3))]},
        pool=("branch_pool", 192))


class InceptionV3Trunk(nn.Module):
    """torchvision's Inception V3 without the auxiliary classifier (for inputs of 75 px or more)."""

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv(1, 32, 3, 2)
        self.Conv2d_2a_3x3 = BasicConv(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv(32, 64, 3, 1, 1)
        self.Conv2d_3b_1x1 = BasicConv(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv(80, 192, 3)
        self.Mixed_5b = _inception_a(192, 32)
        self.Mixed_5c = _inception_a(256, 64)
        self.Mixed_5d = _inception_a(288, 64)
        self.Mixed_6a = _Branches(288, {"branch3x3": [("", 384, 3, 2)],
                                        "branch3x3dbl": [("_1", 64, 1), ("_2", 96, 3, 1, 1), ("_3", 96, 3, 2)]},
                                  max_pool=True)
        self.Mixed_6b = _inception_c(128)
        self.Mixed_6c = _inception_c(160)
        self.Mixed_6d = _inception_c(160)
        self.Mixed_6e = _inception_c(192)
        self.Mixed_7a = _Branches(768, {"branch3x3": [("_1", 192, 1), ("_2", 320, 3, 2)],
                                        "branch7x7x3": [("_1", 192, 1), ("_2", 192, (1, 7), 1, (0, 3)),
                                                        ("_3", 192, (7, 1), 1, (3, 0)), ("_4", 192, 3, 2)]},
                                  max_pool=True)
        self.Mixed_7b = _InceptionE(1280)
        self.Mixed_7c = _InceptionE(2048)
        self.out_channels = 2048

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(F.max_pool2d(x, 3, 2)))
        x = F.max_pool2d(x, 3, 2)
        for name in ("Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d",
                     "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c"):
            x = getattr(self, name)(x)
        return x
