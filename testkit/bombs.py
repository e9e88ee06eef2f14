"""Decompression bombs: small real files that declare huge images (PNG, RLE and uncompressed DICOM),
for the tests and the service's load bench."""

from __future__ import annotations

import tempfile
from pathlib import Path

from PIL import Image

def png_bomb(path: Path, side: int = 14000) -> Path:
    """A real PNG of ``side`` x ``side`` black pixels (8-bit gray): 14000 px a side is ~190 KB on
    disk and 196 Mpx decoded."""
    Image.new("L", (side, side)).save(path, format="PNG", optimize=False, compress_level=9)
    return path


def dicom_bomb(path: Path, side: int = 30000, rle: bool = True) -> Path:
    """A tiny DX DICOM whose header declares ``side`` x ``side`` 16-bit pixels: RLE Lossless with
    one nearly empty fragment, or uncompressed with a short pixel data element."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import ExplicitVRLittleEndian, RLELossless, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = RLELossless if rle else ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows = ds.Columns = side
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    if rle:
        # RLE header: two segments (high and low byte), each a run of 128 zeros repeated.
        header = (2).to_bytes(4, "little") + (64).to_bytes(4, "little") + (66).to_bytes(4, "little") + bytes(52)
        ds.PixelData = encapsulate([header + b"\x81\x00" * 2])
        ds["PixelData"].VR = "OB"
    else:
        ds.PixelData = bytes(512)
        ds["PixelData"].VR = "OW"
    ds.save_as(path, enforce_file_format=True)
    return path


def bomb_files() -> dict[str, bytes]:
    """The three bombs as bytes: PNG 14000 x 14000, RLE and uncompressed DICOM 30000 x 30000."""
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        return {"bomb.png": png_bomb(d / "bomb.png", 14000).read_bytes(),
                "bomb_rle.dcm": dicom_bomb(d / "bomb_rle.dcm", 30000).read_bytes(),
                "bomb_raw.dcm": dicom_bomb(d / "bomb_raw.dcm", 30000, rle=False).read_bytes()}
