"""The radiograph reader (cxrtriage.io) on real radiographs, and the DICOM writer."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from cxrtriage.io import (
    MIN_SIDE,
    CorruptImageError,
    ImageReadError,
    ImageTooLargeError,
    ImageTooSmallError,
    NotAnImageError,
    Radiograph,
    UnsupportedDicomError,
    WrongModalityError,
    read_radiograph,
    read_radiograph_bytes,
)
from testkit.bombs import dicom_bomb, png_bomb
from testkit.make_dicom import build_dataset, can_encode, radiograph_to_dicom

U8 = 1.0 / 255.0


def corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64))[0, 1])


def save_png(arr: np.ndarray, path: Path) -> Path:
    Image.fromarray(arr).save(path, format="PNG")
    return path


def check_radiograph(rg: Radiograph, shape=(224, 224)) -> None:
    assert rg.pixels.dtype == np.float32
    assert rg.pixels.shape == shape
    assert 0.0 <= float(rg.pixels.min()) and float(rg.pixels.max()) <= 1.0
    assert float(rg.pixels.std()) > 0.05  # a real radiograph, not a blank frame


# ---------------------------------------------------------------- JPEG / PNG


def test_rgb_jpeg_reads_as_8bit_grayscale(real_jpeg_path, real_gray_u8):
    with Image.open(real_jpeg_path) as img:
        assert img.mode == "RGB"  # the shared copies are RGB JPEGs
    rg = read_radiograph(real_jpeg_path)
    check_radiograph(rg)
    assert rg.meta["format"] == "jpeg" and rg.meta["bits"] == 8
    assert rg.meta["width"] == rg.meta["height"] == 224
    assert rg.source == str(real_jpeg_path)
    np.testing.assert_allclose(rg.pixels, real_gray_u8 / 255.0, atol=1e-6)
    np.testing.assert_array_equal(rg.to_uint8(), real_gray_u8)


def test_tinted_rgb_jpeg_gives_grayscale(tmp_path, real_gray_u8):
    g = real_gray_u8.astype(np.float64)
    rgb = np.stack([g, g * 0.9, g * 0.75], axis=-1).astype(np.uint8)
    path = tmp_path / "tinted.jpg"
    Image.fromarray(rgb, "RGB").save(path, quality=95)
    rg = read_radiograph(path)
    check_radiograph(rg)
    assert rg.pixels.ndim == 2
    assert corr(rg.pixels, real_gray_u8) > 0.99


def test_bytes_and_path_give_the_same_image(real_jpeg_path):
    a = read_radiograph(real_jpeg_path)
    b = read_radiograph_bytes(real_jpeg_path.read_bytes(), real_jpeg_path.name)
    np.testing.assert_array_equal(a.pixels, b.pixels)
    assert b.source == real_jpeg_path.name


def test_8bit_png(tmp_path, real_gray_u8):
    rg = read_radiograph(save_png(real_gray_u8, tmp_path / "cxr.png"))
    check_radiograph(rg)
    assert rg.meta["format"] == "png" and rg.meta["bits"] == 8
    np.testing.assert_allclose(rg.pixels, real_gray_u8 / 255.0, atol=1e-6)


def test_16bit_png_matches_8bit_source(tmp_path, real_gray_u8):
    rng = np.random.default_rng(0)
    # Scale to 16 bits and fill the low byte, so the file really uses 16 bits.
    g16 = (real_gray_u8.astype(np.uint32) * 257 + rng.integers(-128, 128, real_gray_u8.shape))
    g16 = np.clip(g16, 0, 65535).astype(np.uint16)
    path = save_png(g16, tmp_path / "cxr16.png")
    with Image.open(path) as img:
        assert img.mode.startswith("I")  # written as a 16-bit grayscale PNG
    rg = read_radiograph(path)
    check_radiograph(rg)
    assert rg.meta["bits"] == 16
    np.testing.assert_allclose(rg.pixels, g16 / 65535.0, atol=1e-6)
    np.testing.assert_allclose(rg.pixels, real_gray_u8 / 255.0, atol=0.6 * U8)


def test_64px_is_enough(tmp_path, real_gray_u8):
    small = np.asarray(Image.fromarray(real_gray_u8).resize((MIN_SIDE, 80)))
    rg = read_radiograph(save_png(small, tmp_path / "small.png"))
    assert rg.shape == (80, MIN_SIDE)


@pytest.mark.parametrize("size", [(1, 1), (32, 32), (200, 40)])
def test_too_small_png(tmp_path, real_gray_u8, size):
    w, h = size
    tiny = np.asarray(Image.fromarray(real_gray_u8).resize((w, h)))
    with pytest.raises(ImageTooSmallError, match=rf"{w}x{h} px; at least {MIN_SIDE} px"):
        read_radiograph(save_png(tiny, tmp_path / "tiny.png"))


@pytest.mark.parametrize("keep", [0.5, 0.9, 200, 10])
def test_truncated_jpeg(tmp_path, real_jpeg_path, keep):
    data = real_jpeg_path.read_bytes()
    n = int(len(data) * keep) if isinstance(keep, float) else keep
    path = tmp_path / "cut.jpeg"
    path.write_bytes(data[:n])
    with pytest.raises(CorruptImageError, match="truncated or corrupt"):
        read_radiograph(path)


def test_truncated_png(tmp_path, real_gray_u8):
    data = save_png(real_gray_u8, tmp_path / "full.png").read_bytes()
    with pytest.raises(CorruptImageError, match="truncated or corrupt"):
        read_radiograph_bytes(data[: len(data) // 2], "cut.png")


# ---------------------------------------------------------------- files that are not images


def test_text_file(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("Patient notes: no image here.\n" * 20)
    with pytest.raises(NotAnImageError, match="not a recognised image or DICOM file.*text"):
        read_radiograph(path)


def test_text_file_named_like_an_image(tmp_path):
    path = tmp_path / "chest.jpeg"
    path.write_text("not really a JPEG\n")
    with pytest.raises(NotAnImageError, match="not a recognised image"):
        read_radiograph(path)


def test_zip_renamed_dcm(tmp_path, real_jpeg_path):
    path = tmp_path / "study.dcm"
    with zipfile.ZipFile(path, "w") as zf:
        zf.write(real_jpeg_path, "image.jpeg")
    with pytest.raises(ImageReadError, match="not a DICOM file.*ZIP archive") as info:
        read_radiograph(path)
    assert isinstance(info.value, (NotAnImageError, CorruptImageError))


def test_random_bytes_renamed_dcm():
    data = np.random.default_rng(1).bytes(4096)
    with pytest.raises(NotAnImageError, match="not a DICOM file"):
        read_radiograph_bytes(data, "noise.dcm")


def test_empty_file(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(NotAnImageError, match="file is empty"):
        read_radiograph(path)


def test_zero_filled_file():
    with pytest.raises(CorruptImageError, match="only zero bytes"):
        read_radiograph_bytes(b"\x00" * 100, "cut.dcm")


def test_folder(tmp_path):
    with pytest.raises(NotAnImageError, match="is a folder"):
        read_radiograph(tmp_path)


def test_errors_are_value_errors():
    # Callers that only know ValueError still catch every read failure.
    for cls in (NotAnImageError, CorruptImageError, ImageTooSmallError,
                UnsupportedDicomError, WrongModalityError):
        assert issubclass(cls, ImageReadError) and issubclass(cls, ValueError)
    assert issubclass(WrongModalityError, UnsupportedDicomError)


# ---------------------------------------------------------------- DICOM pixel pipeline


def raw_pixels(path: Path) -> np.ndarray:
    return pydicom.dcmread(path).pixel_array


def test_dicom_8bit_monochrome2(dicom_dir, real_gray_u8):
    rg = read_radiograph(dicom_dir / "mono2.dcm")
    check_radiograph(rg)
    assert rg.meta["format"] == "dicom"
    assert rg.meta["photometric"] == "MONOCHROME2"
    assert rg.meta["modality"] == "DX" and rg.meta["view_position"] == "PA"
    assert rg.meta["bits"] == 8 and rg.meta["voi"] == "window"
    assert rg.meta["transfer_syntax"] == pydicom.uid.ExplicitVRLittleEndian
    assert rg.meta["sop_instance_uid"] == str(rg.dicom.SOPInstanceUID)
    np.testing.assert_allclose(rg.pixels, real_gray_u8 / 255.0, atol=1e-6)


def test_dicom_12bit_stored_in_16(dicom_dir, real_gray_u8):
    ds = pydicom.dcmread(dicom_dir / "mono2_12bit.dcm")
    assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit) == (16, 12, 11)
    assert int(ds.pixel_array.max()) <= 4095
    rg = read_radiograph(dicom_dir / "mono2_12bit.dcm")
    assert rg.meta["bits"] == 12
    np.testing.assert_allclose(rg.pixels, real_gray_u8 / 255.0, atol=1e-3)


def test_monochrome1_is_inverted(dicom_dir, real_gray_u8):
    m1, m2 = dicom_dir / "mono1.dcm", dicom_dir / "mono2.dcm"
    # Stored values of MONOCHROME1 run the other way (air bright) ...
    assert corr(raw_pixels(m1), raw_pixels(m2)) < -0.999
    # ... and the reader inverts them, so both read as the same picture.
    a, b = read_radiograph(m1), read_radiograph(m2)
    assert a.meta["photometric"] == "MONOCHROME1"
    assert corr(a.pixels, b.pixels) > 0.999
    np.testing.assert_allclose(a.pixels, real_gray_u8 / 255.0, atol=1e-6)


def test_monochrome1_of_the_same_stored_pixels_reads_inverted(dicom_dir, tmp_path):
    ds = pydicom.dcmread(dicom_dir / "mono2.dcm")
    ds.PhotometricInterpretation = "MONOCHROME1"
    relabelled = tmp_path / "relabelled.dcm"
    ds.save_as(relabelled)
    m1 = read_radiograph(relabelled).pixels
    m2 = read_radiograph(dicom_dir / "mono2.dcm").pixels
    assert corr(m1, m2) < -0.999
    np.testing.assert_allclose(m1, 1.0 - m2, atol=1e-6)


def test_rescale_slope_intercept_applied(dicom_dir, real_gray_u8, tmp_path):
    path = dicom_dir / "rescale_window.dcm"
    ds = pydicom.dcmread(path)
    assert (float(ds.RescaleSlope), float(ds.RescaleIntercept)) == (0.5, 100.0)
    assert int(ds.pixel_array.max()) > 40000  # window only fits after the rescale
    rg = read_radiograph(path)
    assert rg.meta["voi"] == "window" and rg.meta["bits"] == 16
    np.testing.assert_allclose(rg.pixels, real_gray_u8 / 255.0, atol=1e-3)
    # Without the rescale, the same window saturates the bright half of the image.
    del ds.RescaleSlope, ds.RescaleIntercept
    ds.save_as(tmp_path / "no_rescale.dcm")
    wrong = read_radiograph(tmp_path / "no_rescale.dcm").pixels
    assert np.abs(wrong - rg.pixels).max() > 0.3


def test_narrow_window_saturates(dicom_dir, real_gray_u8):
    ds = pydicom.dcmread(dicom_dir / "narrow_window.dcm")
    center, width = float(ds.WindowCenter), float(ds.WindowWidth)
    px = read_radiograph(dicom_dir / "narrow_window.dcm").pixels
    saturated = (px == 0.0) | (px == 1.0)
    assert saturated.mean() > 0.7
    g = real_gray_u8.astype(np.float64)
    assert np.all(px[g <= center - width / 2 - 0.5] == 0.0)
    assert np.all(px[g >= center + width / 2] == 1.0)
    inside = (g > center - width / 2) & (g < center + width / 2 - 1)
    assert inside.any() and np.all((px[inside] > 0.0) & (px[inside] < 1.0))


def test_window_function_sigmoid_and_threshold(dicom_dir, tmp_path):
    ds = pydicom.dcmread(dicom_dir / "mono2.dcm")
    ds.WindowCenter, ds.WindowWidth, ds.VOILUTFunction = 128, 64, "SIGMOID"
    ds.save_as(tmp_path / "sigmoid.dcm")
    sig = read_radiograph(tmp_path / "sigmoid.dcm").pixels
    raw = ds.pixel_array.astype(np.float64)
    np.testing.assert_allclose(sig, 1 / (1 + np.exp(-4 * (raw - 128) / 64)), atol=1e-6)
    ds.WindowWidth, ds.VOILUTFunction = 1, "LINEAR"  # width 1: a threshold
    ds.save_as(tmp_path / "threshold.dcm")
    thr = read_radiograph(tmp_path / "threshold.dcm").pixels
    assert np.all(np.isfinite(thr))
    np.testing.assert_array_equal(thr, (raw > 127.5).astype(np.float32))


def test_empty_window_falls_back_to_min_max(dicom_dir, tmp_path):
    ds = pydicom.dcmread(dicom_dir / "mono2.dcm")
    ds.WindowCenter = None
    ds.WindowWidth = None
    ds.save_as(tmp_path / "empty_window.dcm")
    rg = read_radiograph(tmp_path / "empty_window.dcm")
    assert rg.meta["voi"] == "minmax"
    assert rg.pixels.min() == 0.0 and rg.pixels.max() == 1.0


def test_voi_lut_applied(dicom_dir, real_gray_u8):
    path = dicom_dir / "voi_lut.dcm"
    ds = pydicom.dcmread(path)
    assert "WindowCenter" not in ds
    n, first, bits = (int(v) for v in ds.VOILUTSequence[0].LUTDescriptor)
    lut = np.asarray(ds.VOILUTSequence[0].LUTData, dtype=np.float64)
    rg = read_radiograph(path)
    assert rg.meta["voi"] == "lut"
    expected = lut[ds.pixel_array.astype(np.int64) - first] / (2**bits - 1)
    np.testing.assert_allclose(rg.pixels, expected, atol=1e-6)
    # The S-curve changes contrast: the result is not the linear ramp.
    assert np.abs(rg.pixels - real_gray_u8 / 255.0).max() > 0.05
    assert corr(rg.pixels, real_gray_u8) > 0.95


def test_custom_voi_lut_inverting(tmp_path, real_gray_u8):
    lut = np.arange(255, -1, -1, dtype=np.uint16)  # 256 entries, descending
    path = radiograph_to_dicom(real_gray_u8, tmp_path / "inv_lut.dcm", voi_lut=lut,
                               window=None, transfer_syntax=pydicom.uid.ImplicitVRLittleEndian)
    rg = read_radiograph(path)
    assert rg.meta["voi"] == "lut"
    np.testing.assert_allclose(rg.pixels, 1.0 - real_gray_u8 / 255.0, atol=1e-6)


COMPRESSED = {
    "j2k_lossless.dcm": pydicom.uid.JPEG2000Lossless,
    "rle_lossless.dcm": pydicom.uid.RLELossless,
    "jpegls_lossless.dcm": pydicom.uid.JPEGLSLossless,
}


@pytest.mark.parametrize("name", sorted(COMPRESSED))
def test_compressed_dicom_decodes_to_the_same_pixels(dicom_dir, name):
    path = dicom_dir / name
    if not path.is_file():
        pytest.skip(f"no encoder installed for {COMPRESSED[name].name}")
    ref = dicom_dir / "mono2_12bit.dcm"
    np.testing.assert_array_equal(raw_pixels(path), raw_pixels(ref))
    rg = read_radiograph(path)
    assert rg.meta["transfer_syntax"] == COMPRESSED[name]
    np.testing.assert_allclose(rg.pixels, read_radiograph(ref).pixels, atol=1e-6)


def test_dicom_without_part10_header(dicom_dir, real_gray_u8):
    ds = pydicom.dcmread(dicom_dir / "mono2.dcm")
    ds.preamble = None
    del ds.file_meta
    buf = io.BytesIO()
    ds.save_as(buf, implicit_vr=True, little_endian=True)
    data = buf.getvalue()
    assert data[128:132] != b"DICM"
    rg = read_radiograph_bytes(data, "bare")
    np.testing.assert_allclose(rg.pixels, real_gray_u8 / 255.0, atol=1e-6)


# ---------------------------------------------------------------- DICOM errors


def test_multiframe_dicom(dicom_dir):
    with pytest.raises(UnsupportedDicomError, match=r"multi-frame DICOM \(3 frames\)"):
        read_radiograph(dicom_dir / "multiframe.dcm")


def test_rgb_dicom(dicom_dir):
    with pytest.raises(UnsupportedDicomError, match=r"colour DICOM \(RGB\)") as info:
        read_radiograph(dicom_dir / "rgb.dcm")
    assert not isinstance(info.value, WrongModalityError)


@pytest.mark.parametrize("modality", ["CT", "MR"])
def test_wrong_modality(dicom_dir, modality):
    with pytest.raises(WrongModalityError, match=rf"modality {modality} is not a projection"):
        read_radiograph(dicom_dir / f"{modality.lower()}.dcm")


@pytest.mark.filterwarnings("ignore:End of file reached before delimiter")
@pytest.mark.parametrize("name", ["truncated.dcm", "truncated_j2k.dcm"])
def test_truncated_dicom(dicom_dir, name):
    if not (dicom_dir / name).is_file():
        pytest.skip("no JPEG 2000 encoder installed")
    with pytest.raises(CorruptImageError, match="truncated"):
        read_radiograph(dicom_dir / name)


@pytest.mark.parametrize("keep", [132, 300, 600])
def test_dicom_cut_in_the_header(dicom_dir, keep):
    # A cut that lands exactly between two elements leaves a valid dataset without pixel data
    # (generated UIDs vary in length, so any fixed offset may do that); elements are at least
    # 8 bytes long, so of three consecutive cut points at most one is such a boundary.
    data = (dicom_dir / "mono2.dcm").read_bytes()
    truncated = 0
    for cut in (keep, keep + 1, keep + 2):
        with pytest.raises(ImageReadError) as info:
            read_radiograph_bytes(data[:cut], "cut.dcm")
        if isinstance(info.value, CorruptImageError):
            assert "truncated" in str(info.value)
            truncated += 1
        else:
            assert "no pixel data" in str(info.value)
    assert truncated >= 2


def test_dicom_without_pixel_data(dicom_dir):
    with pytest.raises(UnsupportedDicomError, match="no pixel data"):
        read_radiograph(dicom_dir / "no_pixels.dcm")


# ---------------------------------------------------------------- the DICOM writer


def test_written_file_is_part10_with_identity(dicom_dir):
    path = dicom_dir / "mono2.dcm"
    data = path.read_bytes()
    assert data[:128] == b"\x00" * 128 and data[128:132] == b"DICM"
    ds = pydicom.dcmread(path)
    assert ds.file_meta.MediaStorageSOPClassUID == ds.SOPClassUID
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert ds.SOPClassUID == pydicom.uid.DigitalXRayImageStorageForPresentation
    assert ds.PresentationIntentType == "FOR PRESENTATION"
    assert (ds.PatientID, str(ds.PatientName)) == ("TEST-001", "Test^Radiograph")
    assert (ds.Modality, ds.ViewPosition, ds.BodyPartExamined) == ("DX", "PA", "CHEST")
    for uid in (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID):
        assert uid.is_valid and len(uid) <= 64


@pytest.mark.parametrize("name, sop_class", [
    ("mono1.dcm", pydicom.uid.ComputedRadiographyImageStorage),
    ("ct.dcm", pydicom.uid.CTImageStorage),
    ("mr.dcm", pydicom.uid.MRImageStorage),
    ("multiframe.dcm", pydicom.uid.MultiFrameGrayscaleByteSecondaryCaptureImageStorage),
    ("rgb.dcm", pydicom.uid.SecondaryCaptureImageStorage),
])
def test_sop_class_follows_modality(dicom_dir, name, sop_class):
    assert pydicom.dcmread(dicom_dir / name, stop_before_pixels=True).SOPClassUID == sop_class


def test_writer_keeps_given_uids(tmp_path, real_gray_u8):
    study = pydicom.uid.generate_uid()
    path = radiograph_to_dicom(real_gray_u8, tmp_path / "x.dcm", study_uid=study,
                               sop_instance_uid="1.2.3.4", transfer_syntax=pydicom.uid.RLELossless)
    ds = pydicom.dcmread(path)
    assert ds.StudyInstanceUID == study and ds.SOPInstanceUID == "1.2.3.4"


def test_writer_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="do not fit"):
        build_dataset(np.full((64, 64), 5000, np.uint16), bits_stored=12)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        build_dataset(np.full((64, 64), 1.5))
    with pytest.raises(ValueError, match="photometric"):
        build_dataset(np.zeros((64, 64), np.uint8), photometric="PALETTE COLOR")
    with pytest.raises(ValueError, match="bits_stored"):
        build_dataset(np.zeros((64, 64), np.uint8), bits_stored=20)


@pytest.mark.parametrize("bits", [8, 16])
def test_image_file_to_dicom_round_trip(tmp_path, real_jpeg_path, real_gray_u8, bits):
    from testkit.make_dicom import image_file_to_dicom

    src = real_jpeg_path
    if bits == 16:
        src = save_png(real_gray_u8.astype(np.uint16) * 257, tmp_path / "cxr16.png")
    out = image_file_to_dicom(src, tmp_path / "out" / "cxr.dcm", modality="CR",
                              patient_id="CONV-1", transfer_syntax=pydicom.uid.RLELossless)
    rg = read_radiograph(out)
    assert rg.meta["bits"] == bits and rg.dicom.PatientID == "CONV-1"
    np.testing.assert_allclose(rg.pixels, real_gray_u8 / 255.0, atol=1e-6)


def test_can_encode():
    assert can_encode(pydicom.uid.ExplicitVRLittleEndian)
    assert can_encode(pydicom.uid.RLELossless)
    assert not can_encode(pydicom.uid.JPEGBaseline8Bit)  # pydicom has no JPEG encoder


# ---------------------------------------------------------------- bundled samples


def test_bundled_samples(samples_dir):
    jpegs = sorted(samples_dir.glob("*.jpeg"))
    names = [p.name for p in jpegs]
    assert len(jpegs) == 8
    assert sum(n.startswith("IM-") for n in names) == 4
    assert sum("_bacteria_" in n for n in names) == 2
    assert sum("_virus_" in n for n in names) == 2
    for p in jpegs:
        check_radiograph(read_radiograph(p))
    total = sum(p.stat().st_size for p in samples_dir.iterdir() if p.is_file())
    assert total < 1_000_000
    readme = (samples_dir / "README.md").read_text()
    assert "CC BY 4.0" in readme and "10.17632/rscbjbr9sj.2" in readme
    for n in names:
        assert n in readme


@pytest.mark.parametrize("name, source, modality, photometric, patient", [
    ("IM-0115-0001_DX.dcm", "IM-0115-0001.jpeg", "DX", "MONOCHROME2", "SAMPLE-001"),
    ("person1_bacteria_1_CR.dcm", "person1_bacteria_1.jpeg", "CR", "MONOCHROME1", "SAMPLE-002"),
])
def test_bundled_dicom_samples(samples_dir, name, source, modality, photometric, patient):
    rg = read_radiograph(samples_dir / name)
    check_radiograph(rg)
    ds = rg.dicom
    assert (ds.Modality, ds.PhotometricInterpretation) == (modality, photometric)
    assert (ds.PatientID, ds.ViewPosition, ds.BodyPartExamined) == (patient, "PA", "CHEST")
    assert str(ds.PatientName).startswith("Sample^")
    assert ds.BitsStored == 12
    jpeg = read_radiograph(samples_dir / source)
    np.testing.assert_allclose(rg.pixels, jpeg.pixels, atol=1e-3)


# ---------------------------------------------------------------- the shared data set


@pytest.mark.shared
def test_reads_shared_radiographs(shared_root):
    rng = np.random.default_rng(0)
    for folder in ("NORMAL", "PNEUMONIA"):
        files = sorted((shared_root / "train" / folder).glob("*.jpeg"))
        assert files, f"no JPEGs in {shared_root / 'train' / folder}"
        for i in rng.choice(len(files), size=min(10, len(files)), replace=False):
            rg = read_radiograph(files[i])
            assert rg.pixels.ndim == 2 and min(rg.shape) >= MIN_SIDE
            assert rg.pixels.dtype == np.float32 and float(rg.pixels.std()) > 0.02


# ---------------------------------------------------------------- the pixel budget (decompression bombs)


@pytest.fixture(scope="module")
def bombs(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("bombs")
    return {"png": png_bomb(d / "bomb.png", 14000), "rle": dicom_bomb(d / "bomb_rle.dcm", 30000),
            "raw": dicom_bomb(d / "bomb_raw.dcm", 30000, rle=False)}


def test_bombs_are_small_files(bombs):
    assert bombs["png"].stat().st_size < 400_000
    assert bombs["rle"].stat().st_size < 2_000 and bombs["raw"].stat().st_size < 2_000


@pytest.mark.parametrize("kind", ["png", "rle", "raw"])
def test_bomb_refused_from_its_header(bombs, kind):
    with pytest.raises(ImageTooLargeError, match="not decoded") as info:
        read_radiograph(bombs[kind])
    assert isinstance(info.value, ImageReadError)
    if kind != "png":
        assert "30000x30000" in str(info.value) and "60 Mpx" in str(info.value)


def test_bombs_take_no_memory(bombs):
    """In a fresh process (so the peak RSS is the reader's own): all three bombs refused, peak
    memory far below one decode (196 MB for the PNG at 8 bits, 1.8 GB for the DICOM)."""
    import subprocess
    import sys

    code = ("import sys\n"
            "from cxrtriage.io import ImageTooLargeError, read_radiograph\n"
            "for p in sys.argv[1:]:\n"
            "    try:\n        read_radiograph(p)\n"
            "    except ImageTooLargeError:\n        pass\n"
            "    else:\n        raise SystemExit('decoded ' + p)\n"
            "hwm = [ln for ln in open('/proc/self/status') if ln.startswith('VmHWM')][0]\n"
            "print(int(hwm.split()[1]) // 1024)\n")  # peak RSS of this process image (ru_maxrss spans exec)
    out = subprocess.run([sys.executable, "-c", code, *map(str, bombs.values())], capture_output=True, text=True,
                         timeout=120, cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.strip()) < 180, f"peak RSS {out.stdout.strip()} MB"


def test_budget_is_configurable(tmp_path, real_gray_u8, monkeypatch):
    path = save_png(real_gray_u8, tmp_path / "film.png")
    h, w = real_gray_u8.shape
    assert read_radiograph(path).shape == (h, w)
    with pytest.raises(ImageTooLargeError, match="over the limit"):
        read_radiograph(path, max_pixels=h * w - 1)
    monkeypatch.setenv("CXR_MAX_PIXELS", str(h * w - 1))
    with pytest.raises(ImageTooLargeError):
        read_radiograph_bytes(path.read_bytes(), "film.png")
    monkeypatch.setenv("CXR_MAX_PIXELS", str(h * w))
    assert read_radiograph_bytes(path.read_bytes(), "film.png").shape == (h, w)


def test_pillow_bomb_warning_is_an_error(tmp_path):
    """Between Pillow's limit and twice it Pillow only warns; here that is an error, whatever budget
    the caller gives."""
    from PIL import Image as PILImage

    side = int((PILImage.MAX_IMAGE_PIXELS * 1.2) ** 0.5)
    path = png_bomb(tmp_path / "warn.png", side)
    with pytest.raises(ImageTooLargeError, match="implausibly large"):
        read_radiograph(path, max_pixels=10**10)


def test_decoding_is_float32(dicom_dir, real_jpeg_path):
    from cxrtriage.io import apply_window, modality_values

    assert read_radiograph(real_jpeg_path).pixels.dtype == np.float32
    ds = pydicom.dcmread(dicom_dir / "rescale_window.dcm")
    values = modality_values(ds.pixel_array, ds)
    assert values.dtype == np.float32
    assert apply_window(values, 1000.0, 500.0).dtype == np.float32
