"""MobileNetV2, MobileNetV3 (large, small) and EfficientNet-B0 trunks (torchvision's layouts)."""

from __future__ import annotations

import torch
from torch import nn

from cxrtriage.models.backbones.layers import ConvNormAct, _bn, _divisible


class SqueezeExcite(nn.Module):
    """torchvision's ``SqueezeExcitation`` (keys ``fc1``, ``fc2``)."""

    def __init__(self, c: int, squeeze: int, act: type = nn.ReLU, gate: type = nn.Sigmoid):
        super().__init__()
        self.fc1 = nn.Conv2d(c, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, c, 1)
        self.act, self.gate = act(), gate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.gate(self.fc2(self.act(self.fc1(x.mean((2, 3), keepdim=True)))))
        return x * s


class InvertedResidualV2(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(ConvNormAct(cin, hidden, 1, act=nn.ReLU6))
        layers += [ConvNormAct(hidden, hidden, 3, stride, groups=hidden, act=nn.ReLU6),
                   nn.Conv2d(hidden, cout, 1, bias=False), _bn(cout)]
        self.conv = nn.Sequential(*layers)
        self.use_res = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res else self.conv(x)


def mobilenet_v2_trunk() -> nn.Sequential:
    cfg = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))
    layers: list[nn.Module] = [ConvNormAct(1, 32, 3, 2, act=nn.ReLU6)]
    cin = 32
    for t, c, n, s in cfg:
        for i in range(n):
            layers.append(InvertedResidualV2(cin, c, s if i == 0 else 1, t))
            cin = c
    layers.append(ConvNormAct(cin, 1280, 1, act=nn.ReLU6))
    trunk = nn.Sequential(*layers)
    trunk.out_channels = 1280
    return trunk


class MBConv(nn.Module):
    """Inverted residual with optional squeeze-excitation (MobileNetV3 and EfficientNet-B0 layout)."""

    def __init__(self, cin: int, k: int, exp: int, cout: int, se: int, act: type, stride: int,
                 se_act: type, se_gate: type, eps: float, momentum: float):
        super().__init__()
        layers: list[nn.Module] = []
        if exp != cin:
            layers.append(ConvNormAct(cin, exp, 1, act=act, eps=eps, momentum=momentum))
        layers.append(ConvNormAct(exp, exp, k, stride, groups=exp, act=act, eps=eps, momentum=momentum))
        if se:
            layers.append(SqueezeExcite(exp, se, se_act, se_gate))
        layers.append(ConvNormAct(exp, cout, 1, act=None, eps=eps, momentum=momentum))
        self.block = nn.Sequential(*layers)
        self.use_res = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x) if self.use_res else self.block(x)


_V3_LARGE = (  # in, kernel, expanded, out, SE, hard-swish, stride
    (16, 3, 16, 16, 0, 0, 1), (16, 3, 64, 24, 0, 0, 2), (24, 3, 72, 24, 0, 0, 1), (24, 5, 72, 40, 1, 0, 2),
    (40, 5, 120, 40, 1, 0, 1), (40, 5, 120, 40, 1, 0, 1), (40, 3, 240, 80, 0, 1, 2), (80, 3, 200, 80, 0, 1, 1),
    (80, 3, 184, 80, 0, 1, 1), (80, 3, 184, 80, 0, 1, 1), (80, 3, 480, 112, 1, 1, 1), (112, 3, 672, 112, 1, 1, 1),
    (112, 5, 672, 160, 1, 1, 2), (160, 5, 960, 160, 1, 1, 1), (160, 5, 960, 160, 1, 1, 1),
)
_V3_SMALL = (
    (16, 3, 16, 16, 1, 0, 2), (16, 3, 72, 24, 0, 0, 2), (24, 3, 88, 24, 0, 0, 1), (24, 5, 96, 40, 1, 1, 2),
    (40, 5, 240, 40, 1, 1, 1), (40, 5, 240, 40, 1, 1, 1), (40, 5, 120, 48, 1, 1, 1), (48, 5, 144, 48, 1, 1, 1),
    (48, 5, 288, 96, 1, 1, 2), (96, 5, 576, 96, 1, 1, 1), (96, 5, 576, 96, 1, 1, 1),
)


def mobilenet_v3_trunk(large: bool = True) -> nn.Sequential:
    eps, mom = 0.001, 0.01
    layers: list[nn.Module] = [ConvNormAct(1, 16, 3, 2, act=nn.Hardswish, eps=eps, momentum=mom)]
    for cin, k, exp, cout, se, hs, s in (_V3_LARGE if large else _V3_SMALL):
        layers.append(MBConv(cin, k, exp, cout, _divisible(exp // 4) if se else 0, nn.Hardswish if hs else nn.ReLU,
                             s, nn.ReLU, nn.Hardsigmoid, eps, mom))
    last_in = 160 if large else 96
    layers.append(ConvNormAct(last_in, 6 * last_in, 1, act=nn.Hardswish, eps=eps, momentum=mom))
    trunk = nn.Sequential(*layers)
    trunk.out_channels = 6 * last_in
    return trunk


def efficientnet_b0_trunk() -> nn.Sequential:
    """torchvision's EfficientNet-B0 (SE, SiLU); stages are nested: ``features.<stage>.<block>.block``."""
    stages = ((1, 3, 1, 32, 16, 1), (6, 3, 2, 16, 24, 2), (6, 5, 2, 24, 40, 2), (6, 3, 2, 40, 80, 3),
              (6, 5, 1, 80, 112, 3), (6, 5, 2, 112, 192, 4), (6, 3, 1, 192, 320, 1))
    layers: list[nn.Module] = [ConvNormAct(1, 32, 3, 2, act=nn.SiLU)]
    for t, k, s, cin, cout, n in stages:
        blocks = []
        for i in range(n):
            c_in = cin if i == 0 else cout
            blocks.append(MBConv(c_in, k, c_in * t, cout, max(1, c_in // 4), nn.SiLU, s if i == 0 else 1,
                                 nn.SiLU, nn.Sigmoid, 1e-5, 0.1))
        layers.append(nn.Sequential(*blocks))
    layers.append(ConvNormAct(320, 1280, 1, act=nn.SiLU))
    trunk = nn.Sequential(*layers)
    trunk.out_channels = 1280
    return trunk
