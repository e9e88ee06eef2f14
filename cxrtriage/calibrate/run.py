"""``cxr calibrate``: score a site's labelled sample with a model, fit a temperature (and, for a
single-label model, one offset per class) and the operating point(s) on it, and write the
recalibrated model (same graph, new sidecar) with a report. With ``head``, the sample also fits a
site head (:mod:`cxrtriage.calibrate.head`) and the graph is a new one."""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from cxrtriage.about import DISCLAIMER
from cxrtriage.calibrate.head import (
    DEFAULT_L2,
    SiteHead,
    cross_fitted,
    fit_site_head,
    network_engine,
    without_site_head,
    write_graph_with_head,
)
from cxrtriage.calibrate.report import write_calibration_report
from cxrtriage.calibrate.sample import MIN_PER_CLASS, SampleError, counts_of, read_sample, sample_hash
from cxrtriage.calibrate.temperature import fit_temperature, fit_temperature_bias
from cxrtriage.contract import Kind, ModelSpec, Prediction, apply_temperature, triage_target
from cxrtriage.data import get_task
from cxrtriage.evaluate.metrics import binary_metrics, jsonable
from cxrtriage.evaluate.thresholds import operating_points
from cxrtriage.infer import Engine, decode_each, load_engine
from cxrtriage.infer.gate import gate_path
from cxrtriage.monitor.reference import reference_from_scores, reference_path


class CalibrationError(ValueError):
    """The sample or the model cannot be calibrated; the message says why."""


