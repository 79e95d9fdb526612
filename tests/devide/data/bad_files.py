"""Writers for radiograph files, good and bad, shared by the image I/O and prepare-data tests."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image


def gradient(width: int = 64, height: int = 48) -> np.ndarray:
    """uint8 (height, width) horizontal ramp 0..255 with a vertical component (never constant)."""
    x = np.linspace(0, 255, width)[None, :]
    y = np.linspace(0, 60, height)[:, None]
    return np.clip(x * 0.75 + y, 0, 255).astype(np.uint8)


def write_jpeg(path: Path, array: np.ndarray | None = None, mode: str = "L") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(gradient() if array is None else array, mode="L")
    if mode != "L":
        image = image.convert(mode)
    image.save(path, format="JPEG", quality=95)
    return path


def write_truncated_jpeg(path: Path) -> Path:
    buffer = io.BytesIO()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (128, 128), dtype=np.uint8), mode="L").save(buffer, format="JPEG")
    data = buffer.getvalue()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data[: len(data) * 2 // 3])
    return path


def write_html(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("<!DOCTYPE html>\n<html><head><title>403 Forbidden</title></head><body>no</body></html>\n")
    return path


def write_png16(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.astype(np.uint16)).save(path, format="PNG")
    return path


def write_dicom(path: Path, array: np.ndarray, photometric: str = "MONOCHROME2", bits: int = 16) -> Path:
    """An uncompressed single-frame DICOM (Explicit VR Little Endian) of ``array`` (H, W)."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    dataset.SOPClassUID = meta.MediaStorageSOPClassUID
    dataset.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    dataset.Modality = "CR"
    dataset.Rows, dataset.Columns = array.shape
    dataset.SamplesPerPixel = 1
    dataset.PhotometricInterpretation = photometric
    dataset.BitsAllocated = 16 if bits > 8 else 8
    dataset.BitsStored = bits
    dataset.HighBit = bits - 1
    dataset.PixelRepresentation = 0
    dtype = np.uint16 if bits > 8 else np.uint8
    dataset.PixelData = array.astype(dtype).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    dataset.save_as(path, enforce_file_format=True)
    return path
