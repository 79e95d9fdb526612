"""Fine-tuning losses: multi-label BCE (devide.modeling.losses.masked_bce), Dice + BCE for masks, and the
explanation-guided attention-alignment loss.

Shapes: B images, K classes, S x S image pixels, h x w patch grid.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

DICE_SMOOTH = 1.0


def dice_bce_loss(logits: torch.Tensor, masks: torch.Tensor, known: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """Segmentation loss on the (image, class) pairs whose mask is known.

    logits [B, K, S, S]; masks [B, K, S, S] (0/1); known bool [B, K]. BCE is the mean over the known pairs'
    pixels; Dice is the soft Dice of each class over the batch's known pairs (pixels of all those images pooled,
    smoothing 1, as MedKLIP's DiceBCELoss), averaged over classes with a known pair: batches of only negative
    images then still give a finite, useful Dice term (predicting empty scores ~1).
    Returns (loss, {"loss_bce": ..., "loss_dice": ...}); 0 attached to the graph when nothing is known.
    """
    weight = known[..., None, None].float()
    target = masks.float()
    logits = logits.float()
    pixels = weight.sum() * logits.shape[-1] * logits.shape[-2]
    if pixels == 0:
        zero = logits.sum() * 0.0
        return zero, {"loss_bce": zero.detach(), "loss_dice": zero.detach()}
    bce = (F.binary_cross_entropy_with_logits(logits, target, reduction="none") * weight).sum() / pixels
    probs = logits.sigmoid() * weight
    inter = (probs * target).sum(dim=(0, 2, 3))
    total = probs.sum(dim=(0, 2, 3)) + (target * weight).sum(dim=(0, 2, 3))
    present = known.any(0)
    dice = 1.0 - (2.0 * inter + DICE_SMOOTH) / (total + DICE_SMOOTH)
    dice = dice[present].mean()
    return bce + dice, {"loss_bce": bce.detach(), "loss_dice": dice.detach()}


def regions_on_grid(masks: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """masks [B, K, S, S] -> bool [B, K, h, w]: a patch belongs to the region when any of its pixels does."""
    return F.adaptive_max_pool2d(masks.float(), grid) > 0


def alignment_loss(maps: torch.Tensor, masks: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
    """Explanation-guided attention alignment: the share of a class's attention that falls outside its region.

    maps [B, K, h, w]: attention over patches (each map sums to 1); masks [B, K, S, S]: annotated regions in
    image pixels; active bool [B, K]: pairs to align (present class with a non-empty annotation).
    L = mean over active pairs of (1 - sum_{patches in region} A), so L = 0 exactly when all attention lies on
    patches touching the region, and L > 0 as soon as any attention falls outside it. 0 (attached to the graph)
    when no pair is active.
    """
    region = regions_on_grid(masks, maps.shape[-2:])
    active = active & region.flatten(2).any(-1)
    if not active.any():
        return maps.sum() * 0.0
    inside = (maps.float() * region).flatten(2).sum(-1)  # [B, K]
    return (1.0 - inside)[active].mean()
