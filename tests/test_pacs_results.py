"""DICOM results (SC + TID 1500 SR), their decoding, the state store and small helpers: no PACS needed."""

from __future__ import annotations

import io
import time

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.uid import UID

for _dep in ("highdicom", "pynetdicom", "dicomweb_client"):  # the "pacs" extra
    pytest.importorskip(_dep)
pytest.register_assert_rewrite("pacs_fixtures")
from pacs_fixtures import make_dicom  # noqa: E402

pytest_plugins = ["pacs_fixtures"]

COPIED = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate",
          "StudyTime", "AccessionNumber", "StudyID", "ReferringPhysicianName", "StudyDescription",
          "SpecificCharacterSet")


def _roundtrip(ds: pydicom.Dataset) -> pydicom.Dataset:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return pydicom.dcmread(io.BytesIO(buf.getvalue()))


def _triage(engine, data: bytes):
    from cxrtriage.pacs.pipeline import triage_bytes

    return triage_bytes(engine, [("test.dcm", data)])[0]


@pytest.fixture(scope="module")
def dx_bytes(cxr_pixels) -> bytes:
    return make_dicom(cxr_pixels[0][1], "dx")


def test_scored_results_are_valid_dicom(triage_engine, dx_bytes):
    from cxrtriage.pacs.results import SERIES_DESCRIPTION, read_result_sr

    src = pydicom.dcmread(io.BytesIO(dx_bytes))
    out = _triage(triage_engine, dx_bytes)
    assert out.status == "results" and out.results is not None and not out.results.refused
    sc, sr = (_roundtrip(d) for d in out.datasets)
    assert sc.SOPClassUID == pydicom.uid.SecondaryCaptureImageStorage
    assert sr.SOPClassUID == pydicom.uid.Comprehensive3DSRStorage
    for ds in (sc, sr):
        for kw in COPIED:
            assert ds.get(kw) == src.get(kw), kw
        assert ds.SeriesDescription == SERIES_DESCRIPTION
        for uid in (ds.SOPInstanceUID, ds.SeriesInstanceUID):
            assert UID(uid).is_valid and uid not in (src.SOPInstanceUID, src.SeriesInstanceUID)
    assert sc.SeriesInstanceUID != sr.SeriesInstanceUID
    assert sc.PhotometricInterpretation == "RGB" and sc.pixel_array.shape[-1] == 3
    assert sc.pixel_array.std() > 5
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    # highdicom parses it back as a TID 1500 Measurement Report with one planar ROI group whose
    # region is a SCOORD point on the source image, where the heatmap peaks (so any viewer can place it).
    report = hd.sr.Comprehensive3DSR.from_dataset(sr).content
    groups = hd.sr.MeasurementReport.from_sequence(report).get_planar_roi_measurement_groups()
    assert len(groups) == 1
    region = groups[0].roi
    assert region.graphic_type == hd.sr.GraphicTypeValues.POINT
    assert region.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
    summary = read_result_sr(sr)
    expected = triage_engine.predict_bytes(dx_bytes, heatmap=True)
    col, row = summary.point
    assert (col, row) == pytest.approx(tuple(region.value[0]))
    heat = expected.heatmap
    cell = int(row * heat.shape[0] / src.Rows), int(col * heat.shape[1] / src.Columns)
    assert heat[cell] == pytest.approx(heat.max())
    assert summary.probability == pytest.approx(expected.score, abs=1e-6)
    assert summary.threshold == pytest.approx(expected.threshold, abs=1e-6)
    assert summary.finding == ("present" if expected.score >= expected.threshold else "absent")
    assert summary.model_name == triage_engine.spec.name and summary.model_version == triage_engine.spec.version
    assert summary.source_sop_instance_uids == [src.SOPInstanceUID]
    assert summary.priority == expected.priority and not summary.refused
    assert sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0] \
        .ReferencedSOPSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
    assert sr.VerificationFlag == "UNVERIFIED" and sr.CompletionFlag == "COMPLETE"


