"""PACS benchmark: push radiographs into a fresh Orthanc, let ``cxr pacs watch`` triage them.

    .venv/bin/python bench/pacs.py [--n 200] [--rate 10] [--mode changes] [--poll 0.5]

Two phases of ``--n`` radiographs each (every one its own study, STOW-RS one by one as a
modality would send them), with the watcher running in its own process:

* ``paced``: pushed at ``--rate`` per second: time-to-result at that load;
* ``burst``: pushed as fast as STOW allows: end-to-end capacity (instances/s).

Time-to-result is from the end of an instance's STOW to the moment the watcher recorded
its SC and SR as stored. Lost = pushed radiographs without exactly one SC and one SR in
their study at the end; duplicated = studies with more than one of either.

Radiographs come from ../shared (Kermany, 224 px) when present, else the bundled samples
(re-used with fresh UIDs). Needs Orthanc (scripts/install_orthanc.sh).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from testkit.local_orthanc import OrthancServer, orthanc_missing  # noqa: E402

SHARED = Path(os.environ.get("CXR_SHARED", ROOT.parent / "shared")) / "data" / "kermany-224"


def load_pixels(n: int) -> tuple[list[np.ndarray], str]:
    """``n`` uint8 radiographs and where they came from."""
    from cxrtriage.io import IMAGE_SUFFIXES, read_radiograph

    paths: list[Path] = []
    origin = "../shared kermany-224"
    if SHARED.is_dir():
        for split in ("test", "train"):
            for cls in ("NORMAL", "PNEUMONIA"):
                paths += sorted((SHARED / split / cls).glob("*.jpeg"))[: n // 2 + 1]
    if len(paths) < n:
        samples = ROOT / "cxrtriage" / "assets" / "samples"
        paths = sorted(p for p in samples.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        origin = f"bundled samples ({len(paths)} images, re-used with fresh UIDs)"
    pixels = []
    for p in paths:
        try:
            pixels.append(read_radiograph(p).to_uint8())
        except Exception:
            continue
        if len(pixels) == n:
            break
    if not pixels:
        raise SystemExit("no radiographs found (../shared or cxrtriage/assets/samples)")
    return [pixels[i % len(pixels)] for i in range(n)], origin


def make_files(pixels: list[np.ndarray], tag: str) -> list[tuple[str, str, bytes]]:
    """One DX for presentation per radiograph, each its own patient and study (fresh UIDs).

    Returns (Study Instance UID, SOP Instance UID, Part-10 bytes) triples.
    """
    import pydicom

    from testkit.make_dicom import build_dataset

    out = []
    for i, px in enumerate(pixels):
        ds = build_dataset(px, modality="DX", patient_id=f"BENCH-{tag}-{i:04d}", patient_name=f"Bench^{tag}{i}")
        buf = io.BytesIO()
        pydicom.dcmwrite(buf, ds, enforce_file_format=True)
        out.append((str(ds.StudyInstanceUID), str(ds.SOPInstanceUID), buf.getvalue()))
    return out


def push(srv: OrthancServer, files: list[tuple[str, str, bytes]], rate: float | None) -> dict[str, float]:
    """STOW each file on its own; returns Study Instance UID -> time its STOW returned."""
    client = srv.dicomweb()
    done: dict[str, float] = {}
    t0 = time.time()
    for i, (study, _, data) in enumerate(files):
        if rate:
            delay = t0 + i / rate - time.time()
            if delay > 0:
                time.sleep(delay)
        srv.stow(data, client)
        done[study] = time.time()
    return done


def state_rows(path: Path) -> dict[str, tuple[str, float, str]]:
    """Watcher state: key -> (status, updated, ref json)."""
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10) as db:
        return {k: (s, u, r) for k, s, u, r in db.execute("SELECT key, status, updated, ref FROM items")}


def wait_done(path: Path, expected: int, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            rows = state_rows(path)
            if sum(1 for s, _, _ in rows.values() if s == "done") >= expected:
                return
        except sqlite3.Error:
            pass
        time.sleep(0.2)


def measure(srv: OrthancServer, state: Path, pushed: dict[str, float]) -> dict:
    """Per-instance time-to-result, plus lost and duplicated counts checked in Orthanc itself."""
    rest = srv.client()
    rows = state_rows(state)
    by_orthanc = {json.loads(r).get("orthanc_id"): u for k, (s, u, r) in rows.items() if s == "done"}
    latencies, ends, lost, dup = [], [], 0, 0
    for study, t_push in pushed.items():
        series = rest.find("Series", {"StudyInstanceUID": study})
        by_mod: dict[str, list[str]] = {}
        for se in series:
            by_mod.setdefault(se["MainDicomTags"].get("Modality", ""), []).extend(se["Instances"])
        source = (by_mod.get("DX") or [None])[0]
        n_sc, n_sr = len(by_mod.get("OT", [])), len(by_mod.get("SR", []))
        if source not in by_orthanc or n_sc < 1 or n_sr < 1:
            lost += 1
            continue
        if n_sc > 1 or n_sr > 1 or len(by_mod.get("DX", [])) != 1:
            dup += 1
        latencies.append(by_orthanc[source] - t_push)
        ends.append(by_orthanc[source])
    lat = np.array(latencies) if latencies else np.array([np.nan])
    span = (max(ends) - (min(pushed.values()))) if ends else float("nan")
    return {"n": len(pushed), "results": len(latencies), "lost": lost, "duplicated": dup,
            "ttr_p50_s": float(np.percentile(lat, 50)), "ttr_p95_s": float(np.percentile(lat, 95)),
            "ttr_max_s": float(np.max(lat)), "end_to_end_per_s": len(latencies) / span if span > 0 else float("nan")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200, help="radiographs per phase")
    ap.add_argument("--rate", type=float, default=10.0, help="push rate of the paced phase (instances/s)")
    ap.add_argument("--mode", default="changes", choices=["changes", "dicomweb"])
    ap.add_argument("--poll", type=float, default=0.5, help="watcher poll interval (s)")
    ap.add_argument("--batch", type=int, default=8, help="watcher batch size")
    ap.add_argument("--workers", type=int, default=2, help="watcher triage processes")
    ap.add_argument("--phases", default="paced,burst")
    ap.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = ap.parse_args()
    reason = orthanc_missing()
    if reason:
        raise SystemExit(reason)
    pixels, origin = load_pixels(args.n)
    work = Path(tempfile.mkdtemp(prefix="cxr-bench-pacs-"))
    srv = OrthancServer(work / "orthanc").start()
    state = work / "state.sqlite"
    code = ("import logging, sys; logging.basicConfig(level=logging.WARNING); "
            "from cxrtriage.pacs.connection import PacsConnection; from cxrtriage.pacs.watch import watch; "
            f"watch(PacsConnection({srv.url!r}, user={srv.credentials['user']!r}, "
            f"password={srv.credentials['password']!r}), mode={args.mode!r}, poll_s={args.poll}, "
            f"state_path={str(state)!r}, batch_size={args.batch}, workers={args.workers})")
    watcher = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT)
    report: dict = {"origin": origin, "mode": args.mode, "poll_s": args.poll, "batch": args.batch,
                    "workers": args.workers,
                    "cpus": os.cpu_count(), "load_avg_start": os.getloadavg()[0]}
    try:
        t_wait = time.time()
        while not state.exists() or not _has_cursor(state):
            if watcher.poll() is not None:
                raise SystemExit("the watcher exited during start-up")
            time.sleep(0.2)
        report["watcher_start_s"] = round(time.time() - t_wait, 2)
        total = 0
        for phase in [p for p in args.phases.split(",") if p]:
            rate = args.rate if phase == "paced" else None
            files = make_files(pixels, phase)
            t0 = time.time()
            pushed = push(srv, files, rate)
            push_s = time.time() - t0
            total += len(files)
            wait_done(state, total, timeout=120 + 2 * len(files))
            m = measure(srv, state, pushed)
            m["push_per_s"] = len(files) / push_s
            report[phase] = m
            print(f"{phase:6s} n={m['n']} pushed at {m['push_per_s']:.1f}/s: time-to-result p50 {m['ttr_p50_s']:.2f} s"
                  f", p95 {m['ttr_p95_s']:.2f} s, max {m['ttr_max_s']:.2f} s; end to end {m['end_to_end_per_s']:.1f}"
                  f" instances/s; lost {m['lost']}, duplicated {m['duplicated']}", flush=True)
        report["orthanc_instances"] = srv.count_instances()
        report["load_avg_end"] = os.getloadavg()[0]
    finally:
        watcher.terminate()
        try:
            watcher.wait(10)
        except subprocess.TimeoutExpired:
            watcher.kill()
        srv.stop(graceful=False)
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


def _has_cursor(path: Path) -> bool:
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as db:
            return db.execute("SELECT COUNT(*) FROM cursors").fetchone()[0] > 0
    except sqlite3.Error:
        return False


if __name__ == "__main__":
    raise SystemExit(main())
