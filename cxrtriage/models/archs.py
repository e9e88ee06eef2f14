"""Network architectures, by name.

``cxrnet`` is the default: a small residual CNN built for a 2-core CPU (about 0.13 GFLOP
per 128 px image), ending in global average pooling and one linear layer so its class
activation map comes for free. ``ref_cnn150`` and ``ref_vgg200`` are the published
reference networks, kept so their claims can be checked on the same data and budget.
"""

from __future__ import annotations

import torch
from torch import nn

from cxrtriage.models.backbones import arch_specs as backbone_arch_specs
from cxrtriage.models.base import ArchSpec, CamNet


class ConvBNAct(nn.Sequential):
    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__(
            nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
        )


class ResBlock(nn.Module):
    """Two 3x3 convolutions with an identity (or 1x1 projection) shortcut."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = ConvBNAct(cin, cout, stride)
        self.conv2 = nn.Sequential(nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
        self.short = (
            nn.Identity()
            if stride == 1 and cin == cout
            else nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        )
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv2(self.conv1(x)) + self.short(x))


def cxrnet(num_classes: int, width: int = 16) -> CamNet:
    """Default: stem (stride 2) + 4 residual stages, 128 px in -> 8x8 map out."""
    w = width
    feats = nn.Sequential(
        ConvBNAct(1, w, stride=2),  # 64
        ResBlock(w, 2 * w, stride=2),  # 32
        ResBlock(2 * w, 4 * w, stride=2),  # 16
        ResBlock(4 * w, 8 * w, stride=2),  # 8
        ResBlock(8 * w, 8 * w, stride=1),
    )
    return CamNet(feats, 8 * w, num_classes, dropout=0.2)


class RefCNN150(nn.Module):
    """Reference 4-block CNN at 150 px: 32-32-64-64 filters, dense 128, dropout 0.5 (Adam)."""

    def __init__(self, num_classes: int):
        super().__init__()
        layers: list[nn.Module] = []
        cin = 1
        for cout in (32, 32, 64, 64):
            layers += [nn.Conv2d(cin, cout, 3), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            cin = cout
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.LazyLinear(128), nn.ReLU(inplace=True), nn.Dropout(0.5), nn.Linear(128, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class RefVGG200(nn.Module):
    """Reference VGG-style net at 200 px: conv pairs 64/128/256/512, dense 64 (SGD)."""

    def __init__(self, num_classes: int):
        super().__init__()
        layers: list[nn.Module] = []
        cin = 1
        for cout in (64, 128, 256, 512):
            layers += [
                nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(inplace=True),
                nn.Conv2d(cout, cout, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            ]
            cin = cout
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(512 * 16, 64), nn.ReLU(inplace=True),
            nn.Dropout(0.5), nn.Linear(64, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


ARCHS: dict[str, ArchSpec] = {
    "cxrnet": ArchSpec(cxrnet, 128, "adamw", 3e-3, "default residual CNN for CPUs, CAM-ready (128 px)"),
    "cxrnet_wide": ArchSpec(
        lambda n: cxrnet(n, width=24), 160, "adamw", 3e-3, "wider default CNN (160 px)"
    ),
    "ref_cnn150": ArchSpec(RefCNN150, 150, "adam", 1e-3, "reference 4-block CNN, 150 px, Adam"),
    "ref_vgg200": ArchSpec(RefVGG200, 200, "sgd", 1e-2, "reference VGG-style net, 200 px, SGD"),
}


ARCHS.update(backbone_arch_specs())  # transfer-learning backbones (ImageNet weights), CAM-ready too


def get_arch(arch: str) -> ArchSpec:
    """The :class:`ArchSpec` of ``arch``, with a clear error for an unknown name."""
    try:
        return ARCHS[arch]
    except KeyError:
        raise ValueError(f"unknown architecture {arch!r}; choose one of: {', '.join(ARCHS)}") from None


def build_model(arch: str, num_classes: int, image_size: int | None = None) -> nn.Module:
    """Instantiate ``arch`` (lazy layers materialised with a dummy input)."""
    spec = get_arch(arch)
    model = spec.build(num_classes)
    size = image_size or spec.image_size
    with torch.no_grad():
        model.eval()
        model(torch.zeros(1, 1, size, size))
    return model


def count_flops(model: nn.Module, image_size: int) -> int:
    """Multiply-adds x 2 of convolutions and linear layers for one image."""
    total = 0

    def hook(mod, inp, out):
        nonlocal total
        if isinstance(mod, nn.Conv2d):
            k = mod.kernel_size[0] * mod.kernel_size[1] * (mod.in_channels // mod.groups)
            total += 2 * k * out.numel()
        elif isinstance(mod, nn.Linear):
            total += 2 * mod.in_features * mod.out_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, 1, image_size, image_size))
    model.train(was_training)
    for h in handles:
        h.remove()
    return total


__all__ = ["ARCHS", "ArchSpec", "CamNet", "build_model", "count_flops", "cxrnet", "get_arch"]
