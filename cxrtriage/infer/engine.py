"""The inference engine: one exported model on ONNX Runtime, numpy, Pillow and pydicom only (no torch).

Its ``predict_radiographs`` is the gate -> network -> decision step of the one pipeline
(:mod:`cxrtriage.infer.pipeline`), used by ``cxr predict``, the Python API, the HTTP service, the
PACS bridge and bulk triage. The film's preparation (resize, border, intensity) and the decision
are the contract's (``spec.input.prepare``, ``spec.decide``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from cxrtriage.contract import ModelSpec, Prediction, Prepared, Priority
from cxrtriage.infer.bundle import load_spec, resolve_model
from cxrtriage.infer.domain import DomainCheck, domain_path
from cxrtriage.infer.gate import FeatureGate, gate_path, pixel_refusal, view_refusal
from cxrtriage.infer.pipeline import Predictor
from cxrtriage.io import Radiograph

OOD_REASON = ("not recognised as a frontal chest radiograph like those the model was trained on "
              "(out of distribution)")


def _normalise_cam(cam: np.ndarray) -> np.ndarray:
    cam = np.maximum(cam, 0.0)
    peak = float(cam.max())
    return (cam / peak if peak > 0 else cam).astype(np.float32)


class Engine(Predictor):
    """Score radiographs with an exported model. Thread-safe for concurrent ``predict*`` calls.

    ``model``: a bundled model's name, an ``.onnx`` path, a run folder, or None for the default."""

    def __init__(self, model: str | Path | None = None, threads: int | None = None, gate: bool = True,
                 tta: bool = False):
        self.onnx_path: Path = resolve_model(model)
        self.spec: ModelSpec = load_spec(self.onnx_path)
        self.tta = tta  # average the probabilities over cxrtriage.infer.tta's views (7x the model time)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        threads = threads or int(os.environ.get("CXR_THREADS", 0)) or (os.cpu_count() or 1)
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        # CXR_ORT_SPINNING=0: idle intra-op threads sleep instead of spinning. The service sets it (its
        # request threads, decoders and a second model share the cores; spinning threads took them:
        # half the throughput on a busy machine); alone on a quiet machine spinning saves about a
        # millisecond per film, so it stays ONNX Runtime's default elsewhere.
        if os.environ.get("CXR_ORT_SPINNING", "1") == "0":
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.threads = threads
        self.session = ort.InferenceSession(str(self.onnx_path), opts, providers=["CPUExecutionProvider"])
        self.feature_gate: FeatureGate | None = None
        gp = gate_path(self.onnx_path)
        if gate and gp.exists() and "embedding" in self.spec.outputs:
            self.feature_gate = FeatureGate.load(gp)
        dp = domain_path(self.onnx_path)
        self.domain: DomainCheck | None = (DomainCheck.load(dp) if gate and dp.exists()
                                           and "embedding" in self.spec.outputs else None)
        self.use_gate = gate

    @property
    def model_ref(self) -> dict[str, str]:
        return self.spec.ref

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self.spec.classes)

    def describe(self) -> dict:
        """What a status page shows of the model."""
        s = self.spec
        return {"name": s.name, "version": s.version, "classes": list(s.classes), "threshold": s.threshold,
                "threshold_high": s.threshold_high, "input_size": s.input_size, "population": s.population}

    # -- running the network -------------------------------------------------
    def run_arrays(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Run the graph on uint8 (N, S, S) images; returns its named outputs."""
        x = batch.astype(np.float32)[:, None, :, :]
        outs = self.session.run(list(self.spec.outputs), {"image": x})
        return dict(zip(self.spec.outputs, outs))

    def run_tta(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Like :meth:`run_arrays`, with ``probs`` averaged over the test-time views; the heatmap
        and gate embedding stay those of the image as given."""
        from cxrtriage.infer.tta import tta_views

        views = tta_views(batch)
        out = self.run_arrays(views[0])
        out["probs"] = np.mean([out["probs"]] + [self.run_arrays(v)["probs"] for v in views[1:]], axis=0)
        return out

    def predict_radiographs(self, rgs: Sequence[Radiograph], decode_ms: Sequence[float] | None = None,
                            heatmap: bool = True) -> list[Prediction]:
        """Gate and score already-decoded radiographs, as one batch."""
        t0 = time.perf_counter()
        preds = [Prediction(source=rg.source, model=self.model_ref, meta=_public_meta(rg.meta)) for rg in rgs]
        todo = []
        for i, rg in enumerate(rgs):
            reason = (view_refusal(rg.meta) or pixel_refusal(rg.pixels)) if self.use_gate else None
            if reason:
                preds[i].priority, preds[i].gate = Priority.REFUSED, {"accepted": False, "reason": reason}
            else:
                todo.append(i)
        if todo:
            prepared = self.prepare([rgs[i] for i in todo])
            t1 = time.perf_counter()
            out = self.run_tta(prepared.images) if self.tta else self.run_arrays(prepared.images)
            if "cam" in out:  # maps of trimmed films back onto the whole film
                out["cam"] = prepared.restore(out["cam"])
            out["probs"] = self.spec.calibrated(out["probs"])
            per = (time.perf_counter() - t1) * 1000 / len(todo)
            self._judge([preds[i] for i in todo], out, heatmap)
            for i in todo:
                preds[i].timings_ms["model"] = round(per, 3)
        for p, rg in zip(preds, rgs):  # a patient outside the model's population: say so, scored or not
            warning = self.spec.age_warning(rg.meta.get("age_years"))
            if warning:
                p.gate["warning"] = warning
        total = (time.perf_counter() - t0) * 1000 / max(1, len(rgs))
        for i, p in enumerate(preds):
            dec = decode_ms[i] if decode_ms is not None else None
            if dec is not None:
                p.timings_ms["decode"] = round(dec, 3)
            p.timings_ms["total"] = round(total + (dec or 0.0), 3)
        return preds

    def prepare(self, rgs: Sequence[Radiograph | np.ndarray]) -> Prepared:
        """The graph's input batch for ``rgs`` (the contract's resize, border and intensity steps)."""
        return self.spec.input.prepare(rgs)

    def _judge(self, preds: list[Prediction], out: dict[str, np.ndarray], heatmap: bool) -> None:
        """The gate's distance test, then the model's decision, for each scored film."""
        gate = self.feature_gate
        dist = gate.distance(out["embedding"]) if gate is not None else None
        domain = self.domain
        other = domain.p_other(out["embedding"]) if domain is not None else None
        for k, p in enumerate(preds):
            measured = {} if gate is None or dist is None else {"distance": float(dist[k]),
                                                                 "threshold": gate.threshold}
            if measured and measured["distance"] > measured["threshold"]:
                p.priority = Priority.REFUSED
                p.gate = {"accepted": False, **measured, "reason": OOD_REASON}
                continue
            self._fill(p, out["probs"][k], out["cam"][k] if heatmap and "cam" in out else None)
            p.gate = {"accepted": True, **measured}
            if domain is not None and other is not None:  # how much it looks like the other population
                p.gate[f"p_{domain.other}"] = round(float(other[k]), 6)  # (the router reads it)

    def _fill(self, p: Prediction, probs: np.ndarray, cam: np.ndarray | None) -> None:
        call = self.spec.decide(probs)
        p.probabilities = {c: round(float(v), 6) for c, v in zip(self.spec.classes, probs)}
        p.label, p.score, p.threshold, p.priority = call.label, round(call.score, 6), call.threshold, call.priority
        p.finding, p.rule = call.finding, call.rule
        if cam is not None:
            p.heatmap = _normalise_cam(cam[call.finding_index])


def _public_meta(meta: dict) -> dict:
    """Source facts safe to show and log (no patient identifiers)."""
    keep = ("format", "bits", "photometric", "modality", "view_position", "width", "height", "sop_instance_uid")
    return {k: meta[k] for k in keep if meta.get(k) is not None}
