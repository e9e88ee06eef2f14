"""Write the drift watch's reference of the bundled pediatric models: the triage scores and
quality-gate distances of their own validation films (the patient-wise 20% of Kermany ``train/``
their training left out), stored beside each model as ``<name>.reference.npz``.

    python scripts/model_reference.py --data KERMANY_ROOT [--model cxr-pneumonia ...]
    python scripts/model_reference.py --model cxr-adult14 --manifest runs/nih-split.csv

(the adult model's split: ``cxr data split NIH_ROOT/labels.csv --source csv --task
nih14 -o runs/nih-split.csv --seed 0``, as its card says; its ``val`` rows are the reference films.)

The service compares what a site sends against it (``/api/v1/monitor``); ``cxr calibrate``
writes a calibrated model's own reference from its sample.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cxrtriage.data import kermany_samples, patient_split  # noqa: E402
from cxrtriage.infer import Engine, bundled_models, load_spec  # noqa: E402
from cxrtriage.monitor import reference_from_predictions, reference_path  # noqa: E402


def validation_films(data: Path, name: str) -> list[str]:
    spec = load_spec(name)
    films = patient_split(kermany_samples(data, "train", spec.split_task), 0.2, spec.training_seed)
    return [s.path for s in films if s.split == "val"]


def manifest_films(manifest: Path) -> list[str]:
    """The ``val`` rows of a split manifest (path,label,patient_id,split)."""
    from cxrtriage.data import read_manifest

    return [s.path for s in read_manifest(manifest) if s.split == "val"]


def write_reference(name: str, data: Path, manifest: Path | None = None) -> Path:
    engine = Engine(name)
    paths = manifest_films(manifest) if manifest else validation_films(data, name)
    preds = engine.predict_files(paths, batch_size=16)
    what = (f"validation films of {name} ({manifest.name}, split val)" if manifest
            else f"validation films of {name} (Kermany train, patient-wise 20%)")
    ref = reference_from_predictions(preds, what, engine.spec.version)
    out = ref.save(reference_path(engine.onnx_path))
    print(f"{name}: {ref.n} films, refused {ref.refused_rate:.3%} -> {out}")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=None, help="Kermany root (train/ with class folders)")
    ap.add_argument("--model", action="append", help="bundled model name (default: the pediatric ones)")
    ap.add_argument("--manifest", type=Path, default=None, help="a split manifest whose val rows are the films")
    args = ap.parse_args()
    if args.manifest is not None:
        for name in args.model or []:
            write_reference(name, args.data, args.manifest)
        return 0
    if args.data is None or not (args.data / "train").is_dir():
        print(f"no Kermany train/ folder under {args.data}", file=sys.stderr)
        return 2
    names = args.model or [n for n in bundled_models() if load_spec(n).population == "pediatric"]
    for name in names:
        write_reference(name, args.data)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
