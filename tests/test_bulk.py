"""Bulk triage into Parquet: sources, one row per image, bad files as rows, resume; Ray Data and DICOMweb."""

from __future__ import annotations

import io
import json
import shutil
import sys
from pathlib import Path

import pytest

from cxrtriage.bulk import BulkError, list_source

pytest.register_assert_rewrite("pacs_fixtures")
pytest_plugins = ["pacs_fixtures"]


@pytest.fixture
def archive(samples_dir, dicom_dir, tmp_path) -> Path:
    """The bundled radiographs (JPEG and DICOM), one extensionless DICOM, one broken file, one
    truncated DICOM and a README (not an image, left out)."""
    root = tmp_path / "archive"
    (root / "sub").mkdir(parents=True)
    for f in sorted(samples_dir.iterdir()):
        if f.suffix in (".jpeg", ".dcm"):
            shutil.copy(f, root / f.name)
    shutil.copy(dicom_dir / "mono2.dcm", root / "sub" / "IM000001")  # no suffix, as in DICOM archives
    shutil.copy(dicom_dir / "truncated.dcm", root / "sub" / "truncated.dcm")
    (root / "sub" / "broken.jpeg").write_bytes(b"not a radiograph")
    (root / "README.md").write_text("notes")
    return root


def _table(out: Path):
    import pyarrow.parquet as pq

    return pq.read_table(out).to_pylist()


# -- sources (no Ray needed) -------------------------------------------------------------------


def test_folder_and_csv_sources(archive, tmp_path):
    folder = [it["path"] for it in list_source(archive)]
    assert str(archive / "sub" / "IM000001") in folder and str(archive / "sub" / "broken.jpeg") in folder
    assert not any(p.endswith("README.md") for p in folder)
    assert len(folder) == len(set(folder))

    listing = tmp_path / "lists" / "paths.csv"
    listing.parent.mkdir()
    listing.write_text(f"path,note\n{folder[0]},a\n../archive/sub/IM000001,relative\n\n{folder[0]},duplicate\n")
    assert [it["path"] for it in list_source(listing)] == [folder[0], str(listing.parent / "../archive/sub/IM000001")]
    bare = tmp_path / "bare.csv"
    bare.write_text(f"{folder[1]}\n{folder[2]}\n")
    assert [it["path"] for it in list_source(bare)] == folder[1:3]
    with pytest.raises(BulkError, match="no such"):
        list_source(tmp_path / "missing")


# -- the local engine: rows, errors, resume ------------------------------------------------------


def test_rows_errors_and_resume(archive, tmp_path):
    pytest.importorskip("pyarrow")
    from cxrtriage.infer import Engine
    from cxrtriage.bulk import bulk_triage

    out = tmp_path / "results.parquet"
    first = archive / "first"
    first.mkdir()
    for f in sorted(archive.glob("*.jpeg"))[:3]:
        shutil.move(str(f), first / f.name)
    s1 = bulk_triage(first, out, model="cxr-pneumonia", engine="local", batch_size=2, flush_rows=2)
    assert (s1.listed, s1.scored, s1.errors) == (3, 3, 0)
    assert len(list(out.glob("*.parquet"))) == 2  # parts of 2 rows, written whole

    s2 = bulk_triage(archive, out, model="cxr-pneumonia", engine="local", batch_size=4)  # resume, whole archive
    assert s2.skipped == 3 and s2.scored == s2.listed - 3
    rows = {r["path"]: r for r in _table(out)}
    assert len(rows) == s2.listed == len(_table(out))  # one row per image, none twice

    engine = Engine()
    info, onnx = engine.spec, engine.onnx_path
    broken, truncated = rows[str(archive / "sub" / "broken.jpeg")], rows[str(archive / "sub" / "truncated.dcm")]
    for bad in (broken, truncated):
        assert bad["priority"] == "error" and bad["error"] and bad["error_type"] and bad["label"] is None
        assert bad["model_version"] == info.version
    dcm = rows[str(archive / "sub" / "IM000001")]
    assert dcm["sop_instance_uid"] and dcm["modality"] == "DX" and dcm["error"] is None
    good = [r for r in rows.values() if r["error"] is None]
    assert s2.errors == 2 and len(good) == len(rows) - 2
    ref = {p.source: p for p in engine.predict_files(list(rows))}
    for r in good:
        p = ref[r["path"]]
        assert r["label"] == p.label and r["priority"] == p.priority and r["gate_accepted"] is True
        assert r["p_pneumonia"] == pytest.approx(p.probabilities["pneumonia"], abs=1e-6)
        assert r["p_normal"] == pytest.approx(p.probabilities["normal"], abs=1e-6)
        assert (r["model_name"], r["model_version"]) == (info.name, info.version)

    assert bulk_triage(archive, out, model="cxr-pneumonia", engine="local").scored == 0  # nothing left to do

    # results of another model version are never mixed in
    other = tmp_path / "other"
    other.mkdir()
    for f in (onnx, onnx.with_suffix(".json")):
        shutil.copy(f, other / f.name)
    meta = json.loads((other / f"{onnx.stem}.json").read_text())
    meta["version"] = "retrained"
    (other / f"{onnx.stem}.json").write_text(json.dumps(meta))
    with pytest.raises(BulkError, match="another --out"):
        bulk_triage(archive, out, model=other / onnx.name, engine="local")


