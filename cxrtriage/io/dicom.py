"""DICOM projection radiographs (CR / DX) through pydicom and its pixel-data plugins."""

from __future__ import annotations

import io as _io
import math

import numpy as np
import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from cxrtriage.io.errors import (
    CorruptImageError,
    ImageReadError,
    UnsupportedDicomError,
    WrongModalityError,
)
from cxrtriage.io.limits import check_pixel_budget

RADIOGRAPH_MODALITIES = frozenset({"CR", "DX", "DR", "RG"})

_UNDEFINED_LENGTH = 0xFFFFFFFF
_PIXEL_DATA_TAG_LE = b"\xe0\x7f\x10\x00"
_VR_CODES = frozenset(
    b"AE AS AT CS DA DS DT FD FL IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM "
    b"UC UI UL UN UR US UT UV".split()
)
_RAW_DATASET_GROUPS = (0x0002, 0x0008)


def looks_like_dicom(data: bytes) -> bool:
    """A Part-10 file has 'DICM' after a 128-byte preamble."""
    return len(data) >= 132 and data[128:132] == b"DICM"


def looks_like_raw_dicom(data: bytes) -> bool:
    """A dataset without the Part-10 header (old ACR-NEMA style or a bare dump).

    It starts with a group 0002 or 0008 element in little- or big-endian order,
    followed by an explicit VR code or a plausible implicit-VR length.
    """
    if len(data) < 8:
        return False
    groups = (int.from_bytes(data[0:2], "little"), int.from_bytes(data[0:2], "big"))
    if not any(g in _RAW_DATASET_GROUPS for g in groups):
        return False
    if data[4:6] in _VR_CODES:
        return True
    return int.from_bytes(data[4:8], "little") <= len(data) - 8


def _check_complete(ds: pydicom.Dataset, data: bytes, name: str) -> None:
    """Raise CorruptImageError when pydicom silently stopped at a truncated element."""
    for tag in list(ds.keys()):
        elem = ds.get_item(tag)
        if (
            isinstance(elem, RawDataElement)
            and elem.length != _UNDEFINED_LENGTH
            and elem.value is not None
            and len(elem.value) < elem.length
        ):
            raise CorruptImageError(
                f"{name}: DICOM file is truncated (element {elem.tag} needs {elem.length} "
                f"bytes, only {len(elem.value)} left)"
            )
    if "PixelData" not in ds and _PIXEL_DATA_TAG_LE in data:
        # pydicom drops encapsulated pixel data whose items run past the end of file.
        raise CorruptImageError(f"{name}: DICOM pixel data is truncated or damaged")


def parse_dicom(data: bytes, name: str) -> pydicom.Dataset:
    """Parse DICOM bytes, mapping pydicom's failures to our typed errors."""
    try:
        ds = pydicom.dcmread(_io.BytesIO(data), force=not looks_like_dicom(data))
    except InvalidDicomError as exc:
        raise CorruptImageError(f"{name}: not a valid DICOM file ({exc})") from exc
    except Exception as exc:  # pydicom raises many kinds on damaged input
        raise CorruptImageError(f"{name}: DICOM file is truncated or corrupt ({exc})") from exc
    try:
        _check_complete(ds, data, name)
    except ImageReadError:
        raise
    except Exception as exc:
        raise CorruptImageError(f"{name}: DICOM header is damaged ({exc})") from exc
    if len(ds) == 0:
        raise CorruptImageError(f"{name}: DICOM file ends after its header (truncated)")
    _ensure_transfer_syntax(ds)
    return ds


def _ensure_transfer_syntax(ds: pydicom.Dataset) -> None:
    """Give a dataset read without a File Meta header the syntax it was parsed with."""
    meta = getattr(ds, "file_meta", None)
    if meta is not None and meta.get("TransferSyntaxUID"):
        return
    implicit, little = getattr(ds, "original_encoding", (None, None))
    if implicit is None or little is None:
        return
    if meta is None:
        ds.file_meta = meta = FileMetaDataset()
    if implicit:
        meta.TransferSyntaxUID = ImplicitVRLittleEndian
    else:
        meta.TransferSyntaxUID = ExplicitVRLittleEndian if little else ExplicitVRBigEndian


def _first(value):
    if isinstance(value, (pydicom.multival.MultiValue, list, tuple)):
        return value[0] if len(value) else None
    return value


