"""Shared pytest fixtures.

Data
----
* ``SHARED``: the shared Kermany radiographs, ``$CXR_SHARED_DIR`` when set, else
  ``../shared/data/kermany-224`` next to the checkout. Tests that need them take the
  ``shared_root`` fixture, which skips when the folder is absent. Run
  ``CXR_SHARED_DIR=/nonexistent pytest`` to check the suite without them.
* ``SAMPLES``: the radiographs bundled in ``cxrtriage/assets/samples`` (always there).
* ``dicom_dir``: DICOM test objects built once per session from a real radiograph.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "cxrtriage" / "assets" / "samples"
_DEFAULT_SHARED = Path(__file__).parents[1] / ".." / "shared" / "data" / "kermany-224"
SHARED = Path(os.environ.get("CXR_SHARED_DIR") or _DEFAULT_SHARED).resolve()
SHARED_SKIP_REASON = "needs ../shared/data/kermany-224 (the shared Kermany radiographs)"

# The radiograph the DICOM fixtures are made from; it is also a bundled sample.
SOURCE_RADIOGRAPH = ("NORMAL", "IM-0115-0001.jpeg")


def shared_available() -> bool:
    return (SHARED / "train").is_dir()


# ---------------------------------------------------------------- data locations


@pytest.fixture(scope="session")
def shared_root() -> Path:
    """The shared Kermany folder (with ``train/NORMAL`` and ``train/PNEUMONIA``)."""
    if not shared_available():
        pytest.skip(SHARED_SKIP_REASON)
    return SHARED


@pytest.fixture(scope="session")
def samples_dir() -> Path:
    """The sample radiographs shipped with the package."""
    return SAMPLES


@pytest.fixture(scope="session")
def real_jpeg_path() -> Path:
    """A real chest radiograph (224x224 RGB JPEG): shared copy if present, else the sample."""
    folder, name = SOURCE_RADIOGRAPH
    shared = SHARED / "train" / folder / name
    return shared if shared.is_file() else SAMPLES / name


@pytest.fixture(scope="session")
def real_gray_u8(real_jpeg_path: Path) -> np.ndarray:
    """``real_jpeg_path`` as an 8-bit grayscale array (Pillow's luma conversion)."""
    with Image.open(real_jpeg_path) as img:
        return np.asarray(img.convert("L"), dtype=np.uint8).copy()


# ---------------------------------------------------------------- DICOM objects

# File name -> what it is. Built by ``dicom_dir``.
DICOM_FILES = {
    "mono2.dcm": "DX MONOCHROME2, 8 bits, full-range window (the 8-bit reference)",
    "mono2_12bit.dcm": "DX MONOCHROME2, 12 bits stored in 16, uncompressed (compression reference)",
    "mono1.dcm": "CR MONOCHROME1, 8 bits, stored values inverted, full-range window",
    "rescale_window.dcm": "DX MONOCHROME2, 16 bits, rescale 0.5/+100, full window in rescaled units",
    "narrow_window.dcm": "DX MONOCHROME2, 8 bits, window 20 wide around the median",
    "voi_lut.dcm": "DX MONOCHROME2, 12 bits, VOI LUT Sequence (S-curve) and no window",
    "j2k_lossless.dcm": "as mono2_12bit, JPEG 2000 Lossless",
    "rle_lossless.dcm": "as mono2_12bit, RLE Lossless",
    "jpegls_lossless.dcm": "as mono2_12bit, JPEG-LS Lossless (only when pyjpegls is installed)",
    "multiframe.dcm": "DX, 3 frames",
    "rgb.dcm": "DX, RGB colour",
    "ct.dcm": "CT Image Storage",
    "mr.dcm": "MR Image Storage",
    "truncated.dcm": "mono2_12bit cut in half",
    "truncated_j2k.dcm": "j2k_lossless cut in half",
    "no_pixels.dcm": "DX header without Pixel Data",
}


@pytest.fixture(scope="session")
def dicom_dir(tmp_path_factory: pytest.TempPathFactory, real_gray_u8: np.ndarray) -> Path:
    """A folder of DICOM test objects (see ``DICOM_FILES``) made from a real radiograph."""
    from pydicom import uid

    from testkit.make_dicom import can_encode, radiograph_to_dicom

    out = tmp_path_factory.mktemp("dicom")
    g = real_gray_u8
    common = dict(patient_id="TEST-001", patient_name="Test^Radiograph")

    def write(name: str, pixels: np.ndarray = g, **kwargs) -> Path:
        return radiograph_to_dicom(pixels, out / name, **common, **kwargs)

    write("mono2.dcm", modality="DX", window="full")
    write("mono2_12bit.dcm", modality="DX", bits_stored=12, window="full")
    write("mono1.dcm", modality="CR", photometric="MONOCHROME1", window="full")
    write("rescale_window.dcm", g.astype(np.uint16) * 257, modality="DX", bits_stored=16,
          rescale=(0.5, 100.0), window="full")
    write("narrow_window.dcm", modality="DX", window=(float(np.median(g)), 20.0))
    write("voi_lut.dcm", modality="DX", bits_stored=12, voi_lut=True, window=None)
    syntaxes = {
        "j2k_lossless.dcm": uid.JPEG2000Lossless,
        "rle_lossless.dcm": uid.RLELossless,
        "jpegls_lossless.dcm": uid.JPEGLSLossless,
    }
    for name, ts in syntaxes.items():
        if can_encode(ts):
            write(name, modality="DX", bits_stored=12, window="full", transfer_syntax=ts)
    write("multiframe.dcm", modality="DX", number_of_frames=3)
    write("rgb.dcm", modality="DX", rgb=True)
    write("ct.dcm", modality="CT", bits_stored=12, view_position="")
    write("mr.dcm", modality="MR", view_position="")
    write("no_pixels.dcm", modality="DX", include_pixel_data=False)
    for src, dst in (("mono2_12bit.dcm", "truncated.dcm"), ("j2k_lossless.dcm", "truncated_j2k.dcm")):
        if (out / src).is_file():
            data = (out / src).read_bytes()
            (out / dst).write_bytes(data[: len(data) // 2])
    return out


@pytest.fixture(scope="session")
def val_images(shared_root: Path) -> tuple[np.ndarray, np.ndarray]:
    """Validation radiographs of the bundled model's patient-wise split at its input size:
    (uint8 images (N, S, S), labels 0 = normal / 1 = pneumonia)."""
    from cxrtriage.data import kermany_samples, load_cached, patient_split
    from cxrtriage.infer import load_spec

    info = load_spec(None)
    seed = info.training_seed
    val = [s for s in patient_split(kermany_samples(shared_root, "train"), 0.2, seed) if s.split == "val"]
    cache = Path(os.environ.get("CXR_CACHE_DIR", ROOT / ".cache" / "images"))
    arr = np.asarray(load_cached([s.path for s in val], info.input_size, cache, progress=False))
    return arr, np.array([s.label != "normal" for s in val], dtype=int)
