"""Held-out evaluations of a three-class COVID-19 probe: by patient, by source, by site, and its shortcuts.

A frozen ImageNet trunk's pooled features are extracted once per film (and per input variant:
lungs blanked, border blanked, re-encoded as JPEG); every evaluation then refits only the
logistic-regression head, so a whole grid of held-out fits takes seconds:

* :func:`internal_cv`: patient-wise stratified k-fold cross-validation;
* :func:`held_out_groups`: train without a group of films (a source, a site) and score that group;
  patients with films in the group are left out of training too;
* :func:`source_probe`: how well a linear probe tells sources apart among films of one label;
* :func:`patient_auc`: COVID-vs-rest AUC with a 95% bootstrap CI that resamples patients.
"""

from __future__ import annotations

import copy
import hashlib
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score, roc_auc_score
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.preprocessing import StandardScaler

from cxrtriage.contract.preprocess import apply_intensity, to_model_input
from cxrtriage.data import load_cached
from cxrtriage.data.covid_sources import Film
from cxrtriage.data.tasks import get_task
from cxrtriage.evaluate.metrics import patient_weights, percentile_ci, weighted_roc_auc
from cxrtriage.io import read_radiograph

CLASSES = get_task("covid3").classes  # ("normal", "covid19", "other_pneumonia")
COVID = CLASSES.index("covid19")
VARIANTS = ("as is", "lungs blanked", "border blanked", "jpeg q75", "png")
LUNGS = ((0.30, 0.47, 0.15, 0.29), (0.70, 0.47, 0.15, 0.29))  # (cx, cy, rx, ry) of each lung field, in 0..1
BORDER = 0.15  # share of each side blanked as the border / text region
SOURCE_HANDLING = ("as is", "balanced", "nulled")


# ------------------------------------------------------------------ input variants