def test_without_a_model_each_film_is_routed_and_the_row_says_how(archive, tmp_path):
    pytest.importorskip("pyarrow")
    import numpy as np
    from PIL import Image

    from cxrtriage.bulk import bulk_triage, class_column
    from cxrtriage.infer import Engine, Router
    from testkit.make_dicom import radiograph_to_dicom

    pixels = np.asarray(Image.open(next(archive.glob("IM-*.jpeg"))).convert("L"))
    radiograph_to_dicom(pixels, archive / "sub" / "adult.dcm", modality="DX", extra={"PatientAge": "045Y"})
    radiograph_to_dicom(pixels, archive / "sub" / "child.dcm", modality="DX", extra={"PatientAge": "004Y"})
    out = tmp_path / "routed.parquet"
    summary = bulk_triage(archive, out, engine="local", batch_size=3)
    rows = {Path(r["path"]).name: r for r in _table(out)}
    assert summary.scored == len(rows) == summary.listed

    adult14 = Engine("cxr-adult14").spec
    finding = class_column(adult14.classes[0])
    adult, child = rows["adult.dcm"], rows["child.dcm"]
    assert (adult["model_name"], adult["routed_by"]) == ("cxr-adult14", "age")
    assert (child["model_name"], child["routed_by"]) == ("cxr-pneumonia", "age")
    # a pediatric-looking film of a 45-year-old: the adult model's own gate refuses it
    assert adult["priority"] == "refused" and adult["p_normal"] is None
    assert child[finding] is None and child["p_pneumonia"] is not None and child["p_normal"] is not None
    ref = {Path(p.source).name: p for p in Router().predict_files([r["path"] for r in rows.values()])}
    for name, r in rows.items():
        if r["error"] is None and name not in ("adult.dcm", "child.dcm"):  # JPEGs: the gates route
            assert (r["model_name"], r["routed_by"]) == (ref[name].model["name"], "gate")
            assert r["p_pneumonia"] == pytest.approx(ref[name].probabilities["pneumonia"], abs=1e-6)
    assert rows["broken.jpeg"]["priority"] == "error" and rows["broken.jpeg"]["model_name"].startswith("routed")

    assert bulk_triage(archive, out, engine="local").scored == 0  # resume: the routed rows count as done
    with pytest.raises(BulkError, match="another --out"):  # rows of the adult model are not the default's
        bulk_triage(archive, out, model="cxr-pneumonia", engine="local")


def test_plain_predict_is_unchanged_and_out_needs_an_engine(samples_dir):
    from typer.testing import CliRunner

    from cxrtriage.cli.main import app

    r = CliRunner().invoke(app, ["predict", "--json", str(samples_dir / "IM-0115-0001.jpeg")])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output.splitlines()[0])["label"] == "normal"
    r = CliRunner().invoke(app, ["predict", str(samples_dir), "--out", "x.parquet"])
    assert r.exit_code == 2 and "--engine" in r.output