def header_number(value, default: float | None = None) -> float | None:
    """A DS/IS/US value (possibly multi-valued or empty) as a float, else ``default``."""
    value = _first(value)
    if value is None or (isinstance(value, str) and not value.strip()):
        return default
    try:
        out = float(value)
    except (TypeError, ValueError):
        return default
    return out if math.isfinite(out) else default


def modality_values(raw: np.ndarray, ds: pydicom.Dataset, name: str = "<dicom>") -> np.ndarray:
    """Stored values -> modality values, float32 (Modality LUT Sequence or rescale slope/intercept)."""
    if ds.get("ModalityLUTSequence"):
        try:
            return np.asarray(apply_modality_lut(raw, ds), dtype=np.float32)
        except Exception as exc:
            raise CorruptImageError(f"{name}: cannot apply the Modality LUT ({exc})") from exc
    slope = header_number(ds.get("RescaleSlope"), 1.0)
    intercept = header_number(ds.get("RescaleIntercept"), 0.0)
    if slope == 0:
        raise CorruptImageError(f"{name}: Rescale Slope is 0, the image would be blank")
    return raw.astype(np.float32) * np.float32(slope) + np.float32(intercept)


def apply_window(arr: np.ndarray, center: float, width: float, function: str = "LINEAR") -> np.ndarray:
    """VOI window of DICOM PS3.3 C.11.2.1.2 (LINEAR, LINEAR_EXACT, SIGMOID), mapped to [0, 1].

    ``arr``: modality values (see :func:`modality_values`); the result keeps its float dtype."""
    if function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(np.clip(-4.0 * (arr - center) / width, -700.0, 700.0)))
    if function == "LINEAR_EXACT":
        return np.clip((arr - (center - width / 2.0)) / width, 0.0, 1.0)
    if width <= 1.0:  # a width of 1 is a threshold at center - 0.5
        return (arr > center - 0.5).astype(arr.dtype if arr.dtype.kind == "f" else np.float32)
    lo = center - 0.5 - (width - 1) / 2
    return np.clip((arr - lo) / (width - 1), 0.0, 1.0)


def _lut_values(item: pydicom.Dataset, ds: pydicom.Dataset) -> np.ndarray:
    elem = item["LUTData"]
    value = elem.value
    if isinstance(value, (bytes, bytearray)):
        little = getattr(ds, "original_encoding", (None, True))[1]
        return np.frombuffer(value, dtype="<u2" if little is not False else ">u2").astype(np.int64)
    if isinstance(value, int):
        value = [value]
    return np.asarray(list(value), dtype=np.int64)


def apply_voi_lut_sequence(arr: np.ndarray, ds: pydicom.Dataset, name: str = "<dicom>") -> np.ndarray:
    """First item of the VOI LUT Sequence applied to modality values, mapped to [0, 1] (float32)."""
    try:
        item = ds.VOILUTSequence[0]
        desc = [int(v) for v in item.LUTDescriptor]
        lut = _lut_values(item, ds)
    except Exception as exc:
        raise CorruptImageError(f"{name}: VOI LUT Sequence is damaged ({exc})") from exc
    if len(desc) != 3 or lut.size == 0:
        raise CorruptImageError(f"{name}: VOI LUT Sequence is damaged (descriptor {desc})")
    entries, first, bits = desc
    entries = entries or 65536
    if int(ds.get("PixelRepresentation", 0) or 0) == 1 and first > 32767:
        first -= 65536  # second descriptor value is SS for signed pixel data
    lut = lut[:entries]
    peak = float((1 << (bits if 1 <= bits <= 16 else 16)) - 1)
    if lut.max() > peak:  # descriptor understates the LUT depth
        peak = float((1 << int(lut.max()).bit_length()) - 1)
    idx = np.clip(np.rint(arr).astype(np.int32) - first, 0, lut.size - 1)
    return lut[idx].astype(np.float32) / np.float32(peak)


def check_dicom_budget(ds: pydicom.Dataset, name: str, frames: int = 1, max_pixels: int | None = None) -> None:
    """Rows x Columns x frames x samples at Bits Allocated, from the header, against the pixel budget
    (before ``pixel_array`` allocates anything)."""
    rows = int(header_number(ds.get("Rows"), 0) or 0)
    cols = int(header_number(ds.get("Columns"), 0) or 0)
    samples = int(header_number(ds.get("SamplesPerPixel"), 1) or 1)
    bits = int(header_number(ds.get("BitsAllocated"), 16) or 16)
    check_pixel_budget(name, cols, rows, frames=frames * max(1, samples), bits=bits, max_pixels=max_pixels)


