"""Inference benchmark: the ONNX Runtime engine against torch eager on the same model and images.

Prints single-image latency p50/p95 (decode + preprocess + model + heatmap + quality gate),
batch-32 throughput, their ratios, the model's FLOPs per image, and the achieved GFLOP/s
against this CPU's measured matrix-multiply ceiling (ONNX Runtime MatMul, same threads).

    python bench/infer.py [--images DIR] [--model M] [--checkpoint runs/default/best.pt]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

from cxrtriage.explain.overlay import upsample
from cxrtriage.infer import Engine, bundled_models
from cxrtriage.io import read_radiograph_bytes

ROOT = Path(__file__).resolve().parents[1]


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q))


def matmul_ceiling(threads: int, n: int = 1024, reps: int = 30) -> float:
    """GFLOP/s of an n x n x n float32 MatMul in ONNX Runtime (the CPU's practical ceiling)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    g = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["c"])], "mm",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [n, n]),
         helper.make_tensor_value_info("b", TensorProto.FLOAT, [n, n])],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [n, n])],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    s = ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    a = np.random.rand(n, n).astype(np.float32)
    feeds = {"a": a, "b": a}
    for _ in range(5):
        s.run(None, feeds)
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        s.run(None, feeds)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def torch_graph(spec, checkpoint: Path):
    """The same model in torch eager and its FLOPs per image: from the run's checkpoint when there is
    one, otherwise the same architecture (an ensemble: the same members) with random weights."""
    from cxrtriage.models.archs import build_model, count_flops
    from cxrtriage.models.checkpoint import load_checkpoint
    from cxrtriage.models.ensemble import EnsembleGraph, Member
    from cxrtriage.models.export import ServingGraph

    if (checkpoint / "ensemble.json").exists():  # an ensemble's run folder: its members' weights
        from cxrtriage.train.ensemble import load_ensemble

        graph = load_ensemble(checkpoint)
        return graph, sum(count_flops(m.net, m.image_size) for m in graph.members)
    members = spec.provenance.get("members")
    if members:
        print(f"(torch eager: the {len(members)} members' architectures, random weights)")
        nets = [(build_model(m["arch"], len(spec.classes), m["image_size"]).eval(), m["image_size"]) for m in members]
        graph = EnsembleGraph([Member(n, s, 0.5, 0.25, spec.input_size) for n, s in nets], spec.input_size).eval()
        return graph, sum(count_flops(n, s) for n, s in nets)
    if checkpoint.is_file():
        net, meta = load_checkpoint(checkpoint)
    else:
        print(f"(no checkpoint at {checkpoint}: torch eager uses the same architecture, random weights)")
        net = build_model(spec.arch or "cxrnet", len(spec.classes), spec.input_size).eval()
        meta = {"mean": spec.input.mean or 0.5, "std": spec.input.std or 0.25}
    return ServingGraph(net, meta["mean"], meta["std"]).eval(), count_flops(net, spec.input_size)


