"""Heads, mask geometry, losses and segmentation metrics against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from devide.data.adapters.base import EvalRecord
from devide.finetune.data import FinetuneDataset, boxes_to_mask
from devide.finetune.losses import alignment_loss, dice_bce_loss
from devide.finetune.model import ClassAttentionHead, build_model
from devide.finetune.segmentation import mask_counts, segmentation_report
from devide.modeling import DevideImageProcessor
from devide.modeling.modeling_devide import VisionTower


def tower(image_size: int, patch: int) -> tuple[VisionTower, object]:
    from transformers import AutoConfig

    config = AutoConfig.for_model("vit", image_size=image_size, patch_size=patch, num_channels=1, hidden_size=16,
                                  num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    return VisionTower(config), config


@pytest.mark.parametrize("image_size, patch", [(32, 8), (48, 16), (40, 8)])
def test_segmentation_head_output_matches_the_mask(image_size, patch, tmp_path):
    vision, config = tower(image_size, patch)
    model = build_model(vision, config, init="pretrained", mode="full", task="segmentation", head="linear",
                        num_classes=2, image_size=image_size, channels=1)
    processor = DevideImageProcessor(size=image_size, num_channels=1)
    path = tmp_path / "a.png"
    Image.fromarray(np.full((60, 60), 100, np.uint8)).save(path)
    record = EvalRecord("a", path, {"A": 1, "B": 0}, boxes={"A": [(10.0, 10.0, 30.0, 30.0)]})
    item = FinetuneDataset([record], ["A", "B"], processor, with_masks=True)[0]
    logits = model(item["pixel_values"][None])["logits"]
    assert logits.shape[1:] == item["masks"].shape == (2, image_size, image_size)
    assert item["mask_known"].tolist() == [True, True]  # A annotated, B labelled absent (empty mask)
    assert item["masks"][0].sum() > 0 and item["masks"][1].sum() == 0


def test_mask_follows_the_processor_crop(tmp_path):
    """A 64x32 image, centre-cropped to 32x32: x 16..48 is kept, so a box at x 24..40 lands at 8..24."""
    path = tmp_path / "wide.png"
    Image.fromarray(np.zeros((32, 64), np.uint8)).save(path)
    record = EvalRecord("w", path, {"A": 1}, boxes={"A": [(24.0, 4.0, 40.0, 12.0)]})
    outside = EvalRecord("o", path, {"A": 1}, boxes={"A": [(0.0, 4.0, 12.0, 12.0)]})
    processor = DevideImageProcessor(size=32, num_channels=1)
    dataset = FinetuneDataset([record, outside], ["A"], processor, with_masks=True)
    mask = dataset[0]["masks"][0].numpy().astype(bool)
    expected = np.zeros((32, 32), bool)
    expected[4:12, 8:24] = True
    assert (mask == expected).all()
    assert dataset[1]["masks"][0].sum() == 0  # the box lies in the cropped-away margin
    assert tuple(dataset[0]["frames"].tolist()) == (64, 32)


def test_augmented_masks_move_with_the_image(tmp_path):
    """The mask goes through the same seeded crop/rotation: a lesion drawn in the image stays under its mask."""
    from devide.data.loading import CxrAugment

    image = np.full((64, 64), 20, np.uint8)
    image[20:40, 30:50] = 250
    path = tmp_path / "lesion.png"
    Image.fromarray(image).save(path)
    record = EvalRecord("l", path, {"A": 1}, boxes={"A": [(30.0, 20.0, 50.0, 40.0)]})
    processor = DevideImageProcessor(size=32, num_channels=1)
    dataset = FinetuneDataset([record], ["A"], processor, with_masks=True, augment=CxrAugment(rotate_deg=15))
    for epoch in range(3):
        dataset.set_epoch(epoch)
        item = dataset[0]
        bright = item["pixel_values"][0].numpy() > 1.0  # (250/255 - 0.5) / 0.25 ~ 1.9; background ~ -1.7
        mask = item["masks"][0].numpy().astype(bool)
        assert (bright & mask).sum() / max(1, (bright | mask).sum()) > 0.7


def test_boxes_to_mask_covers_partial_pixels():
    mask = boxes_to_mask([(1.5, 0.2, 3.0, 1.0)], (5, 3))
    assert mask.astype(int).tolist() == [[0, 1, 1, 0, 0], [0, 0, 0, 0, 0], [0, 0, 0, 0, 0]]


# ---------------------------------------------------------------------------------------------- metrics


def test_dice_and_iou_under_both_conventions():
    target = np.zeros((4, 1, 4, 4), bool)
    pred = np.zeros_like(target)
    target[0, 0, 0, :4] = True  # positive, 4 pixels; prediction hits 2 of them
    pred[0, 0, 0, :2] = True
    pred[2, 0, 3, :3] = True  # negative image with a false positive (3 pixels)
    target[3, 0, 1, :2] = True  # positive image, nothing predicted
    # image 1: negative, empty prediction -> 1 under the MedKLIP convention
    inter, predicted, truth = mask_counts(pred, target)
    report = segmentation_report(["A"], inter, predicted, truth, np.ones((4, 1), bool), 0.5)
    row = report["classes"][0]
    assert row["dice_positive"] == pytest.approx((2 * 2 / 6 + 0) / 2)
    assert row["dice_all"] == pytest.approx((2 * 2 / 6 + 1 + 0 + 0) / 4)
    assert row["iou_positive"] == pytest.approx((2 / 4 + 0) / 2)
    assert row["iou_all"] == pytest.approx((0.5 + 1 + 0 + 0) / 4)
    assert row["negatives_predicted_empty"] == 0.5 and (row["n_positive"], row["n_negative"]) == (2, 2)
    unknown = segmentation_report(["A"], inter, predicted, truth, np.array([[True], [False], [True], [True]]), 0.5)
    assert unknown["classes"][0]["dice_all"] == pytest.approx((2 / 3 + 0 + 0) / 3)  # unknown masks left out
    assert row["dice_positive_ci"] is None  # no bootstrap asked
    # two positive images with Dice 2/3 and 0: every resample's mean is 0, 1/3 or 2/3, so the 95 % CI is [0, 2/3]
    with_ci = segmentation_report(["A"], inter, predicted, truth, np.ones((4, 1), bool), 0.5, n_bootstrap=400)
    low, high = with_ci["classes"][0]["dice_positive_ci"]
    assert (low, high) == (pytest.approx(0.0), pytest.approx(2 / 3, abs=1e-6))
    assert with_ci["macro"]["dice_positive_ci"] == [low, high]  # one class: its CI is the macro CI


def test_dice_bce_loss_is_small_when_perfect_and_ignores_unknown_masks():
    masks = torch.zeros(2, 1, 8, 8)
    masks[0, 0, 2:5, 2:5] = 1
    perfect = (masks * 2 - 1) * 30
    known = torch.tensor([[True], [True]])
    loss, terms = dice_bce_loss(perfect, masks, known)
    assert loss.item() < 1e-3 and terms["loss_dice"].item() < 1e-3
    wrong = -perfect
    assert dice_bce_loss(wrong, masks, known)[0].item() > 10
    garbage = perfect.clone()
    garbage[1] = 30.0  # the second image's mask is unknown: its prediction must not matter
    only_first = torch.tensor([[True], [False]])
    assert dice_bce_loss(garbage, masks, only_first)[0].item() == pytest.approx(
        dice_bce_loss(perfect, masks, only_first)[0].item())
    nothing = dice_bce_loss(perfect.requires_grad_(), masks, torch.zeros(2, 1, dtype=torch.bool))[0]
    assert nothing.item() == 0 and nothing.requires_grad


# ---------------------------------------------------------------------------------------------- alignment


def test_alignment_loss_zero_when_aligned_positive_otherwise():
    masks = torch.zeros(1, 1, 16, 16)
    masks[0, 0, :8, :8] = 1  # top-left quadrant of a 2x2 patch grid
    active = torch.tensor([[True]])
    aligned = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
    assert alignment_loss(aligned, masks, active).item() == 0.0
    quarter_out = torch.tensor([[[[0.75, 0.25], [0.0, 0.0]]]])
    assert alignment_loss(quarter_out, masks, active).item() == pytest.approx(0.25)
    uniform = torch.full((1, 1, 2, 2), 0.25)
    assert alignment_loss(uniform, masks, active).item() == pytest.approx(0.75)
    # a region touching a patch by one pixel counts the whole patch as inside
    masks[0, 0, 8, 8] = 1
    assert alignment_loss(torch.tensor([[[[0.0, 0.0], [0.0, 1.0]]]]), masks, active).item() == 0.0


def test_alignment_loss_ignores_inactive_pairs_and_keeps_the_graph():
    maps = torch.full((2, 2, 2, 2), 0.25, requires_grad=True)
    masks = torch.zeros(2, 2, 8, 8)
    masks[0, 0, :4, :4] = 1
    active = torch.tensor([[True, True], [False, False]])  # (0, 1) has an empty region: not aligned
    loss = alignment_loss(maps, masks, active)
    assert loss.item() == pytest.approx(0.75)
    loss.backward()
    assert maps.grad[1].abs().sum() == 0 and maps.grad[0, 0].abs().sum() > 0
    none = alignment_loss(maps, masks, torch.zeros(2, 2, dtype=torch.bool))
    assert none.item() == 0.0 and none.requires_grad


def test_class_attention_maps_are_distributions_on_the_grid():
    head = ClassAttentionHead(dim=8, num_classes=3)
    out = head(torch.randn(2, 12, 8), torch.randn(2, 8), (3, 4))
    assert out["logits"].shape == (2, 3) and out["maps"].shape == (2, 3, 3, 4)
    assert torch.allclose(out["maps"].sum((-2, -1)), torch.ones(2, 3))


def test_probe_freezes_the_tower_only():
    vision, config = tower(32, 8)
    model = build_model(vision, config, init="pretrained", mode="probe", task="classification", head="linear",
                        num_classes=3, image_size=32, channels=1)
    assert not any(p.requires_grad for p in model.tower.parameters())
    assert all(p.requires_grad for p in model.head.parameters())
    model.train()
    assert not model.tower.training and model.head.training
    random = build_model(vision, config, init="random", mode="full", task="classification", head="linear",
                         num_classes=3, image_size=32, channels=1)
    first = next(iter(vision.state_dict()))
    assert not torch.equal(random.tower.state_dict()[first], vision.state_dict()[first])
    assert torch.equal(model.tower.state_dict()[first], vision.state_dict()[first])
