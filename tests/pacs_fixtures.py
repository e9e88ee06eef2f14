"""Real Orthanc for the PACS tests, and DICOM radiographs to push into it.

Orthanc comes from Debian's packages (``scripts/install_orthanc.sh``). Each server
(:class:`testkit.local_orthanc.OrthancServer`) is started from
``/usr/sbin/Orthanc`` with its own JSON configuration on free loopback ports (HTTP and
DICOM), a temporary storage folder and the DICOMweb plugin (plus the Python plugin
running ``cxrtriage/pacs/orthanc_plugin.py`` when asked), and stopped afterwards; the
Debian service and ``/etc/orthanc`` are never used. Tests skip, saying why, when Orthanc
or a plugin is missing.

Use from a test module with ``pytest_plugins = ["pacs_fixtures"]`` or import the
fixtures into ``tests/conftest.py`` (``from pacs_fixtures import *``; importing this
file loads no PACS dependency).
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CXR_SHARED", ROOT.parent / "shared")) / "data" / "kermany-224"
_LAUNCHER = ("OrthancServer", "find_plugin", "free_port", "orthanc_missing")


def __getattr__(name: str):
    """``OrthancServer``, ``find_plugin``, ``free_port``, ``orthanc_missing`` from the package, on demand.

    Importing this file stays cheap (conftest may import it for every test run); the PACS
    modules and their dependencies load only when a PACS test needs them.
    """
    if name in _LAUNCHER:
        from testkit import local_orthanc

        return getattr(local_orthanc, name)
    raise AttributeError(name)


# -- radiographs ---------------------------------------------------------------------------

def radiograph_pixels(n: int = 1, offset: int = 0) -> list[tuple[str, np.ndarray]]:
    """Up to ``n`` real radiographs as uint8 arrays, normal and pneumonia alternating.

    From the bundled samples (``cxrtriage/assets/samples``), then ../shared when present.
    Each source image is used once (a sample's JPEG and the DICOM made from it count once).
    """
    from cxrtriage.io import IMAGE_SUFFIXES, read_radiograph

    candidates: list[Path] = []
    samples = ROOT / "cxrtriage" / "assets" / "samples"
    if samples.is_dir():
        candidates = sorted(p for p in samples.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if len(candidates) < n + offset and SHARED.is_dir():
        for cls in ("PNEUMONIA", "NORMAL"):
            candidates += sorted((SHARED / "train" / cls).glob("*.jpeg"))[: n + offset]
    sick = [p for p in candidates if "bacteria" in p.name or "virus" in p.name or "PNEUMONIA" in str(p)]
    well = [p for p in candidates if p not in sick]
    ordered = [p for pair in zip(well, sick) for p in pair] + well[len(sick):] + sick[len(well):]
    out: list[tuple[str, np.ndarray]] = []
    seen: set[str] = set()
    for p in ordered:
        stem = p.stem.removesuffix("_DX").removesuffix("_CR")
        if stem in seen:
            continue
        seen.add(stem)
        try:
            rg = read_radiograph(p)
        except Exception:
            continue
        if (rg.meta.get("view_position") or "PA") not in ("PA", "AP"):
            continue
        out.append((p.name, rg.to_uint8()))
    return out[offset:offset + n]


PATIENT = {"patient_id": "CXR-0042", "patient_name": "Müller^Jürgen", "patient_sex": "M",
           "patient_birth_date": "19600101", "accession_number": "ACC-77", "study_id": "S7",
           "study_description": "Chest PA", "extra": {"ReferringPhysicianName": "Doe^Jane"}}


def make_dicom(pixels: np.ndarray, variant: str = "dx", **overrides) -> bytes:
    """A Part-10 radiograph (fresh UIDs) of one of the test variants, as bytes.

    ``dx``: DX for presentation, MONOCHROME2, 12 bits; ``mono1``: CR, MONOCHROME1, 12 bits;
    ``jpeg``: DX, JPEG Baseline (8-bit lossy, as many CR/DX systems send);
    ``j2k``: DX, JPEG 2000 lossless; ``ct``: a CT slice; ``lateral``: DX with ViewPosition LL.
    """
    import pydicom
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEG2000Lossless, JPEGBaseline8Bit

    from testkit.make_dicom import build_dataset

    kw = dict(PATIENT)
    kw.update(overrides)
    px = pixels.astype(np.float32) / 255.0
    if variant == "dx":
        ds = build_dataset(px, modality="DX", bits_stored=12, **kw)
    elif variant == "mono1":
        ds = build_dataset(px, modality="CR", photometric="MONOCHROME1", bits_stored=12, **kw)
    elif variant == "j2k":
        ds = build_dataset(px, modality="DX", bits_stored=12, transfer_syntax=JPEG2000Lossless, **kw)
    elif variant == "jpeg":
        from PIL import Image

        ds = build_dataset(pixels, modality="DX", bits_stored=8, include_pixel_data=False, **kw)
        buf = io.BytesIO()
        Image.fromarray(pixels, mode="L").save(buf, format="JPEG", quality=90)
        ds.PixelData = encapsulate([buf.getvalue()])
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
        ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
        ds.LossyImageCompression = "01"
        ds.LossyImageCompressionRatio = f"{pixels.size / len(buf.getvalue()):.2f}"
        ds.LossyImageCompressionMethod = "ISO_10918_1"
    elif variant == "ct":
        ds = build_dataset(np.clip(np.rint(px * 4095), 0, 4095).astype(np.uint16), modality="CT", bits_stored=12,
                           view_position="", **kw)
    elif variant == "lateral":
        ds = build_dataset(px, modality="DX", bits_stored=12, view_position="LL", **kw)
    else:
        raise ValueError(f"unknown variant {variant!r}")
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


# -- fixtures ------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def orthanc_available() -> None:
    try:
        from testkit.local_orthanc import orthanc_missing
    except ImportError as exc:
        pytest.skip(f"PACS dependencies missing (pip install -e '.[pacs]'): {exc}")
    reason = orthanc_missing()
    if reason:
        pytest.skip(reason)


def _server(tmp: Path, **kw):
    from testkit.local_orthanc import OrthancServer

    yield from serve_orthanc(OrthancServer(tmp, **kw))


def serve_orthanc(srv):
    """Start ``srv`` (an :class:`OrthancServer`), yield it, throw it away afterwards."""
    try:
        srv.start()
    except RuntimeError as exc:
        srv.stop()
        pytest.fail(str(exc))
    try:
        yield srv
    finally:
        srv.stop(graceful=False)  # its storage is thrown away; a graceful stop takes seconds


@pytest.fixture
def orthanc(orthanc_available, tmp_path):
    """A fresh Orthanc (DICOMweb plugin, HTTP Basic auth) for one test."""
    yield from _server(tmp_path / "orthanc")


@pytest.fixture(scope="module")
def orthanc_module(orthanc_available, tmp_path_factory):
    """An Orthanc shared by the tests of one module."""
    yield from _server(tmp_path_factory.mktemp("orthanc"))


@pytest.fixture
def orthanc_python(orthanc_available, tmp_path):
    """A fresh Orthanc that also runs the cxr-triage Python plugin; skips if the plugin is missing."""
    from testkit.local_orthanc import find_plugin

    if find_plugin("OrthancPython") is None:
        pytest.skip("Orthanc Python plugin not found (Debian package orthanc-python)")
    yield from _server(tmp_path / "orthanc-py", python_plugin=True)


@pytest.fixture(scope="session")
def triage_engine():
    """One inference engine (the bundled model) for all PACS tests."""
    from cxrtriage.infer import Engine

    return Engine(threads=1)


@pytest.fixture(scope="session")
def cxr_pixels() -> list[tuple[str, np.ndarray]]:
    """Four real frontal radiographs (bundled samples); skips when the samples are missing."""
    found = radiograph_pixels(4)
    if len(found) < 4:
        pytest.skip("fewer than 4 sample radiographs in cxrtriage/assets/samples (and no ../shared)")
    return found