def bench_model(model: str | None, blobs: list[bytes], checkpoint: Path, threads: int, ceiling: float) -> None:
    import torch

    engine = Engine(model, threads=threads)
    info = engine.spec
    size, steps = info.input_size, info.input
    print(f"\n== {info.name} {info.version} ({size} px, {len(info.classes)} classes); {len(blobs)} images; "
          f"threads {threads}; gate {'on' if engine.feature_gate is not None else 'off'}")
    graph, flops = torch_graph(info, checkpoint)

    def engine_one(b: bytes) -> None:
        p = engine.predict_bytes(b, "x.jpeg", heatmap=True)
        if p.heatmap is not None:
            upsample(p.heatmap, 224, 224)

    def torch_one(b: bytes) -> None:
        rg = read_radiograph_bytes(b, "x.jpeg")
        x = torch.from_numpy(steps.prepare([rg]).images).float()[:, None]  # the contract's steps, as served
        with torch.inference_mode():
            probs, cam, emb = graph(x)
        upsample(np.maximum(cam[0, 1].numpy(), 0) / max(1e-6, float(cam[0, 1].max())), 224, 224)

    results = {}
    for name, fn in (("onnxruntime engine", engine_one), ("torch eager", torch_one)):
        for b in blobs[:10]:
            fn(b)
        lat = []
        for b in blobs:
            t = time.perf_counter()
            fn(b)
            lat.append((time.perf_counter() - t) * 1000)
        results[name] = {"p50": pct(lat, 50), "p95": pct(lat, 95)}

    # batch-32 throughput: decode + preprocess + model, and model alone
    batches = [blobs[i:i + 32] for i in range(0, len(blobs) - 31, 32)]
    arrays = [steps.prepare([read_radiograph_bytes(b, "x") for b in bt]).images for bt in batches]
    t = time.perf_counter()
    for bt in batches:
        engine.predict_radiographs([read_radiograph_bytes(b, "x") for b in bt], heatmap=True)
    results["onnxruntime engine"]["e2e_ips"] = 32 * len(batches) / (time.perf_counter() - t)
    for a in arrays[:2]:
        engine.run_arrays(a)
    t = time.perf_counter()
    for a in arrays:
        engine.run_arrays(a)
    results["onnxruntime engine"]["model_ips"] = 32 * len(arrays) / (time.perf_counter() - t)
    t = time.perf_counter()
    for bt in batches:
        x = torch.from_numpy(steps.prepare([read_radiograph_bytes(b, "x") for b in bt]).images)
        with torch.inference_mode():
            graph(x.float()[:, None])
    results["torch eager"]["e2e_ips"] = 32 * len(batches) / (time.perf_counter() - t)
    with torch.inference_mode():
        graph(torch.from_numpy(arrays[0]).float()[:, None])
        t = time.perf_counter()
        for a in arrays:
            graph(torch.from_numpy(a).float()[:, None])
    results["torch eager"]["model_ips"] = 32 * len(arrays) / (time.perf_counter() - t)

    print(f"\n{'':<20} {'p50 ms':>8} {'p95 ms':>8} {'batch-32 img/s':>15} {'model-only img/s':>17}")
    for name, r in results.items():
        print(f"{name:<20} {r['p50']:>8.2f} {r['p95']:>8.2f} {r['e2e_ips']:>15.0f} {r['model_ips']:>17.0f}")
    e, tch = results["onnxruntime engine"], results["torch eager"]
    print(f"\nengine vs torch eager: single-image p50 {tch['p50'] / e['p50']:.2f}x faster, "
          f"batch-32 {e['e2e_ips'] / tch['e2e_ips']:.2f}x, model-only {e['model_ips'] / tch['model_ips']:.2f}x")
    achieved = flops * e["model_ips"] / 1e9
    print(f"model: {flops / 1e9:.3f} GFLOP per image; engine at batch 32: {achieved:.1f} GFLOP/s; "
          f"CPU MatMul ceiling (ONNX Runtime, {threads} threads): {ceiling:.1f} GFLOP/s "
          f"-> {achieved / ceiling:.0%} of the ceiling")




def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", default=None, help="folder of radiographs (default: shared set, else samples)")
    ap.add_argument("--n", type=int, default=256, help="images to use")
    ap.add_argument("--model", action="append", help="bundled name, .onnx or run folder (repeatable; "
                    "default: every bundled model)")
    ap.add_argument("--checkpoint", default=str(ROOT / "runs" / "default" / "best.pt"),
                    help="the run (best.pt, or an ensemble's folder) behind a single --model, for torch eager")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    shared = ROOT / ".." / "shared" / "data" / "kermany-224" / "train"
    folder = Path(args.images) if args.images else (shared if shared.is_dir() else ROOT / "cxrtriage/assets/samples")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpeg", ".jpg", ".png"))
    files = (files * (args.n // max(1, len(files)) + 1))[: args.n] if files else []
    blobs = [f.read_bytes() for f in files]
    ceiling = matmul_ceiling(args.threads)
    print(f"{len(blobs)} images from {folder}")
    for model in args.model or list(bundled_models()):
        bench_model(model, blobs, Path(args.checkpoint), args.threads, ceiling)
    print("\ntargets: default model p50 <= 15 ms incl. decode, heatmap and gate; >= 150 img/s at batch 32; "
          ">= 2x torch eager; >= 60% of the MatMul ceiling; every bundled model p50 <= 30 ms (pediatric) / 40 ms")


if __name__ == "__main__":
    main()
