"""Is this checkout slower than an earlier revision? Engine and service speed of both, measured in
one run (alternating, so both see the same machine), printed as ratios (this / base).

    python bench/revisions.py --base REV [--rounds 2] [--serve-seconds 20] [--images 128]

The base revision is checked out into a temporary git worktree and run from there with the same
virtual environment (``PYTHONPATH`` puts its package first). Measured for each revision:

- engine: ``cxr-pneumonia`` alone and the routed bundled models (no model named), single-film p50
  latency (decode, preprocessing, network, heatmap, gate) and batch-32 films per second;
- service: ``bench/serve_load.py`` of that revision (uploads/s and upload-to-result p50), routed.

Best of ``--rounds`` per revision (least disturbed by other load).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

ENGINE_PROBE = r"""
import json, sys, time
from pathlib import Path
import numpy as np
import cxrtriage.infer as infer
files = sorted(p for p in Path(sys.argv[1]).rglob("*") if p.suffix.lower() in (".jpeg", ".jpg", ".png"))
blobs = [f.read_bytes() for f in files][: int(sys.argv[2])]
router = infer.load_model(None) if hasattr(infer, "load_model") else infer.load_triager(None)
out = {"package": infer.__file__}
for name, predictor in (("cxr-pneumonia", infer.Engine("cxr-pneumonia")), ("routed", router)):
    for b in blobs[:8]:
        predictor.predict(b, "x")
    lat = []
    for b in blobs[:64]:
        t = time.perf_counter(); predictor.predict(b, "x"); lat.append(time.perf_counter() - t)
    t = time.perf_counter(); predictor.predict_batch(blobs, batch_size=32); dt = time.perf_counter() - t
    out[name] = {"p50_ms": float(np.percentile(lat, 50) * 1000), "batch32_per_s": len(blobs) / dt}
print(json.dumps(out))
"""


def worktree(rev: str, where: Path) -> Path:
    subprocess.run(["git", "worktree", "add", "--detach", str(where), rev], cwd=ROOT, check=True,
                   capture_output=True)
    return where


def engine_speed(src: Path, images: Path, n: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(src)}
    res = subprocess.run([sys.executable, "-c", ENGINE_PROBE, str(images), str(n)], env=env, cwd=src,
                         capture_output=True, text=True, check=True)
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert Path(out["package"]).resolve().is_relative_to(src.resolve()), out["package"]
    return out


def serve_speed(src: Path, seconds: float, tmp: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(src)}
    out = tmp / f"serve-{abs(hash(str(src)))}.json"
    subprocess.run([sys.executable, str(src / "bench" / "serve_load.py"), "--seconds", str(seconds),
                    "--json", str(out)], env=env, cwd=src, capture_output=True, text=True, check=True)
    return json.loads(out.read_text())


def best(runs: list[dict], path: tuple[str, ...], low: bool) -> float:
    values = []
    for r in runs:
        v = r
        for k in path:
            v = v[k]
        values.append(float(v))
    return min(values) if low else max(values)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", required=True, help="the earlier revision (commit, tag or branch)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--images", type=int, default=128)
    ap.add_argument("--serve-seconds", type=float, default=20.0, help="0 skips the service")
    args = ap.parse_args()
    shared = ROOT.parent / "shared" / "data" / "kermany-224" / "test-dev"
    images = shared if shared.is_dir() else ROOT / "cxrtriage" / "assets" / "samples"
    with tempfile.TemporaryDirectory(prefix="cxr-revisions-") as tmp:
        base = worktree(args.base, Path(tmp) / "base")
        try:
            runs: dict[str, list[dict]] = {"base": [], "this": []}
            serve: dict[str, list[dict]] = {"base": [], "this": []}
            for _ in range(args.rounds):
                for label, src in (("base", base), ("this", ROOT)):
                    runs[label].append(engine_speed(src, images, args.images))
                    if args.serve_seconds > 0:
                        serve[label].append(serve_speed(src, args.serve_seconds, Path(tmp)))
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(base)], cwd=ROOT, capture_output=True)
    print(f"base {args.base} vs this checkout, best of {args.rounds} rounds, {images}")
    for model in ("cxr-pneumonia", "routed"):
        for key, low in (("p50_ms", True), ("batch32_per_s", False)):
            b, t = best(runs["base"], (model, key), low), best(runs["this"], (model, key), low)
            print(f"engine {model:<14} {key:<14} base {b:8.2f}  this {t:8.2f}  this/base {t / b:.2f}")
    if args.serve_seconds > 0:
        for path, low in ((("uploads_per_s",), False), (("latency_ms", "p50"), True), (("latency_ms", "p99"), True)):
            b, t = best(serve["base"], path, low), best(serve["this"], path, low)
            key = ".".join(path)
            print(f"service routed        {key:<14} base {b:8.2f}  this {t:8.2f}  this/base {t / b:.2f}")


if __name__ == "__main__":
    main()
