"""With no model named, each film goes to the bundled model that can judge it: by DICOM patient
age first, else by the models' own quality gates; a film none accepts is refused with the reasons."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxrtriage.contract import Priority
from cxrtriage.infer import Engine, Router, load_model, routable_models
from cxrtriage.io import age_in_years, read_radiograph_bytes
from testkit.make_dicom import radiograph_to_dicom

NIH = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "nih-cxr14"


@pytest.fixture(scope="module")
def router() -> Router:
    return Router()


def _dicom(pixels: np.ndarray, **extra) -> bytes:
    buf = io.BytesIO()
    radiograph_to_dicom(pixels, buf, modality="DX", extra=extra)
    return buf.getvalue()


@pytest.fixture(scope="module")
def pediatric_pixels(samples_dir) -> np.ndarray:
    return np.asarray(Image.open(samples_dir / "IM-0115-0001.jpeg").convert("L"))


def test_one_model_per_population_is_routable():
    assert routable_models() == {"pediatric": "cxr-pneumonia", "adult": "cxr-adult14"}
    assert isinstance(load_model(None), Router) and isinstance(load_model("cxr-pneumonia"), Engine)


@pytest.mark.parametrize("value, years", [("045Y", 45.0), ("006M", 0.5), ("003W", 0.057), ("010D", 0.027),
                                          ("", None), ("45", None), ("abcY", None), (None, None)])
def test_dicom_patient_age_is_read_in_years(value, years):
    assert age_in_years(value) == (pytest.approx(years, abs=1e-3) if years is not None else None)


def test_patient_age_decides_before_the_gates(router, pediatric_pixels):
    child, adult = _dicom(pediatric_pixels, PatientAge="004Y"), _dicom(pediatric_pixels, PatientAge="045Y")
    assert read_radiograph_bytes(adult, "a.dcm").meta["age_years"] == 45.0
    p_child, p_adult = router.predict_batch([child, adult], ["child.dcm", "adult.dcm"])
    assert p_child.model["name"] == "cxr-pneumonia" and p_child.model["routed_by"] == "age"
    # a pediatric-looking film of a patient aged 45 goes to the adult model: the age is the header's word
    assert p_adult.model["name"] == "cxr-adult14" and p_adult.model["routed_by"] == "age"
    # ... whose own gate then judges it: this film looks pediatric, so it is refused, not scored
    assert p_adult.priority is Priority.REFUSED and "warning" not in p_adult.gate
    assert p_child.ok and "warning" not in p_child.gate


def test_without_an_age_the_gates_route(router, samples_dir):
    preds = router.predict_files(sorted(samples_dir.glob("*.jpeg")))
    assert all(p.model["name"] == "cxr-pneumonia" and p.model["routed_by"] == "gate" for p in preds)
    assert all(p.ok for p in preds)


@pytest.mark.skipif(not NIH.is_dir(), reason="needs ../shared/data/nih-cxr14 (adult NIH films)")
def test_adult_films_without_an_age_reach_the_adult_model(router):
    films = sorted((NIH / "images").glob("*.jpg"))[:40]
    preds = router.predict_files(films)
    judged = [p for p in preds if p.ok]
    assert len(judged) >= 36, [p.gate.get("reason") for p in preds if not p.ok]  # <= 10% refused
    assert all(p.model["name"] == "cxr-adult14" for p in judged)  # none judged by the pediatric model


def test_a_film_no_model_accepts_is_refused_with_every_reason(router):
    from testkit.ood_samples import skimage_images

    photo = next(iter(skimage_images().values()))
    p = router.predict(photo, "photo.png")
    assert p.priority is Priority.REFUSED and p.score is None
    assert p.gate["reason"].startswith("no bundled model can judge this film")
    assert set(p.gate["by_model"]) == {"cxr-pneumonia", "cxr-adult14"}
    assert p.model["routed_by"] == "gate"


def test_a_lateral_or_a_ct_is_refused_whatever_the_route(router, pediatric_pixels):
    lateral = _dicom(pediatric_pixels, PatientAge="045Y", ViewPosition="LL")
    p = router.predict(lateral, "lateral.dcm")
    assert p.priority is Priority.REFUSED and "lateral" in p.gate["reason"].lower()
    buf = io.BytesIO()
    radiograph_to_dicom(pediatric_pixels, buf, modality="CT")
    ct = router.predict(buf.getvalue(), "ct.dcm")
    assert ct.error_type == "WrongModalityError" and ct.score is None


def test_a_pediatric_film_sent_to_the_adult_model_by_name_carries_a_warning(pediatric_pixels):
    p = Engine("cxr-adult14").predict(_dicom(pediatric_pixels, PatientAge="006Y"), "child.dcm")
    assert "patient age 6 years" in p.gate["warning"] and "adult" in p.gate["warning"]
    scored = Engine("cxr-adult14", gate=False).predict(_dicom(pediatric_pixels, PatientAge="006Y"), "child.dcm")
    assert scored.score is not None and "patient age 6 years" in scored.gate["warning"]


def test_the_sr_says_how_the_film_was_routed(router, pediatric_pixels):
    pytest.importorskip("highdicom")
    from cxrtriage.pacs.results import build_results, read_result_sr

    data = _dicom(pediatric_pixels, PatientAge="004Y")
    rg = read_radiograph_bytes(data, "child.dcm")
    pred = router.predict_radiographs([rg])[0]
    sr = read_result_sr(build_results(rg.dicom, rg.pixels, pred).datasets[-1])
    assert sr.routed_by == "age" and sr.model_name == "cxr-pneumonia"
    assert sr.finding in ("present", "absent") and sr.probability == pytest.approx(pred.score, abs=1e-6)


def test_one_look_settles_clear_films_and_agrees_with_the_full_look(samples_dir):
    """Routing without an age scores a clear film with one model only, and picks the model the
    full look (every model scores, the smallest gate distance / threshold wins) would pick."""
    from cxrtriage.io import read_radiograph

    router = Router()
    rgs = [read_radiograph(f) for f in sorted(samples_dir.glob("*.jpeg"))]
    full = {pop: e.predict_radiographs(rgs, heatmap=False) for pop, e in router.engines.items()}
    preds = router.predict_radiographs(rgs, heatmap=False)
    for k, p in enumerate(preds):
        accepted = [ps[k] for ps in full.values() if ps[k].ok]
        best = min(accepted, key=lambda q: q.gate["distance"] / q.gate["threshold"])
        assert p.model["name"] == best.model["name"]
        assert p.score == pytest.approx(best.score)
    assert router.looks["films"] == len(rgs) and router.looks["second_looks"] < len(rgs)


def test_the_pediatric_domain_check_tells_children_from_adults(samples_dir):
    """The pediatric model reports how adult a film looks (from its own embedding): low for the
    sample children's films; the router settles those with one look."""
    from cxrtriage.infer import Engine

    engine = Engine("cxr-pneumonia")
    assert engine.domain is not None and engine.domain.other == "adult"
    preds = engine.predict_files(sorted(samples_dir.glob("*.jpeg")))
    assert all(p.gate["p_adult"] < 0.05 for p in preds), [p.gate.get("p_adult") for p in preds]


@pytest.mark.skipif(not NIH.is_dir(), reason="needs ../shared/data/nih-cxr14 (adult NIH films)")
def test_adult_films_look_adult_to_the_pediatric_domain_check():
    from cxrtriage.infer import Engine

    from cxrtriage.io import read_radiograph

    engine = Engine("cxr-pneumonia")
    films = [read_radiograph(f) for f in sorted((NIH / "images").glob("*.jpg"))[-40:]]
    p_adult = engine.domain.p_other(engine.run_arrays(engine.prepare(films).images)["embedding"])
    assert np.all(p_adult > 0.5), p_adult
