"""Build the three-class COVID-19 model (``cxr-covid3``'s recipe) from the multi-source films.

A frozen ImageNet trunk (EfficientNet-Lite0 at 320 px, CLAHE before it) and one multinomial
logistic regression on its pooled features, fitted on a patient-wise training split with a fixed
L2 strength (chosen in ``bench/covid.py`` on held-out sources, not on validation AUC, which the
sources' shortcuts inflate). The run folder has the layout of any probe run (config.json,
split.csv, best.pt), so the usual export writes the graph with its heatmap (``cam``), the
sidecar and the quality gate; the sidecar is named ``cxr-covid3`` and states no population, so
routing by age never picks it: it scores a film only when asked (``--model``).

    python -m cxrtriage.train.covid3 --data DATA_ROOT --out runs/covid3

(``DATA_ROOT`` holds ``covid-multisource/``, ``covid-hannover/`` and ``nih-cxr14/``.)
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from cxrtriage.contract import ModelSpec
from cxrtriage.data.covid_sources import Film, covid3_films, describe
from cxrtriage.data.samples import write_manifest
from cxrtriage.data.split import carve_validation
from cxrtriage.models.archs import build_model
from cxrtriage.models.weights import init_weights
from cxrtriage.train.config import TrainConfig
from cxrtriage.train.covid_checks import CLASSES, SOURCE_HANDLING, fit_head, source_weights
from cxrtriage.train.dataset import of_split, pixel_stats, split_images
from cxrtriage.train.export import export_run
from cxrtriage.train.probe import FeatureExtractor, fold_head
from cxrtriage.train.runtime import hardware_name, seed_everything

NAME = "cxr-covid3"
DEFAULT_C = 0.003


def build_covid3(films: list[Film], out: str | Path, arch: str = "lite0_probe", size: int = 320,
                 intensity: str = "clahe", c: float = DEFAULT_C, sources: str = "balanced", seed: int = 0,
                 cache_dir: str | None = None, progress: bool = False) -> Path:
    """Fit the recipe on ``films`` (patient-wise 80/20 train/validation), export it to ``<out>/model.onnx``
    named :data:`NAME`; returns the ONNX path."""
    t0 = time.time()
    if sources not in SOURCE_HANDLING:
        raise ValueError(f"sources must be one of {SOURCE_HANDLING}, not {sources!r}")
    labels = {f.label for f in films}
    if labels != set(CLASSES):
        raise ValueError(f"covid3 needs films of every class {list(CLASSES)}; these have {sorted(labels)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = TrainConfig(out_dir=str(out), task="covid3", arch=arch, image_size=size, intensity=intensity, seed=seed,
                      cache_dir=cache_dir, augment=False, probe_views=0,
                      extra={"recipe": "cxrtriage.train.covid3", "C": c, "sources": sources})
    cfg.save(out / "config.json")
    seed_everything(seed)
    by_path = {f.path: f for f in films}
    samples = carve_validation([f.sample() for f in films], "covid3", cfg.val_fraction, seed)
    write_manifest(samples, out / "split.csv")
    model = build_model(arch, len(CLASSES), size)
    init_weights(model, arch, pretrained=True)
    x_train, x_val = split_images(samples, size, cache_dir, progress=progress, intensity=intensity)
    train_films = [by_path[s.path] for s in of_split(samples, "train")]
    y = np.array([CLASSES.index(f.label) for f in train_films])
    mean, std = pixel_stats(x_train)
    f_train = FeatureExtractor(model.eval(), mean, std, size, out)(x_train, desc="features", progress=progress)
    weights = source_weights(train_films, y) if sources != "as is" else None
    head = fit_head(f_train, y, c, weights, train_films if sources == "nulled" else None)
    fold_head(model, head.folded(), head.scaler, len(CLASSES))
    state = {"model": model.state_dict(), "arch": arch, "classes": CLASSES, "image_size": size, "mean": mean,
             "std": std, "task": "covid3", "epoch": 0, "config": asdict(cfg),
             "hardware": hardware_name(torch.device("cpu")), "torch": torch.__version__,
             "probe": {"C": c, "views": 1, "n_features": int(f_train.shape[1]), "sources": sources}}
    torch.save(state, out / "best.pt")
    torch.save({**state, "history": [], "elapsed": time.time() - t0}, out / "last.pt")
    onnx = export_run(out, stop_reason="linear probe (fixed C)", progress=progress)
    spec = ModelSpec.load(onnx)
    prov = dict(spec.provenance)
    prov.pop("population", None)
    prov["data"] = {"films": describe(films), "sources": sorted({f.source for f in films}),
                    "n_val": int(len(x_val))}
    replace(spec, name=NAME, provenance=prov).save(onnx)
    return onnx


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True,
                    help="the folder holding covid-multisource/, covid-hannover/ and nih-cxr14/")
    ap.add_argument("--out", type=Path, default=Path("runs/covid3"))
    ap.add_argument("--arch", default="lite0_probe")
    ap.add_argument("--size", type=int, default=320)
    ap.add_argument("--intensity", default="clahe")
    ap.add_argument("--C", type=float, default=DEFAULT_C)
    ap.add_argument("--sources", default="balanced", choices=SOURCE_HANDLING)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    films = covid3_films(args.data)
    onnx = build_covid3(films, args.out, args.arch, args.size, args.intensity, args.C,
                        args.sources, args.seed, progress=True)
    print(f"{NAME}: {onnx} ({describe(films)})")


if __name__ == "__main__":
    main()
