"""Quantitative checks that a heatmap means something.

* Randomisation (Adebayo et al. 2018): the heatmaps of a network with random weights must
  differ from the trained network's (low rank correlation).
* Deletion: blanking the 10% of the image the heatmap ranks highest must lower the
  predicted abnormal probability more than blanking a random 10%.
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy.stats import spearmanr


def rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two heatmaps (resized to the larger one's shape)."""
    if a.shape != b.shape:
        big = a if a.size >= b.size else b
        small = b if big is a else a
        small = np.asarray(Image.fromarray(small.astype(np.float32), mode="F").resize(big.shape[::-1], Image.BILINEAR))
        a, b = big, small
    if np.ptp(a) == 0 or np.ptp(b) == 0:  # a constant map ranks nothing
        return 0.0
    r = spearmanr(a.ravel(), b.ravel()).statistic
    return float(0.0 if np.isnan(r) else r)


def blank(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Replace masked pixels of a uint8 image by the image's mean gray."""
    out = image.copy()
    out[mask] = np.uint8(round(float(image.mean())))
    return out


def top_mask(heat: np.ndarray, shape: tuple[int, int], fraction: float) -> np.ndarray:
    up = np.asarray(Image.fromarray(heat.astype(np.float32), mode="F").resize(shape[::-1], Image.BILINEAR))
    k = max(1, int(round(fraction * up.size)))
    flat = np.argsort(up.ravel(), kind="stable")[::-1][:k]
    mask = np.zeros(up.size, bool)
    mask[flat] = True
    return mask.reshape(shape)


def deletion_check(engine, images: np.ndarray, fraction: float = 0.1, seed: int = 0) -> dict:
    """Mean drop of P(abnormal) when blanking the top ``fraction`` of the heatmap, against two
    controls of the same area: random pixels, and the same region moved to a random place
    (which separates "the heatmap finds the evidence" from "any blanked blob hurts").

    ``images``: uint8 (N, S, S) at the model's input size. Uses the engine's in-graph CAM.
    """
    rng = np.random.default_rng(seed)
    out = engine.run_arrays(images)
    base = 1.0 - out["probs"][:, 0]
    abnormal = 1 + out["probs"][:, 1:].argmax(1)
    cams = out["cam"][np.arange(len(images)), abnormal]
    top, rand, moved = [], [], []
    for img, cam in zip(images, cams):
        m = top_mask(np.maximum(cam, 0), img.shape, fraction)
        top.append(blank(img, m))
        r = np.zeros(img.size, bool)
        r[rng.choice(img.size, m.sum(), replace=False)] = True
        rand.append(blank(img, r.reshape(img.shape)))
        shift = rng.integers(img.shape[0] // 4, 3 * img.shape[0] // 4, size=2)
        moved.append(blank(img, np.roll(m, tuple(int(v) for v in shift), axis=(0, 1))))
    drop = lambda batch: float((base - (1.0 - engine.run_arrays(np.stack(batch))["probs"][:, 0])).mean())  # noqa: E731
    return {"n": int(len(images)), "fraction": fraction, "mean_drop_top": drop(top),
            "mean_drop_random": drop(rand), "mean_drop_moved": drop(moved)}


class RandomisedGraph:
    """An exported graph with every weight tensor replaced by random values of the same scale
    (the model-randomisation check, done on the ONNX file so it needs no torch). An ensemble's
    fixed resize matrices are not weights and stay as they are."""

    def __init__(self, onnx_path, seed: int = 0):
        import onnx
        import onnxruntime as ort
        from onnx import numpy_helper

        model = onnx.load(str(onnx_path))
        rng = np.random.default_rng(seed)
        for init in model.graph.initializer:
            w = numpy_helper.to_array(init)
            if w.dtype in (np.float32, np.float16) and w.ndim >= 2 and "resize_matrix" not in init.name:
                rand = (rng.standard_normal(w.shape) * (w.astype(np.float32).std() or 0.1)).astype(w.dtype)
                init.CopyFrom(numpy_helper.from_array(rand, init.name))
        self.session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])

    def run_arrays(self, images: np.ndarray) -> dict[str, np.ndarray]:
        outs = self.session.run(["probs", "cam"], {"image": images.astype(np.float32)[:, None]})
        return dict(zip(["probs", "cam"], outs))


def randomisation_check(engine, images: np.ndarray, seed: int = 0) -> dict:
    """Mean rank correlation of the abnormal-class CAM: trained vs itself and trained vs random weights."""
    rand = RandomisedGraph(engine.onnx_path, seed)
    a = engine.run_arrays(images)["cam"][:, 1]  # raw maps: a ReLU would make many of them constant
    b = engine.run_arrays(images)["cam"][:, 1]
    r = rand.run_arrays(images)["cam"][:, 1]
    return {"n": int(len(images)),
            "rank_corr_self": float(np.mean([rank_correlation(x, y) for x, y in zip(a, b)])),
            "rank_corr_random": float(np.mean([rank_correlation(x, y) for x, y in zip(a, r)]))}
