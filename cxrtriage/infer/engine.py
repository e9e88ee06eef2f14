"""The inference engine: ONNX Runtime, numpy, Pillow and pydicom only (no torch).

Used by ``cxr predict``, ``cxr explain``, the HTTP service and the PACS bridge.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from cxrtriage.data.preprocess import to_model_input
from cxrtriage.infer.bundle import ModelInfo, load_info
from cxrtriage.infer.gate import FeatureGate, gate_path, pixel_refusal, view_refusal
from cxrtriage.infer.result import Prediction, priority_for
from cxrtriage.io import ImageReadError, Radiograph, read_radiograph, read_radiograph_bytes


def _normalise_cam(cam: np.ndarray) -> np.ndarray:
    cam = np.maximum(cam, 0.0)
    peak = float(cam.max())
    return (cam / peak if peak > 0 else cam).astype(np.float32)


class Engine:
    """Score radiographs with an exported model. Thread-safe for concurrent ``predict_*`` calls."""

    def __init__(self, model: str | Path | None = None, threads: int | None = None, gate: bool = True,
                 tta: bool = False):
        self.info: ModelInfo = load_info(model)
        self.tta = tta  # average the probabilities over cxrtriage.infer.tta's views (7x the model time)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        threads = threads or int(os.environ.get("CXR_THREADS", 0)) or (os.cpu_count() or 1)
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        self.threads = threads
        self.session = ort.InferenceSession(str(self.info.onnx_path), opts, providers=["CPUExecutionProvider"])
        self.feature_gate: FeatureGate | None = None
        gp = gate_path(self.info.onnx_path)
        if gate and gp.exists() and "embedding" in self.info.outputs:
            self.feature_gate = FeatureGate.load(gp)
        self.use_gate = gate

    @property
    def model_ref(self) -> dict[str, str]:
        return {"name": self.info.name, "version": self.info.version}

    # -- running the network -------------------------------------------------
    def run_arrays(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Run the graph on uint8 (N, S, S) images; returns its named outputs."""
        x = batch.astype(np.float32)[:, None, :, :]
        outs = self.session.run(list(self.info.outputs), {"image": x})
        return dict(zip(self.info.outputs, outs))

    def run_tta(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Like :meth:`run_arrays`, with ``probs`` averaged over the test-time views; the heatmap
        and gate embedding stay those of the image as given."""
        from cxrtriage.infer.tta import tta_views

        views = tta_views(batch)
        out = self.run_arrays(views[0])
        out["probs"] = np.mean([out["probs"]] + [self.run_arrays(v)["probs"] for v in views[1:]], axis=0)
        return out

    # -- public API ----------------------------------------------------------
    def predict_radiographs(self, rgs: Sequence[Radiograph], decode_ms: Sequence[float] | None = None,
                            heatmap: bool = True) -> list[Prediction]:
        """Triage already-decoded radiographs, as one batch."""
        t0 = time.perf_counter()
        preds = [Prediction(source=rg.source, model=self.model_ref, meta=_public_meta(rg.meta)) for rg in rgs]
        todo = []
        for i, rg in enumerate(rgs):
            reason = (view_refusal(rg.meta) or pixel_refusal(rg.pixels)) if self.use_gate else None
            if reason:
                preds[i].priority, preds[i].gate = "refused", {"accepted": False, "reason": reason}
            else:
                todo.append(i)
        if todo:
            size = self.info.input_size
            batch = np.stack([to_model_input(rgs[i], size) for i in todo])
            t1 = time.perf_counter()
            out = self.run_tta(batch) if self.tta else self.run_arrays(batch)
            t2 = time.perf_counter()
            probs = out["probs"]
            dist = self.feature_gate.distance(out["embedding"]) if self.feature_gate is not None else None
            for k, i in enumerate(todo):
                p = preds[i]
                if dist is not None and dist[k] > self.feature_gate.threshold:
                    p.priority = "refused"
                    p.gate = {"accepted": False, "distance": float(dist[k]), "threshold": self.feature_gate.threshold,
                              "reason": "not recognised as a frontal chest radiograph like those the model was "
                                        "trained on (out of distribution)"}
                    continue
                self._fill(p, probs[k], out.get("cam")[k] if heatmap and "cam" in out else None)
                p.gate = {"accepted": True}
                if dist is not None:
                    p.gate.update(distance=float(dist[k]), threshold=self.feature_gate.threshold)
            per = (t2 - t1) * 1000 / len(todo)
            for i in todo:
                preds[i].timings_ms["model"] = round(per, 3)
        total = (time.perf_counter() - t0) * 1000 / max(1, len(rgs))
        for i, p in enumerate(preds):
            if decode_ms is not None:
                p.timings_ms["decode"] = round(decode_ms[i], 3)
            p.timings_ms["total"] = round(total + (decode_ms[i] if decode_ms is not None else 0.0), 3)
        return preds

    def _fill(self, p: Prediction, probs: np.ndarray, cam: np.ndarray | None) -> None:
        info = self.info
        if info.raw.get("kind") == "multilabel":
            return self._fill_multilabel(p, probs, cam)
        score = float(1.0 - probs[0])
        p.probabilities = {c: round(float(v), 6) for c, v in zip(info.classes, probs)}
        p.score = round(score, 6)
        p.threshold = info.threshold
        if score >= info.threshold:
            p.label = info.classes[1 + int(np.argmax(probs[1:]))] if len(info.classes) > 2 else info.classes[1]
        else:
            p.label = info.classes[0]
        p.priority = priority_for(score, info.threshold, info.threshold_high)
        if cam is not None:
            abnormal = 1 + int(np.argmax(probs[1:]))
            p.heatmap = _normalise_cam(cam[abnormal])

    def _fill_multilabel(self, p: Prediction, probs: np.ndarray, cam: np.ndarray | None) -> None:
        """Multi-label model: a probability per finding; score = the highest; label = the findings
        at or above their own thresholds joined by '|' ("no finding" when none)."""
        info = self.info
        thresholds = info.raw.get("label_thresholds") or {}
        score = float(np.max(probs)) if len(probs) else 0.0
        p.probabilities = {c: round(float(v), 6) for c, v in zip(info.classes, probs)}
        p.score = round(score, 6)
        p.threshold = info.threshold
        flagged = [c for c, v in zip(info.classes, probs)
                   if v >= (thresholds.get(c) if thresholds.get(c) is not None else 0.5)]
        p.label = "|".join(flagged) if flagged else "no finding"
        p.priority = priority_for(score, info.threshold, info.threshold_high)
        if cam is not None:
            p.heatmap = _normalise_cam(cam[int(np.argmax(probs))])

    def predict_bytes(self, data: bytes, name: str = "<upload>", heatmap: bool = True) -> Prediction:
        """Decode and triage one file's bytes; unreadable input gives a Prediction with ``error``."""
        t0 = time.perf_counter()
        try:
            rg = read_radiograph_bytes(data, name)
        except ImageReadError as exc:
            return Prediction(source=name, model=self.model_ref, error=str(exc), error_type=type(exc).__name__)
        return self.predict_radiographs([rg], [(time.perf_counter() - t0) * 1000], heatmap=heatmap)[0]

    def predict_files(self, paths: Iterable[str | Path], batch_size: int = 32, heatmap: bool = False,
                      progress: bool = False) -> list[Prediction]:
        """Triage many files in batches; a bad file becomes a Prediction with ``error`` set."""
        paths = [str(p) for p in paths]
        results: list[Prediction] = []
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(paths), desc="triage", unit="img")
        for s in range(0, len(paths), batch_size):
            chunk = paths[s:s + batch_size]
            rgs, times, slots = [], [], []
            out: list[Prediction | None] = [None] * len(chunk)
            for j, path in enumerate(chunk):
                t0 = time.perf_counter()
                try:
                    rgs.append(read_radiograph(path))
                    times.append((time.perf_counter() - t0) * 1000)
                    slots.append(j)
                except (ImageReadError, OSError) as exc:
                    out[j] = Prediction(source=path, model=self.model_ref, error=str(exc),
                                        error_type=type(exc).__name__)
            for j, p in zip(slots, self.predict_radiographs(rgs, times, heatmap=heatmap) if rgs else []):
                out[j] = p
            results.extend(out)  # type: ignore[arg-type]
            if bar:
                bar.update(len(chunk))
        if bar:
            bar.close()
        return results


def _public_meta(meta: dict) -> dict:
    """Source facts safe to show and log (no patient identifiers)."""
    keep = ("format", "bits", "photometric", "modality", "view_position", "width", "height", "sop_instance_uid")
    return {k: meta[k] for k in keep if meta.get(k) is not None}
