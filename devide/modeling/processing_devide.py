"""DevideImageProcessor: radiograph (PIL "L", 16-bit, RGB, arrays) -> ``pixel_values`` [B, C, H, W].

Steps: greyscale conversion (16-bit scaled to [0, 1] by its bit depth, RGB averaged), resize of the shorter
side to ``size`` (antialiased bilinear), centre crop to ``size``x``size``, scale to [0, 1], CXR normalisation
``(x - mean) / std`` (optionally a per-image z-score first, which removes exposure differences), and channel
handling (1 channel kept, or replicated to 3 for backbones with an RGB patch embedding). Saved as
``preprocessor_config.json`` beside the model; ``AutoImageProcessor.from_pretrained(path,
trust_remote_code=True)`` loads it. Self-contained (numpy, PIL, torch, transformers) for remote-code loading.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image
from transformers.image_processing_base import BatchFeature
from transformers.image_processing_utils import BaseImageProcessor
from transformers.processing_utils import ImagesKwargs

# Grey value x in [0, 1] -> (x - 0.5) / 0.25. Chest radiographs (8-bit JPEG exports such as MIMIC-CXR-JPG)
# have a mean grey level near the middle of the range and a wide spread; set image_mean/image_std to your
# data's statistics, or to a pretrained backbone's own values (e.g. 0.5/0.5 for google/vit-*).
DEFAULT_CXR_MEAN = 0.5
DEFAULT_CXR_STD = 0.25
_RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC,
             "nearest": Image.Resampling.NEAREST, "lanczos": Image.Resampling.LANCZOS}


def _to_grey_float(image: Any) -> np.ndarray:
    """One image (PIL, numpy [H, W] / [H, W, C] / [C, H, W], torch) -> float32 [H, W] in [0, 1]."""
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    if isinstance(image, Image.Image):
        return _pil_to_grey(image)
    if isinstance(image, np.ndarray):
        return _array_to_grey(image)
    raise TypeError(f"unsupported image type {type(image).__name__}; pass PIL images, numpy arrays or tensors")


def _pil_to_grey(image: Image.Image) -> np.ndarray:
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        return np.asarray(image, dtype=np.float32) / 65535.0
    if image.mode in ("I", "F"):
        array = np.asarray(image, dtype=np.float32)
        low, high = float(array.min()), float(array.max())
        return (array - low) / (high - low) if high > low else np.zeros_like(array)
    if image.mode != "L":
        image = image.convert("L")
    return np.asarray(image, dtype=np.float32) / 255.0


def _array_to_grey(array: np.ndarray) -> np.ndarray:
    if array.ndim == 3:
        channel_axis = 0 if array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4) else -1
        array = np.moveaxis(array, channel_axis, -1)[..., :3]
    if array.ndim not in (2, 3):
        raise ValueError(f"expected an image array of 2 or 3 dimensions, got shape {array.shape}")
    if array.dtype == np.uint8:
        array = array.astype(np.float32) / 255.0
    elif array.dtype == np.uint16:
        array = array.astype(np.float32) / 65535.0
    else:
        array = array.astype(np.float32)
        if array.min() < 0.0 or array.max() > 1.0:
            raise ValueError("float image arrays must lie in [0, 1]; pass uint8/uint16 arrays or PIL images instead")
    return array.mean(-1) if array.ndim == 3 else array


class DevideImageProcessorKwargs(ImagesKwargs, total=False):
    """The keys this processor adds to transformers' ``ImagesKwargs`` (``size``, ``image_mean``, ``image_std`` and
    ``resample`` are inherited). transformers' contract for custom processors: every constructor key must be
    declared in ``valid_kwargs``, which ``from_dict`` reads when loading a saved processor."""

    num_channels: int
    center_crop: bool
    per_image_standardize: bool


class DevideImageProcessor(BaseImageProcessor):
    """Chest-radiograph image processor. ``processor(images, return_tensors="pt")["pixel_values"]``: [B, C, S, S].

    Subclasses ``BaseImageProcessor`` and declares ``valid_kwargs`` as transformers documents for custom
    processors; ``preprocess`` is our own (greyscale radiographs, not the RGB backends' pipeline)."""

    valid_kwargs = DevideImageProcessorKwargs
    model_input_names: ClassVar[list[str]] = ["pixel_values"]

    def __init__(self, size: int = 224, num_channels: int = 1, image_mean: Sequence[float] | None = None,
                 image_std: Sequence[float] | None = None, resample: str = "bilinear", center_crop: bool = True,
                 per_image_standardize: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if num_channels not in (1, 3):
            raise ValueError(f"num_channels must be 1 or 3, got {num_channels}")
        if resample not in _RESAMPLE:
            raise ValueError(f"resample must be one of {sorted(_RESAMPLE)}, got {resample!r}")
        self.size = int(size)
        self.num_channels = int(num_channels)
        self.image_mean = [float(v) for v in (image_mean or [DEFAULT_CXR_MEAN] * num_channels)]
        self.image_std = [float(v) for v in (image_std or [DEFAULT_CXR_STD] * num_channels)]
        if len(self.image_mean) != num_channels or len(self.image_std) != num_channels:
            raise ValueError("image_mean and image_std need one value per channel")
        self.resample = resample
        self.center_crop = bool(center_crop)
        self.per_image_standardize = bool(per_image_standardize)

    @classmethod
    def from_model_config(cls, config: Any) -> DevideImageProcessor:
        """The processor matching a DevideConfig's vision tower (size, channels, normalisation)."""
        return cls(size=config.image_size, num_channels=config.num_channels, image_mean=config.image_mean,
                   image_std=config.image_std)

    def __call__(self, images: Any, return_tensors: str | None = "pt", **kwargs: Any) -> BatchFeature:
        return self.preprocess(images, return_tensors=return_tensors, **kwargs)

    def preprocess(self, images: Any, return_tensors: str | None = "pt", **kwargs: Any) -> BatchFeature:
        """images: one image or a list -> BatchFeature with ``pixel_values`` float32 [B, C, size, size]."""
        if kwargs:
            raise TypeError(f"unexpected arguments: {sorted(kwargs)}")
        if not isinstance(images, (list, tuple)):
            images = [images]
        if not images:
            raise ValueError("no images given")
        batch = np.stack([self._process_one(image) for image in images])
        pixel_values = torch.from_numpy(batch) if return_tensors == "pt" else batch
        return BatchFeature(data={"pixel_values": pixel_values})

    def _process_one(self, image: Any) -> np.ndarray:
        """One image -> float32 [C, size, size]."""
        grey = self._resize_and_crop(_to_grey_float(image))
        if self.per_image_standardize:
            grey = (grey - grey.mean()) / max(float(grey.std()), 1e-6) * 0.25 + 0.5
        channels = np.repeat(grey[None], self.num_channels, axis=0)
        mean = np.asarray(self.image_mean, dtype=np.float32)[:, None, None]
        std = np.asarray(self.image_std, dtype=np.float32)[:, None, None]
        return ((channels - mean) / std).astype(np.float32)

    def _resize_and_crop(self, grey: np.ndarray) -> np.ndarray:
        """[H, W] in [0, 1] -> [size, size] (shorter side to ``size`` then centre crop, or a direct resize)."""
        height, width = grey.shape
        if height == 0 or width == 0:
            raise ValueError("empty image")
        if height == width == self.size:
            return np.clip(grey, 0.0, 1.0)  # what the resize below gives at the same size: a copy
        picture = Image.fromarray(np.ascontiguousarray(grey, dtype=np.float32))  # mode "F"
        if self.center_crop:
            scale = self.size / min(height, width)
            new_w, new_h = max(self.size, round(width * scale)), max(self.size, round(height * scale))
            picture = picture.resize((new_w, new_h), _RESAMPLE[self.resample])
            left, top = (new_w - self.size) // 2, (new_h - self.size) // 2
            picture = picture.crop((left, top, left + self.size, top + self.size))
        else:
            picture = picture.resize((self.size, self.size), _RESAMPLE[self.resample])
        return np.clip(np.asarray(picture, dtype=np.float32), 0.0, 1.0)
