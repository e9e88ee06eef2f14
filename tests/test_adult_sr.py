"""What a reader sees from an adult film: per-finding thresholds for a stated specificity, and a
TID 1500 SR with the "any finding" group and one measurement group per finding."""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest

for _dep in ("highdicom", "pynetdicom"):  # the "pacs" extra
    pytest.importorskip(_dep)
import highdicom as hd  # noqa: E402

pytest.register_assert_rewrite("pacs_fixtures")
from pacs_fixtures import free_port, make_dicom  # noqa: E402

pytest_plugins = ["pacs_fixtures"]

NIH = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "nih-cxr14"
needs_nih = pytest.mark.skipif(not (NIH / "labels.csv").is_file(),
                               reason="needs ../shared/data/nih-cxr14 (NIH films with labels)")


def _roundtrip(ds: pydicom.Dataset) -> pydicom.Dataset:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return pydicom.dcmread(io.BytesIO(buf.getvalue()))


@pytest.fixture(scope="module")
def adult():
    from cxrtriage.infer import Engine

    return Engine("cxr-adult14", threads=1, gate=False)


def _prediction(spec, probs: np.ndarray):
    """A result as the engine makes it, from chosen probabilities (decided by the contract)."""
    from cxrtriage.contract import Prediction

    call = spec.decide(probs)
    return Prediction(source="film.dcm", label=call.label, score=call.score, threshold=call.threshold,
                      priority=call.priority, probabilities=dict(zip(spec.classes, map(float, probs))),
                      model=spec.ref, finding=call.finding, rule=call.rule)


def check_sr(sr: pydicom.Dataset, pred, spec, src_uid: str) -> None:
    """The SR says what the result says, group by group (highdicom and our reader)."""
    from cxrtriage.pacs.results import FINDING_CODES, read_result_sr

    sr = _roundtrip(sr)
    report = hd.sr.MeasurementReport.from_sequence(hd.sr.Comprehensive3DSR.from_dataset(sr).content)
    # the triage group carries a SCOORD point (a planar ROI group) when the result had a heatmap
    planar, image = report.get_planar_roi_measurement_groups(), report.get_image_measurement_groups()
    assert len(planar) <= 1
    triage, per_finding = (planar[0], image) if planar else (image[0], image[1:])
    assert len(per_finding) == len(spec.classes)
    assert triage.tracking_identifier == "AI triage: any finding"
    assert triage.finding_type.meaning == "Clinical finding"
    for g, c in zip(per_finding, spec.classes):
        assert g.tracking_identifier == f"AI finding: {c}"
        assert g.finding_type == FINDING_CODES[c]
        assert g.source_images[0].referenced_sop_instance_uid == src_uid
    s = read_result_sr(sr)
    listed = set(pred.label.split("|")) if pred.flagged else set()
    assert s.triage == "any finding" and s.label == pred.label and s.priority == pred.priority
    assert s.probability == pytest.approx(pred.score, abs=1e-6)
    assert s.threshold == pytest.approx(pred.threshold, abs=1e-6)
    assert s.finding == ("present" if listed else "absent")
    assert s.lead_finding == pred.finding and list(s.findings) == list(spec.classes)
    for c, f in s.findings.items():
        assert f.code == (FINDING_CODES[c].value, FINDING_CODES[c].scheme_designator)
        assert f.probability == pytest.approx(pred.probabilities[c], abs=1e-6)
        assert f.threshold == pytest.approx(spec.decision.label_threshold(c), abs=1e-9)
        assert f.finding == ("present" if c in listed else "absent"), c
        assert (f.finding == "present") == (f.probability >= f.threshold), c  # the contract's one comparison


def test_bundled_adult_thresholds_are_chosen_for_a_stated_specificity(adult):
    spec = adult.spec
    t = spec.decision.label_thresholds
    assert t is not None and set(t) == set(spec.classes) and all(v is not None for v in t.values())
    assert "specificity >= 0.9" in spec.provenance["label_thresholds_method"]


