"""End to end against a real Orthanc (Debian packages, started by the fixtures): watch, restart, outage."""

from __future__ import annotations

import io
import logging
import threading
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import UID

for _dep in ("highdicom", "pynetdicom", "dicomweb_client"):  # the "pacs" extra
    pytest.importorskip(_dep)
pytest.register_assert_rewrite("pacs_fixtures")
from pacs_fixtures import make_dicom  # noqa: E402

pytest_plugins = ["pacs_fixtures"]

RESULT_DEADLINE_S = 10.0
COPIED = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate",
          "StudyTime", "AccessionNumber", "StudyID", "ReferringPhysicianName", "StudyDescription")


def wait_for(cond, timeout: float, every: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(every)


def study_objects(srv, study_uid: str) -> dict[str, list[pydicom.Dataset]]:
    """The study's instances as datasets, sorted into source / sc / sr."""
    out: dict[str, list[pydicom.Dataset]] = {"source": [], "sc": [], "sr": []}
    for inst in srv.study_instances(study_uid):
        ds = srv.instance_dataset(inst["ID"])
        kind = {pydicom.uid.SecondaryCaptureImageStorage: "sc",
                pydicom.uid.Comprehensive3DSRStorage: "sr"}.get(ds.SOPClassUID, "source")
        out[kind].append(ds)
    return out


def wait_results(srv, study_uid: str, sc: int = 1, sr: int = 1,
                 timeout: float = RESULT_DEADLINE_S) -> dict[str, list[pydicom.Dataset]]:
    def ready():
        n = len(srv.study_instances(study_uid))
        return n >= 1 + sc + sr
    wait_for(ready, timeout, 0.1)
    return study_objects(srv, study_uid)


@pytest.fixture(scope="module")
def live(orthanc_module, triage_engine, tmp_path_factory):
    """A watcher following the module's Orthanc in a background thread (changes feed, STOW back)."""
    from cxrtriage.pacs.watch import Watcher

    w = Watcher(orthanc_module.url, mode="changes", poll_s=0.2,
                state_path=tmp_path_factory.mktemp("state") / "state.sqlite", engine=triage_engine,
                max_backoff_s=2.0, **orthanc_module.credentials)
    stop = threading.Event()
    t = threading.Thread(target=w.run, kwargs={"stop": stop}, daemon=True)
    t.start()
    yield orthanc_module, w
    stop.set()
    t.join(15)
    w.close()


def write(tmp_path: Path, data: bytes, name: str = "cxr.dcm") -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


@pytest.mark.parametrize("variant", ["dx", "mono1", "jpeg"])
def test_stow_radiograph_gets_sc_and_sr_within_10s(live, triage_engine, cxr_pixels, tmp_path, variant):
    from cxrtriage.pacs.results import SERIES_DESCRIPTION, read_result_sr

    srv, _ = live
    data = make_dicom(cxr_pixels[0][1], variant)
    src = pydicom.dcmread(io.BytesIO(data))
    t0 = time.monotonic()
    srv.stow(data)
    objs = wait_results(srv, src.StudyInstanceUID)
    elapsed = time.monotonic() - t0
    assert len(objs["sc"]) == 1 and len(objs["sr"]) == 1, f"results after {elapsed:.1f} s: {objs}"
    assert elapsed <= RESULT_DEADLINE_S
    (stored_src,), (sc,), (sr,) = objs["source"], objs["sc"], objs["sr"]
    assert stored_src.SOPInstanceUID == src.SOPInstanceUID

    # The SR says what `cxr predict` says about the same file (same engine code path).
    (expected,) = triage_engine.predict_files([write(tmp_path, data)])
    summary = read_result_sr(sr)
    assert expected.ok and summary.probability == pytest.approx(expected.score, abs=1e-5)
    assert summary.threshold == pytest.approx(expected.threshold, abs=1e-6)
    assert summary.source_sop_instance_uids == [src.SOPInstanceUID]
    assert summary.model_version == triage_engine.spec.version and not summary.refused

    # New, valid UIDs; same study; patient and study attributes copied.
    for ds in (sc, sr):
        assert ds.SeriesDescription == SERIES_DESCRIPTION
        assert UID(ds.SOPInstanceUID).is_valid and UID(ds.SeriesInstanceUID).is_valid
        assert ds.SOPInstanceUID != src.SOPInstanceUID and ds.SeriesInstanceUID != src.SeriesInstanceUID
        for kw in COPIED:
            assert ds.get(kw) == src.get(kw), kw
    assert sc.SeriesInstanceUID != sr.SeriesInstanceUID
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
    assert sc.pixel_array.ndim == 3 and sc.pixel_array.std() > 5


def test_ct_is_skipped_with_a_logged_reason(live, cxr_pixels, caplog):
    srv, w = live
    caplog.set_level(logging.INFO, logger="cxrtriage.pacs")
    data = make_dicom(cxr_pixels[1][1], "ct")
    src = pydicom.dcmread(io.BytesIO(data))
    orthanc_id = srv.client().store(data)["ID"]
    key = f"orthanc:{orthanc_id}"
    item = wait_for(lambda: (it := w.state.get(key)) is not None and it.status != "pending" and it, 10)
    assert item and item.status == "skipped" and "modality CT" in item.detail
    assert any(key in r.getMessage() and "modality CT" in r.getMessage() for r in caplog.records)
    time.sleep(0.5)
    assert len(srv.study_instances(src.StudyInstanceUID)) == 1  # nothing written back


def test_lateral_view_gets_a_refusal_sr_and_no_score(live, cxr_pixels):
    from cxrtriage.pacs.results import read_result_sr

    srv, _ = live
    data = make_dicom(cxr_pixels[2][1], "lateral")
    src = pydicom.dcmread(io.BytesIO(data))
    srv.stow(data)
    objs = wait_results(srv, src.StudyInstanceUID, sc=0, sr=1)
    assert len(objs["sr"]) == 1 and objs["sc"] == []
    summary = read_result_sr(objs["sr"][0])
    assert summary.refused and summary.probability is None and summary.threshold is None
    assert "lateral" in summary.reason and summary.source_sop_instance_uids == [src.SOPInstanceUID]


def test_results_are_not_triaged_again(live, cxr_pixels):
    """Our own SC and SR arrive in the change feed too; they are skipped as not for triage."""
    srv, w = live
    data = make_dicom(cxr_pixels[1][1], "dx")
    src = pydicom.dcmread(io.BytesIO(data))
    srv.stow(data)
    wait_results(srv, src.StudyInstanceUID)
    ours = [i["ID"] for i in srv.study_instances(src.StudyInstanceUID)
            if i["MainDicomTags"]["SOPInstanceUID"] != src.SOPInstanceUID]
    assert len(ours) == 2

    def settled():
        items = [w.state.get(f"orthanc:{oid}") for oid in ours]
        return all(it is not None and it.status != "pending" for it in items) and items
    items = wait_for(settled, 10)
    assert items and {it.status for it in items} == {"skipped"}
    assert all("OT" in it.detail or "SR" in it.detail or "own" in it.detail for it in items)
    assert len(srv.study_instances(src.StudyInstanceUID)) == 3


def test_worklist_lists_pacs_studies_with_results(live, cxr_pixels):
    from cxrtriage.pacs import fetch_pacs_images, list_pacs_studies, open_pacs_study
    from cxrtriage.pacs.connection import PacsConnection

    srv, _ = live
    pacs = PacsConnection(srv.url, **srv.credentials)
    data = make_dicom(cxr_pixels[3][1], "dx", patient_id="WL-1")
    src = pydicom.dcmread(io.BytesIO(data))
    srv.stow(data)
    wait_results(srv, src.StudyInstanceUID)
    rows = list_pacs_studies(pacs, filters={"PatientID": "WL-1"})
    assert [r["study_uid"] for r in rows] == [src.StudyInstanceUID]
    row = rows[0]
    assert row["patient_id"] == "WL-1" and row["source"] == "pacs" and "DX" in row["modalities"]
    assert len(row["triage"]) == 1 and row["triage"][0]["probability"] is not None
    images = open_pacs_study(pacs, src.StudyInstanceUID)
    assert [ref.sop_uid for ref, _ in images] == [src.SOPInstanceUID]
    ((sop, data),) = fetch_pacs_images(srv.url, src.StudyInstanceUID, **srv.credentials)
    assert sop == src.SOPInstanceUID and pydicom.dcmread(io.BytesIO(data)).PatientID == "WL-1"


def test_dicomweb_mode_qido_wado_stow(orthanc, triage_engine, cxr_pixels, tmp_path):
    from cxrtriage.pacs.watch import watch

    data = make_dicom(cxr_pixels[0][1], "jpeg")
    src = pydicom.dcmread(io.BytesIO(data))
    orthanc.stow(data)
    orthanc.stow(make_dicom(cxr_pixels[0][1], "ct"))
    stats = watch(orthanc.url, mode="dicomweb", once=True, state_path=tmp_path / "s.sqlite", engine=triage_engine,
                  **orthanc.credentials)
    assert (stats.discovered, stats.triaged, stats.failed) == (1, 1, 0)
    objs = study_objects(orthanc, src.StudyInstanceUID)
    assert len(objs["sc"]) == 1 and len(objs["sr"]) == 1
    (expected,) = triage_engine.predict_files([write(tmp_path, data)])
    from cxrtriage.pacs.results import read_result_sr

    assert read_result_sr(objs["sr"][0]).probability == pytest.approx(expected.score, abs=1e-5)


def test_restart_keeps_state_and_never_duplicates(orthanc, triage_engine, cxr_pixels, tmp_path):
    from cxrtriage.pacs.watch import watch

    state = tmp_path / "state.sqlite"
    for i in range(2):
        orthanc.stow(make_dicom(cxr_pixels[i][1], "dx"))
    orthanc.stow(make_dicom(cxr_pixels[0][1], "ct"))
    kw = dict(mode="changes", once=True, state_path=state, engine=triage_engine, **orthanc.credentials)

    first = watch(orthanc.url, **kw)
    assert (first.triaged, first.skipped, first.failed, first.pending) == (2, 1, 0, 0)
    assert orthanc.count_instances() == 3 + 4

    second = watch(orthanc.url, **kw)  # a restart: same state file
    assert (second.triaged, second.refused, second.stored) == (0, 0, 0)
    assert orthanc.count_instances() == 7

    orthanc.stow(make_dicom(cxr_pixels[2][1], "dx"))
    third = watch(orthanc.url, **kw)
    assert (third.triaged, third.stored) == (1, 2)
    assert orthanc.count_instances() == 7 + 1 + 2

    # Even with the state lost, results are the same SOP instances: no duplicates in the PACS.
    lost = watch(orthanc.url, **dict(kw, state_path=tmp_path / "other.sqlite"))
    assert lost.triaged == 3 and orthanc.count_instances() == 10

    # A cursor beyond the feed (Orthanc's database replaced): the feed is read again from the start,
    # and only the instance not yet done is triaged.
    from cxrtriage.pacs.state import State

    with State(state) as st:
        (name,) = [n for n in ("changes:" + orthanc.url,) if st.cursor(n) is not None]
        st.enqueue([], cursor=(name, "999999"))
    orthanc.stow(make_dicom(cxr_pixels[3][1], "dx"))
    reset = watch(orthanc.url, **kw)
    assert (reset.triaged, reset.failed) == (1, 0) and orthanc.count_instances() == 13


def test_orthanc_down_and_back_loses_nothing(orthanc, triage_engine, cxr_pixels, tmp_path):
    from cxrtriage.pacs.connection import PacsConnection
    from cxrtriage.pacs.watch import Watcher

    pacs = PacsConnection(orthanc.url, **orthanc.credentials, timeout=5.0)
    w = Watcher(pacs, mode="changes", poll_s=0.2, state_path=tmp_path / "s.sqlite", engine=triage_engine,
                max_backoff_s=1.0)
    stop = threading.Event()
    t = threading.Thread(target=w.run, kwargs={"stop": stop}, daemon=True)
    t.start()
    try:
        studies = []
        first = make_dicom(cxr_pixels[0][1], "dx")
        studies.append(pydicom.dcmread(io.BytesIO(first)).StudyInstanceUID)
        orthanc.stow(first)
        assert len(wait_results(orthanc, studies[0])["sr"]) == 1
        # Two more arrive and Orthanc stops at once, likely before the watcher got to them.
        for i in (1, 2):
            data = make_dicom(cxr_pixels[i][1], "mono1")
            studies.append(pydicom.dcmread(io.BytesIO(data)).StudyInstanceUID)
            orthanc.stow(data)
        orthanc.stop()
        assert wait_for(lambda: len(w.stats.errors) >= 2, 10), "the watcher did not notice the outage"
        assert t.is_alive()
        orthanc.start()  # same storage, same ports
        last = make_dicom(cxr_pixels[3][1], "dx")
        studies.append(pydicom.dcmread(io.BytesIO(last)).StudyInstanceUID)
        orthanc.stow(last)
        for uid in studies:
            objs = wait_results(orthanc, uid, timeout=20)
            assert (len(objs["source"]), len(objs["sc"]), len(objs["sr"])) == (1, 1, 1), uid
        assert orthanc.count_instances() == 4 * 3
        assert w.state.counts() .get("failed", 0) == 0
    finally:
        stop.set()
        t.join(15)
        w.close()


def test_worker_processes_give_the_same_results(orthanc, triage_engine, cxr_pixels, tmp_path):
    """``workers=2``: triage in two processes; same SR probabilities, nothing lost or doubled."""
    from cxrtriage.pacs.results import read_result_sr
    from cxrtriage.pacs.watch import watch

    files = [make_dicom(cxr_pixels[i % len(cxr_pixels)][1], v)
             for i, v in enumerate(["dx", "mono1", "jpeg", "lateral"])]
    for data in files:
        orthanc.stow(data)
    stats = watch(orthanc.url, mode="changes", once=True, state_path=tmp_path / "s.sqlite", workers=2,
                  batch_size=1, **orthanc.credentials)
    assert (stats.triaged, stats.refused, stats.failed, stats.pending) == (3, 1, 0, 0)
    assert orthanc.count_instances() == 4 + 3 * 2 + 1
    for data in files[:3]:
        src = pydicom.dcmread(io.BytesIO(data))
        (sr,) = study_objects(orthanc, src.StudyInstanceUID)["sr"]
        expected = triage_engine.predict_bytes(data, heatmap=False)
        assert read_result_sr(sr).probability == pytest.approx(expected.score, abs=1e-5)
