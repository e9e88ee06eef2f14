"""Write the bundled model's card (MODEL_CARD.md + model_card.json) from its sidecar, the
validation split it was chosen on, and the explanation and quality-gate checks.

    python bench/model_card.py --data ../shared/data/kermany-224 [--cpu-run runs/cpu-default]
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np

from cxrtriage import DISCLAIMER
from cxrtriage.data import get_task, kermany_samples, load_cached, patient_split, to_model_input
from cxrtriage.evaluate import evaluate_predictions
from cxrtriage.explain.checks import deletion_check, randomisation_check
from cxrtriage.infer import DEFAULT_MODEL, Engine
from cxrtriage.infer.ood_samples import skimage_images, synthetic, transformed

COMMAND = ("cxr train --data ../shared/data/kermany-224 --out runs/default --epochs 30 --patience 30 "
           "--seed 0{device}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="../shared/data/kermany-224")
    ap.add_argument("--cpu-run", default=None, help="a run of the same command on the 2-core CPU, for its time")
    args = ap.parse_args()
    engine = Engine()
    info = engine.info
    meta = info.raw
    task = get_task(info.task)
    seed = int(meta["training"]["seed"])
    val = [s for s in patient_split(kermany_samples(args.data, "train", task.name), 0.2, seed) if s.split == "val"]
    imgs = np.asarray(load_cached([s.path for s in val], info.input_size, progress=False))
    y = np.array([task.index(s.label) for s in val])
    probs = engine.run_arrays(imgs)["probs"]
    out_dir = DEFAULT_MODEL.parent / "validation"
    res = evaluate_predictions(task.name, list(task.classes), y, probs, info.threshold, out_dir,
                               {"model": info.name, "model_version": info.version, "split": "val (patient-wise 20% of train/)",
                                "data": "Kermany chest X-ray, train/ split", "threshold_method": meta["threshold_method"]})
    for f in out_dir.glob("*.png"):
        f.unlink()  # the self-contained report.html and metrics.json are enough to ship
    dele = deletion_check(engine, imgs[y != 0], 0.1, seed=0)
    rnd = randomisation_check(engine, imgs[:200])
    gate = engine.feature_gate
    refused = lambda a: float((gate.distance(engine.run_arrays(a)["embedding"]) > gate.threshold).mean())  # noqa: E731
    sk = skimage_images()
    ood = {"scikit-image non-radiographs": refused(np.stack([to_model_input(v, info.input_size) for v in sk.values()])),
           **{k: refused(v) for k, v in transformed(imgs[:300]).items()},
           **{k: refused(v) for k, v in synthetic(50, info.input_size).items()}}
    cpu = None
    if args.cpu_run and (Path(args.cpu_run) / "metrics.csv").exists():
        rows = list(csv.DictReader((Path(args.cpu_run) / "metrics.csv").open()))
        secs = [float(r["seconds"]) for r in rows]
        cpu = {"epochs": len(rows), "seconds": round(sum(secs), 1), "fastest_epoch_s": round(min(secs), 1),
               "best_val_auc": max(float(r["val_auc"]) for r in rows)}
    ci = lambda k: res["binary"]["ci"].get(k) or [None, None]  # noqa: E731
    card = {
        "model": info.name, "version": info.version, "sha256": meta["sha256"], "task": task.name,
        "classes": list(task.classes), "architecture": meta["arch"], "input": meta["input"],
        "threshold": info.threshold, "threshold_high": info.threshold_high, "threshold_method": meta["threshold_method"],
        "training": {**meta["training"], "command": COMMAND.format(device=" --device cuda"),
                     "cpu_2core": cpu, "cpu_command": COMMAND.format(device=" --device cpu") if cpu else None},
        "validation": {k: res[k] for k in ("n", "roc_auc", "accuracy", "sensitivity", "specificity")}
        | {"roc_auc_ci": ci("roc_auc"), "sensitivity_ci": ci("sensitivity"), "specificity_ci": ci("specificity"),
           "ppv": res["binary"]["ppv"], "npv": res["binary"]["npv"], "ece": res["binary"]["ece"]},
        "explanation_checks": {"deletion": dele, "randomisation": rnd},
        "quality_gate": {"threshold": gate.threshold, "val_false_refusal_rate": meta["gate"]["val_false_refusal_rate"],
                         "refusal_rates": ood},
        "data": "Kermany D.S. et al., Cell 172(5) 2018; Mendeley Data doi:10.17632/rscbjbr9sj.2; CC BY 4.0",
        "disclaimer": DISCLAIMER,
    }
    (DEFAULT_MODEL.parent / "model_card.json").write_text(json.dumps(card, indent=2))
    v = card["validation"]
    f3 = lambda x: "n/a" if x is None else f"{x:.3f}"  # noqa: E731
    md = f"""# Model card: {info.name} ({info.version})

