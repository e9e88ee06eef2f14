"""Training configuration (saved as config.json in every run folder)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from cxrtriage.contract import GATE_QUANTILE
from cxrtriage.data.split import DEFAULT_VAL_FRACTION
from cxrtriage.train.augment import AugmentConfig


@dataclass
class TrainConfig:
    out_dir: str
    data: str | None = None  # dataset root (Kermany layout) when no manifest is given
    manifest: str | None = None  # CSV written by `cxr data split`
    task: str = "pneumonia"
    arch: str = "cxrnet"
    image_size: int | None = None  # None: the architecture's default
    epochs: int = 20
    batch_size: int = 64
    lr: float | None = None  # None: the architecture's default
    weight_decay: float = 1e-4
    optimizer: str | None = None  # None: the architecture's default
    label_smoothing: float = 0.05
    class_weights: bool = True  # weight the loss by inverse class frequency
    dropout: float | None = None
    augment: bool = True
    intensity: str = "none"  # per-image intensity normalisation, the same in serving ("none", "equalise" or "clahe")
    border: str = "keep"  # "trim": uniform frame borders cut off every image, the same in serving
    augment_strength: float = 1.0  # scales every augmentation range (0.5: half the rotation, shift, noise...)
    zoom: tuple[float, float] | None = None  # zoom range of augmentation (> 1: magnified); None: the strength's
    hflip: float = 0.0  # probability of a left-right flip in augmentation (off: the heart's side carries meaning)
    mixup: float | None = None  # Beta(alpha, alpha) of mixup; None: off
    ema_decay: float | None = None  # keep an exponential moving average of the weights; validate and save it
    val_fraction: float = DEFAULT_VAL_FRACTION
    seed: int = 0
    patience: int = 6
    time_budget_s: float | None = None
    stop_after: int | None = None  # end this invocation after N more epochs (resume later)
    warmup_fraction: float = 0.05
    threshold_method: str = "youden-plateau"  # or "youden"
    target_sensitivity: float | None = None
    device: str = "auto"
    cache_dir: str | None = None
    num_threads: int | None = None
    # transfer learning (backbones of cxrtriage.models.backbones)
    pretrained: bool = False  # start from ImageNet weights
    weights: str | None = None  # start from this local state dict instead
    freeze_epochs: int = 0  # train only the head for the first N epochs
    backbone_lr_mult: float | None = None  # trunk LR = lr x this (None: 0.1 with weights, else 1)
    probe_views: int = 1  # linear probes: augmented copies of the training set added to it
    # multi-label tasks
    loss: str = "bce"  # "bce" (per-label positive weights) or "focal"
    focal_gamma: float = 2.0
    sampler: str = "rare"  # "rare" (keeps rare labels present) or "uniform"
    # distillation: learn an exported teacher's probabilities beside the labels
    teacher: str | None = None  # a model the engine loads (bundled name, .onnx, run or ensemble folder)
    distill_weight: float = 0.5  # share of the teacher's term in the loss
    distill_temperature: float = 2.0  # softening of both distributions
    population: str | None = None  # "pediatric" or "adult": recorded in the sidecar for routing by age
    # quality gate
    gate_extra: str | None = None  # films from elsewhere (folder or CSV, no labels) the gate should also accept
    gate_quantile: float = GATE_QUANTILE  # the gate's threshold: this quantile of validation distances (x 1.05)
    extra: dict = field(default_factory=dict)

    def augmentation(self) -> AugmentConfig:
        """The augmentation these options ask for (refuses a bad flip, strength or zoom)."""
        aug = AugmentConfig(hflip_p=self.hflip).scaled(self.augment_strength)
        return replace(aug, scale=(float(self.zoom[0]), float(self.zoom[1]))) if self.zoom else aug

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        saved = json.loads(Path(path).read_text())
        if saved.get("zoom") is not None:
            saved["zoom"] = tuple(saved["zoom"])
        return cls(**saved)