def test_uids_are_deterministic_per_source_and_model(triage_engine, dx_bytes, cxr_pixels):
    a, b = _triage(triage_engine, dx_bytes), _triage(triage_engine, dx_bytes)
    assert [d.SOPInstanceUID for d in a.datasets] == [d.SOPInstanceUID for d in b.datasets]
    other = _triage(triage_engine, make_dicom(cxr_pixels[1][1], "dx"))
    assert not {d.SOPInstanceUID for d in a.datasets} & {d.SOPInstanceUID for d in other.datasets}


def test_lateral_gets_a_refusal_sr_without_score(triage_engine, cxr_pixels):
    from cxrtriage.pacs.results import read_result_sr

    data = make_dicom(cxr_pixels[2][1], "lateral")
    out = _triage(triage_engine, data)
    assert out.status == "results" and out.results.refused and out.results.sc is None
    sr = _roundtrip(out.results.sr)
    nums = [i for i in _walk(sr.ContentSequence) if i.ValueType == "NUM"]
    assert nums == []
    summary = read_result_sr(sr)
    assert summary.refused and summary.probability is None and summary.finding == "indeterminate"
    assert "lateral" in summary.reason


def test_ct_and_own_outputs_are_skipped(triage_engine, dx_bytes, cxr_pixels):
    ct = _triage(triage_engine, make_dicom(cxr_pixels[2][1], "ct"))
    assert ct.status == "skipped" and "modality CT" in ct.reason and ct.datasets == []
    res = _triage(triage_engine, dx_bytes)
    for ds in res.datasets:
        again = _triage(triage_engine, pydicom_bytes(ds))
        assert again.status == "skipped" and again.reason == "our own triage output"


def test_unreadable_radiograph_gets_a_refusal(triage_engine, cxr_pixels):
    ds = pydicom.dcmread(io.BytesIO(make_dicom(cxr_pixels[2][1], "dx")))
    ds.PixelData = ds.PixelData[:100]  # truncated pixel data
    out = _triage(triage_engine, pydicom_bytes(ds))
    assert out.status == "results" and out.results.refused and out.results.sc is None
    assert "could not be read" in out.results.sr.ContentSequence[-1].ContentSequence[0].TextValue


def test_a_batch_goes_through_the_engine_pipeline_in_order(triage_engine, dx_bytes, cxr_pixels):
    from cxrtriage.pacs.pipeline import OutcomeStatus, triage_bytes

    ds = pydicom.dcmread(io.BytesIO(make_dicom(cxr_pixels[2][1], "dx")))
    ds.PixelData = ds.PixelData[:100]
    items = [("dx", dx_bytes), ("ct", make_dicom(cxr_pixels[2][1], "ct")), ("junk", b"not dicom"),
             ("truncated", pydicom_bytes(ds)), ("lateral", make_dicom(cxr_pixels[2][1], "lateral"))]
    outs = triage_bytes(triage_engine, items)
    assert [o.name for o in outs] == [n for n, _ in items]
    assert [o.status for o in outs] == [OutcomeStatus.RESULTS, OutcomeStatus.SKIPPED, OutcomeStatus.SKIPPED,
                                        OutcomeStatus.RESULTS, OutcomeStatus.RESULTS]
    scored, unreadable, lateral = outs[0].results.prediction, outs[3].results.prediction, outs[4].results.prediction
    ref = triage_engine.predict(dx_bytes, "dx")
    assert scored.score == pytest.approx(ref.score, abs=1e-6) and scored.priority == ref.priority
    assert unreadable.priority == "error" and unreadable.error_type and unreadable.model == triage_engine.model_ref
    assert lateral.priority == "refused" and outs[4].reason


def test_pacs_connection_is_validated_once():
    from cxrtriage.pacs.connection import PacsConnection
    from cxrtriage.pacs.state import JobStatus

    conn = PacsConnection("http://pacs:8042/", user="triage", password="secret", dicomweb_root="dicom-web/")
    assert (conn.url, conn.dicomweb_url, conn.auth) == ("http://pacs:8042", "http://pacs:8042/dicom-web", "basic")
    assert "secret" not in repr(conn)
    assert PacsConnection("https://pacs", dicomweb_root="").dicomweb_url == "https://pacs"
    assert PacsConnection.of(conn) is conn
    assert PacsConnection.of(conn, token="t").auth == "token"
    assert PacsConnection.of("http://pacs", user="u", password=None) == PacsConnection("http://pacs", "u")
    session = PacsConnection("http://pacs", token="t", verify=False).session()
    assert session.headers["Authorization"] == "Bearer t" and session.verify is False
    for bad in ({"url": "pacs:8042"}, {"url": "ftp://pacs"}, {"url": "http://pacs", "timeout": 0}):
        with pytest.raises(ValueError):
            PacsConnection(**bad)
    assert JobStatus("done") is JobStatus.DONE and f"{JobStatus.FAILED}" == "failed"