> {DISCLAIMER} Trained on pediatric (1-5 years) radiographs from one centre; not validated
> for adults, other hospitals or other findings.

| | |
| --- | --- |
| Task | {task.description} (`{task.name}`); triage score = 1 - P(normal) |
| Architecture | `{meta['arch']}`: residual CNN, 0.6 M parameters, 0.127 GFLOP per image, global pooling + linear head (class activation map in the graph) |
| Input | grayscale, resized to {info.input_size}x{info.input_size} px (bilinear, aspect not kept, as the training images), pixel/255 normalised with mean {meta['input']['mean']:.4f}, std {meta['input']['std']:.4f} |
| Output | P(normal), P(pneumonia); heatmap (8x8 CAM); quality-gate embedding |
| Threshold | {info.threshold:.3f} ({meta['threshold_method']}); "urgent" from {info.threshold_high:.3f} (specificity >= 0.995 on validation) |
| File | `cxr-pneumonia.onnx`, sha256 `{meta['sha256'][:16]}...` |

## Data
Kermany D.S. et al., *Identifying Medical Diagnoses and Treatable Diseases by Image-Based Deep
Learning*, Cell 172(5), 2018; Mendeley Data doi:10.17632/rscbjbr9sj.2; **CC BY 4.0**. The
release's `train/` split (5,216 images, resized to 224 px): 1,341 normal, 3,875 pneumonia.
Split by patient (file-name ids), stratified, seed {seed}: {meta['training']['n_train']} training
images, {v['n']} validation images, no patient on both sides. The official test split was not used.

## Training
`{card['training']['command']}`

Augmentation: rotation +-8 deg, translation +-6%, zoom 0.9-1.15, gamma/contrast/brightness,
blur, sensor noise (no flips); class-weighted cross-entropy with label smoothing 0.05; AdamW,
linear warm-up then cosine decay; best epoch by validation ROC AUC ({meta['training']['best_epoch']}
of {meta['training']['epochs_run']}).
Hardware and time: {meta['training']['hardware']}, {meta['training']['seconds']:.0f} s of training
({meta['training']['torch']}).
""" + (f"""The same command on the 2-core CPU of the development machine (`--device cpu`):
{cpu['seconds'] / 60:.1f} min of training for {cpu['epochs']} epochs (sum of the epoch times; fastest epoch
{cpu['fastest_epoch_s']:.0f} s), best validation AUC {cpu['best_val_auc']:.4f}. On CPU the run is deterministic: the
same command gave the same per-epoch metrics twice.
""" if cpu else "") + f"""
## Validation (n = {v['n']}, patient-wise)

| metric | value | 95% CI (bootstrap) |
| --- | --- | --- |
| ROC AUC | {f3(v['roc_auc'])} | {f3(v['roc_auc_ci'][0])}-{f3(v['roc_auc_ci'][1])} |
| sensitivity | {f3(v['sensitivity'])} | {f3(v['sensitivity_ci'][0])}-{f3(v['sensitivity_ci'][1])} |
| specificity | {f3(v['specificity'])} | {f3(v['specificity_ci'][0])}-{f3(v['specificity_ci'][1])} |
| accuracy | {f3(v['accuracy'])} | |
| PPV / NPV | {f3(v['ppv'])} / {f3(v['npv'])} | |
| ECE (calibration) | {f3(v['ece'])} | |

Full report: [validation/report.html](validation/report.html). Expect lower numbers elsewhere:
the official Kermany test split is known to be harder than any split of `train/`.

## Explanation checks
- Deletion: blanking the top 10% of the heatmap lowers P(pneumonia) by {dele['mean_drop_top']:.3f} on
  average over the {dele['n']} positive validation images, against {dele['mean_drop_random']:.3f} for a
  random 10%.
- Randomisation: rank correlation of the heatmap with itself {rnd['rank_corr_self']:.2f}; with the heatmap
  of the same graph with random weights {rnd['rank_corr_random']:.2f} (n = {rnd['n']}).

## Quality gate
Mahalanobis distance of the last feature map pooled on a 2x2 grid, Ledoit-Wolf covariance on
training images, threshold {gate.threshold:.1f} at the 99.5th percentile of half the validation
images. False refusals on the other half: {meta['gate']['val_false_refusal_rate']:.2%} (target <= 1%).
Refusal rates: """ + ", ".join(f"{k} {r:.0%}" for k, r in ood.items()) + """.
Lateral views (DICOM ViewPosition) and blank images are refused before the network runs.

## Intended use and limits
Ordering a reading queue so that likely-abnormal studies are read first. Not for diagnosis,
not for ruling pneumonia out, not for adults. Misses happen (see the false negatives in the
report); every image is read by a clinician whatever the score.
"""
    (DEFAULT_MODEL.parent / "MODEL_CARD.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
