"""Per-finding thresholds of a multi-label model, chosen for a stated per-finding specificity.

A finding is listed on a film when its probability reaches its own threshold. Chosen for
Youden's J, the thresholds of a weak model sit low and a normal film lists most findings; chosen
so that each finding stays silent on ``specificity`` of the validation films without it, a
"No Finding" film lists few, and every finding (rare ones too: only negatives are needed) gets a
threshold of its own.

    python -m cxrtriage.calibrate.findings --model cxr-adult14 --manifest runs/nih-split.csv \\
        --specificity 0.9 [--write]

prints, per finding, the threshold and its validation sensitivity, and the mean number of
findings listed on validation "No Finding" films with the model's current thresholds and with
the new ones; the new ones are also measured cross-fitted (chosen on one patient-half of the
validation films, counted on the other, both ways), which is what a film of an unseen patient
gets. ``--write`` stores them in the model's sidecar with their provenance.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from cxrtriage.contract import Kind, flagged
from cxrtriage.contract.decision import DEFAULT_LABEL_THRESHOLD
from cxrtriage.evaluate.multilabel import specificity_thresholds

DEFAULT_SPECIFICITY = 0.9


def threshold_vector(thresholds: dict[str, float | None] | None, classes: list[str]) -> np.ndarray:
    """Thresholds in class order, the contract's default where a finding has none."""
    t = thresholds or {}
    return np.array([DEFAULT_LABEL_THRESHOLD if t.get(c) is None else float(t[c]) for c in classes])  # type: ignore[arg-type]


def listed(probs: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """How many findings each film lists (N,), by the contract's one comparison."""
    return flagged(np.asarray(probs), thresholds[None, :]).sum(axis=1)


def crossfit_listed(y: np.ndarray, probs: np.ndarray, patients: np.ndarray, classes: list[str],
                    specificity: float, seed: int = 0) -> np.ndarray:
    """Findings listed on each film when thresholds are chosen on the other patient-half only."""
    uniq = np.unique(patients)
    half = np.random.default_rng(seed).permutation(uniq)[: len(uniq) // 2]
    in_a = np.isin(patients, half)
    out = np.zeros(len(y), dtype=int)
    for fit, use in ((in_a, ~in_a), (~in_a, in_a)):
        t = threshold_vector(specificity_thresholds(y[fit], probs[fit], classes, specificity), classes)
        out[use] = listed(probs[use], t)
    return out


def threshold_report(y: np.ndarray, probs: np.ndarray, patients: np.ndarray, classes: list[str],
                     current: dict[str, float | None] | None, specificity: float) -> dict[str, Any]:
    """New thresholds, their per-finding sensitivity/specificity and the listing counts, before/after."""
    new = specificity_thresholds(y, probs, classes, specificity)
    t_new, t_old = threshold_vector(new, classes), threshold_vector(current, classes)
    normal = (y == 0).all(axis=1)
    crossfit = crossfit_listed(y, probs, patients, classes, specificity)
    per = {}
    for j, c in enumerate(classes):
        pos, neg = y[:, j] == 1, y[:, j] == 0
        on = flagged(probs[:, j], t_new[j])
        per[c] = {"threshold": new[c], "positives": int(pos.sum()),
                  "sensitivity": float(on[pos].mean()) if pos.any() else None,
                  "specificity": float(1 - on[neg].mean()) if neg.any() else None}
    any_pos = ~normal
    return {
        "specificity": specificity, "thresholds": new, "per_finding": per,
        "no_finding_films": int(normal.sum()),
        "listed_before": float(listed(probs[normal], t_old).mean()),
        "listed_after": float(listed(probs[normal], t_new).mean()),
        "listed_after_crossfit": float(crossfit[normal].mean()),
        "no_finding_silent_before": float((listed(probs[normal], t_old) == 0).mean()),
        "no_finding_silent_after_crossfit": float((crossfit[normal] == 0).mean()),
        "abnormal_flagged_before": float((listed(probs[any_pos], t_old) > 0).mean()),
        "abnormal_flagged_after_crossfit": float((crossfit[any_pos] > 0).mean()),
    }


def score_manifest(model: str, manifest: Path, split: str) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray]:
    """(spec, targets, probabilities, patients) of the manifest's ``split`` films under ``model``."""
    from cxrtriage.data import get_task
    from cxrtriage.data.samples import read_manifest
    from cxrtriage.infer import Engine

    engine = Engine(model, gate=False)
    if engine.spec.kind is not Kind.MULTILABEL:
        raise SystemExit(f"{engine.spec.name} is not a multi-label model: it has one operating threshold "
                         "(cxr calibrate refits it)")
    samples = [s for s in read_manifest(manifest) if s.split == split]
    if not samples:
        raise SystemExit(f"{manifest}: no films of split {split!r}")
    task = get_task(engine.spec.task)
    preds = engine.predict_batch([s.path for s in samples], batch_size=32, progress=True)
    bad = [p.source for p in preds if not p.ok]
    if bad:
        raise SystemExit(f"{len(bad)} film(s) could not be scored, e.g. {bad[0]}")
    classes = list(engine.spec.classes)
    probs = np.array([[p.probabilities[c] for c in classes] for p in preds])
    y = np.stack([task.multi_hot(s.label) for s in samples]).astype(float)
    return engine, y, probs, np.array([s.patient_id for s in samples])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="cxr-adult14")
    ap.add_argument("--manifest", type=Path, required=True, help="the model's split (its 'val' films choose)")
    ap.add_argument("--split", default="val")
    ap.add_argument("--specificity", type=float, default=DEFAULT_SPECIFICITY)
    ap.add_argument("--write", action="store_true", help="store the thresholds in the model's sidecar")
    args = ap.parse_args(argv)
    engine, y, probs, patients = score_manifest(args.model, args.manifest, args.split)
    classes = list(engine.spec.classes)
    rep = threshold_report(y, probs, patients, classes, engine.spec.decision.label_thresholds, args.specificity)
    print(f"{'finding':20} {'positives':>9} {'threshold':>9} {'sensitivity':>11} {'specificity':>11}")
    for c, r in rep["per_finding"].items():
        t = "-" if r["threshold"] is None else f"{r['threshold']:.3f}"
        sens = "-" if r["sensitivity"] is None else f"{r['sensitivity']:.3f}"
        print(f"{c:20} {r['positives']:>9} {t:>9} {sens:>11} {r['specificity']:>11.3f}")
    print(f"\n{rep['no_finding_films']} 'No Finding' films: findings listed per film, mean: "
          f"{rep['listed_before']:.2f} with the current thresholds, {rep['listed_after']:.2f} with the new "
          f"(in-sample), {rep['listed_after_crossfit']:.2f} cross-fitted over patient halves "
          f"(films listing none: {rep['no_finding_silent_before']:.0%} before, "
          f"{rep['no_finding_silent_after_crossfit']:.0%} after, cross-fitted)")
    print(f"films with a finding flagged: {rep['abnormal_flagged_before']:.1%} before, "
          f"{rep['abnormal_flagged_after_crossfit']:.1%} after (cross-fitted)")
    if args.write:
        spec = engine.spec.with_decision(label_thresholds=rep["thresholds"]).with_provenance(
            label_thresholds_method=f"per finding: the lowest threshold with specificity >= {args.specificity} "
                                    f"on the {len(y)} {args.split} films of {args.manifest.name}")
        print(f"sidecar written: {spec.save(engine.onnx_path)}")


if __name__ == "__main__":
    main()