def read_dicom(data: bytes, name: str, max_pixels: int | None = None) -> tuple[np.ndarray, dict, pydicom.Dataset]:
    """Decode a single-frame grayscale CR/DX DICOM into float32 [0, 1] display values
    (refusing an image over ``max_pixels`` from its header, before decoding)."""
    ds = parse_dicom(data, name)
    try:
        return _read_dataset(ds, name, max_pixels)
    except ImageReadError:
        raise
    except Exception as exc:  # a damaged element value surfacing on access
        raise CorruptImageError(f"{name}: DICOM header is damaged ({exc})") from exc


def _read_dataset(ds: pydicom.Dataset, name: str,
                  max_pixels: int | None = None) -> tuple[np.ndarray, dict, pydicom.Dataset]:
    modality = str(ds.get("Modality", "") or "").strip().upper()
    if modality and modality not in RADIOGRAPH_MODALITIES:
        raise WrongModalityError(
            f"{name}: modality {modality} is not a projection radiograph (expected CR or DX)"
        )
    if "PixelData" not in ds:
        if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
            raise UnsupportedDicomError(f"{name}: floating-point pixel data is not supported")
        raise UnsupportedDicomError(f"{name}: DICOM object has no pixel data (not an image)")
    frames = int(header_number(ds.get("NumberOfFrames"), 1) or 1)
    check_dicom_budget(ds, name, frames, max_pixels)
    if frames > 1:
        raise UnsupportedDicomError(f"{name}: multi-frame DICOM ({frames} frames) is not supported")
    photometric = str(ds.get("PhotometricInterpretation", "") or "MONOCHROME2").strip().upper()
    if int(header_number(ds.get("SamplesPerPixel"), 1) or 1) != 1 or not photometric.startswith("MONOCHROME"):
        raise UnsupportedDicomError(
            f"{name}: colour DICOM ({photometric}) is not a grayscale radiograph"
        )
    try:
        raw = ds.pixel_array
    except Exception as exc:
        raise CorruptImageError(f"{name}: cannot decode DICOM pixel data ({exc})") from exc
    if raw.ndim != 2:
        raise UnsupportedDicomError(f"{name}: expected a 2-D image, got shape {raw.shape}")

    arr = modality_values(raw, ds, name)
    center = header_number(ds.get("WindowCenter"))
    width = header_number(ds.get("WindowWidth"))
    function = str(ds.get("VOILUTFunction", "") or "LINEAR").strip().upper()
    if ds.get("VOILUTSequence"):
        arr = apply_voi_lut_sequence(arr, ds, name)
        voi = "lut"
    elif center is not None and width is not None and width > 0:
        if function not in ("LINEAR_EXACT", "SIGMOID"):
            function = "LINEAR"
        arr = apply_window(arr, center, width, function)
        voi = "window"
    else:
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
        voi = "minmax"
    if photometric == "MONOCHROME1":
        arr = 1.0 - arr
    file_meta = getattr(ds, "file_meta", None)
    meta = {
        "format": "dicom",
        "bits": int(header_number(ds.get("BitsStored"), 0) or 0),
        "photometric": photometric,
        "modality": modality or None,
        "view_position": str(ds.get("ViewPosition", "") or "") or None,
        "voi": voi,
        "transfer_syntax": (
            str(file_meta.get("TransferSyntaxUID", "") or "") or None
            if file_meta is not None
            else None
        ),
        "sop_instance_uid": str(ds.get("SOPInstanceUID", "") or "") or None,
        "age_years": age_in_years(ds.get("PatientAge")),
    }
    return np.clip(arr, 0.0, 1.0).astype(np.float32), meta, ds


_AGE_UNITS = {"D": 1 / 365.25, "W": 7 / 365.25, "M": 1 / 12, "Y": 1.0}


def age_in_years(value: object) -> float | None:
    """DICOM Patient's Age (AS, e.g. ``045Y``, ``006M``, ``010D``) in years; None if absent or malformed."""
    text = str(value or "").strip().upper()
    if len(text) != 4 or not text[:3].isdigit() or text[3] not in _AGE_UNITS:
        return None
    return round(int(text[:3]) * _AGE_UNITS[text[3]], 3)
