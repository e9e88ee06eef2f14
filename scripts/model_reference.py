"""Write the drift watch's reference of the bundled pediatric models: the triage scores and
quality-gate distances of their own validation films (the patient-wise 20% of Kermany ``train/``
their training left out), stored beside each model as ``<name>.reference.npz``.

    python scripts/model_reference.py [--data ../shared/data/kermany-224] [--model cxr-pneumonia ...]

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


def write_reference(name: str, data: Path) -> Path:
    engine = Engine(name)
    paths = validation_films(data, name)
    preds = engine.predict_files(paths, batch_size=64)
    ref = reference_from_predictions(preds, f"validation films of {name} (Kermany train, patient-wise 20%)",
                                     engine.spec.version)
    out = ref.save(reference_path(engine.onnx_path))
    print(f"{name}: {ref.n} films, refused {ref.refused_rate:.3%} -> {out}")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "kermany-224")
    ap.add_argument("--model", action="append", help="bundled model name (default: the pediatric ones)")
    args = ap.parse_args()
    if not (args.data / "train").is_dir():
        print(f"no Kermany train/ folder under {args.data}", file=sys.stderr)
        return 2
    names = args.model or [n for n in bundled_models() if load_spec(n).population == "pediatric"]
    for name in names:
        write_reference(name, args.data)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
