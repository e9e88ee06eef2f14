"""DICOM projection radiographs (CR / DX) through pydicom and its pixel-data plugins."""

from __future__ import annotations

import io as _io

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut, apply_voi_lut

from cxrtriage.io.errors import CorruptImageError, UnsupportedDicomError, WrongModalityError

RADIOGRAPH_MODALITIES = frozenset({"CR", "DX", "DR", "RG"})


def looks_like_dicom(data: bytes) -> bool:
    """A Part-10 file has 'DICM' after a 128-byte preamble."""
    return len(data) >= 132 and data[128:132] == b"DICM"


def _window(arr: np.ndarray, center: float, width: float) -> np.ndarray:
    """Linear VOI window of DICOM PS3.3 C.11.2.1.2, mapped to [0, 1]."""
    width = max(float(width), 1.0)
    lo = center - 0.5 - (width - 1) / 2
    return np.clip((arr - lo) / (width - 1), 0.0, 1.0)


def _first(value):
    return value[0] if isinstance(value, pydicom.multival.MultiValue) else value


def parse_dicom(data: bytes, name: str) -> pydicom.Dataset:
    """Parse DICOM bytes, mapping pydicom's failures to our typed errors."""
    try:
        return pydicom.dcmread(_io.BytesIO(data), force=not looks_like_dicom(data))
    except InvalidDicomError as exc:
        raise CorruptImageError(f"{name}: not a valid DICOM file ({exc})") from exc
    except Exception as exc:  # pydicom raises many kinds on damaged input
        raise CorruptImageError(f"{name}: DICOM file is truncated or corrupt ({exc})") from exc


def read_dicom(data: bytes, name: str) -> tuple[np.ndarray, dict, pydicom.Dataset]:
    """Decode a single-frame grayscale CR/DX DICOM into float32 [0, 1] display values."""
    ds = parse_dicom(data, name)
    modality = str(ds.get("Modality", "") or "").upper()
    if modality and modality not in RADIOGRAPH_MODALITIES:
        raise WrongModalityError(
            f"{name}: modality {modality} is not a projection radiograph (expected CR or DX)"
        )
    if "PixelData" not in ds:
        raise UnsupportedDicomError(f"{name}: DICOM object has no pixel data (not an image)")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise UnsupportedDicomError(f"{name}: multi-frame DICOM ({frames} frames) is not supported")
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if int(ds.get("SamplesPerPixel", 1)) != 1 or not photometric.startswith("MONOCHROME"):
        raise UnsupportedDicomError(
            f"{name}: colour DICOM ({photometric}) is not a grayscale radiograph"
        )
    try:
        raw = ds.pixel_array
    except Exception as exc:
        raise CorruptImageError(f"{name}: cannot decode DICOM pixel data ({exc})") from exc
    if raw.ndim != 2:
        raise UnsupportedDicomError(f"{name}: expected a 2-D image, got shape {raw.shape}")

    arr = apply_modality_lut(raw, ds).astype(np.float64)
    voi = "minmax"
    if "VOILUTSequence" in ds:
        lut_out = apply_voi_lut(raw if "ModalityLUTSequence" in ds else arr, ds, prefer_lut=True)
        lut = ds.VOILUTSequence[0]
        bits = int(lut.LUTDescriptor[2]) or 16
        arr = np.clip(lut_out.astype(np.float64) / float(2**bits - 1), 0.0, 1.0)
        voi = "lut"
    elif "WindowCenter" in ds and "WindowWidth" in ds:
        arr = _window(arr, float(_first(ds.WindowCenter)), float(_first(ds.WindowWidth)))
        voi = "window"
    else:
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
    if photometric == "MONOCHROME1":
        arr = 1.0 - arr
    meta = {
        "format": "dicom",
        "bits": int(ds.get("BitsStored", 0) or 0),
        "photometric": photometric,
        "modality": modality or None,
        "view_position": str(ds.get("ViewPosition", "") or "") or None,
        "voi": voi,
        "transfer_syntax": str(ds.file_meta.get("TransferSyntaxUID", "")) if "file_meta" in ds else None,
        "sop_instance_uid": str(ds.get("SOPInstanceUID", "") or "") or None,
    }
    return arr.astype(np.float32), meta, ds
