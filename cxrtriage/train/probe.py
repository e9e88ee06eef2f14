"""Linear probe: a frozen ImageNet trunk and a logistic-regression head fitted on its pooled features.

Features that were never fitted to the training hospital's images shift less when the
hospital (scanner, exposure, patient mix) changes; the head is the only thing learnt. The
trunk runs once per image (plus ``probe_views`` augmented copies of the training set), the
head is fitted by scikit-learn for a few regularisation strengths and the one with the best
validation AUC is kept. The fitted scaler is folded into the head, so the result is an
ordinary CAM-ready network: same checkpoint, export, gate and heatmaps as a trained one.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import asdict
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss
from sklearn.multiclass import OneVsRestClassifier
from sklearn.preprocessing import StandardScaler
from tqdm.auto import tqdm

from cxrtriage.contract import standardise
from cxrtriage.data import Task, get_task
from cxrtriage.data.samples import Sample, write_manifest
from cxrtriage.evaluate.metrics import macro_auc, triage_auc
from cxrtriage.evaluate.multilabel import validation_summary
from cxrtriage.models.archs import CamNet, build_model, get_arch
from cxrtriage.models.weights import init_weights
from cxrtriage.train.augment import AugmentConfig, augment_batch, sample_seeds
from cxrtriage.train.config import TrainConfig
from cxrtriage.train.dataset import of_split, pixel_stats, split_images, targets
from cxrtriage.train.export import export_run
from cxrtriage.train.runtime import hardware_name, seed_everything, write_history

C_GRID = (0.003, 0.01, 0.03, 0.1, 0.3)  # inverse L2 strengths tried, on standardised features


class _Pooled(torch.nn.Module):
    def __init__(self, model: CamNet, mean: float, std: float):
        super().__init__()
        self.model, self.mean, self.std = model, mean, std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(standardise(x, self.mean, self.std)).mean(dim=(2, 3))


class FeatureExtractor:
    """The frozen trunk's globally averaged features, run by ONNX Runtime (several times faster
    than torch eager on a CPU for depthwise convolutions); augmentation stays in torch."""

    def __init__(self, model: CamNet, mean: float, std: float, size: int, folder: Path, threads: int | None = None):
        path = folder / "probe-trunk.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(_Pooled(model, mean, std).eval(), (torch.zeros(2, 1, size, size),), str(path),
                              input_names=["x"], output_names=["f"], dynamic_axes={"x": {0: "n"}, "f": {0: "n"}},
                              opset_version=17, dynamo=False)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or torch.get_num_threads()
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        path.unlink()

    def __call__(self, images: torch.Tensor, batch: int = 64, augment_seed: int | None = None,
                 desc: str = "features", progress: bool = True, augment: AugmentConfig = AugmentConfig()
                 ) -> np.ndarray:
        """Features of uint8 images (N, S, S); augmented (seeded per image) when ``augment_seed`` is set."""
        out = []
        for s in tqdm(range(0, len(images), batch), desc=desc, disable=not progress, leave=False):
            x = images[s:s + batch].float().unsqueeze(1) / 255.0
            if augment_seed is not None:
                x = augment_batch(x, sample_seeds(augment_seed, 0, torch.arange(s, s + len(x))), augment)
            out.append(self.session.run(["f"], {"x": x.numpy()})[0])
        return np.concatenate(out).astype(np.float64)


def fold_head(model: CamNet, clf: LogisticRegression | OneVsRestClassifier, scaler: StandardScaler,
              num_classes: int) -> None:
    """Write the fitted head (scaler folded in) into ``model.head``: logits = W f + b on raw features
    (one logistic regression per finding for a multi-label task: its logit is the finding's)."""
    if isinstance(clf, OneVsRestClassifier):
        coef = np.vstack([e.coef_ for e in clf.estimators_])
        icpt = np.concatenate([e.intercept_ for e in clf.estimators_])
    else:
        coef, icpt = clf.coef_, clf.intercept_
    # one logit z for class 1; softmax([0, z]) = sigmoid(z)
    if num_classes == 2 and not isinstance(clf, OneVsRestClassifier):
        coef = np.vstack([np.zeros_like(coef), coef])
        icpt = np.array([0.0, icpt[0]])
    w = coef / scaler.scale_
    b = icpt - w @ scaler.mean_
    model.head.weight.data = torch.tensor(w, dtype=torch.float32)
    model.head.bias.data = torch.tensor(b, dtype=torch.float32)


def train_probe(cfg: TrainConfig, samples: list[Sample], progress: bool = True) -> Path:
    """Fit the probe of ``cfg.arch`` on the split ``samples``; writes the run folder and exports it."""
    t0 = time.time()
    task = get_task(cfg.task)
    augment = _check_probe_options(cfg, task)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg.save(out / "config.json")
    seed_everything(cfg.seed)
    size = cfg.image_size or get_arch(cfg.arch).image_size
    model = build_model(cfg.arch, task.num_classes, size)
    loaded = init_weights(model, cfg.arch, pretrained=not cfg.weights, weights=cfg.weights)
    if loaded:
        print(f"initialised {cfg.arch} from {loaded['source']} ({loaded['loaded']} tensors); trunk frozen")
    write_manifest(samples, out / "split.csv")
    x_train, x_val = split_images(samples, size, cfg.cache_dir, progress=progress, intensity=cfg.intensity,
                                  border=cfg.border)
    y_train, y_val = targets(task, of_split(samples, "train")), targets(task, of_split(samples, "val"))
    present = (y_train.any(axis=0) if task.kind == "multilabel"
               else [(y_train == i).any() for i in range(task.num_classes)])
    missing = [c for c, ok in zip(task.classes, present) if not ok]
    if missing:
        raise ValueError(f"no training images of class(es) {missing}")
    mean, std = pixel_stats(x_train)

    extract = FeatureExtractor(model.eval(), mean, std, size, out, cfg.num_threads)
    feats = [extract(x_train, desc="features (train)", progress=progress)]
    for v in range(cfg.probe_views if cfg.augment else 0):
        feats.append(extract(x_train, augment_seed=cfg.seed + 1 + v, desc=f"features (augmented view {v + 1})",
                             progress=progress, augment=augment))
    f_train, y_fit = np.concatenate(feats), np.concatenate([y_train] * len(feats))
    scaler = StandardScaler().fit(f_train)
    history, best_clf, best_i = fit_heads(task, cfg.class_weights, scaler.transform(f_train), y_fit,
                                          scaler.transform(extract(x_val, desc="features (validation)",
                                                                   progress=progress)), y_val)
    fold_head(model, best_clf, scaler, task.num_classes)

    write_history(history, out / "metrics.csv")
    _plot_path(history, out / "curves.png")
    state = {"model": model.state_dict(), "arch": cfg.arch, "classes": task.classes, "image_size": size,
             "mean": mean, "std": std, "task": task.name, "epoch": best_i, "config": asdict(cfg),
             "hardware": hardware_name(torch.device("cpu")), "torch": torch.__version__,
             "probe": {"C": C_GRID[best_i], "views": 1 + cfg.probe_views, "n_features": int(f_train.shape[1])}}
    torch.save(state, out / "best.pt")
    torch.save({**state, "history": history, "elapsed": time.time() - t0}, out / "last.pt")
    export_run(out, stop_reason="linear probe", progress=progress)
    return out


def _check_probe_options(cfg: TrainConfig, task: Task) -> AugmentConfig:
    """Refuse what a probe cannot do; returns the augmentation of the extra views."""
    unused = [name for name, on in (("--mixup", cfg.mixup), ("--ema-decay", cfg.ema_decay)) if on is not None]
    if unused:
        raise ValueError(f"{cfg.arch} is a linear probe fitted in one go; {' and '.join(unused)} "
                         "apply to gradient training only")
    return cfg.augmentation()


def _head(task: Task, c: float, class_weights: bool) -> LogisticRegression | OneVsRestClassifier:
    clf = LogisticRegression(C=c, max_iter=5000, class_weight="balanced" if class_weights else None)
    return OneVsRestClassifier(clf) if task.kind == "multilabel" else clf


def _head_scores(task: Task, clf, z_train: np.ndarray, y_fit: np.ndarray, z_val: np.ndarray,
                 y_val: np.ndarray) -> dict:
    """Losses, triage AUC, macro (or mean per-finding) AUC and accuracy of one fitted head."""
    probs = clf.predict_proba(z_val)
    if task.kind == "multilabel":
        vs, fit = validation_summary(y_val, probs, list(task.classes)), validation_summary(
            y_fit, clf.predict_proba(z_train), list(task.classes))
        return {"train_loss": fit["loss"], "val_loss": vs["loss"], "val_auc": vs["roc_auc"],
                "val_macro_auc": vs["mean_auc"], "val_acc": vs["accuracy"]}
    return {"train_loss": float(log_loss(y_fit, clf.predict_proba(z_train))),
            "val_loss": float(log_loss(y_val, probs, labels=range(task.num_classes))),
            "val_auc": triage_auc(y_val, probs),
            "val_macro_auc": macro_auc(y_val, probs) if task.num_classes > 2 else None,
            "val_acc": float((probs.argmax(1) == y_val).mean())}


def fit_heads(task: Task, class_weights: bool, z_train: np.ndarray, y_fit: np.ndarray, z_val: np.ndarray,
              y_val: np.ndarray) -> tuple[list[dict], LogisticRegression | OneVsRestClassifier, int]:
    """Fit a head per strength of ``C_GRID`` on standardised features; (history, best head, its index)
    by validation macro AUC (mean per-finding AUC for a multi-label task; triage AUC for two classes)."""
    history, best, best_clf, best_i = [], -1.0, None, 0
    for i, c in enumerate(C_GRID):
        t = time.time()
        clf = _head(task, c, class_weights).fit(z_train, y_fit)
        row = {"epoch": i + 1, "C": c, **_head_scores(task, clf, z_train, y_fit, z_val, y_val),
               "seconds": time.time() - t}
        history.append(row)
        score = row["val_macro_auc"] if row["val_macro_auc"] is not None else row["val_auc"]
        if score is not None and score > best + 1e-5:
            best, best_clf, best_i = score, clf, i
        mauc = row["val_macro_auc"]
        print(f"C={c:g}: val_auc {row['val_auc'] or float('nan'):.4f} "
              + (f"macro_auc {mauc:.4f} " if mauc is not None else "") + f"acc {row['val_acc']:.4f}")
    if best_clf is None:
        raise ValueError("validation AUC is undefined (the validation split needs images of every class)")
    return history, best_clf, best_i


def _plot_path(rows: list[dict], path: Path) -> None:
    """Validation AUC and accuracy against the regularisation strength C."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c = [r["C"] for r in rows]
    fig, ax = plt.subplots(figsize=(5, 3.6))
    ax.semilogx(c, [r["val_auc"] for r in rows], "o-", label="validation ROC AUC", color="C2")
    if rows[0].get("val_macro_auc") is not None:
        ax.semilogx(c, [r["val_macro_auc"] for r in rows], "o-", label="validation macro AUC", color="C3")
    ax.semilogx(c, [r["val_acc"] for r in rows], "o-", label="validation accuracy", color="C1")
    ax.set_xlabel("C (inverse L2 strength)")
    ax.set_title("Linear probe")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
