"""Every adult film we have, for the 14 NIH findings, with missing labels kept missing.

* NIH ChestX-ray14 (``nih-cxr14/labels.csv``): all 14 findings known (``No Finding`` = 14 negatives).
* COVID-19 collections (``covid-multisource/``, ``covid-hannover/``): COVID-19 and other pneumonias
  are evidence for ``Pneumonia`` only; every other finding is unknown (NaN, masked out of the fit),
  not negative. A ``normal`` film is negative for every finding.

Trunk features (a frozen ImageNet network's globally averaged features) are extracted once per
(trunk, size, intensity) and cached as ``.npz`` beside the run, so probes are fitted on cached
features in seconds.
"""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cxrtriage.data.tasks import get_task

NIH = "nih-cxr14"
COVID_SOURCES = ("covid-multisource", "covid-hannover")
PNEUMONIA_LIKE = {"covid-19": "Pneumonia", "other_pneumonia": "Pneumonia"}


@dataclass(frozen=True)
class AdultFilms:
    """Films (paths), their labels (N, 14) with NaN where unknown, patients and collection."""

    paths: list[str]
    y: np.ndarray
    patients: np.ndarray
    source: np.ndarray

    @property
    def nih(self) -> np.ndarray:
        return self.source == NIH

    def __len__(self) -> int:
        return len(self.paths)


def _rows(csv_path: Path) -> list[dict[str, str]]:
    if not csv_path.is_file():
        raise FileNotFoundError(f"{csv_path}: no labels.csv")
    with csv_path.open(newline="") as f:
        return list(csv.DictReader(f))


def adult_films(data_root: str | Path, extra: bool = True, adults_only: bool = False) -> AdultFilms:
    """The films under ``data_root`` (the folder holding the collections): NIH, plus the COVID-19
    collections when ``extra``.
    ``adults_only`` drops NIH films of patients under 18 (the router sends those elsewhere)."""
    root = Path(data_root)
    task = get_task("nih14")
    paths, ys, pats, src = [], [], [], []
    for r in _rows(root / NIH / "labels.csv"):
        if adults_only and r.get("age") and int(r["age"]) < 18:
            continue
        paths.append(str((root / NIH / r["path"]).resolve()))
        ys.append(task.multi_hot(r["label"]).astype(float))
        pats.append(r["patient_id"])
        src.append(NIH)
    for name in COVID_SOURCES if extra else ():
        for r in _rows(root / name / "labels.csv"):
            label = r["label"].strip().lower()
            row = np.full(task.num_classes, np.nan)
            if label == "normal":
                row[:] = 0.0
            elif label in PNEUMONIA_LIKE:
                row[task.classes.index(PNEUMONIA_LIKE[label])] = 1.0
            else:
                raise ValueError(f"{root / name / 'labels.csv'}: unknown label {r['label']!r}")
            paths.append(str((root / name / r["path"]).resolve()))
            ys.append(row)
            pats.append(f"{name}:{r['patient_id']}")
            src.append(name)
    return AdultFilms(paths, np.stack(ys), np.array(pats), np.array(src))


def feature_key(paths: list[str], arch: str, size: int, intensity: str, views: int = 0) -> str:
    h = hashlib.sha256("\n".join(paths).encode())
    h.update(f"|{arch}|{size}|{intensity}|{views}".encode())
    return h.hexdigest()[:16]


def trunk_features(paths: list[str], arch: str, size: int, cache: str | Path, intensity: str = "none",
                   mean_std: tuple[float, float] | None = None, views: int = 0,
                   seed: int = 0) -> dict[str, np.ndarray]:
    """``{"f": (N, D)[, "aug": (views, N, D)], "mean_std": (2,)}`` of ``arch``'s frozen trunk at ``size``
    px, computed once and cached under ``cache``. Pixel mean and std default to those of the films."""
    import torch

    from cxrtriage.data import load_cached
    from cxrtriage.models.archs import build_model
    from cxrtriage.models.weights import init_weights
    from cxrtriage.train.dataset import pixel_stats
    from cxrtriage.train.probe import FeatureExtractor

    cache = Path(cache)
    cache.mkdir(parents=True, exist_ok=True)
    file = cache / f"features-{arch}-{size}-{intensity}-{feature_key(paths, arch, size, intensity, views)}.npz"
    if file.is_file():
        return dict(np.load(file))
    model = build_model(arch, 14, size).eval()
    init_weights(model, arch, pretrained=True)
    imgs = torch.from_numpy(np.ascontiguousarray(load_cached(paths, size, progress=True, intensity=intensity)))
    mean, std = mean_std or pixel_stats(imgs)
    extract = FeatureExtractor(model, mean, std, size, cache)
    out = {"f": extract(imgs, desc=f"{arch} {size}px"), "mean_std": np.array([mean, std])}
    if views:
        out["aug"] = np.stack([extract(imgs, augment_seed=seed + 1 + v, desc=f"{arch} view {v + 1}")
                               for v in range(views)])
    np.savez(file, **out)
    return out
