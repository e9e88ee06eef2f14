"""INT8 quantisation of a pediatric model with ONNX Runtime: test-dev ROC AUC, network latency,
throughput and file size against the float32 graph.

Static quantisation (int8 per-channel weights, uint8 activations calibrated on 256 training
films of the model's own split) of Conv, Gemm and MatMul, in both ONNX Runtime formats (QDQ and
QOperator). The graph must hold float32 weights: build the ensemble without `--half-weights`,
e.g. `cxr ensemble runs/p3-cnn224 runs/p3-probe --task pneumonia --out runs/p3to2-ens32`.
Timings alternate between the graphs, so machine noise hits them alike.

    python bench/quantize.py --model runs/p3to2-ens32/model.onnx --split runs/p3-split.csv
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process
from sklearn.metrics import roc_auc_score

from cxrtriage.data import kermany_samples, load_cached, read_manifest


class _Films(CalibrationDataReader):
    def __init__(self, images: np.ndarray, batch: int = 16):
        self.images, self.batch, self.i = images, batch, 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.i >= len(self.images):
            return None
        self.i += self.batch
        return {"image": self.images[self.i - self.batch:self.i]}


def _session(path: Path) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("../shared/data/kermany-224"))
    ap.add_argument("--model", type=Path, required=True, help="ONNX graph with float32 weights")
    ap.add_argument("--split", type=Path, required=True, help="the model's split.csv (calibration films)")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    train = [s.path for s in read_manifest(args.split) if s.split == "train"]
    pick = [train[i] for i in np.random.default_rng(0).choice(len(train), 256, replace=False)]
    size = _session(args.model).get_inputs()[0].shape[-1]
    calib = np.asarray(load_cached(pick, size, progress=False), dtype=np.float32)[:, None]
    films = kermany_samples(args.data, "test-dev")
    y = np.array([s.label != "normal" for s in films], int)
    x = np.asarray(load_cached([s.path for s in films], size, progress=False), dtype=np.float32)[:, None]

    tmp = Path(tempfile.mkdtemp())
    pre = tmp / "pre.onnx"
    quant_pre_process(str(args.model), str(pre), skip_symbolic_shape=True)
    graphs = {"float32": args.model}
    for fmt in (QuantFormat.QDQ, QuantFormat.QOperator):
        out = tmp / f"int8-{fmt.name}.onnx"
        quantize_static(str(pre), str(out), _Films(calib), quant_format=fmt, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        op_types_to_quantize=["Conv", "Gemm", "MatMul"])
        graphs[f"int8 {fmt.name}"] = out
    sessions = {k: _session(p) for k, p in graphs.items()}
    auc = {k: roc_auc_score(y, np.concatenate([s.run(["probs"], {"image": x[i:i + 32]})[0]
                                               for i in range(0, len(x), 32)])[:, 1]) for k, s in sessions.items()}
    one, batch = x[:1], x[:32]
    single: dict[str, list[float]] = {k: [] for k in sessions}
    bulk: dict[str, list[float]] = {k: [] for k in sessions}
    for _ in range(args.rounds):
        for k, s in sessions.items():
            s.run(None, {"image": one})
            for _ in range(20):
                t = time.perf_counter()
                s.run(None, {"image": one})
                single[k].append((time.perf_counter() - t) * 1000)
            t = time.perf_counter()
            s.run(None, {"image": batch})
            bulk[k].append(32 / (time.perf_counter() - t))
    print(f"{'graph':16} {'test-dev AUC':>12} {'vs float32':>10} {'p50 ms':>7} {'img/s b32':>9} {'MB':>5}")
    for k, p in graphs.items():
        print(f"{k:16} {auc[k]:>12.4f} {auc[k] - auc['float32']:>+10.4f} {np.median(single[k]):>7.2f} "
              f"{np.median(bulk[k]):>9.0f} {p.stat().st_size / 2**20:>5.1f}")
    print("network only (no decode, heatmap upsampling or gate); target: AUC within 0.002 of float32")


if __name__ == "__main__":
    main()
