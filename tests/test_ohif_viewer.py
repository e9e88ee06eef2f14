"""The triage results as a reader sees them in OHIF, the viewer Orthanc sites read with.

A radiograph goes into a real Orthanc, the PACS bridge triages it into the same study (the
heatmap Secondary Capture and the TID 1500 SR), and the study is opened in OHIF (npm
``@ohif/app``, served statically beside Orthanc, see ``testkit/ohif.py``) in headless
Chromium, with every request off the machine refused. The series list must show both
result series, and the SR, opened, must show its finding and probability on the radiograph.
"""

from __future__ import annotations

import io
import time

import numpy as np
import pytest

for _dep in ("highdicom", "pynetdicom", "dicomweb_client"):  # the "pacs" extra
    pytest.importorskip(_dep)

from pacs_fixtures import make_dicom, radiograph_pixels  # noqa: E402

pytest_plugins = ["pacs_fixtures", "ohif_fixtures"]
pytestmark = pytest.mark.slow

LOAD_TIMEOUT_MS = 120_000  # the viewer's first start parses ~20 MB of scripts; 2 busy cores are slow


def _triaged_study(orthanc, engine, tmp_path):
    """Store a pneumonia radiograph, triage it into its study; (study UID, source UID, SR summary)."""
    import pydicom

    from cxrtriage.pacs.results import read_result_sr
    from cxrtriage.pacs.watch import watch

    found = radiograph_pixels(2)
    sick = [px for name, px in found if "bacteria" in name or "virus" in name or "PNEUMONIA" in name]
    if not sick:
        pytest.skip("no pneumonia sample radiograph in cxrtriage/assets/samples")
    data = make_dicom(sick[0], "dx")
    src = pydicom.dcmread(io.BytesIO(data))
    orthanc.stow(data)
    stats = watch(orthanc.url, mode="dicomweb", once=True, state_path=tmp_path / "state.sqlite", engine=engine,
                  **orthanc.credentials)
    assert (stats.triaged, stats.failed) == (1, 0), stats
    srs = [i for i in orthanc.study_instances(str(src.StudyInstanceUID))
           if orthanc.client().instance_series_tags(i["ID"]).get("Modality") == "SR"]
    assert len(srs) == 1
    summary = read_result_sr(orthanc.instance_dataset(srs[0]["ID"]))
    assert summary.probability is not None and summary.finding
    return str(src.StudyInstanceUID), summary


def _colourful(png: bytes) -> float:
    """Share of clearly coloured pixels (the heatmap) in a PNG."""
    from PIL import Image

    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.int16)
    return float(((rgb.max(axis=2) - rgb.min(axis=2)) > 60).mean())


def _contrast(png: bytes) -> float:
    from PIL import Image

    return float(np.asarray(Image.open(io.BytesIO(png)).convert("L")).std())


def test_study_in_ohif_shows_the_heatmap_series_and_the_sr_finding(ohif, orthanc_for_viewer, chromium,
                                                                     triage_engine, tmp_path):
    from playwright.sync_api import expect

    from cxrtriage.pacs.results import SERIES_DESCRIPTION, SC_SERIES_NUMBER, SR_SERIES_NUMBER

    study_uid, sr = _triaged_study(orthanc_for_viewer, triage_engine, tmp_path)
    finding = "Present" if sr.finding and "present" in sr.finding.lower() else sr.finding
    probability = f"Probability: {sr.probability:.2f}"

    context = chromium.new_context(viewport={"width": 1440, "height": 900})
    page = context.new_page()
    offsite: list[str] = []
    errors: list[str] = []

    def local_only(route):
        url = route.request.url
        if url.startswith(ohif.url + "/") or url.startswith(("data:", "blob:")):
            route.continue_()
        else:  # a hospital network has no internet: nothing may be fetched from elsewhere
            offsite.append(url)
            route.abort()

    page.route("**/*", local_only)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    shot = tmp_path / "ohif.png"
    try:
        page.goto(ohif.viewer_url(study_uid))
        # The series list: the radiograph, the heatmap Secondary Capture and the SR, labelled as AI output.
        sc_item = page.get_by_text(f"S:{SC_SERIES_NUMBER}", exact=True)
        sr_item = page.get_by_text(f"S:{SR_SERIES_NUMBER}", exact=True)
        expect(sc_item).to_be_visible(timeout=LOAD_TIMEOUT_MS)
        expect(sr_item).to_be_visible(timeout=LOAD_TIMEOUT_MS)
        expect(page.get_by_text(SERIES_DESCRIPTION, exact=True)).to_have_count(2)
        # The heatmap thumbnail is drawn (in colour), not an empty placeholder.
        thumb_box = page.locator("div", has=sc_item).filter(has=page.locator("img")).last  # innermost
        sc_thumb = thumb_box.locator("img").first
        deadline = time.monotonic() + 60
        while _colourful(sc_thumb.screenshot()) < 0.05:
            assert time.monotonic() < deadline, "the heatmap thumbnail never showed its colours"
            time.sleep(1)

        # Open the SR: OHIF draws its finding on the radiograph it refers to. OHIF 3.13 sometimes
        # places the annotation before the image has rendered and shows it only at the next
        # render: "Reset View" renders the viewport again, as a reader's first pan or zoom would.
        sr_item.dblclick()
        annotation = page.locator("svg text", has_text=probability)
        for attempt in range(4):
            try:
                expect(annotation).to_be_visible(timeout=10_000)
                break
            except AssertionError:
                if attempt == 3:
                    raise
                page.get_by_role("button", name="Reset View").click()
        expect(page.locator("svg text", has_text=f"Pneumonia: {finding}")).to_be_visible()
        expect(page.locator("svg text", has_text="Threshold Value:")).to_be_visible()
        expect(page.get_by_text("Something went wrong")).to_have_count(0)
        viewport = page.locator("[data-viewportid]").first
        deadline = time.monotonic() + 30
        while _contrast(viewport.screenshot()) < 20:  # the radiograph itself, not a black viewport
            assert time.monotonic() < deadline, "the radiograph under the SR finding was not drawn"
            time.sleep(1)
        page.screenshot(path=str(shot))
    except Exception:
        page.screenshot(path=str(shot))
        raise
    finally:
        context.close()
    assert not offsite, f"the viewer fetched from outside the machine: {offsite[:5]}"
    assert any("/series/" in p for p in ohif.proxied), "the viewer never read the study through /dicom-web"
    assert not [e for e in errors if "TypeError" in e], errors


def test_compose_mounts_the_tested_ohif_config():
    """compose.yaml mounts deploy/ohif/app-config.js into OHIF, the file the test above served."""
    from testkit.ohif import APP_CONFIG, ROOT

    compose = (ROOT / "compose.yaml").read_text()
    assert "./deploy/ohif/app-config.js" in compose and "ohif/app:v" in compose
    assert "/dicom-web" in APP_CONFIG.read_text()
