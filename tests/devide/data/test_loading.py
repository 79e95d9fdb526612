"""The training Dataset over prepare-data's Arrow output: labels remapped, deterministic augmentation."""

from __future__ import annotations

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from devide.config import load_config
from devide.data.loading import (
    CxrAugment,
    CxrDataset,
    collate,
    entity_index,
    make_dataloader,
    processor_to_pixels,
    read_entities,
)
from devide.data.prepare import STAGE, PrepareDataConfig
from devide.stage import execute_stage

from .mimic_fixture import build

pytest.importorskip("knowledge.labeler")
processing = pytest.importorskip("devide.modeling.processing_devide")

MODEL_ENTITIES = ["pneumothorax", "pleural_effusion", "cardiomegaly", "atelectasis", "hernia"]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("loading")
    fx = build(tmp / "root")
    cfg = load_config(PrepareDataConfig, overrides={"root": str(fx.root), "out": str(tmp / "prep")})
    execute_stage(STAGE, cfg, quiet=True)
    return fx.root, tmp / "prep"


def make(prepared, augment=None, seed=0):
    root, prep = prepared
    rows = datasets.load_from_disk(str(prep / "dataset"))["train"]
    processor = processing.DevideImageProcessor(size=32, num_channels=1)
    return CxrDataset(rows, root, processor_to_pixels(processor), read_entities(prep), MODEL_ENTITIES,
                      draft_size=32, augment=augment, seed=seed)


def test_entity_index():
    assert entity_index(["a", "b", "c"], ["c", "x", "a"]).tolist() == [2, -1, 0]


def test_items_have_model_label_order_and_shapes(prepared):
    dataset = make(prepared)
    assert len(dataset) == 3
    item = next(dataset[i] for i in range(3) if "effusion" in dataset[i]["report_text"])
    assert item["pixel_values"].shape == (1, 32, 32) and item["pixel_values"].dtype == torch.float32
    # study 50000001: pleural effusion 1, cardiomegaly 0, atelectasis -1; pneumothorax blank; hernia not a label
    assert item["labels"].tolist() == [-100, 1, 0, -1, -100]
    batch = collate([dataset[0], dataset[1]])
    assert batch["pixel_values"].shape == (2, 1, 32, 32) and batch["labels"].shape == (2, 5)
    assert len(batch["report_texts"]) == 2 and batch["index"].tolist() == [0, 1]


def test_augmentation_is_a_function_of_seed_epoch_index(prepared):
    dataset = make(prepared, augment=CxrAugment())
    first = dataset[0]["pixel_values"]
    assert torch.equal(first, dataset[0]["pixel_values"])
    dataset.set_epoch(1)
    assert not torch.equal(first, dataset[0]["pixel_values"])
    dataset.set_epoch(0)
    assert torch.equal(first, dataset[0]["pixel_values"])
    assert not torch.equal(first, make(prepared)[0]["pixel_values"])  # augmentation did something


def test_no_horizontal_flip_by_default():
    array = np.zeros((64, 64), dtype=np.uint8)
    array[:, :20] = 255  # bright left border
    image = Image.fromarray(array)
    augment = CxrAugment()
    for seed in range(30):
        out = np.asarray(augment(image, np.random.default_rng(seed)), dtype=float)
        left, right = out[:, : out.shape[1] // 3].mean(), out[:, -out.shape[1] // 3 :].mean()
        assert left > right + 50
    flipped = CxrAugment(hflip=1.0)(image, np.random.default_rng(0))
    out = np.asarray(flipped, dtype=float)
    assert out[:, -out.shape[1] // 3 :].mean() > out[:, : out.shape[1] // 3].mean() + 50


def test_workers_give_the_same_batches_as_the_main_process(prepared):
    dataset = make(prepared, augment=CxrAugment(), seed=3)
    plain = list(make_dataloader(dataset, 2, shuffle=True, workers=0, seed=5))
    forked = list(make_dataloader(dataset, 2, shuffle=True, workers=2, seed=5))
    assert [b["index"].tolist() for b in plain] == [b["index"].tolist() for b in forked]
    assert all(torch.equal(a["pixel_values"], b["pixel_values"]) for a, b in zip(plain, forked))


def _gradient_image(size: int = 96) -> Image.Image:
    ramp = np.linspace(0, 255, size)
    return Image.fromarray((ramp[None, :] * 0.6 + ramp[:, None] * 0.4).astype(np.uint8))


def test_one_affine_pass_matches_crop_then_rotate():
    """The fused resampling is the crop rotated and shifted as Image.rotate does (same draws, same pixels)."""
    image = _gradient_image()
    augment = CxrAugment(brightness=0.0, contrast=0.0, gamma=(1.0, 1.0))
    fused = np.asarray(augment(image, np.random.default_rng(4)), dtype=float)
    rng = np.random.default_rng(4)
    width, height, left, top = augment._crop_box(*image.size, rng)
    angle = float(rng.uniform(-augment.rotate_deg, augment.rotate_deg))
    shift = (rng.uniform(-augment.translate, augment.translate, size=2) * (width, height)).round().astype(int)
    expected = image.crop((left, top, left + width, top + height)).rotate(
        angle, resample=Image.Resampling.BILINEAR, translate=tuple(shift), fillcolor=0)
    assert fused.shape == (height, width)
    assert np.percentile(np.abs(fused - np.asarray(expected, dtype=float)), 99) <= 1.0


def test_augment_size_resizes_the_crop_and_box_reduces_large_shrinks():
    image = _gradient_image(256)
    plain = CxrAugment(rotate_deg=0.0, translate=0.0, brightness=0.0, contrast=0.0, gamma=(1.0, 1.0))
    out = plain(image, np.random.default_rng(0), size=32)
    width, height, left, top = plain._crop_box(256, 256, np.random.default_rng(0))
    expected = image.crop((left, top, left + width, top + height)).resize((32, 32), Image.Resampling.BOX)
    assert out.size == (32, 32)
    assert np.abs(np.asarray(out, dtype=float) - np.asarray(expected, dtype=float)).mean() < 2.0
