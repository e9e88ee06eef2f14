"""The Orthanc plugin (orthanc-python): the "AI triage" route and Orthanc Explorer button."""

from __future__ import annotations

import io

import pydicom
import pytest
import requests

for _dep in ("highdicom", "pynetdicom", "dicomweb_client"):  # the "pacs" extra
    pytest.importorskip(_dep)
pytest.register_assert_rewrite("pacs_fixtures")
from pacs_fixtures import make_dicom  # noqa: E402

pytest_plugins = ["pacs_fixtures"]


def test_plugin_route_stores_sc_and_sr(orthanc_python, triage_engine, cxr_pixels):
    from cxrtriage.pacs.results import SERIES_DESCRIPTION, read_result_sr

    srv = orthanc_python
    auth = (srv.credentials["user"], srv.credentials["password"])
    status = requests.get(srv.url + "/cxr-triage/status", auth=auth, timeout=10)
    assert status.status_code == 200, f"plugin not loaded:\n{srv.log_tail()}"
    assert status.json()["python_exists"]

    explorer = requests.get(srv.url + "/plugins/explorer.js", auth=auth, timeout=10).text
    assert "cxr-triage-button" in explorer and "AI triage" in explorer

    data = make_dicom(cxr_pixels[0][1], "dx")
    src = pydicom.dcmread(io.BytesIO(data))
    orthanc_id = srv.client().store(data)["ID"]
    route = srv.url + f"/cxr-triage/instances/{orthanc_id}/triage"
    assert requests.get(route, auth=auth, timeout=10).status_code == 405
    r = requests.post(srv.url + f"/cxr-triage/instances/{orthanc_id}/triage", auth=auth, timeout=180)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "results" and len(body["stored"]) == 2, body
    assert {s["Status"] for s in body["stored"]} == {"Success"}

    objs = [srv.instance_dataset(i["ID"]) for i in srv.study_instances(src.StudyInstanceUID)]
    results = [d for d in objs if d.SOPInstanceUID != src.SOPInstanceUID]
    assert sorted(d.Modality for d in results) == ["OT", "SR"]
    assert all(d.SeriesDescription == SERIES_DESCRIPTION for d in results)
    sr = next(d for d in results if d.Modality == "SR")
    expected = triage_engine.predict_bytes(data, heatmap=False)
    summary = read_result_sr(sr)
    assert summary.probability == pytest.approx(expected.score, abs=1e-5)
    assert body["prediction"]["score"] == pytest.approx(expected.score, abs=1e-5)
    assert summary.source_sop_instance_uids == [src.SOPInstanceUID]

    # Pressing the button again stores the same objects: nothing is duplicated.
    again = requests.post(srv.url + f"/cxr-triage/instances/{orthanc_id}/triage", auth=auth, timeout=180).json()
    assert {s["Status"] for s in again["stored"]} == {"AlreadyStored"}
    assert len(srv.study_instances(src.StudyInstanceUID)) == 3

    missing = requests.post(srv.url + "/cxr-triage/instances/no-such-id/triage", auth=auth, timeout=30)
    assert missing.status_code == 404