def _link_or_copy(src: Path, dst: Path) -> None:
    if dst.exists() and dst.samefile(src):
        return
    dst.unlink(missing_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _run_sample(engines: list[Engine], samples: list, batch_size: int
                ) -> tuple[list, list[dict[str, np.ndarray]], list[dict[str, str]]]:
    """The sample's readable films, each engine's graph outputs on them (decoded and prepared
    once; the engines share their input steps), and the films that could not be read, with why."""
    kept, outs, unreadable = [], [[] for _ in engines], []
    for i in range(0, len(samples), batch_size):
        chunk = samples[i:i + batch_size]
        rgs = []
        for s, (d, _) in zip(chunk, decode_each([s.path for s in chunk], model=engines[0].model_ref)):
            if isinstance(d, Prediction):
                unreadable.append({"path": s.path, "error": str(d.error)})
            else:
                rgs.append(d)
                kept.append(s)
        if rgs:
            batch = engines[0].prepare(rgs).images
            for out, engine in zip(outs, engines):
                out.append(engine.run_arrays(batch))
    return kept, [{k: np.concatenate([o[k] for o in out]) for k in out[0]} if out else {} for out in outs], unreadable


def _score_sample(engines: list[Engine], sample: Path, batch_size: int) -> tuple[list[dict], np.ndarray, dict, list]:
    """Each engine's raw graph outputs (probabilities before any temperature) and the labels of
    the sample's readable films, the sample's facts, and those films."""
    task = get_task(engines[0].spec.task)
    try:
        samples = read_sample(sample, task.name)
    except SampleError as exc:
        raise CalibrationError(str(exc)) from None
    kept, outs, unreadable = _run_sample(engines, samples, batch_size)
    counts = counts_of(kept, task.classes)
    short = {c: n for c, n in counts.items() if n < MIN_PER_CLASS}
    if short:
        raise CalibrationError(f"after leaving out {len(samples) - len(kept)} unreadable film(s), too few "
                               f"films of {short} remain (at least {MIN_PER_CLASS} each)")
    if engines[0].spec.kind is Kind.MULTILABEL:
        y = np.stack([task.multi_hot(s.label) for s in kept]).astype(int)
    else:
        y = np.array([task.index(s.label) for s in kept])
    facts = {"films_per_class": counts, "films": len(kept), "unreadable": len(unreadable),
             "unreadable_films": unreadable, "sample_sha256": sample_hash(kept), "sample": str(sample)}
    return outs, y, facts, kept


def _check_head(engine: Engine, out: Path) -> None:
    """Refuse, before any work, a site head that cannot be fitted or written."""
    spec = engine.spec
    if spec.kind is not Kind.SINGLE:
        raise CalibrationError(f"a site head is fitted for single-label models only; {spec.name} is {spec.kind.value}")
    if "embedding" not in spec.outputs:
        raise CalibrationError(f"{spec.name} has no embedding output to fit a site head on")
    target = out / engine.onnx_path.name
    if target.exists() and target.samefile(engine.onnx_path):
        raise CalibrationError(f"--out {out} holds the model itself; a site head writes a new graph, so it needs "
                               "another folder")


def _fit_head(network: dict[str, np.ndarray], kept: list, y: np.ndarray, l2: float,
              seed: int) -> tuple[SiteHead, np.ndarray, dict]:
    """The site head fitted on all films (the network's own outputs on them), the films'
    cross-fitted probabilities, and its facts."""
    probs, emb = network["probs"], network["embedding"]
    groups = [s.patient_id or s.path for s in kept]
    folds = min(5, len(set(groups)))
    oof = cross_fitted(probs, emb, y, y, groups, l2=l2, folds=folds, seed=seed)
    head = fit_site_head(probs, emb, y, l2)
    return head, oof, {"l2": l2, "folds": folds, "patients": len(set(groups)), **head.summary()}


def _save_reference(out: dict[str, np.ndarray], scores: np.ndarray, onnx: Path, version: str, facts: dict) -> None:
    """The calibrated model's reference for the drift watch: the sample's calibrated scores and
    gate distances, beside the model."""
    ref = reference_from_scores(scores, out.get("embedding"), gate_path(onnx),
                                f"calibration sample ({facts['films']} films)", version)
    ref.save(reference_path(onnx))


def calibrate(model: str | Path | None, sample: str | Path, out: str | Path, target_sensitivity: float = 0.95,
              n_boot: int = 1000, seed: int = 0, batch_size: int = 32, class_bias: bool = True,
              head: bool = False, head_l2: float = DEFAULT_L2) -> dict[str, Any]:
    """Recalibrate ``model`` on ``sample``; writes ``out/<model>.onnx`` (the same graph), its new
    sidecar and gate, ``calibration.json`` and ``calibration.html``. Returns the summary.

    ``class_bias`` (single-label models): also fit one log-odds offset per class, which takes the
    sample's class mix as the site's; turn it off for a sample whose mix was chosen (e.g. balanced).
    ``head``: also fit a site head on the network's embedding (``head_l2`` its penalty); the
    temperature, offsets and operating point are then fitted on cross-fitted scores (each film's
    from a head fitted without its patient), and the graph written is the model's with the head."""
    if not 0.0 < target_sensitivity <= 1.0:
        raise CalibrationError(f"target sensitivity must be in (0, 1], got {target_sensitivity}")
    engine = load_engine(model, gate=False)
    before_spec: ModelSpec = engine.spec
    if head:
        _check_head(engine, Path(out))
    # a new site's head replaces the one the model has: it is fitted on the network's own outputs
    network = network_engine(engine) if head else engine
    outs, y, facts, kept = _score_sample([engine] if network is engine else [engine, network], Path(sample),
                                         batch_size)
    graph_raw = outs[0]["probs"]  # the graph's own probabilities, before the model's temperature
    raw, site_head = graph_raw, None
    if head:
        if network is not engine:
            facts["site_head_replaced"] = before_spec.version
        site_head, raw, facts["site_head"] = _fit_head(outs[-1], kept, y, head_l2, seed)
    kind = before_spec.kind
    pos = triage_target(y, kind)
    bias: tuple[float, ...] | None = None
    if class_bias and kind is Kind.SINGLE:
        temperature, bias = fit_temperature_bias(raw, y)
    else:
        temperature = fit_temperature(raw, y, kind)
    probs_before, probs_after = before_spec.calibrated(graph_raw), apply_temperature(raw, temperature, kind, bias)
    before, after = before_spec.triage_score(probs_before), before_spec.triage_score(probs_after)
    thr, thr_high = operating_points(pos, after, target_sensitivity=target_sensitivity)
    m_before = binary_metrics(pos, before, before_spec.threshold, n_boot=n_boot, seed=seed)
    m_after = binary_metrics(pos, after, thr, n_boot=n_boot, seed=seed)
    date = _dt.date.today().isoformat()
    accuracy = None
    if kind is Kind.SINGLE and len(before_spec.classes) > 2:  # arg-max calls, as `cxr evaluate` scores them
        accuracy = {"before": float((probs_before.argmax(1) == y).mean()),
                    "after": float((probs_after.argmax(1) == y).mean())}
    expected = {k: {"value": m_after[k], "ci95": m_after["ci"][k]} for k in ("sensitivity", "specificity")}
    calibration = {**facts, "date": date, "target_sensitivity": target_sensitivity, "temperature": temperature,
                   "class_bias": None if bias is None else dict(zip(before_spec.classes, bias)),
                   "accuracy": accuracy,
                   "expected": expected, "previous": {"version": before_spec.version,
                                                      "threshold": before_spec.threshold,
                                                      "threshold_high": before_spec.threshold_high,
                                                      "temperature": before_spec.temperature,
                                                      "class_bias": before_spec.class_bias}}
    new = replace(before_spec.with_decision(
        threshold=float(thr), threshold_high=float(thr_high),
        method=f"sensitivity>={target_sensitivity} on a site sample (cxr calibrate, {date})"),
        temperature=temperature, class_bias=bias, version=f"{before_spec.version}-cal{facts['sample_sha256'][:8]}",
    ).with_provenance(calibration=jsonable(calibration))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    onnx = out / engine.onnx_path.name
    if site_head is None:
        _link_or_copy(engine.onnx_path, onnx)
    else:
        onnx.unlink(missing_ok=True)  # it may be a link to another graph: never write through it
        sha = write_graph_with_head(without_site_head(engine.onnx_path), onnx, site_head)
        new = replace(new, sha256=sha, version="-".join(
            [sha[:12], *before_spec.input.steps, "head", f"cal{facts['sample_sha256'][:8]}"]))
    if gate_path(engine.onnx_path).exists():
        _link_or_copy(gate_path(engine.onnx_path), gate_path(onnx))
    new.save(onnx)
    _save_reference(outs[0], after, onnx, new.version, facts)
    summary = jsonable({"model": new.name, "version": new.version, "onnx": str(onnx), **calibration,
                        "before": m_before, "after": m_after, "disclaimer": DISCLAIMER})
    (out / "calibration.json").write_text(json.dumps(summary, indent=2, allow_nan=False))
    write_calibration_report(out, summary, pos, before, after, before_spec.threshold, thr)
    return summary
