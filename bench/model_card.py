"""Write the bundled model's card (MODEL_CARD.md + model_card.json) from its sidecar, the
validation split it was chosen on, and the explanation and quality-gate checks.

    python bench/model_card.py --data ../shared/data/kermany-224 --ensemble runs/ensemble
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

import sys as _sys
from pathlib import Path as _Path

_sys.path.insert(0, str(_Path(__file__).resolve().parents[1]))  # the checkout's testkit/

from cxrtriage import DISCLAIMER
from cxrtriage.data import get_task, kermany_samples, load_cached, patient_split, to_model_input
from cxrtriage.evaluate import evaluate_predictions
from testkit.explain_checks import deletion_check, randomisation_check
from cxrtriage.infer import DEFAULT_MODEL, Engine
from testkit.ood_samples import skimage_images, synthetic, transformed

COMMANDS = [
    "cxr train --data ../shared/data/kermany-224 --out runs/cnn --epochs 30 --patience 30 --seed 0 --device cpu",
    "cxr train --manifest runs/cnn/split.csv --arch lite0_probe --out runs/probe --seed 0 --device cpu",
    "cxr ensemble runs/cnn runs/probe --out runs/ensemble --name cxr-pneumonia --target-sensitivity 0.98 "
    "--heatmap-from 0 --half-weights "
    "--onnx cxrtriage/assets/model/cxr-pneumonia.onnx",
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="../shared/data/kermany-224")
    ap.add_argument("--ensemble", default="runs/ensemble", help="the folder `cxr ensemble` wrote (for its members)")
    ap.add_argument("--shift", default="runs/bench-shift/shift.json", help="bench/shift.py's output, if run")
    ap.add_argument("--wall-s", type=float, nargs=3, default=None, metavar=("CNN", "PROBE", "ENSEMBLE"),
                    help="measured wall-clock seconds of the three training commands")
    args = ap.parse_args()
    engine = Engine()
    info = engine.spec
    meta = info.to_dict()  # the sidecar as written
    task = get_task(info.task)
    seed = info.training_seed
    val = [s for s in patient_split(kermany_samples(args.data, "train", task.name), 0.2, seed) if s.split == "val"]
    imgs = np.asarray(load_cached([s.path for s in val], info.input_size, progress=False))
    y = np.array([task.index(s.label) for s in val])
    probs = engine.run_arrays(imgs)["probs"]
    out_dir = DEFAULT_MODEL.parent / "validation"
    res = evaluate_predictions(task.name, list(task.classes), y, probs, info.threshold, out_dir,
                               {"model": info.name, "model_version": info.version, "split": "val (patient-wise 20% of train/)",
                                "data": "Kermany chest X-ray, train/ split", "threshold_method": info.decision.method})
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
    from cxrtriage.models.archs import count_flops
    from cxrtriage.train.ensemble import load_ensemble

    graph = load_ensemble(args.ensemble)
    members = []
    for m, facts in zip(graph.members, meta["members"]):
        members.append({"arch": facts["arch"], "image_size": m.image_size,
                        "parameters": sum(p.numel() for p in m.net.parameters()),
                        "gflop": count_flops(m.net, m.image_size) / 1e9, "training": facts["training"],
                        "validation": facts["validation"]})
    cam_grid = int(engine.run_arrays(imgs[:1])["cam"].shape[-1])
    ci = lambda k: res["binary"]["ci"].get(k) or [None, None]  # noqa: E731
    card = {
        "model": info.name, "version": info.version, "sha256": meta["sha256"], "task": task.name,
        "classes": list(task.classes), "architecture": meta["arch"], "input": meta["input"],
        "threshold": info.threshold, "threshold_high": info.threshold_high, "threshold_method": info.decision.method,
        "members": members,
        "training": {**meta["training"], "commands": COMMANDS,
                     "cpu_2core_seconds": round(sum(m["training"]["seconds"] for m in members), 1)},
        "validation": {k: res[k] for k in ("n", "roc_auc", "accuracy", "sensitivity", "specificity")}
        | {"roc_auc_ci": ci("roc_auc"), "sensitivity_ci": ci("sensitivity"), "specificity_ci": ci("specificity"),
           "ppv": res["binary"]["ppv"], "npv": res["binary"]["npv"], "ece": res["binary"]["ece"]},
        "explanation_checks": {"deletion": dele, "randomisation": rnd},
        "quality_gate": {"threshold": gate.threshold, "val_false_refusal_rate": meta["gate"]["val_false_refusal_rate"],
                         "refusal_rates": ood},
        "data": "Kermany D.S. et al., Cell 172(5) 2018; Mendeley Data doi:10.17632/rscbjbr9sj.2; CC BY 4.0",
        "disclaimer": DISCLAIMER,
    }
    v = card["validation"]
    m0, m1 = members
    shift_md = ""
    wall_min = sum(args.wall_s) / 60 if args.wall_s else float("nan")
    card["training"]["wall_seconds"] = args.wall_s
    method = meta["threshold_method"]
    thr_text = ("the most specific threshold keeping validation sensitivity >= " + method.split(">=")[1].split()[0]
                if method.startswith("sensitivity") else
                "Youden's J averaged over +-1 logit on validation: the middle of the ROC's flat top")
    if Path(args.shift).exists():
        rows = json.loads(Path(args.shift).read_text())
        card["shift_benchmark"] = rows
        shift_md = ("## Shift benchmark\n`python bench/shift.py`: the recipe trained without the `NORMAL2-*` batch "
                    "of normals, scored on those 744 normals and the 775 validation pneumonias (threshold "
                    "from the validation split without them).\n\n| model | val AUC | held-out batch AUC | "
                    "sens / spec (Youden plateau) |\n| --- | --- | --- | --- |\n" + "".join(
                        f"| {r['model']} | {r['val_auc']:.4f} | {r['shift_auc']:.4f} | "
                        f"{r['youden-plateau']['sensitivity']:.3f} / {r['youden-plateau']['specificity']:.3f} |\n"
                        for r in rows) + "\n")
    (DEFAULT_MODEL.parent / "model_card.json").write_text(json.dumps(card, indent=2))
    total_min = card["training"]["cpu_2core_seconds"] / 60
    commands = "\n".join(COMMANDS)
    arch_text = (f"ensemble (mean probability) of `{m0['arch']}`, a residual CNN trained here "
                 f"({m0['parameters'] / 1e6:.1f} M parameters, {m0['image_size']} px), and `{m1['arch']}`, "
                 f"EfficientNet-Lite0 stages 1-5 with frozen ImageNet weights and a logistic-regression head "
                 f"({m1['parameters'] / 1e6:.1f} M parameters, {m1['image_size']} px); "
                 f"{sum(m['gflop'] for m in members):.2f} GFLOP per image; both end in global pooling + a linear "
                 "head, so the class activation map is part of the graph")
    f3 = lambda x: "n/a" if x is None else f"{x:.3f}"  # noqa: E731
    md = f"""# Model card: {info.name} ({info.version})

