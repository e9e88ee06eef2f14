"""The DenseNet-121 trunk (torchvision's layout, as in CheXNet)."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from cxrtriage.models.backbones.layers import _bn


class DenseLayer(nn.Module):
    def __init__(self, cin: int, growth: int, bn_size: int = 4):
        super().__init__()
        self.norm1 = _bn(cin)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(cin, bn_size * growth, 1, bias=False)
        self.norm2 = _bn(bn_size * growth)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(bn_size * growth, growth, 3, 1, 1, bias=False)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        x = torch.cat(feats, 1)
        return self.conv2(self.relu2(self.norm2(self.conv1(self.relu1(self.norm1(x))))))


class DenseBlock(nn.ModuleDict):
    def __init__(self, n: int, cin: int, growth: int):
        super().__init__({f"denselayer{i + 1}": DenseLayer(cin + i * growth, growth) for i in range(n)})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [x]
        for layer in self.values():
            feats.append(layer(feats))
        return torch.cat(feats, 1)


def densenet_trunk(blocks: tuple[int, ...] = (6, 12, 24, 16), growth: int = 32, init: int = 64) -> nn.Sequential:
    layers: OrderedDict[str, nn.Module] = OrderedDict(
        conv0=nn.Conv2d(1, init, 7, 2, 3, bias=False), norm0=_bn(init), relu0=nn.ReLU(inplace=True),
        pool0=nn.MaxPool2d(3, 2, 1),
    )
    c = init
    for i, n in enumerate(blocks):
        layers[f"denseblock{i + 1}"] = DenseBlock(n, c, growth)
        c += n * growth
        if i < len(blocks) - 1:
            layers[f"transition{i + 1}"] = nn.Sequential(OrderedDict(
                norm=_bn(c), relu=nn.ReLU(inplace=True), conv=nn.Conv2d(c, c // 2, 1, bias=False),
                pool=nn.AvgPool2d(2, 2)))
            c //= 2
    layers["norm5"] = _bn(c)
    layers["relu5"] = nn.ReLU(inplace=True)  # applied in torchvision's forward; no weights
    trunk = nn.Sequential(layers)
    trunk.out_channels = c
    return trunk
