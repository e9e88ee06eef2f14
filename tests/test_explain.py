"""Heatmaps: overlays, `cxr explain`, and the two sanity checks (randomisation, deletion)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from cxrtriage.cli.main import app
from cxrtriage.explain import render_overlay
from testkit.explain_checks import RandomisedGraph, deletion_check, randomisation_check
from cxrtriage.infer import DEFAULT_MODEL, Engine


def test_cli_explain_writes_overlays_and_heatmaps(samples_dir, tmp_path):
    res = CliRunner().invoke(app, ["explain", str(samples_dir / "person1_bacteria_1.jpeg"),
                                   str(samples_dir / "IM-0115-0001_DX.dcm"), "--out", str(tmp_path), "--npy"])
    assert res.exit_code == 0, res.output
    for stem in ("person1_bacteria_1", "IM-0115-0001_DX"):
        img = Image.open(tmp_path / f"{stem}.heatmap.png")
        assert img.mode == "RGB" and img.width >= 512
        heat = np.load(tmp_path / f"{stem}.heatmap.npy")
        assert heat.ndim == 2 and heat.min() >= 0 and heat.max() == pytest.approx(1.0)


def test_overlay_keeps_the_aspect_ratio_and_shows_the_heatmap():
    pixels = np.tile(np.linspace(0, 1, 300, dtype=np.float32), (200, 1))  # 300 wide, 200 high
    heat = np.zeros((8, 8), np.float32)
    heat[2, 5] = 1.0
    plain = np.asarray(render_overlay(pixels, None, "t"))
    over = np.asarray(render_overlay(pixels, heat, "t"))
    assert plain.shape[1] == 512  # upscaled for legibility, width:height of the image kept
    diff = np.abs(over[: plain.shape[0]].astype(int) - plain.astype(int)).sum(axis=2)
    ys, xs = np.nonzero(diff > 30)
    assert xs.mean() > 256  # the hot spot is in the right half, where the heatmap put it


def test_randomised_weights_change_the_heatmap(samples_dir):
    from cxrtriage.data import to_model_input
    from cxrtriage.io import read_radiograph

    engine = Engine()
    files = sorted(samples_dir.glob("*.jpeg"))
    x = np.stack([to_model_input(read_radiograph(f), engine.spec.input_size) for f in files])
    res = randomisation_check(engine, x)
    assert res["rank_corr_self"] == pytest.approx(1.0)
    assert res["rank_corr_random"] < 0.5, res
    # and the randomised graph really has other weights: its probabilities differ
    assert np.abs(RandomisedGraph(DEFAULT_MODEL).run_arrays(x)["probs"] - engine.run_arrays(x)["probs"]).max() > 0.05


def test_deleting_the_hot_spots_lowers_the_score_more_than_the_same_region_elsewhere(val_images):
    # the control is the heatmap's own region moved to a random place (same size and shape);
    # scattered random pixels are reported too, but they measure noise sensitivity as well
    images, labels = val_images
    pos = images[labels == 1][:300]
    res = deletion_check(Engine(), pos, fraction=0.1, seed=0)
    assert res["n"] == len(pos)
    assert res["mean_drop_top"] > res["mean_drop_moved"] + 0.02, res
    assert res["mean_drop_top"] > 0.02, res
