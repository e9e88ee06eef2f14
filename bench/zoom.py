"""Does the field of view decide the call? Test-dev films magnified or shrunk about their centre.

A film's zoom (how much of the frame the chest fills: the child's size, the collimation, the
distance to the detector) says nothing about pneumonia, but in Kermany's training films it comes
with the label. For each model and zoom factor this prints, on `test-dev`: the mean P(pneumonia)
of the normals, the share of normals flagged at the model's own threshold (false positives),
the pneumonias' mean P(pneumonia) and the ROC AUC. A model that reads the lungs moves little;
one that reads the field of view flags more normals as the films are magnified.

    python bench/zoom.py --data ../shared/data/kermany-224 [--model cxr-pneumonia --model runs/x ...]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.ndimage import affine_transform
from sklearn.metrics import roc_auc_score

from cxrtriage.contract import triage_target
from cxrtriage.data import kermany_samples
from cxrtriage.infer import Engine

ZOOMS = (0.8, 0.9, 1.0, 1.15, 1.3)


def zoomed(image: np.ndarray, factor: float) -> np.ndarray:
    """``image`` magnified by ``factor`` about its centre (edges repeated where it shrinks)."""
    centre = (np.array(image.shape) - 1) / 2
    matrix = np.eye(2) / factor
    out = affine_transform(image.astype(np.float32), matrix, offset=centre - matrix @ centre, order=1, mode="nearest")
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("../shared/data/kermany-224"))
    ap.add_argument("--model", action="append", help="a bundled name, ONNX file or run folder (repeatable)")
    args = ap.parse_args()
    films = kermany_samples(args.data, "test-dev")
    images = [np.asarray(Image.open(s.path).convert("L")) for s in films]
    y = triage_target(np.array([0 if s.label == "normal" else 1 for s in films]))
    print(f"{len(films)} test-dev films ({int((y == 0).sum())} normal); zoom > 1 magnifies")
    print(f"{'model':28} {'zoom':>5} {'normal P':>9} {'normal flagged':>15} {'pneumonia P':>12} {'AUC':>7}")
    for model in args.model or ["cxr-pneumonia"]:
        engine = Engine(model, gate=False)
        for z in ZOOMS:
            preds = engine.predict_batch([zoomed(im, z) for im in images], heatmap=False)
            p = np.array([pr.score for pr in preds])
            print(f"{Path(str(model)).name[:28]:28} {z:>5.2f} {p[y == 0].mean():>9.3f} "
                  f"{(p[y == 0] >= engine.spec.threshold).mean():>15.3f} {p[y == 1].mean():>12.3f} "
                  f"{roc_auc_score(y, p):>7.4f}")


if __name__ == "__main__":
    main()