def test_state_never_hands_out_done_items_and_backs_off(tmp_path):
    from cxrtriage.pacs.state import FAILED, PENDING, State, backoff_delay

    assert [backoff_delay(a, 1.0, 10.0) for a in (1, 2, 3, 4, 5, 6)] == [1, 2, 4, 8, 10, 10]
    path = tmp_path / "s.sqlite"
    with State(path, max_attempts=3, backoff_base=0.05) as st:
        assert st.enqueue([("a", {"x": 1}), ("b", {})], cursor=("feed", "7")) == 2
        assert st.enqueue([("a", {})]) == 0
        st.mark_done("a", ["1.2.3"])
        (b,) = st.due()
        assert b.key == "b"
        assert st.mark_retry(b, "boom") == PENDING and st.due() == []
        time.sleep(0.06)
        (b,) = st.due()
        assert b.attempts == 1
    with State(path, max_attempts=3) as st:  # a restart
        assert st.cursor("feed") == "7" and st.get("a").status == "done" and st.get("a").outputs == ["1.2.3"]
        b = st.get("b")
        assert st.mark_retry(b, "boom again") == PENDING
        assert st.mark_retry(st.get("b"), "and again") == FAILED
        c = st.enqueue([("c", {})]) and st.get("c")
        for _ in range(10):  # outages never give up
            assert st.mark_retry(c, "down", permanent_after=False) == PENDING
            c = st.get("c")


def test_parse_destination():
    from cxrtriage.pacs.listen import parse_destination

    d = parse_destination("ORTHANC@127.0.0.1:4242")
    assert (d.ae_title, d.host, d.port) == ("ORTHANC", "127.0.0.1", 4242)
    for bad in ("ORTHANC", "ORTHANC@host", "@h:1", "A@h:0", "A@h:x", "WAYTOOLONGAETITLE17@h:1"):
        with pytest.raises(ValueError):
            parse_destination(bad)


def pydicom_bytes(ds: pydicom.Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _walk(items):
    for item in items or ():
        yield item
        yield from _walk(item.get("ContentSequence"))


def test_results_render_the_banner(triage_engine, dx_bytes):
    """The SC shows the disclaimer banner: its pixels differ from an overlay without it."""
    from cxrtriage.explain.overlay import BANNER

    out = _triage(triage_engine, dx_bytes)
    sc = out.results.sc
    assert BANNER in sc.ImageComments
    top = np.asarray(sc.pixel_array)[:20]
    assert (top.max(axis=-1) > 150).any()  # light banner text on the dark title bar


@pytest.mark.parametrize("variant", ["dx", "lateral"])
def test_fast_sr_document_matches_highdicom(triage_engine, cxr_pixels, variant):
    """The direct SR builder writes what highdicom.sr.Comprehensive3DSR writes, item for item."""
    from cxrtriage.io import read_radiograph_bytes
    from cxrtriage.pacs.results import build_sr

    rg = read_radiograph_bytes(make_dicom(cxr_pixels[2][1], variant), "x.dcm")
    pred = triage_engine.predict_radiographs([rg])[0]
    ref, fast = build_sr(rg.dicom, pred, fast=False), build_sr(rg.dicom, pred, fast=True)
    assert [e.keyword for e in ref] == [e.keyword for e in fast]
    volatile = {"InstanceCreationDate", "InstanceCreationTime", "SeriesDate", "SeriesTime", "ContentDate",
                "ContentTime", "ContributingEquipmentSequence"}
    for elem in ref:
        if elem.keyword not in volatile:
            assert fast[elem.tag].value == elem.value, elem.keyword
    assert hd.sr.Comprehensive3DSR.from_dataset(_roundtrip(fast)).SOPInstanceUID == ref.SOPInstanceUID
