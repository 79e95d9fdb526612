"""Fine-tuning items from evaluation records: pixels, labels and (for segmentation / alignment) class masks.

Boxes and masks are rasterised in the record's annotation frame, resized to the decoded image, sent through the
*same* augmentation as the image (an identically seeded generator: the geometric draws do not depend on pixel
values, and the monotone intensity jitter is undone by thresholding at 128), then through the image processor's
own resize/crop geometry, so ``masks[k]`` lines up with ``pixel_values`` pixel for pixel.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from devide.data.adapters.base import EvalRecord, Rejection
from devide.data.image_io import load_image, validate_image
from devide.data.loading import CxrAugment
from devide.log import progress

NOT_LABELLED = -100


def boxes_to_mask(boxes: Sequence[tuple[float, float, float, float]], frame: tuple[int, int]) -> np.ndarray:
    """Union of (x1, y1, x2, y2) boxes in ``frame`` = (width, height) pixels -> bool [height, width]."""
    width, height = frame
    mask = np.zeros((height, width), dtype=bool)
    for x1, y1, x2, y2 in boxes:
        c1, r1 = max(0, math.floor(x1)), max(0, math.floor(y1))
        c2, r2 = min(width, max(c1 + 1, math.ceil(x2))), min(height, max(r1 + 1, math.ceil(y2)))
        mask[r1:r2, c1:c2] = True
    return mask


def class_regions(record: EvalRecord, classes: Sequence[str], frame: tuple[int, int],
                  size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """-> (masks bool [K, H, W] at the decoded image ``size``, known bool [K]).

    A class mask is *known* when the record annotates the class (box or mask) or labels it absent (an empty
    mask); a positive without annotation, an uncertain or an unlabelled class is unknown (left out of losses
    and metrics).
    """
    width, height = size
    decoded = record.mask_fn(frame) if record.mask_fn is not None else {}
    masks = np.zeros((len(classes), height, width), dtype=bool)
    known = np.zeros(len(classes), dtype=bool)
    for k, name in enumerate(classes):
        region = np.zeros((frame[1], frame[0]), dtype=bool)
        annotated = False
        if record.boxes.get(name):
            region |= boxes_to_mask(record.boxes[name], frame)
            annotated = True
        if name in decoded:
            region |= np.asarray(decoded[name], dtype=bool)
            annotated = True
        if region.shape != (height, width):
            region = np.asarray(Image.fromarray(region.astype(np.uint8) * 255).resize(size, Image.Resampling.NEAREST)) > 127
        masks[k] = region
        known[k] = annotated or record.labels.get(name) == 0
    return masks, known


def record_labels(record: EvalRecord, classes: Sequence[str]) -> np.ndarray:
    """int64 [K]: 1 / 0 / -1, and -100 for a class the record does not label."""
    return np.array([record.labels.get(c, NOT_LABELLED) for c in classes], dtype=np.int64)


def to_model_geometry(processor: Any, masks: np.ndarray) -> np.ndarray:
    """bool [K, H, W] -> bool [K, S, S] through the processor's resize + crop (bilinear, threshold 0.5)."""
    return np.stack([processor._resize_and_crop(m.astype(np.float32)) > 0.5 for m in masks]) if len(masks) else \
        np.zeros((0, processor.size, processor.size), dtype=bool)


class FinetuneDataset(torch.utils.data.Dataset):
    """Items ``{"pixel_values" [C, S, S], "labels" [K] long, "masks" [K, S, S] uint8, "mask_known" [K] bool,
    "frames" [2] long (width, height of the annotation frame), "index"}`` for a list of :class:`EvalRecord`
    (masks are all-zero/unknown unless ``with_masks``)."""

    def __init__(self, records: Sequence[EvalRecord], classes: Sequence[str], processor: Any, *,
                 with_masks: bool, augment: CxrAugment | None = None, seed: int = 0) -> None:
        self.records, self.classes, self.processor = list(records), list(classes), processor
        self.with_masks, self.augment, self.seed = with_masks, augment, seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.records)

    def set_epoch(self, epoch: int) -> None:
        """Change the augmentation stream (per-sample generators are seeded by seed, epoch and index)."""
        self.epoch = int(epoch)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self.records[int(index)]
        # Reduce-on-load only when no annotation refers to the image's full-size frame.
        image = load_image(record.path, draft_size=None if record.has_annotations else self.processor.size)
        frame = record.frame_size or image.size
        size = (self.processor.size, self.processor.size)
        masks = np.zeros((len(self.classes), *size), dtype=bool)
        known = np.zeros(len(self.classes), dtype=bool)
        if self.with_masks:
            regions, known = class_regions(record, self.classes, frame, image.size)
            image, regions = self._augment(image, regions, index)
            masks = to_model_geometry(self.processor, regions)
        else:
            image, _ = self._augment(image, None, index)
        pixels = self.processor(images=[image], return_tensors="pt")["pixel_values"][0]
        return {"pixel_values": pixels, "labels": torch.from_numpy(record_labels(record, self.classes)),
                "masks": torch.from_numpy(masks.astype(np.uint8)), "mask_known": torch.from_numpy(known),
                "frames": torch.tensor(frame, dtype=torch.long), "index": int(index)}

    def _augment(self, image: Image.Image, regions: np.ndarray | None, index: int):
        if self.augment is None:
            return image, regions
        seed = [self.seed, self.epoch, int(index)]
        image = self.augment(image, np.random.default_rng(seed))
        if regions is not None:
            regions = np.stack([np.asarray(self.augment(Image.fromarray(r.astype(np.uint8) * 255),
                                                        np.random.default_rng(seed))) > 127 for r in regions]) \
                if len(regions) else regions
        return image, regions


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack items: pixel_values [B, C, S, S], labels [B, K], masks [B, K, S, S], mask_known [B, K], frames
    [B, 2], index [B]."""
    return {key: torch.stack([item[key] for item in items]) for key in ("pixel_values", "labels", "masks",
                                                                         "mask_known", "frames")} | {
        "index": torch.tensor([item["index"] for item in items], dtype=torch.long)}


def make_loader(dataset: FinetuneDataset, batch_size: int, *, shuffle: bool, workers: int, seed: int,
                drop_last: bool = False) -> torch.utils.data.DataLoader:
    """A DataLoader with a seeded sampler generator (Accelerate's seedable sampler re-seeds it per epoch)."""
    generator = torch.Generator()
    generator.manual_seed(seed)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=workers,
                                       collate_fn=collate, drop_last=drop_last, generator=generator,
                                       pin_memory=torch.cuda.is_available())


def readable(records: Sequence[EvalRecord], split: str, rejections: list[Rejection],
             quiet: bool = False) -> list[EvalRecord]:
    """The records whose image passes ``validate_image``; the others become rejections with the reason."""
    kept = []
    quiet = quiet or len(records) < 200
    for record in progress(records, desc=f"checking {split} images", unit="img", disable=True if quiet else None):
        reason = validate_image(record.path, allow_16bit=True)  # load_image windows 16-bit PNG/DICOM
        if reason is None:
            kept.append(record)
        else:
            rejections.append(Rejection(split, record.image_id, f"unreadable image: {reason}"))
    return kept
