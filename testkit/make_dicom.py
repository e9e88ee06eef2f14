"""Write radiograph pixels as a Part-10 DICOM file.

Used to convert JPEG/PNG data sets to DICOM, to build the bundled samples and to
make DICOM test objects (windowed, rescaled, VOI LUT, compressed, multi-frame,
colour, other modalities) for the reader and PACS tests.

``pixels`` are *display* values: 0 is black (air) and the maximum is white (bone),
whatever ``photometric`` says. For ``MONOCHROME1`` the stored values are inverted so
that a conforming viewer shows the same picture. Stored values relate to ``pixels``
as follows:

* ``uint8`` input is scaled from 0..255 to the full ``bits_stored`` range;
* other integer input is stored as is and must fit in ``bits_stored`` bits;
* floating-point input must lie in [0, 1] and is scaled to the full range.

Example::

    from testkit.make_dicom import radiograph_to_dicom
    radiograph_to_dicom(gray_u8, "out.dcm", modality="CR", photometric="MONOCHROME1",
                        bits_stored=12, transfer_syntax=pydicom.uid.JPEG2000Lossless)
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pydicom
from pydicom import uid as _uid
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence

__all__ = [
    "NATIVE_TRANSFER_SYNTAXES",
    "SOP_CLASS_BY_MODALITY",
    "build_dataset",
    "can_encode",
    "image_file_to_dicom",
    "radiograph_to_dicom",
]

SOP_CLASS_BY_MODALITY = {
    "DX": _uid.DigitalXRayImageStorageForPresentation,
    "CR": _uid.ComputedRadiographyImageStorage,
    "CT": _uid.CTImageStorage,
    "MR": _uid.MRImageStorage,
}

NATIVE_TRANSFER_SYNTAXES = (
    _uid.ExplicitVRLittleEndian,
    _uid.ImplicitVRLittleEndian,
    _uid.DeflatedExplicitVRLittleEndian,
)

_VOI_FUNCTIONS = ("LINEAR", "LINEAR_EXACT", "SIGMOID")


def can_encode(transfer_syntax: str) -> bool:
    """True when this installation can write ``transfer_syntax`` (plugins present)."""
    ts = _uid.UID(transfer_syntax)
    if ts in NATIVE_TRANSFER_SYNTAXES:
        return True
    if not ts.is_compressed:
        return False
    try:
        from pydicom.pixels import get_encoder

        return bool(get_encoder(ts).is_available)
    except Exception:  # no encoder implemented for this syntax
        return False


def _stored_values(pixels: np.ndarray, bits_stored: int) -> np.ndarray:
    """Display-oriented input -> unsigned stored values in ``bits_stored`` bits."""
    peak = (1 << bits_stored) - 1
    dtype = np.uint8 if bits_stored <= 8 else np.uint16
    a = np.asarray(pixels)
    if a.dtype == np.uint8:
        if bits_stored == 8:
            return a.copy()
        return np.rint(a.astype(np.float64) * (peak / 255.0)).astype(dtype)
    if np.issubdtype(a.dtype, np.integer):
        if a.size and (int(a.min()) < 0 or int(a.max()) > peak):
            raise ValueError(
                f"pixel values {int(a.min())}..{int(a.max())} do not fit in "
                f"bits_stored={bits_stored} (0..{peak})"
            )
        return a.astype(dtype)
    if np.issubdtype(a.dtype, np.floating):
        if not np.all(np.isfinite(a)) or (a.size and (a.min() < 0.0 or a.max() > 1.0)):
            raise ValueError("floating-point pixels must be finite and lie in [0, 1]")
        return np.rint(a.astype(np.float64) * peak).astype(dtype)
    raise TypeError(f"unsupported pixel dtype {a.dtype}; use uint8, uint16 or float in [0, 1]")


def _default_bits(pixels: np.ndarray, rgb: bool) -> int:
    if rgb:
        return 8
    return 8 if np.asarray(pixels).dtype == np.uint8 else 16


def _shape_frames(stored: np.ndarray, number_of_frames: int, rgb: bool) -> np.ndarray:
    """Return (frames, rows, cols[, 3]) from 2-D, 3-D or 4-D input."""
    if rgb:
        if stored.ndim == 2:
            stored = np.repeat(stored[..., None], 3, axis=-1)
        if stored.shape[-1] != 3 or stored.ndim not in (3, 4):
            raise ValueError(f"rgb=True needs (rows, cols), (rows, cols, 3) or "
                             f"(frames, rows, cols, 3) pixels, got {stored.shape}")
        frames = stored[None] if stored.ndim == 3 else stored
    else:
        if stored.ndim == 2:
            frames = stored[None]
        elif stored.ndim == 3:
            frames = stored
        else:
            raise ValueError(f"grayscale pixels must be (rows, cols) or (frames, rows, cols), "
                             f"got {stored.shape}")
    if frames.shape[0] == 1 and number_of_frames > 1:
        frames = np.repeat(frames, number_of_frames, axis=0)
    elif number_of_frames not in (1, frames.shape[0]):
        raise ValueError(f"number_of_frames={number_of_frames} but pixels hold "
                         f"{frames.shape[0]} frames")
    return np.ascontiguousarray(frames)


def _ds_number(value: float) -> str:
    """Format a number for a DS element (at most 16 characters)."""
    text = f"{float(value):.6g}"
    return text if len(text) <= 16 else f"{float(value):.8e}"[:16]


def build_dataset(
    pixels: np.ndarray,
    *,
    modality: str = "DX",
    photometric: str = "MONOCHROME2",
    bits_stored: int | None = None,
    transfer_syntax: str = _uid.ExplicitVRLittleEndian,
    window: tuple[float, float] | Sequence[tuple[float, float]] | str | None = "auto",
    voi_lut_function: str | None = None,
    rescale: tuple[float, float] | None = None,
    voi_lut: bool | np.ndarray = False,
    number_of_frames: int = 1,
    rgb: bool = False,
    view_position: str = "PA",
    body_part: str = "CHEST",
    patient_id: str = "ANONYMOUS",
    patient_name: str = "Anonymous",
    patient_sex: str = "",
    patient_birth_date: str = "",
    study_uid: str | None = None,
    series_uid: str | None = None,
    sop_instance_uid: str | None = None,
    sop_class_uid: str | None = None,
    study_date: str | None = None,
    study_time: str | None = None,
    accession_number: str = "",
    study_id: str = "1",
    study_description: str = "",
    series_description: str = "",
    series_number: int = 1,
    instance_number: int = 1,
    pixel_spacing: tuple[float, float] | None = None,
    manufacturer: str = "",
    burned_in_annotation: str | None = "NO",
    include_pixel_data: bool = True,
    compress_kwargs: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Dataset:
    """Build a DICOM dataset (with ``file_meta``) from radiograph pixels.

    Parameters are those of :func:`radiograph_to_dicom`, which writes the result.
    """
    modality = str(modality).upper()
    photometric = "RGB" if rgb else str(photometric).upper()
    if not rgb and photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ValueError(f"photometric must be MONOCHROME1 or MONOCHROME2 (or rgb=True), "
                         f"got {photometric!r}")
    if bits_stored is None:
        bits_stored = _default_bits(pixels, rgb)
    bits_stored = int(bits_stored)
    if not 8 <= bits_stored <= 16:
        raise ValueError(f"bits_stored must be 8..16, got {bits_stored}")
    if rgb and bits_stored != 8:
        raise ValueError("rgb=True supports bits_stored=8 only")
    if number_of_frames < 1:
        raise ValueError("number_of_frames must be at least 1")
    bits_allocated = 8 if bits_stored == 8 else 16
    peak = (1 << bits_stored) - 1

    stored = _stored_values(pixels, bits_stored)
    if photometric == "MONOCHROME1":
        stored = (peak - stored.astype(np.int64)).astype(stored.dtype)
    frames = _shape_frames(stored, int(number_of_frames), rgb)
    n_frames = frames.shape[0]
    rows, cols = frames.shape[1], frames.shape[2]

    ts = _uid.UID(transfer_syntax)
    if ts not in NATIVE_TRANSFER_SYNTAXES and not ts.is_compressed:
        raise ValueError(f"transfer syntax {ts} ({ts.name}) cannot be written")

    if sop_class_uid is None:
        if rgb:
            sop_class_uid = (_uid.MultiFrameTrueColorSecondaryCaptureImageStorage
                             if n_frames > 1 else _uid.SecondaryCaptureImageStorage)
        elif n_frames > 1:
            sop_class_uid = (_uid.MultiFrameGrayscaleByteSecondaryCaptureImageStorage
                             if bits_allocated == 8
                             else _uid.MultiFrameGrayscaleWordSecondaryCaptureImageStorage)
        else:
            sop_class_uid = SOP_CLASS_BY_MODALITY.get(modality, _uid.SecondaryCaptureImageStorage)
    sop_class_uid = _uid.UID(sop_class_uid)
    sop_instance_uid = _uid.UID(sop_instance_uid or _uid.generate_uid())
    now = _dt.datetime.now()

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class_uid
    meta.MediaStorageSOPInstanceUID = sop_instance_uid
    meta.TransferSyntaxUID = ts
    meta.ImplementationClassUID = _uid.PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = f"PYDICOM {pydicom.__version__}"[:16]

    ds = Dataset()
    ds.file_meta = meta
    names = (patient_name, patient_id, study_description, series_description, manufacturer)
    if not all(str(v).isascii() for v in names):
        ds.SpecificCharacterSet = "ISO_IR 192"
    # SOP Common, Patient, General Study, General Series, Equipment
    ds.SOPClassUID = sop_class_uid
    ds.SOPInstanceUID = sop_instance_uid
    ds.PatientName = str(patient_name)
    ds.PatientID = str(patient_id)
    ds.PatientBirthDate = patient_birth_date
    ds.PatientSex = patient_sex
    ds.StudyInstanceUID = _uid.UID(study_uid or _uid.generate_uid())
    ds.SeriesInstanceUID = _uid.UID(series_uid or _uid.generate_uid())
    ds.StudyDate = study_date if study_date is not None else now.strftime("%Y%m%d")
    ds.StudyTime = study_time if study_time is not None else now.strftime("%H%M%S")
    ds.SeriesDate = ds.StudyDate
    ds.ContentDate = ds.StudyDate
    ds.ContentTime = ds.StudyTime
    ds.AccessionNumber = accession_number
    ds.ReferringPhysicianName = ""
    ds.StudyID = study_id
    if study_description:
        ds.StudyDescription = study_description
    if series_description:
        ds.SeriesDescription = series_description
    ds.Modality = modality
    ds.SeriesNumber = int(series_number)
    ds.InstanceNumber = int(instance_number)
    ds.Manufacturer = manufacturer
    if body_part:
        ds.BodyPartExamined = body_part
    if view_position:
        ds.ViewPosition = view_position
        if modality in ("DX", "CR") and view_position in ("PA", "AP"):
            ds.PatientOrientation = ["L", "F"]
    elif modality in ("DX", "CR"):
        ds.PatientOrientation = ""
    lossless = not ts.is_compressed or ts in (
        _uid.RLELossless, _uid.JPEGLSLossless, _uid.JPEG2000Lossless,
        _uid.JPEGLosslessSV1, _uid.JPEGLossless, _uid.HTJ2KLossless, _uid.HTJ2KLosslessRPCL,
    )
    if sop_class_uid.name.endswith("Secondary Capture Image Storage"):
        ds.ConversionType = "WSD"
    if modality == "DX" and sop_class_uid == _uid.DigitalXRayImageStorageForPresentation:
        ds.ImageType = ["DERIVED", "PRIMARY"]
        ds.PresentationIntentType = "FOR PRESENTATION"
        ds.PixelIntensityRelationship = "LOG"
        ds.PixelIntensityRelationshipSign = 1 if photometric == "MONOCHROME1" else -1
    elif modality == "CT":
        ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
    else:
        ds.ImageType = ["DERIVED", "SECONDARY"]

    # Image Pixel module
    ds.SamplesPerPixel = 3 if rgb else 1
    ds.PhotometricInterpretation = photometric
    if rgb:
        ds.PlanarConfiguration = 0
    ds.Rows = rows
    ds.Columns = cols
    ds.BitsAllocated = bits_allocated
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    if n_frames > 1:
        ds.NumberOfFrames = n_frames
    if pixel_spacing is not None:
        ds.PixelSpacing = [_ds_number(v) for v in pixel_spacing]
        if modality in ("DX", "CR"):
            ds.ImagerPixelSpacing = ds.PixelSpacing
    if burned_in_annotation is not None:
        ds.BurnedInAnnotation = burned_in_annotation
    ds.LossyImageCompression = "00" if lossless else "01"

    # Modality LUT (rescale); DX and CT require it
    if rescale is None and modality == "DX" and not rgb:
        rescale = (1.0, 0.0)
    if rescale is None and modality == "CT" and not rgb:
        rescale = (1.0, -1024.0)
    slope, intercept = (1.0, 0.0) if rescale is None else (float(rescale[0]), float(rescale[1]))
    if slope == 0:
        raise ValueError("rescale slope must not be 0")
    if rescale is not None:
        ds.RescaleIntercept = _ds_number(intercept)
        ds.RescaleSlope = _ds_number(slope)
        ds.RescaleType = "HU" if modality == "CT" else "US"
    out_lo = min(intercept, slope * peak + intercept)
    out_hi = max(intercept, slope * peak + intercept)

    # VOI LUT Sequence
    if voi_lut is not False and voi_lut is not None:
        if rgb:
            raise ValueError("a VOI LUT applies to grayscale images only")
        first = int(np.floor(out_lo))
        if first < 0:
            raise ValueError("VOI LUT with negative modality values needs signed pixels; "
                             "use a non-negative rescale intercept")
        if isinstance(voi_lut, np.ndarray):
            lut = np.asarray(voi_lut)
            if lut.ndim != 1 or lut.size == 0:
                raise ValueError("voi_lut array must be 1-D and non-empty")
            if not np.issubdtype(lut.dtype, np.integer) or lut.min() < 0 or lut.max() > 65535:
                raise ValueError("voi_lut values must be integers in 0..65535")
            top = int(lut.max())
            # LUT Descriptor depth: 8 or 10..16 bits, the smallest that holds the values.
            lut_bits = 8 if top <= 255 else max(10, top.bit_length())
        else:
            n = int(np.ceil(out_hi)) - first + 1
            lut_bits = 16
            x = np.linspace(-1.0, 1.0, n)
            curve = 1.0 / (1.0 + np.exp(-4.0 * x))  # a soft S-shaped contrast curve
            curve = (curve - curve[0]) / (curve[-1] - curve[0])
            lut = np.rint(curve * 65535.0)
        if lut.size > 65536:
            raise ValueError(f"a VOI LUT has at most 65536 entries, got {lut.size}")
        item = Dataset()
        item.add_new(0x00283002, "US", [lut.size % 65536, first, lut_bits])  # LUTDescriptor
        item.LUTExplanation = "S-CURVE" if voi_lut is True else "CUSTOM"
        item.add_new(0x00283006, "US", [int(v) for v in lut])  # LUTData
        ds.VOILUTSequence = DicomSequence([item])

    # VOI window
    if isinstance(window, str):
        key = window.lower()
        if key not in ("auto", "full"):
            raise ValueError(f"window must be (center, width), 'full', 'auto' or None, "
                             f"got {window!r}")
        needs = (modality == "DX" and not rgb and "VOILUTSequence" not in ds)
        window = (((out_lo + out_hi + 1) / 2.0, out_hi - out_lo + 1)
                  if key == "full" or needs else None)
    if window is not None:
        if rgb:
            raise ValueError("a VOI window applies to grayscale images only")
        pairs = [window] if np.ndim(window) == 1 else list(window)  # type: ignore[arg-type]
        centers = [_ds_number(c) for c, _ in pairs]
        widths = [_ds_number(w) for _, w in pairs]
        if any(float(w) < 1 for w in widths):
            raise ValueError("window width must be at least 1")
        ds.WindowCenter = centers[0] if len(centers) == 1 else centers
        ds.WindowWidth = widths[0] if len(widths) == 1 else widths
    if voi_lut_function is not None:
        fn = str(voi_lut_function).upper()
        if fn not in _VOI_FUNCTIONS:
            raise ValueError(f"voi_lut_function must be one of {_VOI_FUNCTIONS}")
        ds.VOILUTFunction = fn

    if extra:
        for keyword, value in extra.items():
            setattr(ds, keyword, value)

    if not include_pixel_data:
        return ds
    arr = frames[0] if n_frames == 1 else frames
    if ts in NATIVE_TRANSFER_SYNTAXES:
        ds.PixelData = arr.astype("<u2" if bits_allocated == 16 else np.uint8).tobytes()
        ds["PixelData"].VR = "OW" if bits_allocated == 16 else "OB"
    else:
        if not can_encode(ts):
            raise ValueError(
                f"cannot encode {ts.name}: no pixel-data encoder installed for it "
                "(pylibjpeg-openjpeg for JPEG 2000, pyjpegls for JPEG-LS, "
                "pylibjpeg-rle or pydicom for RLE)"
            )
        ds.compress(ts, arr, generate_instance_uid=False, **dict(compress_kwargs or {}))
    return ds


def radiograph_to_dicom(
    pixels: np.ndarray,
    path: str | Path | BinaryIO,
    *,
    modality: str = "DX",
    photometric: str = "MONOCHROME2",
    bits_stored: int | None = None,
    transfer_syntax: str = _uid.ExplicitVRLittleEndian,
    window: tuple[float, float] | Sequence[tuple[float, float]] | str | None = "auto",
    voi_lut_function: str | None = None,
    rescale: tuple[float, float] | None = None,
    voi_lut: bool | np.ndarray = False,
    number_of_frames: int = 1,
    rgb: bool = False,
    view_position: str = "PA",
    body_part: str = "CHEST",
    patient_id: str = "ANONYMOUS",
    patient_name: str = "Anonymous",
    study_uid: str | None = None,
    series_uid: str | None = None,
    sop_instance_uid: str | None = None,
    **kwargs: Any,
) -> Path | BinaryIO:
    """Write ``pixels`` as a Part-10 DICOM file and return ``path``.

    Parameters
    ----------
    pixels:
        Display values, 0 = black: ``(rows, cols)``, ``(frames, rows, cols)`` or, with
        ``rgb=True``, ``(rows, cols, 3)``. ``uint8`` is scaled to ``bits_stored`` bits;
        other integers are stored as is; floats must lie in [0, 1].
    modality:
        ``DX`` (Digital X-Ray for Presentation), ``CR``, ``CT``, ``MR`` or any other
        code (Secondary Capture). Multi-frame and RGB objects are Secondary Capture.
    photometric:
        ``MONOCHROME2`` or ``MONOCHROME1`` (stored values inverted).
    bits_stored:
        8..16; ``None`` takes 8 for ``uint8``/RGB input and 16 otherwise. Bits
        Allocated is 8 for 8 bits stored and 16 otherwise.
    transfer_syntax:
        Explicit/Implicit VR Little Endian, Deflated, or any compressed syntax that an
        installed encoder supports (RLE Lossless, JPEG-LS, JPEG 2000); see
        :func:`can_encode`. Lossy syntaxes take encoder options in ``compress_kwargs``.
    window:
        ``(center, width)`` in modality (rescaled) units, a list of such pairs,
        ``"full"`` (a window spanning the whole stored range), ``"auto"`` (``"full"``
        for DX, which requires a window or VOI LUT, nothing otherwise) or ``None``.
    voi_lut_function:
        Optional VOI LUT Function: ``LINEAR``, ``LINEAR_EXACT`` or ``SIGMOID``.
    rescale:
        ``(slope, intercept)`` written as Rescale Slope / Intercept (stored values are
        not changed). DX gets ``(1, 0)`` and CT ``(1, -1024)`` when ``None``.
    voi_lut:
        ``True`` for a VOI LUT Sequence with an S-shaped 16-bit curve over the full
        modality range, a 1-D integer array for a custom LUT starting at the lowest
        modality value (its output depth is the smallest of 8, 10..16 bits that holds
        the largest entry), or ``False``.
    number_of_frames:
        Repeat a single frame this many times (multi-frame object).
    rgb:
        Write an RGB (3 samples per pixel, 8-bit) object.
    view_position, body_part, patient_id, patient_name, study_uid, series_uid,
    sop_instance_uid:
        Identifying attributes; missing UIDs are generated with
        :func:`pydicom.uid.generate_uid`.
    kwargs:
        ``patient_sex``, ``patient_birth_date``, ``sop_class_uid``, ``study_date``,
        ``study_time``, ``accession_number``, ``study_id``, ``study_description``,
        ``series_description``, ``series_number``, ``instance_number``,
        ``pixel_spacing``, ``manufacturer``, ``burned_in_annotation`` (``"NO"``; say
        ``"YES"`` when the pixels show text that could identify the patient, or
        ``None`` to leave it out), ``include_pixel_data`` (``False`` for an
        object without Pixel Data), ``compress_kwargs`` and ``extra`` (a mapping of
        DICOM keywords to values set last).
    """
    ds = build_dataset(
        pixels,
        modality=modality,
        photometric=photometric,
        bits_stored=bits_stored,
        transfer_syntax=transfer_syntax,
        window=window,
        voi_lut_function=voi_lut_function,
        rescale=rescale,
        voi_lut=voi_lut,
        number_of_frames=number_of_frames,
        rgb=rgb,
        view_position=view_position,
        body_part=body_part,
        patient_id=patient_id,
        patient_name=patient_name,
        study_uid=study_uid,
        series_uid=series_uid,
        sop_instance_uid=sop_instance_uid,
        **kwargs,
    )
    if isinstance(path, (str, Path)):
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def image_file_to_dicom(src: str | Path, dst: str | Path, **kwargs: Any) -> Path:
    """Convert a JPEG/PNG radiograph (or any file the reader accepts) to DICOM.

    8-bit sources are written with 8 bits stored unless ``bits_stored`` says otherwise;
    deeper sources keep 16 bits. The window defaults to ``"full"`` so that a viewer
    shows the picture as the source file does. Other keyword arguments go to
    :func:`radiograph_to_dicom`.
    """
    from cxrtriage.io.reader import read_radiograph

    kwargs.setdefault("window", "full")
    rg = read_radiograph(src)
    if int(rg.meta.get("bits", 8)) <= 8:
        pixels: np.ndarray = rg.to_uint8()
    else:
        pixels = rg.pixels
        kwargs.setdefault("bits_stored", 16)
    return Path(radiograph_to_dicom(pixels, dst, **kwargs))  # type: ignore[arg-type]
