"""The front door: one model choice for every verb, exit statuses a script can use, and tables
that stay readable in an 80-column terminal."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxrtriage.cli.common import EXIT_REFUSED, EXIT_UNREADABLE

ROOT = Path(__file__).resolve().parents[1]
NIH = ROOT.parent / "shared" / "data" / "nih-cxr14"


def cxr(*args: str, columns: int = 80) -> subprocess.CompletedProcess:
    """``cxr ARGS`` as a user runs it (a real process, output to a pipe, COLUMNS set)."""
    env = {**os.environ, "COLUMNS": str(columns), "NO_COLOR": "1", "TERM": "dumb"}
    return subprocess.run([sys.executable, "-m", "cxrtriage", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


def test_predict_exits_non_zero_when_an_input_cannot_be_read(samples_dir):
    res = cxr("predict", "README.md", str(samples_dir / "IM-0115-0001.jpeg"))
    assert res.returncode == EXIT_UNREADABLE, res.stderr
    out = " ".join(res.stdout.split())  # long notes wrap at 80 columns
    assert "not a recognised image" in out and "IM-0115-0001.jpeg" in out  # the good one still printed
    res = cxr("predict", "--json", "README.md")
    assert res.returncode == EXIT_UNREADABLE
    assert json.loads(res.stdout)["error_type"] == "NotAnImageError"


def test_predict_exits_zero_when_every_film_is_scored_and_4_when_one_is_refused(samples_dir, tmp_path):
    assert cxr("predict", str(samples_dir)).returncode == 0
    noise = np.random.default_rng(0).integers(0, 256, (256, 256), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "noise.png")
    res = cxr("predict", str(tmp_path / "noise.png"), str(samples_dir / "IM-0115-0001.jpeg"))
    assert res.returncode == EXIT_REFUSED, res.stdout
    assert "refused" in res.stdout


def test_usage_errors_exit_2(tmp_path):
    assert cxr("predict", str(tmp_path / "missing.png")).returncode == 2
    assert cxr("predict", "--model", "no-such-model", str(ROOT / "cxrtriage/assets/samples")).returncode == 2


def test_tables_fit_80_columns_without_cutting_names(samples_dir):
    for args in (("models",), ("predict", str(samples_dir))):
        res = cxr(*args)
        assert res.returncode == 0, res.stderr
        lines = res.stdout.splitlines()
        assert max(len(line) for line in lines) <= 80, "\n".join(lines)
        assert "…" not in res.stdout, res.stdout
    shown = cxr("models").stdout
    for name in ("cxr-pneumonia", "cxr-pneumonia3", "cxr-adult14"):
        assert f" {name} " in shown
    table = cxr("predict", str(samples_dir)).stdout
    assert "pneumonia  0.999  urgent    cxr-pneumonia" in table  # label, score, priority and model whole


def test_explain_refusal_names_each_model_and_its_reason(tmp_path):
    noise = np.random.default_rng(1).integers(0, 256, (256, 256), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "noise.png")
    res = cxr("explain", str(tmp_path / "noise.png"), "--out", str(tmp_path / "x"))
    assert res.returncode == EXIT_REFUSED
    out = " ".join(res.stdout.split())
    assert "refused" in out and "cxr-pneumonia:" in out and "cxr-adult14:" in out, out


def test_explain_uses_the_model_predict_chooses(samples_dir, tmp_path):
    res = cxr("explain", str(samples_dir / "person1_bacteria_1.jpeg"), "--out", str(tmp_path / "x"))
    assert res.returncode == 0 and "(cxr-pneumonia)" in res.stdout, res.stdout + res.stderr


@pytest.mark.skipif(not NIH.is_dir(), reason="needs ../shared/data/nih-cxr14 (adult NIH films)")
def test_an_adult_film_is_explained_by_the_model_predict_chose(tmp_path):
    film = sorted((NIH / "images").glob("*.jpg"))[0]
    chosen = json.loads(cxr("predict", "--json", str(film)).stdout)["model"]["name"]
    assert chosen == "cxr-adult14"
    res = cxr("explain", str(film), "--out", str(tmp_path / "x"), "--npy")
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"({chosen})" in res.stdout and "refused" not in res.stdout
    heat = np.load(tmp_path / "x" / f"{film.stem}.heatmap.npy")
    assert heat.ndim == 2 and 0.0 <= heat.min() and heat.max() == pytest.approx(1.0)
    assert (tmp_path / "x" / f"{film.stem}.heatmap.png").stat().st_size > 1000
