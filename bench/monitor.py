"""The drift watch replayed on real films: Kermany test-dev films (in distribution) for the pediatric
model, then a shifted stream; how many films of the shift the watch needs to alarm, and how many
alarms the in-distribution films raise (false alarms), over seeded replays.

    python bench/monitor.py [--replays 10] [--in-dist 300] [--shifted 100] [--shift nih clahe]

Each film is scored once with the model (gate on: score and gate distance, as the service stores
them); each replay draws ``--in-dist`` test-dev films and then ``--shifted`` films of a shift, in
a seeded order, and feeds them one at a time to the service's watch
(:class:`cxrtriage.monitor.DriftWatch`, the model's stored reference, the service's window and
alpha). Shifts: ``nih`` adult NIH ChestX-ray14 films sent to the pediatric model by name;
``clahe`` test-dev films after contrast-limited adaptive histogram equalisation (clip 0.03), as
a site whose modality post-processes its films would send them.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cxrtriage.contract import Priority  # noqa: E402
from cxrtriage.infer import Engine  # noqa: E402
from cxrtriage.monitor import DriftWatch, load_reference  # noqa: E402
from cxrtriage.monitor.drift import ALPHA, WINDOW  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"


def _facts(preds) -> list[tuple[float | None, float | None, bool]]:
    return [(p.score, (p.gate or {}).get("distance"), p.priority is Priority.REFUSED) for p in preds]


def _clahe(path: Path) -> np.ndarray:
    from PIL import Image
    from skimage.exposure import equalize_adapthist

    with Image.open(path) as im:
        a = np.asarray(im.convert("L"), dtype=np.float64) / 255.0
    return np.clip(np.rint(equalize_adapthist(a, clip_limit=0.03) * 255.0), 0, 255).astype(np.uint8)


def score_streams(model: str, shifts: list[str], n_shift: int, seed: int = 0) -> dict[str, list]:
    """(score, distance, refused) of every film of each stream, scored once."""
    engine = Engine(model)
    dev = sorted((SHARED / "kermany-224" / "test-dev").glob("*/*.jpeg"))
    out = {"test-dev": _facts(engine.predict_files(dev, batch_size=32))}
    rng = np.random.default_rng(seed)
    if "nih" in shifts:
        nih = sorted((SHARED / "nih-cxr14" / "images").glob("*.jpg"))
        pick = [nih[i] for i in rng.choice(len(nih), size=min(len(nih), 3 * n_shift), replace=False)]
        out["nih"] = _facts(engine.predict_files(pick, batch_size=32))
    if "clahe" in shifts:
        preds = []
        for i in range(0, len(dev), 32):
            chunk = dev[i:i + 32]
            preds += [s.prediction for s in engine.score([_clahe(p) for p in chunk], [p.name for p in chunk])]
        out["clahe"] = _facts(preds)
    return out


def replay(ref, base: list, shifted: list, n_in: int, n_shift: int, seed: int, window: int = WINDOW,
           alpha: float = ALPHA) -> tuple[int, int | None]:
    """(false alarms among the in-distribution films, films of the shift until the alarm or None)."""
    rng = np.random.default_rng(seed)
    watch = DriftWatch(window=window, alpha=alpha)
    key = ("m", "v")
    false_alarms = 0
    for i in rng.permutation(len(base))[:n_in]:
        s, d, r = base[i]
        if watch.observe(key, ref, s, d, r) is True:
            false_alarms += 1
    already = bool(watch.state.get(key) and watch.state[key].alarm)
    for k, i in enumerate(rng.choice(len(shifted), size=n_shift, replace=len(shifted) < n_shift), 1):
        s, d, r = shifted[i]
        changed = watch.observe(key, ref, s, d, r)
        if changed is True or (already and k == 1 and watch.state[key].alarm):
            return false_alarms, k
    return false_alarms, None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="cxr-pneumonia")
    ap.add_argument("--replays", type=int, default=10)
    ap.add_argument("--in-dist", type=int, default=300)
    ap.add_argument("--shifted", type=int, default=100)
    ap.add_argument("--shift", nargs="+", default=["nih", "clahe"], choices=["nih", "clahe"])
    ap.add_argument("--window", type=int, default=WINDOW)
    ap.add_argument("--alpha", type=float, default=ALPHA)
    args = ap.parse_args()
    if not (SHARED / "kermany-224" / "test-dev").is_dir():
        print(f"needs Kermany test-dev under {SHARED}", file=sys.stderr)
        return 2
    engine = Engine(args.model)
    ref = load_reference(engine.onnx_path)
    if ref is None:
        print(f"{args.model} has no stored reference (python scripts/model_reference.py)", file=sys.stderr)
        return 2
    t0 = time.time()
    streams = score_streams(args.model, args.shift, args.shifted)
    print(f"{args.model} {engine.spec.version}: reference {ref.n} films ({ref.source}); window {args.window}, "
          f"alpha {args.alpha:g}; films scored in {time.time() - t0:.0f} s")
    for name, facts in streams.items():
        refused = sum(r for _, _, r in facts)
        print(f"  {name}: {len(facts)} films, {refused} refused by the gate")
    print(f"\n{args.replays} seeded replays: {args.in_dist} test-dev films, then {args.shifted} shifted films")
    print(f"{'shift':8} {'false alarms (replays with one)':>32} {'films to alarm: median [min, max]':>36} "
          f"{'missed':>7}")
    for shift in args.shift:
        runs = [replay(ref, streams["test-dev"], streams[shift], args.in_dist, args.shifted, seed, args.window,
                       args.alpha) for seed in range(args.replays)]
        fa = sum(f for f, _ in runs)
        with_fa = sum(f > 0 for f, _ in runs)
        hits = [k for _, k in runs if k is not None]
        span = f"{np.median(hits):.0f} [{min(hits)}, {max(hits)}]" if hits else "-"
        print(f"{shift:8} {f'{fa} ({with_fa}/{len(runs)})':>32} {span:>36} {len(runs) - len(hits):>7}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
