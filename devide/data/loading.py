"""A torch Dataset over the prepare-data Arrow dataset: lazy decode, reduce-on-load, CXR augmentation.

Rows stay in the memory-mapped Arrow files (``datasets.load_from_disk``); a worker holds no per-row Python
lists, so memory is flat in dataset size. Each item decodes its image only when asked for (JPEG DCT scaling
through :func:`devide.data.image_io.load_image` ``draft_size``), augments it, and turns it into
``pixel_values`` with the model's image processor.

Augmentation randomness comes from a generator seeded by (seed, epoch, index), never from global RNG state:
the same sample gets the same augmentation whatever the worker count, the process count or a resume, which is
what makes resumed training bit-identical. Horizontal flip is off by default: laterality matters on a chest
radiograph (dextrocardia, a left- versus right-sided effusion).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps

from devide.data.image_io import load_image

NOT_MENTIONED = -100
ARROW_COLUMNS = ("image_path", "report_text", "labels")


@dataclass(frozen=True)
class CxrAugment:
    """Mild, anatomy-preserving augmentation for chest radiographs.

    scale: fraction of the centred square (evaluation's window) kept by the random crop (min, max); aspect is
    jittered by ``ratio``.
    rotate_deg / translate: small positioning changes. brightness / contrast: relative jitter; gamma: an
    exposure curve range. hflip: probability of a horizontal flip (0 by default: laterality matters).
    """

    scale: tuple[float, float] = (0.8, 1.0)
    ratio: tuple[float, float] = (0.9, 1.1)
    rotate_deg: float = 7.0
    translate: float = 0.04
    brightness: float = 0.1
    contrast: float = 0.1
    gamma: tuple[float, float] = (0.85, 1.15)
    hflip: float = 0.0

    def __call__(self, image: Image.Image, rng: np.random.Generator, size: int | None = None) -> Image.Image:
        """PIL "L" -> augmented PIL "L": ``size`` x ``size`` when given (the crop is resized to it, as a random
        resized crop), else the crop's own size (the processor resizes afterwards).

        Crop, rotation, translation and the resize are one affine resampling (one bilinear pass over the
        output pixels instead of a rotation of the crop and a resize of the result).
        """
        width, height = image.size
        crop_w, crop_h, left, top = self._crop_box(width, height, rng)
        angle, shift = 0.0, (0.0, 0.0)
        if self.rotate_deg or self.translate:
            angle = float(rng.uniform(-self.rotate_deg, self.rotate_deg))
            shift = tuple((rng.uniform(-self.translate, self.translate, size=2) * (crop_w, crop_h)).round())
        out_w, out_h = (size, size) if size else (crop_w, crop_h)
        scale_x, scale_y = crop_w / out_w, crop_h / out_h
        reduce = math.floor(min(scale_x, scale_y) + 0.5)
        if reduce >= 2:  # shrinking 1.5x or more: box-reduce first (bilinear sampling alone would alias)
            image = image.reduce(reduce)
        matrix = _affine_to_source(out_w, out_h, scale_x, scale_y, angle, shift,
                                   (left + crop_w / 2, top + crop_h / 2), max(reduce, 1))
        image = image.transform((out_w, out_h), Image.Transform.AFFINE, matrix, resample=Image.Resampling.BILINEAR,
                                fillcolor=0)
        image = image.point(self._intensity_table(rng))
        if self.hflip and rng.random() < self.hflip:
            image = ImageOps.mirror(image)
        return image

    def _crop_box(self, width: int, height: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
        """(crop width, crop height, left, top) of a random crop keeping ``scale`` of the *centred square*.

        The square of side min(width, height) in the middle of the image is exactly what evaluation sees (the
        processor scales the shorter side and centre-crops), so training crops come from the same window with
        the same geometry: a portrait radiograph is never squashed to a square, only jittered by ``ratio``.
        """
        side = min(width, height)
        area = side * side * rng.uniform(*self.scale)
        aspect = math.exp(rng.uniform(math.log(self.ratio[0]), math.log(self.ratio[1])))
        crop_w = min(side, max(1, round(math.sqrt(area * aspect))))
        crop_h = min(side, max(1, round(math.sqrt(area / aspect))))
        left = (width - side) // 2 + int(rng.integers(0, side - crop_w + 1))
        top = (height - side) // 2 + int(rng.integers(0, side - crop_h + 1))
        return crop_w, crop_h, left, top

    def _intensity_table(self, rng: np.random.Generator) -> list[int]:
        """A 256-entry lookup table: gamma, then contrast around mid-grey, then brightness."""
        gamma = rng.uniform(*self.gamma)
        contrast = 1.0 + rng.uniform(-self.contrast, self.contrast)
        brightness = rng.uniform(-self.brightness, self.brightness)
        x = np.linspace(0.0, 1.0, 256) ** gamma
        x = (x - 0.5) * contrast + 0.5 + brightness
        return np.clip(np.rint(x * 255.0), 0, 255).astype(int).tolist()


def _affine_to_source(out_w: int, out_h: int, scale_x: float, scale_y: float, angle_deg: float,
                      shift: tuple[float, float], centre: tuple[float, float], reduce: int) -> tuple[float, ...]:
    """Coefficients (a, b, c, d, e, f) mapping an output pixel (x, y) to the source pixel (a x + b y + c,
    d x + e y + f), as ``Image.transform(AFFINE)`` wants: the output centre lands on ``centre`` (source
    pixels) moved back by ``shift``, output pixels are ``scale`` source pixels wide, the content turns
    ``angle_deg`` counter-clockwise (as ``Image.rotate``), and the source was box-reduced by ``reduce``."""
    phi = -math.radians(angle_deg)
    cos, sin = math.cos(phi), math.sin(phi)
    u0 = -out_w / 2 * scale_x - shift[0]  # source offset from the centre of output pixel (0, 0) before rotation
    v0 = -out_h / 2 * scale_y - shift[1]
    coefficients = (cos * scale_x, sin * scale_y, cos * u0 + sin * v0 + centre[0],
                    -sin * scale_x, cos * scale_y, -sin * u0 + cos * v0 + centre[1])
    return tuple(c / reduce for c in coefficients)


def entity_index(dataset_entities: Sequence[str], model_entities: Sequence[str]) -> np.ndarray:
    """For each model entity, its column in the dataset's labels (-1 when the dataset has no such label)."""
    where = {e: i for i, e in enumerate(dataset_entities)}
    return np.array([where.get(e, -1) for e in model_entities], dtype=np.int64)


def read_entities(prepared: Path) -> list[str]:
    """Label order of a prepare-data artifact (``entities.json``)."""
    path = Path(prepared) / "entities.json"
    if not path.is_file():
        raise FileNotFoundError(f"{prepared}: no entities.json (not a prepare-data artifact?)")
    return json.loads(path.read_text(encoding="utf-8"))


class CxrDataset(torch.utils.data.Dataset):
    """Items ``{"pixel_values": [C, S, S] float, "labels": [E] long, "report_text": str, "index": int}``.

    Args:
        rows: a ``datasets.Dataset`` split of a prepare-data artifact (memory-mapped).
        image_root: the folder the ``image_path`` column is relative to (the MIMIC-CXR-JPG root).
        to_pixels: PIL "L" image -> [C, S, S] tensor (the model's image processor for one image).
        dataset_entities / model_entities: label order of the dataset / of the model's config.
        draft_size: decode at reduced resolution, never below this (pixels per side).
        augment: a :class:`CxrAugment`, or None for evaluation.
        augment_size: side of the augmented image (the processor's size: the augmentation's one resampling
            then also does the resize, and the processor's resize is a no-op); None keeps the crop's size.
        seed: base of the per-sample augmentation generators.
    """

    def __init__(self, rows: Any, image_root: Path, to_pixels: Callable[[Image.Image], torch.Tensor],
                 dataset_entities: Sequence[str], model_entities: Sequence[str], *, draft_size: int | None = None,
                 augment: CxrAugment | None = None, augment_size: int | None = None, seed: int = 0) -> None:
        missing = [c for c in ARROW_COLUMNS if c not in rows.column_names]
        if missing:
            raise ValueError(f"dataset lacks column(s) {', '.join(missing)} (not a prepare-data split?)")
        self.rows = rows.select_columns(list(ARROW_COLUMNS))
        self.image_root = Path(image_root)
        self.to_pixels = to_pixels
        self.label_index = entity_index(dataset_entities, model_entities)
        self.draft_size = draft_size
        self.augment = augment
        self.augment_size = augment_size
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.rows)

    def set_epoch(self, epoch: int) -> None:
        """Change the augmentation stream (call before building the epoch's iterator)."""
        self.epoch = int(epoch)

    def labels_for(self, dataset_labels: Sequence[int]) -> torch.Tensor:
        """Dataset label row -> [E] long in the model's entity order (-100 for entities the dataset lacks)."""
        source = np.asarray(dataset_labels, dtype=np.int64)
        picked = np.where(self.label_index >= 0, source[np.maximum(self.label_index, 0)], NOT_MENTIONED)
        return torch.from_numpy(picked)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        """A batch's items with one Arrow read for all its rows (the DataLoader calls this when it exists)."""
        rows = self.rows[[int(i) for i in indices]]
        return [self._item(int(i), path, labels, text)
                for i, path, labels, text in zip(indices, rows["image_path"], rows["labels"], rows["report_text"])]

    def _item(self, index: int, image_path: str, labels: Sequence[int], report_text: str) -> dict[str, Any]:
        image = load_image(self.image_root / image_path, draft_size=self.draft_size)
        if self.augment is not None:
            image = self.augment(image, np.random.default_rng([self.seed, self.epoch, index]), self.augment_size)
        return {"pixel_values": self.to_pixels(image), "labels": self.labels_for(labels), "report_text": report_text,
                "index": index}


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack a list of items: pixel_values [B, C, S, S], labels [B, E], report_texts list[str], index [B]."""
    return {
        "pixel_values": torch.stack([item["pixel_values"] for item in items]),
        "labels": torch.stack([item["labels"] for item in items]),
        "report_texts": [item["report_text"] for item in items],
        "index": torch.tensor([item["index"] for item in items], dtype=torch.long),
    }


def processor_to_pixels(processor: Any) -> Callable[[Image.Image], torch.Tensor]:
    """Wrap an image processor (``processor(images=..., return_tensors="pt")``) as one image -> [C, S, S]."""
    return _ProcessorPixels(processor)


class _ProcessorPixels:
    """Picklable (DataLoader workers) adapter from a batch image processor to one image."""

    def __init__(self, processor: Any) -> None:
        self.processor = processor

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return self.processor(images=[image], return_tensors="pt")["pixel_values"][0]


WORKER_NICENESS = 19


def lower_worker_priority(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: workers yield to the training process when the cores are all busy.

    The training step runs on a team of OpenMP threads that meet at a barrier after every operator; a worker
    that takes a core from one of them stalls the whole team. Niced workers still get every idle cycle (and
    all of a many-core GPU host), so the prefetch queue stays full unless the loader is the bottleneck.
    """
    if hasattr(os, "nice"):
        try:
            os.nice(WORKER_NICENESS)
        except OSError:  # not permitted in this sandbox: run at normal priority
            pass


def make_dataloader(dataset: CxrDataset, batch_size: int, *, shuffle: bool, workers: int = 0, seed: int = 0,
                    drop_last: bool = False, prefetch_factor: int = 4) -> torch.utils.data.DataLoader:
    """A DataLoader with a seeded sampler generator (Accelerate's seedable sampler re-seeds it per epoch)."""
    generator = torch.Generator()
    generator.manual_seed(seed)
    extra = {"prefetch_factor": prefetch_factor, "worker_init_fn": lower_worker_priority} if workers > 0 else {}
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle, num_workers=workers, collate_fn=collate,
        drop_last=drop_last, generator=generator, persistent_workers=False, pin_memory=torch.cuda.is_available(),
        **extra,
    )
