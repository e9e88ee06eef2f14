"""The three-class COVID-19 recipe end to end on miniature folders: build (cxrtriage.train.covid3), the
sidecar's name and population, ``cxr evaluate`` with a manifest, the patient-grouped report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from covid_fixtures import make_covid_folders

from cxrtriage.contract import ModelSpec
from cxrtriage.data.covid_sources import covid3_films
from cxrtriage.train.covid3 import NAME, build_covid3
from cxrtriage.train.covid_report import main as report_main


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("covid3")
    films = covid3_films(make_covid_folders(root / "data"))
    onnx = build_covid3(films, root / "run", size=96, cache_dir=str(root / "cache"))
    assert onnx == root / "run" / "model.onnx"
    return root / "run"


def test_built_model_is_cxr_covid3_with_heatmap_gate_and_no_population(run):
    spec = ModelSpec.load(run / "model.onnx")
    assert spec.name == NAME and spec.task == "covid3"
    assert tuple(spec.classes) == ("normal", "covid19", "other_pneumonia")
    assert spec.has_cam and "embedding" in spec.outputs
    assert spec.input.intensity == "clahe" and spec.input.size == 96
    # no population: routing by age or gate never picks it; it scores a film only when named
    assert spec.population is None
    assert (run / "model.gate.npz").exists()
    assert spec.provenance["data"]["sources"] == ["covid-cxnet", "figure1", "hannover", "ieee8023", "nih"]


def test_cxr_evaluate_reports_three_classes_from_a_manifest(run):
    out = subprocess.run([sys.executable, "-m", "cxrtriage", "evaluate", "--model", str(run), "--manifest",
                          str(run / "split.csv"), "--split", "train", "--json", "--n-boot", "50"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["classes"] == ["normal", "covid19", "other_pneumonia"]
    cm = r["multiclass"]["confusion_matrix"]
    assert len(cm) == 3 and sum(map(sum, cm)) == r["n"]
    assert r["macro_auc"] is not None and set(r["multiclass"]["per_class_auc"]) == set(r["classes"])


def test_patient_grouped_report_of_the_model(run, capsys):
    report_main(["--model", str(run), "--manifest", str(run / "split.csv"), "--n-boot", "50", "--json"])
    r = json.loads(capsys.readouterr().out)
    assert r["n"] == 18 and r["patients"] == 14
    assert set(r["per_class"]) == {"normal", "covid19", "other_pneumonia"}
    assert all(e["sensitivity_ci"] is not None for e in r["per_class"].values())
    with pytest.raises(SystemExit, match="no films in split 'test'"):
        report_main(["--model", str(run), "--manifest", str(run / "split.csv"), "--split", "test"])


def test_build_refuses_films_without_every_class(tmp_path):
    films = [f for f in covid3_films(make_covid_folders(tmp_path / "data")) if f.label != "normal"]
    with pytest.raises(ValueError, match="needs films of every class"):
        build_covid3(films, tmp_path / "run", size=96)
    with pytest.raises(ValueError, match="sources must be one of"):
        build_covid3(covid3_films(tmp_path / "data"), tmp_path / "run", size=96, sources="ignored")
