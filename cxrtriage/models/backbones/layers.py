"""Layers shared by the backbone families: batch norm with a release's settings, channel rounding,
conv + norm + activation."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

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
