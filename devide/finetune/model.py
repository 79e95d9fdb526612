"""The fine-tuning model: the DeViDe image tower plus a task head.

Heads (B images, K classes, N = h*w patch tokens of width d, S = image side):

* :class:`LinearHead` - one linear layer on the tower's global token: the classic linear probe when the tower is
  frozen (``mode: probe``), the usual classifier for a full fine-tune.
* :class:`ClassAttentionHead` - one learned query per class attends over the patch tokens (single head, so the
  map is unambiguous); the attended feature gives the class logit and the attention weights [B, K, h, w] are
  the class's explanation map, which the alignment loss can pull toward boxes/masks (H-EGL's class-wise
  attention, without its text encoder: the classes are fixed at fine-tuning time).
* :class:`ProgressiveUpsamplingDecoder` - segmentation by progressive upsampling of the patch-token grid
  (SETR-PUP): log2(S/h) stages of 2x bilinear upsampling + 3x3 conv + GroupNorm + GELU, then a 1x1 conv to K
  mask logits at S x S. Chosen over a UNet because a plain ViT has a single 1/16-resolution token map and no
  encoder pyramid to skip-connect from (UNETR-style skips would only re-project that same resolution); the
  decoder works unchanged for any patch size or CNN feature map. GroupNorm, not BatchNorm: batches are small
  and split across processes.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


class LinearHead(nn.Module):
    """global token [B, d] -> logits [B, K]."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, num_classes)

    def forward(self, patches: torch.Tensor, glob: torch.Tensor, grid: tuple[int, int]) -> dict[str, torch.Tensor]:
        return {"logits": self.linear(glob)}


class ClassAttentionHead(nn.Module):
    """Class-query attention pooling: patches [B, N, d] -> logits [B, K] and maps [B, K, h, w] (sum 1 each)."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.queries = nn.Parameter(torch.randn(num_classes, dim) * dim ** -0.5)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.weight = nn.Parameter(torch.randn(num_classes, dim) * 0.02)
        self.bias = nn.Parameter(torch.zeros(num_classes))
        self.scale = dim ** -0.5

    def forward(self, patches: torch.Tensor, glob: torch.Tensor, grid: tuple[int, int]) -> dict[str, torch.Tensor]:
        tokens = self.norm(patches)
        scores = torch.einsum("kd,bnd->bkn", self.queries, self.key(tokens)) * self.scale
        attention = scores.float().softmax(-1)  # [B, K, N]
        pooled = torch.einsum("bkn,bnd->bkd", attention.to(tokens.dtype), self.value(tokens))
        logits = (pooled * self.weight).sum(-1) + self.bias
        return {"logits": logits, "maps": attention.reshape(patches.shape[0], -1, *grid)}


class ProgressiveUpsamplingDecoder(nn.Module):
    """patches [B, N, d] on an h x w grid -> mask logits [B, K, S, S]."""

    def __init__(self, dim: int, num_classes: int, grid_side: int, image_size: int, width: int = 128) -> None:
        super().__init__()
        self.image_size = image_size
        stages = max(1, math.ceil(math.log2(max(2, image_size / max(1, grid_side)))))
        self.inp = nn.Conv2d(dim, width, kernel_size=1)
        blocks, channels = [], width
        for _ in range(stages):
            out = max(16, channels // 2)
            blocks.append(nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                                        nn.Conv2d(channels, out, kernel_size=3, padding=1, bias=False),
                                        nn.GroupNorm(min(8, out), out), nn.GELU()))
            channels = out
        self.blocks = nn.Sequential(*blocks)
        self.out = nn.Conv2d(channels, num_classes, kernel_size=1)

    def forward(self, patches: torch.Tensor, glob: torch.Tensor, grid: tuple[int, int]) -> dict[str, torch.Tensor]:
        b, _, d = patches.shape
        x = patches.transpose(1, 2).reshape(b, d, *grid)
        x = self.out(self.blocks(self.inp(x)))
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        return {"logits": x}


class FinetuneModel(nn.Module):
    """An image tower (devide.modeling VisionTower) + a head. ``forward(pixel_values [B, C, S, S])`` -> dict with
    ``logits`` ([B, K] or [B, K, S, S]) and, for the class-attention head, ``maps`` [B, K, h, w]."""

    def __init__(self, tower: nn.Module, head: nn.Module, frozen_tower: bool) -> None:
        super().__init__()
        self.tower, self.head, self.frozen_tower = tower, head, frozen_tower
        self.tower.requires_grad_(not frozen_tower)

    def train(self, mode: bool = True) -> FinetuneModel:
        super().train(mode)
        if self.frozen_tower:  # a probe reads fixed features: no dropout / stochastic depth in the tower
            self.tower.eval()
        return self

    def forward(self, pixel_values: torch.Tensor) -> dict[str, torch.Tensor]:
        patches, glob, grid = self.tower(pixel_values)
        return self.head(patches, glob, grid)


def build_head(task: str, head: str, dim: int, num_classes: int, grid_side: int, image_size: int) -> nn.Module:
    if task == "segmentation":
        return ProgressiveUpsamplingDecoder(dim, num_classes, grid_side, image_size)
    if head == "attention":
        return ClassAttentionHead(dim, num_classes)
    return LinearHead(dim, num_classes)


def tower_grid_side(tower: nn.Module, image_size: int, channels: int) -> int:
    """Side of the tower's patch grid for an S x S input (one dummy forward, no gradient)."""
    with torch.no_grad():
        was_training = tower.training
        tower.eval()
        _, _, grid = tower(torch.zeros(1, channels, image_size, image_size))
        tower.train(was_training)
    return int(grid[0])


def build_model(pretrained_tower: nn.Module, vision_config: Any, *, init: str, mode: str, task: str, head: str,
                num_classes: int, image_size: int, channels: int) -> FinetuneModel:
    """A fresh :class:`FinetuneModel`: a copy of the pretrained tower, or the same architecture randomly
    initialised (``init: random``, the baseline); seeded by the caller's ``set_seed``."""
    from devide.modeling.modeling_devide import VisionTower

    tower = copy.deepcopy(pretrained_tower) if init == "pretrained" else VisionTower(vision_config)
    grid_side = tower_grid_side(tower, image_size, channels)
    module = build_head(task, head, tower.hidden_size, num_classes, grid_side, image_size)
    return FinetuneModel(tower, module, frozen_tower=mode == "probe")
