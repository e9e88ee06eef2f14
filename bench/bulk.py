"""Bulk-triage benchmark: images/s of `cxr predict --engine ray` with 1 and 2 workers, and the scaling ratio.

Each worker is one Ray actor holding one ONNX Runtime engine with one thread (one core). The
same images go through: the local engine (no Ray, one thread: the per-core baseline), Ray
with 1 worker, Ray with 2 workers; every run writes its own Parquet results. Files are read
once beforehand so that disk caching favours no run. Two rates are printed: end to end (listing,
actor start-up and Parquet writes included) and marginal, from a second run over half the images:
(n - n/2) / (t(n) - t(n/2)), which cancels the fixed start-up costs, i.e. the rate a long
archive run approaches; give enough images (--n) that each run lasts several seconds, or the
difference of two short runs is mostly noise.

    python bench/bulk.py [--images DIR] [--n 600] [--batch-size 16] [--max-workers 2]
    python bench/bulk.py --n 48 --dicom-size 2048 [--j2k]   # archive-like: full-size 12-bit DICOM

The shared Kermany images are 224-px JPEGs, cheap to decode; ``--dicom-size`` turns them into
full-size 12-bit DX DICOM files (uncompressed, or JPEG 2000 lossless with ``--j2k``) as PACS
archives hold them, where decoding dominates the cost per image.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import sys as _sys
from pathlib import Path as _Path

_sys.path.insert(0, str(_Path(__file__).resolve().parents[1]))  # the checkout's testkit/

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "kermany-224" / "train"


def pick_images(folder: Path | None, n: int, tmp: Path) -> list[Path]:
    """``n`` radiographs: from ``folder`` (default: the shared Kermany set), else copies of the samples."""
    from cxrtriage.io import IMAGE_SUFFIXES

    folder = folder or (SHARED if SHARED.is_dir() else None)
    files: list[Path] = []
    if folder is not None:
        files = sorted(f for f in folder.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
        step = max(1, len(files) // n)
        files = files[::step][:n]
    if len(files) < n:  # top up with copies of the bundled samples
        samples = sorted(f for f in (ROOT / "cxrtriage" / "assets" / "samples").iterdir()
                         if f.suffix.lower() in IMAGE_SUFFIXES)
        (tmp / "copies").mkdir(exist_ok=True)
        for i in range(n - len(files)):
            src = samples[i % len(samples)]
            dst = tmp / "copies" / f"{i:06d}-{src.name}"
            shutil.copy(src, dst)
            files.append(dst)
    return files


def to_dicom(files: list[Path], size: int, j2k: bool, tmp: Path) -> list[Path]:
    """Full-size 12-bit DX DICOM copies of ``files`` (upsampled to ``size`` px)."""
    import numpy as np
    from PIL import Image
    from pydicom import uid

    from testkit.make_dicom import radiograph_to_dicom

    out = tmp / "dicom"
    out.mkdir(exist_ok=True)
    paths = []
    for i, f in enumerate(files):
        with Image.open(f) as im:
            px = np.asarray(im.convert("L").resize((size, size), Image.BICUBIC)).astype(np.uint16) * 16
        p = out / f"{i:06d}.dcm"
        radiograph_to_dicom(px, p, modality="DX", bits_stored=12, window="full",
                            transfer_syntax=uid.JPEG2000Lossless if j2k else uid.ExplicitVRLittleEndian)
        paths.append(p)
    return paths


def _timed(source: Path, out: Path, **kw):
    from cxrtriage.bulk import bulk_triage

    t0 = time.perf_counter()
    s = bulk_triage(source, out, **kw)
    return s, time.perf_counter() - t0


def run(label: str, full: Path, half: Path, tmp: Path, repeat: int = 1, **kw) -> dict:
    """Time jobs over ``half`` and ``full`` (best of ``repeat`` each); a fresh results folder each time."""
    name = label.split(",")[0].replace(" ", "-") + f"-{kw.get('workers')}"
    runs_h = [_timed(half, tmp / f"{name}-half-{i}.parquet", **kw) for i in range(repeat)]
    runs_f = [_timed(full, tmp / f"{name}-full-{i}.parquet", **kw) for i in range(repeat)]
    sh, th = min(runs_h, key=lambda r: r[1])
    s, t = min(runs_f, key=lambda r: r[1])
    marginal = (s.scored - sh.scored) / (t - th) if t > th else float("nan")
    return {"run": label, "workers": s.workers, "images": s.scored, "errors": s.errors, "seconds": t,
            "end_to_end_img_s": s.scored / t, "marginal_img_s": marginal}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=Path, default=None, help="Folder of radiographs (default: shared Kermany train).")
    ap.add_argument("--n", type=int, default=600, help="Number of images per run.")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-workers", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3, help="Runs per measurement; the fastest counts.")
    ap.add_argument("--dicom-size", type=int, default=None, help="Convert to full-size DICOM of this many px.")
    ap.add_argument("--j2k", action="store_true", help="With --dicom-size: JPEG 2000 lossless instead of raw.")
    ap.add_argument("--json", type=Path, default=None, help="Also write the results here.")
    args = ap.parse_args()

    import ray

    with tempfile.TemporaryDirectory(prefix="cxr-bulk-bench-") as tmpdir:
        tmp = Path(tmpdir)
        files = pick_images(args.images, args.n, tmp)
        if args.dicom_size:
            files = to_dicom(files, args.dicom_size, args.j2k, tmp)
        listing, half = tmp / "paths.csv", tmp / "half.csv"
        listing.write_text("path\n" + "\n".join(str(f) for f in files) + "\n")
        half.write_text("path\n" + "\n".join(str(f) for f in files[: len(files) // 2]) + "\n")
        for f in files:  # warm the page cache for every run alike
            f.read_bytes()
        results = [run("local engine, 1 thread (no Ray)", listing, half, tmp, args.repeat, engine="local",
                       threads=1, batch_size=args.batch_size)]
        t = time.perf_counter()
        ray.init(num_cpus=args.max_workers, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
        ray_start = time.perf_counter() - t
        try:
            for w in range(1, args.max_workers + 1):
                results.append(run(f"ray, {w} worker(s)", listing, half, tmp, args.repeat, engine="ray", workers=w,
                                   threads=1, batch_size=args.batch_size))
        finally:
            ray.shutdown()

    kind = (f"{args.dicom_size}-px 12-bit DICOM ({'JPEG 2000 lossless' if args.j2k else 'uncompressed'})"
            if args.dicom_size else "radiographs")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\nbulk triage of {len(files)} {kind}, batch {args.batch_size}, {os.cpu_count()} CPU(s) visible "
          f"(load average {load:.1f}); local Ray start-up {ray_start:.1f}s (not counted); best of {args.repeat}")
    print(f"{'run':34s} {'workers':>7s} {'images':>6s} {'seconds':>8s} {'end-to-end img/s':>17s} "
          f"{'marginal img/s':>15s}")
    for r in results:
        print(f"{r['run']:34s} {r['workers']:7d} {r['images']:6d} {r['seconds']:8.1f} {r['end_to_end_img_s']:17.1f} "
              f"{r['marginal_img_s']:15.1f}")
    one = next(r for r in results if r["run"].startswith("ray, 1"))
    for r in results:
        if r["run"].startswith("ray,") and r is not one:
            print(f"scaling {r['workers']} vs 1 worker: end to end x{r['end_to_end_img_s'] / one['end_to_end_img_s']:.2f}, "
                  f"marginal x{r['marginal_img_s'] / max(one['marginal_img_s'], 1e-9):.2f} "
                  f"(ideal x{r['workers']:.2f})")
    per_core = one["marginal_img_s"]
    print(f"per core (one Ray worker, marginal): {per_core:.1f} img/s -> about {per_core * 3600:,.0f} images/h")
    if args.json:
        args.json.write_text(json.dumps({"n": len(files), "batch_size": args.batch_size, "ray_start_s": ray_start,
                                         "results": results}, indent=2))


if __name__ == "__main__":
    main()
