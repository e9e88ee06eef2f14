"""``cxr pacs listen``: C-STORE in, triage, results forwarded with C-STORE to a real Orthanc."""

from __future__ import annotations

import io
import time

import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit

for _dep in ("highdicom", "pynetdicom", "dicomweb_client"):  # the "pacs" extra
    pytest.importorskip(_dep)
pytest.register_assert_rewrite("pacs_fixtures")
from pacs_fixtures import free_port, make_dicom  # noqa: E402

pytest_plugins = ["pacs_fixtures"]


def send(datasets: list[pydicom.Dataset], port: int, called: str) -> list[int]:
    """A modality pushing images to the listener."""
    from pynetdicom import AE

    ae = AE(ae_title="MODALITY")
    for ds in datasets:
        ae.add_requested_context(ds.SOPClassUID, [str(ds.file_meta.TransferSyntaxUID)])
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    assert assoc.is_established, "listener refused the association"
    try:
        return [int(assoc.send_c_store(ds).Status) for ds in datasets]
    finally:
        assoc.release()


def test_listen_triages_and_forwards_to_orthanc(orthanc, triage_engine, cxr_pixels, tmp_path):
    from cxrtriage.pacs.listen import listen
    from cxrtriage.pacs.results import read_result_sr

    port = free_port()
    lst = listen(port, "CXRTRIAGE", forward=f"{orthanc.aet}@127.0.0.1:{orthanc.dicom_port}", engine=triage_engine,
                 spool_dir=tmp_path / "spool", block=False)
    try:
        files = {v: make_dicom(cxr_pixels[i][1], v) for i, v in enumerate(["dx", "jpeg", "lateral", "ct"])}
        sent = {v: pydicom.dcmread(io.BytesIO(b)) for v, b in files.items()}
        assert sent["jpeg"].file_meta.TransferSyntaxUID == JPEGBaseline8Bit
        assert sent["dx"].file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert send(list(sent.values()), port, "CXRTRIAGE") == [0, 0, 0, 0]

        def forwarded(v: str) -> list[pydicom.Dataset]:
            return [orthanc.instance_dataset(i["ID"]) for i in orthanc.study_instances(sent[v].StudyInstanceUID)]

        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not (len(forwarded("dx")) == 2 and len(forwarded("jpeg")) == 2
                                                   and len(forwarded("lateral")) == 1):
            time.sleep(0.2)
        for v in ("dx", "jpeg"):
            objs = forwarded(v)
            kinds = sorted(str(d.SOPClassUID.name) for d in objs)
            assert kinds == ["Comprehensive 3D SR Storage", "Secondary Capture Image Storage"], v
            sr = next(d for d in objs if d.Modality == "SR")
            summary = read_result_sr(sr)
            expected = triage_engine.predict_bytes(files[v], heatmap=False)
            assert summary.probability == pytest.approx(expected.score, abs=1e-5)
            assert summary.source_sop_instance_uids == [sent[v].SOPInstanceUID]
            assert all(d.PatientID == sent[v].PatientID for d in objs)
        (refusal,) = forwarded("lateral")
        assert read_result_sr(refusal).refused and read_result_sr(refusal).probability is None
        assert forwarded("ct") == []
        deadline = time.monotonic() + 5  # forwards have landed; their bookkeeping follows
        while time.monotonic() < deadline and (list((tmp_path / "spool").glob("*.dcm"))
                                               or lst.state.counts().get("done") != 3):
            time.sleep(0.05)
        assert lst.state.get(f"sop:{sent['ct'].SOPInstanceUID}").status == "skipped"
        assert list((tmp_path / "spool").glob("*.dcm")) == []  # everything handled

        # The same image pushed again is not processed twice.
        before = orthanc.count_instances()
        assert send([sent["dx"]], port, "CXRTRIAGE") == [0]
        time.sleep(1.0)
        assert orthanc.count_instances() == before
        assert lst.state.counts().get("done") == 3
    finally:
        lst.stop()


def test_listen_keeps_results_until_the_destination_is_back(orthanc, triage_engine, cxr_pixels, tmp_path):
    """Forwarding to a node that is down is retried; nothing is lost when it comes back."""
    from cxrtriage.pacs.listen import listen

    port = free_port()
    orthanc.stop()
    lst = listen(port, "CXRTRIAGE", forward=f"{orthanc.aet}@127.0.0.1:{orthanc.dicom_port}", engine=triage_engine,
                 spool_dir=tmp_path / "spool", max_backoff_s=1.0, block=False)
    try:
        data = make_dicom(cxr_pixels[0][1], "dx")
        ds = pydicom.dcmread(io.BytesIO(data))
        assert send([ds], port, "CXRTRIAGE") == [0]
        key = f"sop:{ds.SOPInstanceUID}"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not ((it := lst.state.get(key)) and it.attempts >= 1):
            time.sleep(0.1)
        assert lst.state.get(key).status == "pending" and list((tmp_path / "spool").glob("*.dcm"))
        orthanc.start()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and len(orthanc.study_instances(ds.StudyInstanceUID)) < 2:
            time.sleep(0.2)
        assert len(orthanc.study_instances(ds.StudyInstanceUID)) == 2
        deadline = time.monotonic() + 5  # the forward has landed; its bookkeeping follows
        while time.monotonic() < deadline and lst.state.get(key).status != "done":
            time.sleep(0.05)
        assert lst.state.get(key).status == "done"
        assert not list((tmp_path / "spool").glob("*.dcm"))
    finally:
        lst.stop()
