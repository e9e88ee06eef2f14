"""The torch-free inference engine and `cxr predict` on real files."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from cxrtriage.cli.main import app
from cxrtriage.infer import DEFAULT_MODEL, Engine, load_spec
from cxrtriage.io import read_radiograph


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine()


def test_engine_does_not_import_torch(samples_dir):
    code = (
        "import sys; from cxrtriage.infer import Engine; from cxrtriage.explain import overlay_for; "
        f"p = Engine().predict_files(sorted(__import__('pathlib').Path({str(samples_dir)!r}).glob('*.*'))); "
        "assert any(x.score is not None for x in p); "
        "bad = [m for m in sys.modules if m == 'torch' or m.startswith('torch.')]; "
        "print('TORCH' if bad else 'OK')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "OK", out.stderr


def test_bundled_model_is_intact_and_described():
    info = load_spec(None)
    assert hashlib.sha256(DEFAULT_MODEL.read_bytes()).hexdigest() == info.sha256
    assert info.classes == ("normal", "pneumonia")
    assert 0.0 < info.threshold <= info.threshold_high < 1.0
    assert DEFAULT_MODEL.stat().st_size < 5 * 2**20
    assert info.has_cam and "embedding" in info.outputs


def test_samples_are_scored_sensibly(engine, samples_dir):
    files = sorted(samples_dir.glob("*.jpeg"))
    preds = engine.predict_files(files)
    assert all(p.ok for p in preds), [p.gate for p in preds if not p.ok]
    truth = {f.name: not f.name.startswith("IM-") for f in files}
    correct = sum((p.label == "pneumonia") == truth[f.name] for f, p in zip(files, preds))
    assert correct >= len(files) - 1  # the bundled samples are easy cases from the training set
    for p in preds:
        assert abs(sum(p.probabilities.values()) - 1.0) < 1e-4
        assert p.priority in ("urgent", "review", "routine")
        assert p.model["version"] == engine.spec.version


def test_dicom_and_jpeg_of_the_same_radiograph_agree(engine, samples_dir):
    jpeg, dcm = engine.predict_files([samples_dir / "IM-0115-0001.jpeg", samples_dir / "IM-0115-0001_DX.dcm"])
    assert dcm.ok and abs(jpeg.score - dcm.score) < 0.02
    jpeg, dcm = engine.predict_files([samples_dir / "person1_bacteria_1.jpeg",
                                      samples_dir / "person1_bacteria_1_CR.dcm"])  # MONOCHROME1, JPEG 2000
    assert dcm.ok and abs(jpeg.score - dcm.score) < 0.02


def test_batch_equals_single(engine, samples_dir):
    files = sorted(samples_dir.glob("*.jpeg"))
    batch = engine.predict_files(files, batch_size=8)
    single = [engine.predict_files([f])[0] for f in files]
    for a, b in zip(batch, single):
        assert abs(a.score - b.score) < 1e-5


def test_bad_files_become_error_rows_and_lose_nothing(engine, samples_dir, tmp_path):
    (tmp_path / "notes.txt").write_text("not an image")
    Image.new("L", (1, 1)).save(tmp_path / "tiny.png")
    good = samples_dir / "IM-0117-0001.jpeg"
    (tmp_path / "cut.jpeg").write_bytes(good.read_bytes()[:2000])
    files = [tmp_path / "notes.txt", good, tmp_path / "tiny.png", tmp_path / "cut.jpeg"]
    preds = engine.predict_files(files, batch_size=2)
    assert [p.error_type for p in preds] == ["NotAnImageError", None, "ImageTooSmallError", "CorruptImageError"]
    assert preds[1].ok and preds[1].score == engine.predict_files([good])[0].score
    assert "1x1" in preds[2].error and preds[2].score is None


def test_blank_and_lateral_images_are_refused(engine, samples_dir, tmp_path):
    from testkit.make_dicom import radiograph_to_dicom

    rg = read_radiograph(samples_dir / "IM-0119-0001.jpeg")
    lateral = tmp_path / "lateral.dcm"
    radiograph_to_dicom(rg.to_uint8(), lateral, modality="DX", view_position="LL")
    Image.new("L", (256, 256), 200).save(tmp_path / "blank.png")
    lat, blank = engine.predict_files([lateral, tmp_path / "blank.png"])
    assert lat.priority == "refused" and "lateral" in lat.gate["reason"] and lat.score is None
    assert blank.priority == "refused" and "blank" in blank.gate["reason"] and blank.score is None


def test_threads_are_configurable():
    assert Engine(threads=1).session.get_session_options().intra_op_num_threads == 1


def test_cli_predict_json_and_table(samples_dir):
    runner = CliRunner()
    res = runner.invoke(app, ["predict", str(samples_dir), "--json"])
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in res.stdout.splitlines() if line.strip()]
    assert len(rows) == len([p for p in samples_dir.iterdir() if p.suffix in (".jpeg", ".dcm")])
    # no --model: each film goes to the bundled model that can judge it; these pediatric films
    # (no DICOM age) to the pediatric one, by its quality gate
    assert all("disclaimer" in r and r["model"]["name"] == "cxr-pneumonia" for r in rows)
    assert all(r["model"]["routed_by"] == "gate" for r in rows)
    res = runner.invoke(app, ["predict", str(samples_dir / "IM-0117-0001.jpeg")])
    assert res.exit_code == 0 and "IM-0117-0001.jpeg" in res.stdout and "not a diagnosis" in res.stdout


def test_cli_errors_are_clear(tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["predict", str(tmp_path / "missing.jpeg")])
    assert res.exit_code == 2 and "no such file" in res.output
    (tmp_path / "m.onnx").write_bytes(b"x")
    res = runner.invoke(app, ["predict", "--model", str(tmp_path / "m.onnx"), str(tmp_path)])
    assert res.exit_code == 2


# -- test-time augmentation ------------------------------------------------------------------

def test_tta_views_move_and_zoom_the_image():
    from cxrtriage.infer.tta import tta_views

    img = np.zeros((1, 100, 100), np.uint8)
    img[0, 40:60, 40:60] = 255  # a bright square in the middle
    views = tta_views(img)
    assert len(views) == 7 and all(v.shape == img.shape and v.dtype == np.uint8 for v in views)
    assert np.array_equal(views[0], img)
    area = [int((v[0] > 127).sum()) for v in views]
    assert area[1] > area[0] > area[2]  # zoomed in, then out
    centre = [np.argwhere(v[0] > 127).mean(axis=0) for v in views[3:]]
    shifts = [tuple(np.round(c - np.array([49.5, 49.5])).astype(int)) for c in centre]
    assert shifts == [(0, 3), (0, -3), (3, 0), (-3, 0)]
    with pytest.raises(ValueError, match="square"):
        tta_views(np.zeros((2, 10, 12), np.uint8))


def test_tta_averages_the_views_and_keeps_the_heatmap(engine, samples_dir):
    from cxrtriage.data import to_model_input
    from cxrtriage.infer.tta import tta_views

    f = samples_dir / "IM-0115-0001.jpeg"
    tta = Engine(tta=True)
    plain_p, tta_p = engine.predict_files([f], heatmap=True)[0], tta.predict_files([f], heatmap=True)[0]
    steps = engine.spec.input  # the model's own border and intensity steps
    x = steps.prepare([to_model_input(read_radiograph(f), engine.spec.input_size)]).images
    by_view = [engine.run_arrays(v)["probs"][0] for v in tta_views(x)]
    assert len({round(float(p[0]), 4) for p in by_view}) > 1  # the views do differ
    want = engine.spec.calibrated(np.mean(by_view, axis=0)[None])[0]  # the views' mean, then the model's temperature
    got = np.array([tta_p.probabilities[c] for c in engine.spec.classes])
    assert np.allclose(got, want, atol=1e-5)
    assert np.array_equal(tta_p.heatmap, plain_p.heatmap)
    assert tta_p.label == plain_p.label == "normal"


def test_cli_predict_with_tta(samples_dir):
    res = CliRunner().invoke(app, ["predict", str(samples_dir / "IM-0115-0001.jpeg"), "--tta", "--json"])
    assert res.exit_code == 0, res.output
    row = json.loads(res.output.strip().splitlines()[-1])
    assert row["label"] == "normal" and 0.0 <= row["score"] <= 1.0


def _framed(image: np.ndarray, scale: float = 0.8, grey: int = 40) -> np.ndarray:
    """The image shrunk to ``scale`` of the frame inside a uniform border (a collimator's shadow)."""
    s = image.shape[0]
    k = int(round(s * scale))
    out = np.full_like(image, grey)
    o = (s - k) // 2
    out[o:o + k, o:o + k] = np.asarray(Image.fromarray(image).resize((k, k), Image.BILINEAR))
    return out


def test_a_uniform_frame_is_trimmed_and_a_film_without_one_is_left_alone(samples_dir):
    from cxrtriage.contract.preprocess import border_box, trim_border

    film = read_radiograph(samples_dir / "person1_bacteria_1.jpeg").to_uint8()
    film = np.asarray(Image.fromarray(film).resize((224, 224), Image.BILINEAR))
    assert border_box(film) is None and trim_border(film) is film
    framed = _framed(film)
    top, bottom, left, right = border_box(framed)
    assert (top, left) == (22, 22) and (bottom, right) == (201, 201)
    assert np.abs(trim_border(framed).astype(float) - film).mean() < 6  # the film again, up to resampling


def test_maps_of_a_trimmed_film_go_back_where_the_crop_lay():
    from cxrtriage.contract.preprocess import uncrop_maps

    m = np.zeros((1, 14, 14), dtype=np.float32)
    m[0, 0, 0] = 1.0  # evidence in the crop's top-left corner
    back = uncrop_maps(m, (56, 168, 56, 168), 224)[0]
    assert np.unravel_index(back.argmax(), back.shape) in {(3, 3), (3, 4), (4, 3), (4, 4)}
    assert back[:3, :].max() == pytest.approx(0.0, abs=1e-6) and back[:, 12:].max() == pytest.approx(0.0, abs=1e-6)


def test_the_default_model_reads_a_framed_film_like_the_film(engine, samples_dir, tmp_path):
    assert engine.spec.input.border == "trim"
    film = read_radiograph(samples_dir / "person1_bacteria_1.jpeg").to_uint8()
    film = np.asarray(Image.fromarray(film).resize((224, 224), Image.BILINEAR))
    Image.fromarray(film).save(tmp_path / "film.png")
    Image.fromarray(_framed(film, 0.7)).save(tmp_path / "framed.png")
    plain, framed = engine.predict_files([tmp_path / "film.png", tmp_path / "framed.png"], heatmap=True)
    assert framed.score == pytest.approx(plain.score, abs=0.05)
    ring = np.concatenate([framed.heatmap[0], framed.heatmap[-1], framed.heatmap[:, 0], framed.heatmap[:, -1]])
    assert ring.max() < 0.2 < framed.heatmap[3:11, 3:11].max()  # the map lies on the film, not the frame