# -- Ray Data ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    yield ray
    ray.shutdown()


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # Ray Data's own settings
def test_ray_engine_from_the_command_line(local_ray, archive, tmp_path):
    from typer.testing import CliRunner

    from cxrtriage.cli.main import app
    from cxrtriage.bulk import bulk_triage

    out = tmp_path / "results.parquet"
    args = ["predict", "--engine", "ray", str(archive), "--out", str(out), "--workers", "2", "--batch-size", "4",
            "--json"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    summary = _summary(r.output)
    assert summary["engine"] == "ray" and summary["workers"] == 2 and summary["errors"] == 2
    rows = _table(out)
    assert len(rows) == len({r["path"] for r in rows}) == summary["scored"] == summary["listed"]

    # the same rows as the local engine (the same Engine inside each actor)
    local = {r["path"]: r for r in _table(_local(bulk_triage, archive, tmp_path / "local.parquet"))}
    for row in rows:
        ref = local[row["path"]]
        for col in ("label", "priority", "p_pneumonia", "gate_accepted", "error_type", "sop_instance_uid"):
            assert row[col] == ref[col], (row["path"], col)

    r = CliRunner().invoke(app, args)  # rerun: everything already scored, no Ray job
    assert _summary(r.output)["skipped"] == summary["listed"]
    assert len(_table(out)) == len(rows)


def _summary(output: str) -> dict:
    return json.loads(next(line for line in output.splitlines() if line.startswith('{"out"')))


def _local(bulk_triage, source, out) -> Path:
    bulk_triage(source, out, engine="local")
    return out


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # Ray Data's own settings
def test_ray_engine_over_dicomweb(local_ray, orthanc, cxr_pixels, tmp_path):
    pytest.importorskip("dicomweb_client")
    import pydicom
    from pacs_fixtures import make_dicom

    from cxrtriage.bulk import DicomwebArchive, bulk_triage
    from cxrtriage.pacs.connection import PacsConnection

    sent = {}
    for variant, (_, px) in zip(("dx", "mono1", "lateral"), cxr_pixels):
        data = make_dicom(px, variant)
        orthanc.stow(data)
        sent[variant] = str(pydicom.dcmread(io.BytesIO(data)).SOPInstanceUID)
    orthanc.stow(make_dicom(cxr_pixels[0][1], "ct"))  # not CR/DX: not listed

    source = DicomwebArchive(PacsConnection(orthanc.url, **orthanc.credentials))
    out = tmp_path / "pacs.parquet"
    s = bulk_triage(orthanc.url, out, engine="ray", workers=2, batch_size=2, dicomweb=source)
    assert (s.listed, s.scored, s.errors) == (3, 3, 0)
    rows = {r["sop_instance_uid"]: r for r in _table(out)}
    assert set(rows) == set(sent.values())
    for variant, uid in sent.items():
        row = rows[uid]
        assert row["path"].endswith(f"/instances/{uid}") and row["study_instance_uid"]
        if variant == "lateral":  # the quality gate's verdict is a row too
            assert row["priority"] == "refused" and row["gate_accepted"] is False and row["gate_reason"]
        else:
            assert row["label"] in ("normal", "pneumonia") and row["gate_accepted"] is True
            assert row["p_normal"] + row["p_pneumonia"] == pytest.approx(1.0, abs=1e-5)
    assert bulk_triage(orthanc.url, out, engine="local", dicomweb=source).skipped == 3  # resume


def test_importing_the_package_never_imports_ray():
    import subprocess

    code = ("import sys, cxrtriage, cxrtriage.cli.main, cxrtriage.infer, cxrtriage.bulk; "
            "print('ray' in sys.modules, 'pyarrow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_bulk_pacs_and_infer_layers_point_one_way():
    """infer imports neither pacs nor bulk; pacs never imports bulk or serve (imports inside
    functions count too); their modules stay under 600 lines and functions under 80."""
    import ast

    root = Path(__file__).resolve().parents[1] / "cxrtriage"
    forbidden = {"infer": ("pacs", "bulk", "serve"), "pacs": ("bulk", "serve", "train"), "bulk": ("serve", "train")}
    for package, banned in forbidden.items():
        for path in sorted((root / package).rglob("*.py")):
            tree = ast.parse(path.read_text())
            assert len(path.read_text().splitlines()) <= 600, path
            for node in ast.walk(tree):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    assert node.end_lineno - node.lineno + 1 <= 80, f"{path}:{node.lineno} {node.name}"
                names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                         else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
                for name in names:
                    parts = name.split(".")
                    assert not (parts[0] == "cxrtriage" and len(parts) > 1 and parts[1] in banned), \
                        f"{path} imports {name}"
