"""SIIM-ACR Pneumothorax: ``train-rle.csv`` + ``dicom-images-train/<study>/<series>/<SOPInstanceUID>.dcm``.

Traps handled: the header is ``ImageId, EncodedPixels`` (second name with a leading space) and values keep a
leading space; ``-1`` means no pneumothorax; an image has one row per lesion (masks are unioned); the RLE is
*relative* (each offset counts from the end of the previous run) and *column-major* (decode flat, reshape to
(width, height), transpose). Image size comes from the image itself (1024² in the release), so fixtures can be
small. Some DICOMs have no row (not evaluated: unlabelled) and some rows have no DICOM (rejected).

Split rule (the Kaggle test set has no labels): ``val`` = 10 % of ImageIds by sha1, ``test`` = the rest.

DICOM layouts accepted (the file stem is the ImageId): the release's nested
``dicom-images-train/<study>/<series>/<ImageId>.dcm``, or a flat ``dicom-images-train/<ImageId>.dcm``,
``train/<ImageId>.dcm`` or ``<ImageId>.dcm`` in the root.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from devide.data.adapters import register
from devide.data.adapters.base import AdapterError, DatasetAdapter, EvalRecord, EvalSet, Rejection, hash_split

CLASS = "Pneumothorax"
LAYOUTS = ("dicom-images-train/*/*/*.dcm (the release), dicom-images-train/*.dcm, train/*.dcm or *.dcm in the root "
           "(flat)")
DICOM_GLOBS = ("dicom-images-train/*/*/*.dcm", "dicom-images-train/*.dcm", "train/*.dcm", "*.dcm")


def parse_rle(rle: str) -> list[int]:
    """RLE text -> numbers; ValueError unless it is ``-1``/empty or non-negative (offset, length) pairs."""
    values = rle.split()
    if not values or values == ["-1"]:
        return []
    numbers = [int(v) for v in values]
    if len(numbers) % 2 or min(numbers) < 0:
        raise ValueError("RLE must be non-negative (offset, length) pairs")
    return numbers


def rle_decode(rle: str, width: int, height: int) -> np.ndarray:
    """SIIM relative, column-major RLE -> bool mask [height, width]. ``-1``/empty -> all False.

    Raises ValueError for an odd number of values, negative numbers or runs past the image.
    """
    numbers = parse_rle(rle)
    flat = np.zeros(width * height, dtype=bool)
    position = 0
    for offset, length in zip(numbers[0::2], numbers[1::2], strict=True):
        position += offset
        if position + length > flat.size:
            raise ValueError(f"RLE run ends at {position + length}, past the {width}x{height} image")
        flat[position:position + length] = True
        position += length
    return flat.reshape(width, height).T


def rle_encode(mask: np.ndarray) -> str:
    """Inverse of :func:`rle_decode` (bool [H, W] -> relative column-major RLE); ``-1`` for an empty mask."""
    flat = np.asarray(mask, dtype=bool).T.reshape(-1)
    padded = np.concatenate([[False], flat, [False]])
    changes = np.flatnonzero(padded[1:] != padded[:-1])
    starts, ends = changes[0::2], changes[1::2]
    if len(starts) == 0:
        return "-1"
    previous_end = np.concatenate([[0], ends[:-1]])
    return " ".join(f"{s - p} {e - s}" for s, e, p in zip(starts, ends, previous_end, strict=True))


def _mask_fn(rles: list[str]) -> Callable[[tuple[int, int]], dict[str, np.ndarray]]:
    def decode(size: tuple[int, int]) -> dict[str, np.ndarray]:
        width, height = size
        mask = np.zeros((height, width), dtype=bool)
        for rle in rles:
            mask |= rle_decode(rle, width, height)
        return {CLASS: mask}

    return decode


@register("siim-acr", "pneumothorax")
class SIIMPneumothorax(DatasetAdapter):
    name = "siim"
    title = "SIIM-ACR Pneumothorax"
    vocab_key = "siim"
    classes = [CLASS]
    grounding = True

    def read(self, split: str, eval_set: EvalSet) -> None:
        label_file = self.require("train-rle.csv", "stage_2_train.csv")
        source = self.rel(label_file)
        table = pd.read_csv(label_file, dtype=str, keep_default_na=False)
        table.columns = [c.strip() for c in table.columns]  # " EncodedPixels" -> "EncodedPixels"
        self.require_columns(table, ("ImageId", "EncodedPixels"), label_file)
        if label_file.name == "stage_2_train.csv":
            eval_set.notes.append("stage_2_train.csv: RLE assumed relative like train-rle.csv (unverified)")
        eval_set.notes.append("split: 10 % of ImageIds (sha1) = val, the rest = test")
        dicoms = self.dicom_index()
        rles: dict[str, list[str]] = {}
        for row_no, row in enumerate(table.to_dict("records"), start=2):
            image_id = row["ImageId"].strip()
            if hash_split(image_id) != split:
                continue
            rle = row["EncodedPixels"].strip()
            try:
                parse_rle(rle)  # the size is only known from the image: checked when the mask is decoded
            except ValueError as exc:
                eval_set.rejections.append(Rejection(source, f"line {row_no} ({image_id})", f"bad RLE: {exc}"))
                rles.setdefault(image_id, [])
                continue
            rles.setdefault(image_id, []).append(rle)
        for image_id, runs in rles.items():
            self._add(eval_set, source, image_id, runs, dicoms.get(image_id))

    def dicom_index(self) -> dict[str, Path]:
        """ImageId -> DICOM path over every accepted layout; a one-line error naming them when none has a file."""
        index: dict[str, Path] = {}
        for pattern in DICOM_GLOBS:
            for path in self.root.glob(pattern):
                index.setdefault(path.stem, path)
        if not index:
            raise AdapterError(f"{self.name}: no DICOM files under {self.root}; accepted layouts: {LAYOUTS}")
        return index

    def _add(self, eval_set: EvalSet, source: str, image_id: str, runs: list[str], path: Path | None) -> None:
        if path is None:
            eval_set.rejections.append(Rejection(source, image_id, f"no DICOM {image_id}.dcm in {LAYOUTS}"))
            return
        if not runs:
            eval_set.rejections.append(Rejection(source, image_id, "every RLE row of the image is invalid"))
            return
        lesions = [r for r in runs if r != "-1"]
        if lesions and len(lesions) != len(runs):
            eval_set.rejections.append(Rejection(source, image_id, "both -1 and lesion rows (kept as positive)"))
        eval_set.records.append(EvalRecord(
            image_id=image_id, path=path, labels={CLASS: int(bool(lesions))},
            mask_fn=_mask_fn(lesions) if lesions else None))
