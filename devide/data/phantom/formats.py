"""Encoders for the datasets' file formats: JPEG/PNG/DICOM images, SIIM run-length masks, gzip CSVs.

Everything is byte-deterministic: no timestamps in gzip headers or DICOM files, UIDs derived from seeds.
"""

from __future__ import annotations

import gzip
import io
import os
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

UID_ROOT = "1.2.826.0.1.3680043.8.498."  # pydicom's registered root for generated UIDs


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` through a temp file + rename (readers never see half a file)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_bytes(data)
    except FileNotFoundError:  # the folder is new: create it only then (a mkdir per image costs a system call)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(data)
    os.replace(tmp, path)


def encode_jpeg(pixels: np.ndarray, quality: int = 95) -> bytes:
    """8-bit greyscale JPEG, as MIMIC-CXR-JPG (quality 95) and CheXpert ship them."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def encode_png(pixels: np.ndarray) -> bytes:
    """8-bit greyscale PNG (ChestX-ray14). Fast compression: the images are noisy anyway."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG", compress_level=1)
    return buffer.getvalue()


def make_uid(*parts: object) -> str:
    from pydicom.uid import generate_uid

    return str(generate_uid(prefix=UID_ROOT, entropy_srcs=[str(p) for p in parts]))


def encode_dicom(pixels: np.ndarray, *, patient_id: str, sex: str, age: int, view: str, study_uid: str,
                 series_uid: str, sop_uid: str, pixel_spacing: float) -> bytes:
    """A CR DICOM with the pixels as baseline JPEG (8-bit MONOCHROME2), like the RSNA and SIIM releases."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"  # Computed Radiography Image Storage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = JPEGBaseline8Bit
    meta.ImplementationClassUID = UID_ROOT + "1"
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.PatientID = patient_id
    ds.PatientName = patient_id
    ds.PatientSex = sex
    ds.PatientAge = f"{age:03d}Y"
    ds.Modality = "CR"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = view
    ds.ConversionType = "WSD"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.PixelSpacing = [f"{pixel_spacing:.6f}", f"{pixel_spacing:.6f}"]
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.LossyImageCompression = "01"
    ds.PixelData = encapsulate([encode_jpeg(pixels)])
    ds["PixelData"].is_undefined_length = True
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------- masks


def mask_to_rle(mask: np.ndarray) -> str:
    """SIIM-ACR run-length encoding: column-major pixel order, pairs ``(offset, length)`` where the offset
    counts from the end of the previous run; ``"-1"`` for an empty mask."""
    flat = np.asarray(mask, bool).T.reshape(-1)
    padded = np.concatenate([[False], flat, [False]])
    edges = np.flatnonzero(padded[1:] != padded[:-1])
    if edges.size == 0:
        return "-1"
    starts, ends = edges[0::2], edges[1::2]
    previous_end = np.concatenate([[0], ends[:-1]])
    pairs = np.stack([starts - previous_end, ends - starts], axis=1).reshape(-1)
    return " ".join(map(str, pairs.tolist()))


def upscaled_mask_to_rle(mask: np.ndarray, factor: int) -> str:
    """:func:`mask_to_rle` of ``mask`` (``[r, r]`` bool) upscaled ``factor`` times by pixel replication, without
    building the upscaled mask: each run of a low-resolution column becomes ``factor`` runs ``factor`` times
    longer, and runs that meet across a column boundary are joined, as in the column-major flattening."""
    mask = np.asarray(mask, bool)
    size = mask.shape[0] * factor
    used_rows, used_cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if used_rows.size == 0:
        return "-1"
    r0, c0 = used_rows[0], used_cols[0]  # runs are found inside the mask's bounding box only
    crop = mask[r0:used_rows[-1] + 1, c0:used_cols[-1] + 1]
    padded = np.zeros((crop.shape[1], crop.shape[0] + 2), np.int8)
    padded[:, 1:-1] = crop.T  # one low-resolution column per row
    edges = np.diff(padded, axis=1)
    col, first = np.nonzero(edges == 1)
    _, last = np.nonzero(edges == -1)
    col, first, last = col + c0, first + r0, last + r0
    copies = np.arange(factor)
    column_start = ((col[:, None] * factor + copies[None, :]) * size).reshape(-1)
    starts = column_start + np.repeat(first * factor, factor)
    ends = column_start + np.repeat(last * factor, factor)
    order = np.argsort(starts, kind="stable")
    starts, ends = starts[order], ends[order]
    joined = np.flatnonzero(starts[1:] == ends[:-1]) + 1  # runs continuing into the next column
    keep = np.ones(starts.size, bool)
    keep[joined] = False
    run_starts = starts[keep]
    run_ends = np.append(ends[np.flatnonzero(keep)[1:] - 1], ends[-1])
    previous_end = np.concatenate([[0], run_ends[:-1]])
    pairs = np.stack([run_starts - previous_end, run_ends - run_starts], axis=1).reshape(-1)
    return " ".join(map(str, pairs.tolist()))


def rle_to_mask(rle: str, width: int, height: int) -> np.ndarray:
    """Inverse of :func:`mask_to_rle` (the decoder every SIIM pipeline uses): ``[height, width]`` bool."""
    flat = np.zeros(width * height, bool)
    text = str(rle).strip()
    if text != "-1":
        values = np.asarray(text.split(), dtype=np.int64)
        position = 0
        for start, length in zip(values[0::2], values[1::2]):
            position += start
            flat[position:position + length] = True
            position += length
    return flat.reshape(width, height).T


# ---------------------------------------------------------------------------------------------- tables


def csv_bytes(frame: pd.DataFrame) -> bytes:
    return frame.to_csv(index=False, lineterminator="\n").encode("utf-8")


def gzip_bytes(data: bytes) -> bytes:
    """gzip with a zero timestamp and no file name, so equal content gives equal bytes."""
    buffer = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, mtime=0) as handle:
        handle.write(data)
    return buffer.getvalue()