def test_specificity_threshold_keeps_the_stated_share_of_negatives_silent():
    from cxrtriage.evaluate.multilabel import specificity_threshold, specificity_thresholds

    neg = np.linspace(0.0, 0.99, 100)
    t = specificity_threshold(neg, 0.9)
    assert (neg >= t).sum() == 10 and (neg >= t - 0.011).sum() == 11  # the lowest such threshold
    assert (np.r_[neg, 0.5, 0.5] >= specificity_threshold(np.r_[neg, 0.5, 0.5], 0.95)).mean() <= 0.05
    ties = np.array([0.7] * 30 + [0.1] * 70)
    assert specificity_threshold(ties, 0.9) > 0.7  # a tie is never split: all 30 or none
    y = np.array([[0.0, np.nan]] * 25 + [[1.0, 1.0]] * 5)
    p = np.tile(np.linspace(0, 1, 30)[:, None], (1, 2))
    out = specificity_thresholds(y, p, ["a", "b"], 0.9)
    assert out["a"] is not None and out["b"] is None  # b: no known negatives
    with pytest.raises(ValueError, match="specificity"):
        specificity_threshold(neg, 1.0)
    with pytest.raises(ValueError, match="non-empty"):
        specificity_threshold(np.array([]), 0.9)


@pytest.mark.parametrize("case", ["no finding", "three findings"])
def test_multilabel_sr_has_one_group_per_finding(adult, cxr_pixels, case):
    from cxrtriage.pacs.results import build_sr

    spec = adult.spec
    t = np.array([spec.decision.label_threshold(c) for c in spec.classes])
    probs = t * 0.8
    if case == "three findings":
        for c, k in (("Effusion", 1.3), ("Edema", 1.1), ("Nodule", 1.05)):
            probs[spec.classes.index(c)] = min(0.999, t[spec.classes.index(c)] * k)
    pred = _prediction(spec, probs)
    assert pred.label == ("no finding" if case == "no finding" else "Effusion|Edema|Nodule")
    src = pydicom.dcmread(io.BytesIO(make_dicom(cxr_pixels[0][1], "dx")))
    check_sr(build_sr(src, pred), pred, spec, str(src.SOPInstanceUID))


def test_single_label_sr_is_one_pneumonia_group(triage_engine, cxr_pixels):
    from cxrtriage.pacs.results import build_sr, read_result_sr

    data = make_dicom(cxr_pixels[0][1], "dx")
    pred = triage_engine.predict_bytes(data, heatmap=False)
    sr = _roundtrip(build_sr(pydicom.dcmread(io.BytesIO(data)), pred))
    groups = hd.sr.MeasurementReport.from_sequence(
        hd.sr.Comprehensive3DSR.from_dataset(sr).content).get_image_measurement_groups()
    assert [g.tracking_identifier for g in groups] == ["AI triage: pneumonia"]
    s = read_result_sr(sr)
    assert s.triage == "pneumonia" and s.findings == {} and s.probability == pytest.approx(pred.score, abs=1e-6)


def _nih_films(label_test, n: int) -> list[Path]:
    """Validation films (patients the bundled model never saw: seed-0 patient-wise split) matching ``label_test``."""
    from cxrtriage.data import get_task
    from cxrtriage.data.generic import csv_samples
    from cxrtriage.data.split import task_split

    task = get_task("nih14")
    val = [s for s in task_split(csv_samples(NIH / "labels.csv", task), task, seed=0) if s.split == "val"]
    return [Path(s.path) for s in val if label_test(s.label)][:n]


