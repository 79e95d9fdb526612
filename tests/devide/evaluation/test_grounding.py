"""Grounding metrics on synthetic maps with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from devide.evaluation.grounding import (
    GroundingAccumulator,
    grid_for,
    region_from_boxes,
    region_from_mask,
    resize_map,
    score_map,
)


def test_grid_keeps_aspect_and_never_upsamples():
    assert grid_for((2000, 2500)) == (179, 224)
    assert grid_for((32, 16)) == (32, 16)


def test_region_from_boxes_scales_frame_to_grid():
    region = region_from_boxes([(10, 20, 30, 40)], frame=(100, 100), grid=(10, 10))
    expected = np.zeros((10, 10), bool)
    expected[2:4, 1:3] = True
    np.testing.assert_array_equal(region, expected)
    tiny = region_from_boxes([(50.2, 50.2, 50.3, 50.3)], frame=(100, 100), grid=(10, 10))
    assert tiny.sum() == 1  # a tiny box still covers one cell


def test_perfect_map_scores_one_everywhere():
    region = np.zeros((20, 20), bool)
    region[5:10, 5:15] = True
    heatmap = region.astype(float)
    result = score_map(heatmap, region)
    assert result["pointing_game"] == 1.0 and result["map_auroc"] == 1.0
    assert result["iou@0.5"] == 1.0 and result["dice@0.5"] == 1.0


def test_known_partial_overlap():
    region = np.zeros((10, 10), bool)
    region[:, :5] = True  # left half
    heatmap = np.zeros((10, 10))
    heatmap[:, 3:8] = 1.0  # columns 3-7: 2 columns inside, 3 outside
    result = score_map(heatmap, region, thresholds=(0.5,))
    # intersection 20 px, union 80 px; dice 2*20/(50+50)
    assert result["iou@0.5"] == pytest.approx(20 / 80)
    assert result["dice@0.5"] == pytest.approx(0.4)
    assert result["pointing_game"] == 1.0  # argmax = first max cell (0, 3), inside the region
    # map AUROC: inside values {0 x30, 1 x20}, outside {1 x30, 0 x20}
    pos = np.array([0] * 30 + [1] * 20)
    neg = np.array([1] * 30 + [0] * 20)
    by_hand = ((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()) / (50 * 50)
    assert result["map_auroc"] == pytest.approx(by_hand)


def test_map_pointing_outside_and_constant_map():
    region = np.zeros((8, 8), bool)
    region[0:2, 0:2] = True
    heatmap = np.zeros((8, 8))
    heatmap[7, 7] = 5.0
    result = score_map(heatmap, region)
    assert result["pointing_game"] == 0.0 and result["iou@0.5"] == 0.0
    full = score_map(np.ones((4, 4)), np.ones((4, 4), bool))
    assert math.isnan(full["map_auroc"])


def test_accumulator_upsamples_low_resolution_map_against_boxes_and_masks():
    acc = GroundingAccumulator(thresholds=(0.5,))
    coarse = np.zeros((4, 4), np.float32)
    coarse[0, 0] = 1.0  # top-left quarter of the image is hot
    hit = acc.add("Mass", "img1", coarse, frame=(64, 64), boxes=[(0, 0, 16, 16)])
    miss = acc.add("Mass", "img2", coarse, frame=(64, 64), boxes=[(48, 48, 64, 64)])
    mask = np.zeros((64, 64), bool)
    mask[:16, :16] = True
    masked = acc.add("Pneumothorax", "img3", coarse, frame=(64, 64), mask=mask)
    assert hit["pointing_game"] == 1.0 and miss["pointing_game"] == 0.0 and masked["pointing_game"] == 1.0
    assert hit["map_auroc"] > 0.9 and miss["map_auroc"] < 0.5
    summary = acc.summary()
    assert summary["classes"]["Mass"]["n"] == 2 and summary["classes"]["Mass"]["pointing_game"] == 0.5
    assert summary["overall"]["n"] == 3
    assert resize_map(coarse, (64, 64)).shape == (64, 64)
    assert region_from_mask(mask, (8, 8)).sum() == 4


def test_centre_crop_window_places_the_map_in_the_middle_of_a_wide_frame():
    from devide.evaluation.grounding import place_map
    from devide.evaluation.zero_shot import crop_window

    window = crop_window((200, 100), center_crop=True)
    assert window == (0.25, 0.0, 0.75, 1.0)
    assert crop_window((200, 100), center_crop=False) == (0.0, 0.0, 1.0, 1.0)
    heatmap = np.zeros((2, 2), np.float32)
    heatmap[0, 0] = 1.0  # the top-left of what the model saw = x in [50, 100) of the frame
    placed = place_map(heatmap, (20, 10), window)
    assert placed.shape == (10, 20) and placed[:, :5].max() == 0.0 and placed[:, 15:].max() == 0.0
    acc = GroundingAccumulator(thresholds=(0.5,))
    assert acc.add("x", "i", heatmap, (200, 100), boxes=[(50, 0, 100, 50)], window=window)["pointing_game"] == 1.0
    assert acc.add("x", "i", heatmap, (200, 100), boxes=[(0, 0, 50, 50)], window=window)["pointing_game"] == 0.0