def lung_mask(size: int) -> np.ndarray:
    """A fixed two-ellipse template of the lung fields of a frontal film fitted to the frame (True inside)."""
    yy, xx = (np.mgrid[0:size, 0:size] + 0.5) / size
    return np.any([((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1.0 for cx, cy, rx, ry in LUNGS], axis=0)


def border_mask(size: int, frac: float = BORDER) -> np.ndarray:
    """True on the outer ``frac`` of each side (where text, markers and figure captions sit)."""
    b = int(round(frac * size))
    m = np.ones((size, size), dtype=bool)
    m[b:size - b, b:size - b] = False
    return m


def blank(images: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Each film with ``mask`` filled by the film's own median grey (no edge the network could read as text)."""
    out = np.array(images, dtype=np.uint8, copy=True)
    for a in out:
        a[mask] = np.uint8(np.median(a))
    return out


def reencoded(path: str, size: int, fmt: str, quality: int = 75) -> np.ndarray:
    """The film decoded, greyscale, re-encoded at its own size as ``fmt`` (JPEG or PNG), decoded again
    and resized: one pipeline for every film whatever format it was stored in."""
    arr = read_radiograph(path).to_uint8()
    buf = io.BytesIO()
    Image.fromarray(arr, mode="L").save(buf, format=fmt, **({"quality": quality} if fmt == "JPEG" else {}))
    buf.seek(0)
    return to_model_input(np.asarray(Image.open(buf).convert("L")), size)


def variant_images(paths: Sequence[str], size: int, variant: str, intensity: str = "none",
                   cache_dir: str | None = None) -> np.ndarray:
    """uint8 (N, size, size) model inputs of ``paths`` in one of :data:`VARIANTS`, after ``intensity``
    (blanking comes before the intensity step, as a blanked film would reach the model)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown input variant {variant!r}; choose from {', '.join(VARIANTS)}")
    if variant in ("jpeg q75", "png"):
        fmt = "JPEG" if variant.startswith("jpeg") else "PNG"
        raw = np.stack([reencoded(p, size, fmt) for p in paths])
    else:
        raw = np.asarray(load_cached(list(paths), size, cache_dir, progress=False))
        if variant == "lungs blanked":
            raw = blank(raw, lung_mask(size))
        elif variant == "border blanked":
            raw = blank(raw, border_mask(size))
    return apply_intensity(raw, intensity)


# ------------------------------------------------------------------ features

@dataclass(frozen=True)
class Trunk:
    """A frozen ImageNet trunk at one input size and intensity step."""

    arch: str = "lite0_probe"
    size: int = 320
    intensity: str = "none"

    def key(self, paths: Sequence[str], variant: str) -> str:
        h = hashlib.sha256(f"{self.arch}|{self.size}|{self.intensity}|{variant}".encode())
        for p in paths:
            h.update(p.encode())
        return h.hexdigest()[:16]


def trunk_features(paths: Sequence[str], trunk: Trunk, variant: str, folder: Path,
                   images: Callable[..., np.ndarray] = variant_images) -> np.ndarray:
    """Pooled trunk features (N, F) of ``paths`` in ``variant``, cached under ``folder``."""
    import torch

    from cxrtriage.models.archs import build_model
    from cxrtriage.models.weights import init_weights
    from cxrtriage.train.dataset import pixel_stats
    from cxrtriage.train.probe import FeatureExtractor

    folder.mkdir(parents=True, exist_ok=True)
    cached = folder / f"features-{trunk.key(paths, variant)}.npy"
    if cached.exists():
        return np.load(cached)
    model = build_model(trunk.arch, len(CLASSES), trunk.size).eval()
    init_weights(model, trunk.arch, pretrained=True)
    x = torch.from_numpy(np.array(images(paths, trunk.size, variant, trunk.intensity)))
    # the normalisation of the films as they are, so that a variant does not shift it
    ref = x if variant == "as is" else torch.from_numpy(
        np.array(images(paths, trunk.size, "as is", trunk.intensity)))
    mean, std = pixel_stats(ref)
    f = FeatureExtractor(model, mean, std, trunk.size, folder)(x, desc=f"features ({variant})", progress=False)
    np.save(cached, f)
    return f


# ------------------------------------------------------------------ heads and metrics

def labels_of(films: Sequence[Film]) -> np.ndarray:
    return np.array([CLASSES.index(f.label) for f in films])


@dataclass
class Head:
    """A standardiser, an optional projection that removes source directions, and the classifier."""

    scaler: StandardScaler
    clf: LogisticRegression
    null: np.ndarray | None = None  # (k, F) orthonormal directions projected out of the standardised features

    def transform(self, f: np.ndarray) -> np.ndarray:
        z = self.scaler.transform(f)
        return z if self.null is None else z - (z @ self.null.T) @ self.null

    def folded(self) -> LogisticRegression:
        """The classifier acting on standardised features with the projection folded into its weights."""
        if self.null is None:
            return self.clf
        out = copy.copy(self.clf)
        out.coef_ = self.clf.coef_ - (self.clf.coef_ @ self.null.T) @ self.null
        return out


def source_directions(z: np.ndarray, films: Sequence[Film], y: np.ndarray, min_films: int = 5) -> np.ndarray | None:
    """Orthonormal directions (k, F) spanned by the sources' mean features within each label (each source
    mean minus the label's mean of source means): what tells sources apart among films of one label."""
    src = np.array([f.source for f in films])
    vecs = []
    for k in np.unique(y):
        names = [s for s in np.unique(src[y == k]) if ((src == s) & (y == k)).sum() >= min_films]
        if len(names) < 2:
            continue
        means = np.stack([z[(src == s) & (y == k)].mean(0) for s in names])
        vecs += list(means - means.mean(0))
    if not vecs:
        return None
    _, sv, vt = np.linalg.svd(np.stack(vecs), full_matrices=False)
    return vt[sv > 1e-6 * sv[0]]


def fit_head(f: np.ndarray, y: np.ndarray, c: float, weights: np.ndarray | None = None,
             null_films: Sequence[Film] | None = None) -> Head:
    """Standardise, optionally project out the within-label source directions of ``null_films`` (the
    training films), then a multinomial logistic regression (classes balanced unless ``weights``)."""
    scaler = StandardScaler().fit(f)
    head = Head(scaler, LogisticRegression(C=c, max_iter=3000,
                                           class_weight=None if weights is not None else "balanced"))
    if null_films is not None:
        head.null = source_directions(scaler.transform(f), null_films, y)
    head.clf.fit(head.transform(f), y, sample_weight=weights)
    return head


def predict(head: Head, f: np.ndarray) -> np.ndarray:
    """(N, 3) class probabilities in :data:`CLASSES` order, whatever classes the head saw."""
    p = np.zeros((len(f), len(CLASSES)))
    p[:, head.clf.classes_] = head.clf.predict_proba(head.transform(f))
    return p


def source_weights(films: Sequence[Film], y: np.ndarray) -> np.ndarray:
    """Weights that give every (source, label) cell the same total within its label, and every label
    the same total: no source dominates a class."""
    cells: dict[tuple[str, int], int] = {}
    for f, k in zip(films, y):
        cells[(f.source, int(k))] = cells.get((f.source, int(k)), 0) + 1
    per_label = {k: sum(1 for (_, kk) in cells if kk == k) for k in set(int(v) for v in y)}
    w = np.array([1.0 / (cells[(f.source, int(k))] * per_label[int(k)]) for f, k in zip(films, y)])
    return w * len(w) / w.sum()


def patient_auc(is_pos: np.ndarray, score: np.ndarray, patients: Sequence[str], n_boot: int = 1000,
                seed: int = 0) -> tuple[float | None, list[float] | None]:
    """ROC AUC and its 95% percentile CI, resampling whole patients; (None, None) with one class only."""
    y = np.asarray(is_pos, dtype=int)
    s = np.asarray(score, dtype=float)
    if y.min() == y.max():
        return None, None
    auc = float(roc_auc_score(y, s))
    if n_boot <= 0:
        return auc, None
    return auc, percentile_ci(weighted_roc_auc(patient_weights(np.asarray(patients), n_boot, seed), y, s))


# ------------------------------------------------------------------ evaluations

def _fit(films: Sequence[Film], f: np.ndarray, y: np.ndarray, idx: np.ndarray, c: float, sources: str) -> Head:
    """The head on films ``idx``; ``sources``: "as is", "balanced" (source weights) or "nulled" (both, and
    the within-label source directions projected out)."""
    if sources not in SOURCE_HANDLING:
        raise ValueError(f"sources must be one of {SOURCE_HANDLING}, not {sources!r}")
    sub = [films[i] for i in idx]
    w = source_weights(sub, y[idx]) if sources != "as is" else None
    return fit_head(f[idx], y[idx], c, w, sub if sources == "nulled" else None)


def internal_cv(films: Sequence[Film], f: np.ndarray, c: float, folds: int = 5, seed: int = 0,
                sources: str = "as is") -> tuple[np.ndarray, list[tuple[np.ndarray, object]]]:
    """Out-of-fold probabilities (N, 3) of patient-wise stratified k-fold CV, and each fold's
    (held-out indices, head) so other inputs of the same films can be scored by the same heads."""
    y = labels_of(films)
    groups = np.array([fl.patient_id for fl in films])
    strata = np.array([f"{fl.label}|{fl.source}" for fl in films])
    p = np.zeros((len(films), len(CLASSES)))
    heads = []
    for tr, te in StratifiedGroupKFold(folds, shuffle=True, random_state=seed).split(f, strata, groups):
        head = _fit(films, f, y, tr, c, sources)
        p[te] = predict(head, f[te])
        heads.append((te, head))
    return p, heads


def held_out_groups(films: Sequence[Film], f: np.ndarray, groups: dict[str, Callable[[Film], bool]], c: float,
                    sources: str = "as is") -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """For each named group (a test on a film): fit on every film outside it whose patient has no film
    in it, score the group. Returns the probabilities of every held-out film (NaN where a film is in no
    group) and the indices of each group."""
    y = labels_of(films)
    p = np.full((len(films), len(CLASSES)), np.nan)
    members = {}
    for name, test in groups.items():
        held = np.array([test(fl) for fl in films])
        if not held.any():
            continue
        seen = {films[i].patient_id for i in np.flatnonzero(held)}
        train = np.array([not h and fl.patient_id not in seen for fl, h in zip(films, held)])
        if len(set(y[train])) < 2:
            raise ValueError(f"held-out group {name!r} leaves fewer than two classes to train on")
        head = _fit(films, f, y, np.flatnonzero(train), c, sources)
        p[held] = predict(head, f[held])
        members[name] = np.flatnonzero(held)
    return p, members


def source_probe(films: Sequence[Film], f: np.ndarray, label: str, c: float = 0.01, folds: int = 5,
                 seed: int = 0, min_films: int = 20) -> dict | None:
    """Balanced accuracy (chance = 1 / sources) and mean one-vs-rest AUC of a linear probe that tells
    sources apart among films of one ``label``, patient-wise CV; sources with fewer films left out."""
    idx = np.array([i for i, fl in enumerate(films) if fl.label == label])
    if not len(idx):
        return None
    src = np.array([films[i].source for i in idx])
    names, counts = np.unique(src, return_counts=True)
    keep_names = names[counts >= min_films]
    if len(keep_names) < 2:
        return None
    idx, src = idx[np.isin(src, keep_names)], src[np.isin(src, keep_names)]
    y = np.searchsorted(keep_names, src)
    groups = np.array([films[i].patient_id for i in idx])
    n_folds = min(folds, int(np.bincount(y).min()))
    p = np.zeros((len(idx), len(keep_names)))
    for tr, te in StratifiedGroupKFold(n_folds, shuffle=True, random_state=seed).split(idx, y, groups):
        scaler = StandardScaler().fit(f[idx[tr]])
        clf = LogisticRegression(C=c, max_iter=3000, class_weight="balanced").fit(scaler.transform(f[idx[tr]]), y[tr])
        p[np.ix_(te, clf.classes_)] = clf.predict_proba(scaler.transform(f[idx[te]]))
    aucs = [roc_auc_score(y == k, p[:, k]) for k in range(len(keep_names))]
    return {"label": label, "sources": {str(n): int((src == n).sum()) for n in keep_names},
            "balanced_accuracy": float(balanced_accuracy_score(y, p.argmax(1))), "chance": 1 / len(keep_names),
            "mean_auc": float(np.mean(aucs))}
