"""Stress benchmark: ROC AUC, sensitivity and specificity of exported models when radiographs
are degraded the way acquisitions differ (noise, blur, exposure, contrast, zoom, JPEG
compression), each model at its own stored threshold and calibration. The films: the
validation split the models were trained with (every model must share it), or test-dev.

    python bench/stress.py --models runs/cnn runs/probe cxrtriage/assets/model/cxr-pneumonia.onnx [--films test-dev]
"""

from __future__ import annotations

import argparse
import io
import json
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageFilter
from sklearn.metrics import roc_auc_score

from cxrtriage.data import kermany_samples, load_cached, patient_split, to_model_input
from cxrtriage.contract.preprocess import trim_border
from cxrtriage.infer import Engine


def _jpeg(a: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("L"))


def _zoom_out(a: np.ndarray, scale: float) -> np.ndarray:
    s = a.shape[0]
    k = int(round(s * scale))
    small = np.asarray(Image.fromarray(a).resize((k, k), Image.BILINEAR))
    out = np.full_like(a, int(np.median(a[:, :4])))  # the border's gray, as around a smaller field
    o = (s - k) // 2
    out[o:o + k, o:o + k] = small
    return out


def perturbations(seed: int = 0) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    rng = np.random.default_rng(seed)
    u8 = lambda x: np.clip(np.rint(x), 0, 255).astype(np.uint8)  # noqa: E731
    return {
        "none": lambda a: a,
        "gaussian noise sd 8": lambda a: u8(a + rng.normal(0, 8, a.shape)),
        "impulse noise 2%": lambda a: np.where(rng.random(a.shape) < 0.02, rng.choice([0, 255], a.shape), a).astype(
            np.uint8),
        "blur radius 1.5": lambda a: np.asarray(Image.fromarray(a).filter(ImageFilter.GaussianBlur(1.5))),
        "gamma 0.7": lambda a: u8(255 * (a / 255.0) ** 0.7),
        "gamma 1.4": lambda a: u8(255 * (a / 255.0) ** 1.4),
        "contrast x0.7": lambda a: u8((a - a.mean()) * 0.7 + a.mean()),
        "zoom out 85%": lambda a: _zoom_out(a, 0.85),
        "jpeg quality 30": lambda a: _jpeg(a, 30),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="../shared/data/kermany-224")
    ap.add_argument("--models", nargs="+", required=True)
    ap.add_argument("--out", default=None, help="write the table as JSON here")
    ap.add_argument("--films", choices=("val", "test-dev"), default="val")
    ap.add_argument("--trim-borders", action="store_true",
                    help="cut uniform edge rows/columns off every (degraded) film before scoring, also for "
                    "models whose own border step is keep: a what-if")
    args = ap.parse_args()
    engines = [Engine(m, gate=False) for m in args.models]
    if args.films == "test-dev":
        val = kermany_samples(args.data, "test-dev")
    else:
        splits = {(e.spec.split_task, e.spec.training_seed) for e in engines}
        if len(splits) != 1:
            raise SystemExit(f"the models were trained on different splits {sorted(splits)}: use --films test-dev")
        task, seed = splits.pop()
        val = [s for s in patient_split(kermany_samples(args.data, "train", task), 0.2, seed) if s.split == "val"]
    y = np.array([s.label != "normal" for s in val], int)
    base = np.asarray(load_cached([s.path for s in val], 224, progress=False))
    rows = []
    for name, fn in perturbations().items():
        degraded = [fn(a) for a in base]
        if args.trim_borders:
            degraded = [trim_border(a) for a in degraded]
        row = {"perturbation": name}
        for m, e in zip(args.models, engines):
            steps = e.spec.input  # the model's own border and intensity steps, as in serving
            x = steps.prepare(degraded).images
            s = e.spec.triage_score(e.spec.calibrated(e.run_arrays(x)["probs"]))
            t = e.spec.threshold
            row[m] = {"auc": float(roc_auc_score(y, s)), "sensitivity": float((s[y == 1] >= t).mean()),
                      "specificity": float((s[y == 0] < t).mean())}
        rows.append(row)
    print(f"{args.films}: {len(val)} images, each model at its stored threshold"
          + (", uniform borders trimmed before scoring" if args.trim_borders else ""))
    for i, m in enumerate(args.models):
        print(f"  [{i}] {m} ({engines[i].spec.name}, {engines[i].spec.input_size} px, threshold "
              f"{engines[i].spec.threshold:.3f})")
    head = f"{'perturbation':<20}" + "".join(f"   [{i}] AUC   sens   spec" for i in range(len(args.models)))
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['perturbation']:<20}" + "".join(
            f"   {r[m]['auc']:>8.4f} {r[m]['sensitivity']:>6.3f} {r[m]['specificity']:>6.3f}" for m in args.models))
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(rows, fh, indent=2)


if __name__ == "__main__":
    main()
