"""EfficientNet-Lite0/1/2 trunks (key names of the PyTorch port of the TensorFlow weights) and their
stage-4/5 taps for the linear probes."""

from __future__ import annotations

import torch
from torch import nn

from cxrtriage.models.backbones.layers import _bn


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


class EfficientNetLiteTaps(nn.Module):
    """EfficientNet-Lite ``variant`` up to stage 5; its stage-4 and stage-5 maps (both stride 16) side by side.

    Mid-level ImageNet features transfer to radiographs better than the last layer's; a linear
    head on them (a linear probe, see :mod:`cxrtriage.train.probe`) keeps the CAM exact.
    """

    def __init__(self, variant: int = 0):
        super().__init__()
        widths, repeats = LITE_VARIANTS[variant]
        full = EfficientNetLiteTrunk(variant)
        self.stage4_end, self.stage5_end = sum(repeats[:4]) - 1, sum(repeats[:5]) - 1  # last block of each
        self._conv_stem, self._bn0, self.act = full._conv_stem, full._bn0, full.act
        self._blocks = nn.ModuleList(full._blocks[: self.stage5_end + 1])
        self.out_channels = widths[3] + widths[4]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self._bn0(self._conv_stem(x)))
        taps = []
        for i, b in enumerate(self._blocks):
            x = b(x)
            if i in (self.stage4_end, self.stage5_end):
                taps.append(x)
        return torch.cat(taps, dim=1)