@needs_nih
def test_nih_films_through_pacs_listen(adult, tmp_path):
    """A 'No Finding' NIH film and a multi-finding one, pushed by C-STORE to ``cxr pacs listen``;
    the SRs it writes are read back group by group."""
    from pynetdicom import AE

    from cxrtriage.io import read_radiograph
    from cxrtriage.pacs.listen import listen

    normal = _nih_films(lambda lab: lab == "No Finding", 12)
    multi = _nih_films(lambda lab: lab.count("|") >= 1, 12)
    preds = {p: adult.predict(str(p), heatmap=False) for p in normal + multi}
    silent = [p for p in normal if preds[p].label == "no finding"]
    several = [p for p in multi if preds[p].label.count("|") >= 1]
    assert silent, "no NIH 'No Finding' film of the 12 lists nothing"
    assert several, "no multi-finding NIH film of the 12 lists two findings or more"
    chosen = [silent[0], several[0]]
    sent = [pydicom.dcmread(io.BytesIO(make_dicom((read_radiograph(p).pixels * 255).round().astype(np.uint8), "dx")))
            for p in chosen]
    port = free_port()
    lst = listen(port, "CXRTRIAGE", engine=adult, out_dir=tmp_path / "out", spool_dir=tmp_path / "spool",
                 block=False)
    try:
        ae = AE(ae_title="MODALITY")
        for ds in sent:
            ae.add_requested_context(ds.SOPClassUID, [str(ds.file_meta.TransferSyntaxUID)])
        assoc = ae.associate("127.0.0.1", port, ae_title="CXRTRIAGE")
        assert assoc.is_established
        assert [int(assoc.send_c_store(ds).Status) for ds in sent] == [0, 0]
        assoc.release()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(_srs(tmp_path / "out")) < 2:
            time.sleep(0.2)
    finally:
        lst.stop()
    srs = _srs(tmp_path / "out")
    assert len(srs) == 2
    for ds in sent:
        sr = next(s for s in srs if s.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
                  .ReferencedSOPSequence[0].ReferencedSOPInstanceUID == ds.SOPInstanceUID)
        pred = adult.predict_bytes(_bytes(ds), heatmap=False)
        check_sr(sr, pred, adult.spec, str(ds.SOPInstanceUID))
    assert {read_one(s).label == "no finding" for s in srs} == {True, False}


def read_one(sr):
    from cxrtriage.pacs.results import read_result_sr

    return read_result_sr(sr)


def _bytes(ds: pydicom.Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _srs(folder: Path) -> list[pydicom.Dataset]:
    out = []
    for f in sorted(folder.rglob("*")) if folder.is_dir() else ():
        if f.is_file():
            try:
                ds = pydicom.dcmread(f)
            except Exception:  # noqa: BLE001 - a file being written: read it next time
                continue
            if ds.get("Modality") == "SR":
                out.append(ds)
    return out


@needs_nih
def test_no_finding_films_of_unseen_patients_list_few_findings(adult):
    """NIH 'No Finding' films of the validation patients: at most a few findings listed on average."""
    films = _nih_films(lambda lab: lab == "No Finding", 40)
    counts = [0 if p.label == "no finding" else len(p.label.split("|"))
              for p in adult.predict_batch([str(f) for f in films])]
    assert np.mean(counts) <= 1.0 and np.mean(np.array(counts) == 0) >= 0.6


def test_findings_report_counts_before_and_after():
    from cxrtriage.calibrate.findings import threshold_report

    rng = np.random.default_rng(0)
    y = (rng.random((200, 3)) < 0.2).astype(float)
    p = np.clip(0.55 + 0.3 * y + rng.normal(0, 0.1, y.shape), 0, 1)
    rep = threshold_report(y, p, np.arange(200) // 2, ["a", "b", "c"], None, 0.9)
    assert rep["listed_before"] > rep["listed_after"]  # 0.5 for all: most normal films list findings
    assert all(abs(r["specificity"] - 0.9) < 0.03 for r in rep["per_finding"].values())
    assert 0 <= rep["listed_after_crossfit"] <= 3


def test_csv_of_nih_is_what_the_tests_assume():
    if not (NIH / "labels.csv").is_file():
        pytest.skip("needs ../shared/data/nih-cxr14")
    with (NIH / "labels.csv").open() as f:
        assert {"path", "label", "patient_id"} <= set(next(csv.reader(f)))