> {DISCLAIMER} Trained on pediatric (1-5 years) radiographs from one centre; not validated
> for adults, other hospitals or other findings.

| | |
| --- | --- |
| Task | {task.description} (`{task.name}`); triage score = 1 - P(normal) |
| Architecture | {arch_text} |
| Input | grayscale, resized to {info.input_size}x{info.input_size} px (bilinear, aspect not kept, as the training images); inside the graph each member gets its own size and normalisation |
| Output | P(normal), P(pneumonia) (the members' mean); heatmap ({cam_grid}x{cam_grid} class activation map of the `cxrnet` member); quality-gate embedding |
| Threshold | {info.threshold:.3f} ({thr_text}); "urgent" from {info.threshold_high:.3f} (specificity >= 0.995 on validation) |
| File | `cxr-pneumonia.onnx`, sha256 `{meta['sha256'][:16]}...` |

## Data
Kermany D.S. et al., *Identifying Medical Diagnoses and Treatable Diseases by Image-Based Deep
Learning*, Cell 172(5), 2018; Mendeley Data doi:10.17632/rscbjbr9sj.2; **CC BY 4.0**. The
release's `train/` split (5,216 images, resized to 224 px): 1,341 normal, 3,875 pneumonia.
Split by patient (file-name ids), stratified, seed {seed}: {meta['training']['n_train']} training
images, {v['n']} validation images, no patient on both sides. The official test split was not used.

## Training
On the 2-core CPU of the development machine: {total_min:.1f} min of training ({m0['training']['seconds'] / 60:.1f} + {m1['training']['seconds'] / 60:.1f}),
{wall_min:.1f} min wall clock for the three commands (exports, gate fitting and the ensemble build included):
```
{commands}
```
- `cxrnet` (trained, {m0['training']['seconds'] / 60:.1f} min): {m0['training']['epochs_run']} epochs, best epoch
  {m0['training']['best_epoch']} by validation ROC AUC; augmentation rotation +-8 deg, translation +-6%,
  zoom 0.9-1.15, gamma/contrast/brightness, blur, sensor noise (no flips); class-weighted
  cross-entropy with label smoothing 0.05; AdamW, linear warm-up then cosine decay. Validation
  ROC AUC alone {m0['validation']['roc_auc']:.4f}. On CPU the run is deterministic (same per-epoch
  metrics twice).
- `lite0_probe` (fitted, {m1['training']['seconds'] / 60:.1f} min): EfficientNet-Lite0 stages 1-5 with their ImageNet
  weights frozen; logistic regression on the average of the stage-4 and stage-5 feature maps,
  fitted on the training images plus one augmented copy, L2 strength chosen on validation.
  Validation ROC AUC alone {m1['validation']['roc_auc']:.4f}.
- Why two: the ImageNet features were never fitted to this hospital's images, the CNN was;
  their errors differ, and their mean ranks better than either alone on validation and on a
  shifted split (members trained without the `NORMAL2-*` batch of normals, scored on it).

Hardware: {m0['training']['hardware']}; {m0['training']['torch']}.

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
  average over the {dele['n']} positive validation images, against {dele['mean_drop_moved']:.3f} for the same
  region moved to a random place and {dele['mean_drop_random']:.3f} for 10% of the pixels at random. The
  heatmap is the class activation map of the `cxrnet` member; the
  probe's own map does not pass this check, and scattered blanked pixels (impulse noise) cost the
  probe, hence the ensemble, more than any region does.
- Randomisation: rank correlation of the heatmap with itself {rnd['rank_corr_self']:.2f}; with the heatmap
  of the same graph with random weights {rnd['rank_corr_random']:.2f} (n = {rnd['n']}).

## Quality gate
Mahalanobis distance of the last feature map pooled on a 2x2 grid, Ledoit-Wolf covariance on
training images, threshold {gate.threshold:.1f} at the 99.5th percentile of half the validation
images. False refusals on the other half: {meta['gate']['val_false_refusal_rate']:.2%} (target <= 1%).
Refusal rates: """ + ", ".join(f"{k} {r:.0%}" for k, r in ood.items()) + """.
Lateral views (DICOM ViewPosition) and blank images are refused before the network runs.

""" + shift_md + """## Intended use and limits
Ordering a reading queue so that likely-abnormal studies are read first. Not for diagnosis,
not for ruling pneumonia out, not for adults. Misses happen (see the false negatives in the
report); every image is read by a clinician whatever the score.
"""
    (DEFAULT_MODEL.parent / "MODEL_CARD.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
