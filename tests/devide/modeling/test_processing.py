"""DevideImageProcessor: greyscale handling, resize/crop, CXR normalisation, save/load, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from devide.modeling import DevideConfig, DevideImageProcessor


def test_constant_image_normalised_by_hand():
    processor = DevideImageProcessor(size=16, num_channels=1, image_mean=[0.5], image_std=[0.25])
    image = Image.fromarray(np.full((40, 30), 191, dtype=np.uint8))  # 191/255 = 0.749
    pixels = processor(image)["pixel_values"]
    assert pixels.shape == (1, 1, 16, 16) and pixels.dtype == torch.float32
    torch.testing.assert_close(pixels, torch.full_like(pixels, (191 / 255 - 0.5) / 0.25))


def test_sixteen_bit_rgb_and_arrays_become_the_same_grey():
    processor = DevideImageProcessor(size=8, num_channels=3)
    grey8 = np.tile(np.linspace(0, 255, 24, dtype=np.uint8), (24, 1))
    from_l = processor(Image.fromarray(grey8))["pixel_values"]
    from_rgb = processor(Image.fromarray(np.stack([grey8] * 3, -1)))["pixel_values"]
    from_16 = processor(Image.fromarray(grey8.astype(np.uint16) * 257))["pixel_values"]
    from_array = processor(grey8)["pixel_values"]
    from_chw = processor(torch.from_numpy(np.stack([grey8] * 3)))["pixel_values"]
    assert from_l.shape == (1, 3, 8, 8)
    torch.testing.assert_close(from_l[:, 0], from_l[:, 2])  # grey replicated to 3 channels
    for other in (from_rgb, from_16, from_array, from_chw):
        torch.testing.assert_close(other, from_l, atol=2e-3, rtol=0)


def test_shorter_side_resize_then_centre_crop():
    processor = DevideImageProcessor(size=10, image_mean=[0.0], image_std=[1.0])
    wide = np.zeros((20, 60), dtype=np.uint8)
    wide[:, :20] = 255  # a bright left third is cropped away by the centre crop
    pixels = processor(Image.fromarray(wide))["pixel_values"]
    assert pixels.shape == (1, 1, 10, 10) and pixels[..., 1:].max() < 0.01  # column 0: antialias blend
    squashed = DevideImageProcessor(size=10, center_crop=False, image_mean=[0.0], image_std=[1.0])
    assert squashed(Image.fromarray(wide))["pixel_values"][0, 0, :, 0].min() > 0.9


def test_per_image_standardisation_removes_exposure():
    processor = DevideImageProcessor(size=16, per_image_standardize=True)
    base = np.random.default_rng(0).uniform(0.2, 0.6, (32, 32)).astype(np.float32)
    dark, bright = processor(base)["pixel_values"], processor(base + 0.3)["pixel_values"]
    torch.testing.assert_close(dark, bright, atol=1e-4, rtol=0)


def test_from_model_config_save_and_load(tmp_path):
    config = DevideConfig(vision_preset="tiny")
    processor = DevideImageProcessor.from_model_config(config)
    assert processor.size == 128 and processor.num_channels == 1
    processor.save_pretrained(tmp_path)
    loaded = DevideImageProcessor.from_pretrained(tmp_path)
    assert loaded.to_dict() == processor.to_dict()
    image = Image.fromarray(np.random.default_rng(1).integers(0, 255, (150, 140), dtype=np.uint8))
    torch.testing.assert_close(loaded(image)["pixel_values"], processor(image)["pixel_values"])


def test_bad_input_errors():
    processor = DevideImageProcessor(size=8)
    with pytest.raises(TypeError, match="unsupported image type"):
        processor("not an image")
    with pytest.raises(ValueError, match="no images"):
        processor([])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        processor(np.full((8, 8), 3.0, dtype=np.float32))
    with pytest.raises(ValueError, match="num_channels"):
        DevideImageProcessor(num_channels=2)
    with pytest.raises(ValueError, match="per channel"):
        DevideImageProcessor(num_channels=3, image_mean=[0.5])


def test_every_constructor_key_survives_save_and_load_and_overrides(tmp_path):
    """transformers' custom-processor contract (``valid_kwargs``): non-default values of every key round-trip,
    and keys passed to ``from_pretrained`` override the saved ones (5.25 reads ``valid_kwargs`` there)."""
    processor = DevideImageProcessor(size=32, num_channels=3, image_mean=[0.4, 0.5, 0.6], image_std=[0.2, 0.3, 0.4],
                                     resample="bicubic", center_crop=False, per_image_standardize=True)
    processor.save_pretrained(tmp_path)
    loaded = DevideImageProcessor.from_pretrained(tmp_path)
    for key in ("size", "num_channels", "image_mean", "image_std", "resample", "center_crop", "per_image_standardize"):
        assert getattr(loaded, key) == getattr(processor, key), key
    resized = DevideImageProcessor.from_pretrained(tmp_path, size=48, center_crop=True)
    assert (resized.size, resized.center_crop, resized.num_channels) == (48, True, 3)
    image = Image.fromarray(np.random.default_rng(2).integers(0, 255, (40, 30), dtype=np.uint8))
    assert resized(image)["pixel_values"].shape == (1, 3, 48, 48)
