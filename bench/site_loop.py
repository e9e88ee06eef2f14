"""The site loop measured end to end: radiologists' reads on one patient-wise half of Kermany
test-dev recorded in a running service, ``cxr calibrate --from-service`` fitted on them, and the
calibrated model's sensitivity / specificity / AUC on the other half, beside the same calibration
fitted straight from the half's CSV (what ``bench/pediatric.py`` does) on the same halves.

    python bench/site_loop.py [--splits 3] [--target-sensitivity 0.96] [--no-head]

The two columns should agree: the service keys patients by a pseudonym of the DICOM Patient ID,
the CSV by the Kermany name, and the site head's cross-fitting folds number patients by first
appearance, so the same films in the same order give the same fit whatever the names.

The films go in as DICOM (Patient ID = the Kermany patient), as a PACS would send them, so the
service's pseudonymous patient reference keeps the calibration patient-wise. The halvings are
``bench/pediatric.py``'s (``patient_split(test-dev, 0.49, seed)``, seeds 1..splits).
"""

from __future__ import annotations

import argparse
import csv
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import requests  # noqa: E402

from cxrtriage.calibrate import calibrate  # noqa: E402
from cxrtriage.contract import triage_target  # noqa: E402
from cxrtriage.data import get_task, kermany_samples, patient_split  # noqa: E402
from cxrtriage.evaluate.metrics import binary_metrics  # noqa: E402
from cxrtriage.infer import load_engine  # noqa: E402
from testkit.make_dicom import image_file_to_dicom  # noqa: E402

DEV = ROOT.parent / "shared" / "data" / "kermany-224"
TOKEN = "site-loop-bench"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(data_dir: Path) -> tuple[subprocess.Popen, str]:
    port = _port()
    env = {**os.environ, "CXR_API_TOKEN": TOKEN}
    proc = subprocess.Popen([sys.executable, "-m", "cxrtriage", "serve", "--host", "127.0.0.1", "--port", str(port),
                             "--data-dir", str(data_dir), "--model", "cxr-pneumonia"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(240):
        try:
            if requests.get(f"{url}/healthz", timeout=1).ok:
                return proc, url
        except requests.RequestException:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit("cxr serve did not start")


def _record_reads(url: str, films, dicom_dir: Path) -> int:
    """Upload each film as DICOM, wait for its result, then record the reader's label."""
    auth = {"Authorization": f"Bearer {TOKEN}"}
    studies = []
    for k, s in enumerate(films):
        dcm = image_file_to_dicom(s.path, dicom_dir / f"{k}.dcm", patient_id=s.patient_id, modality="CR")
        with dcm.open("rb") as fh:
            r = requests.post(f"{url}/api/v1/studies", files={"files": (dcm.name, fh, "application/dicom")},
                              headers=auth, timeout=60)
        r.raise_for_status()
        studies.append((r.json()["studies"][0]["id"], s.label))
    for sid, label in studies:
        for _ in range(600):
            if requests.get(f"{url}/api/v1/studies/{sid}", headers=auth, timeout=30).json()["status"] == "done":
                break
            time.sleep(0.2)
        requests.put(f"{url}/api/v1/studies/{sid}/read", json={"label": label}, headers=auth,
                     timeout=30).raise_for_status()
    return len(studies)


def _measure(model_dir: Path, films, task_name: str) -> dict[str, float]:
    engine = load_engine(model_dir, gate=False)
    task = get_task(task_name)
    preds = engine.predict_files([s.path for s in films], batch_size=32)
    probs = np.array([[p.probabilities[c] for c in engine.spec.classes] for p in preds])
    y = np.array([task.index(s.label) for s in films])
    m = binary_metrics(triage_target(y), engine.spec.triage_score(probs), engine.spec.threshold, n_boot=0)
    return {"sens": m["sensitivity"], "spec": m["specificity"], "auc": m["roc_auc"]}


def one_halving(seed: int, target: float, head: bool, tmp: Path) -> dict[str, dict[str, float]]:
    films = patient_split(kermany_samples(DEV, "test-dev", "pneumonia"), 0.49, seed=seed)
    half_a = [s for s in films if s.split == "train"]
    half_b = [s for s in films if s.split == "val"]
    data_dir, dicoms = tmp / f"service{seed}", tmp / f"dicom{seed}"
    dicoms.mkdir(parents=True)
    proc, url = _serve(data_dir)
    try:
        n = _record_reads(url, half_a, dicoms)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    subprocess.run([sys.executable, "-m", "cxrtriage", "calibrate", "--from-service", str(data_dir), "--out",
                    str(tmp / f"from-service{seed}"), "--model", "cxr-pneumonia", "--target-sensitivity",
                    str(target), "--n-boot", "200", *(["--head"] if head else [])], check=True,
                   stdout=subprocess.DEVNULL)
    csv_path = tmp / f"a{seed}.csv"
    with csv_path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "patient_id"])
        w.writerows((s.path, s.label, s.patient_id) for s in half_a)
    calibrate("cxr-pneumonia", csv_path, tmp / f"from-csv{seed}", target_sensitivity=target, n_boot=200, head=head)
    return {"reads": {"n": n}, "service": _measure(tmp / f"from-service{seed}", half_b, "pneumonia"),
            "csv": _measure(tmp / f"from-csv{seed}", half_b, "pneumonia")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--splits", type=int, default=3)
    ap.add_argument("--target-sensitivity", type=float, default=0.96)
    ap.add_argument("--head", action=argparse.BooleanOptionalAction, default=True,
                    help="refit the last layer too (cxr calibrate --head; the default: the shipped head was fitted "
                         "on all of test-dev, and --head replaces it, so half B stays unseen)")
    args = ap.parse_args()
    if not (DEV / "test-dev").is_dir():
        raise SystemExit(f"needs Kermany test-dev at {DEV / 'test-dev'}")
    print(f"cxr-pneumonia, target sensitivity {args.target_sensitivity}, head {args.head}: reads on half A "
          "through the service vs the same half as a CSV; measured on half B")
    print(f"{'seed':>4} {'reads':>6}  {'service sens/spec/AUC':>24}  {'CSV sens/spec/AUC':>24}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="cxr-site-loop-") as tmp:
        for seed in range(1, args.splits + 1):
            r = one_halving(seed, args.target_sensitivity, args.head, Path(tmp))
            rows.append(r)
            sv, cv = r["service"], r["csv"]
            print(f"{seed:>4} {r['reads']['n']:>6}  {sv['sens']:.3f} / {sv['spec']:.3f} / {sv['auc']:.3f}    "
                  f"{cv['sens']:.3f} / {cv['spec']:.3f} / {cv['auc']:.3f}", flush=True)
    mean = {k: {m: float(np.mean([r[k][m] for r in rows])) for m in ("sens", "spec", "auc")}
            for k in ("service", "csv")}
    sv, cv = mean["service"], mean["csv"]
    print(f"mean         {sv['sens']:.3f} / {sv['spec']:.3f} / {sv['auc']:.3f}    "
          f"{cv['sens']:.3f} / {cv['spec']:.3f} / {cv['auc']:.3f}")


if __name__ == "__main__":
    main()
