"""Segmentation metrics: Dice and IoU per image, summarised under two named conventions.

Per (image, class) with a known mask, at the model's S x S resolution, the prediction is ``prob >= threshold``:

* ``dice`` = 2|P∩T| / (|P| + |T|), ``iou`` = |P∩T| / |P∪T|, both defined as 1 when P and T are both empty
  (MedKLIP's SIIM convention: an empty prediction on a negative image is a perfect score, a non-empty one 0).
* ``*_positive``: the mean over images whose ground-truth mask is non-empty (the segmentation quality proper).
* ``*_all``: the mean over all images, negatives included with the convention above (MedKLIP's reported Dice;
  higher than ``dice_positive`` when the model keeps negatives empty).
"""

from __future__ import annotations

import numpy as np


def per_image_scores(inter: np.ndarray, pred: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixel counts [N, K] (intersection, predicted, ground truth) -> (dice [N, K], iou [N, K])."""
    inter, pred, target = (np.asarray(a, dtype=np.float64) for a in (inter, pred, target))
    total, union = pred + target, pred + target - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        dice = np.where(total > 0, 2 * inter / np.maximum(total, 1e-12), 1.0)
        iou = np.where(union > 0, inter / np.maximum(union, 1e-12), 1.0)
    return dice, iou


def mask_counts(pred: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """bool masks [N, K, H, W] -> (intersection, predicted, ground-truth pixel counts) [N, K]."""
    pred, target = np.asarray(pred, bool), np.asarray(target, bool)
    return (pred & target).sum((-2, -1)), pred.sum((-2, -1)), target.sum((-2, -1))


def _mean(values: np.ndarray) -> float | None:
    return round(float(values.mean()), 6) if values.size else None


def bootstrap_mean_ci(values: np.ndarray, n_resamples: int, seed: int, level: float = 0.95) -> list[float] | None:
    """Percentile CI of the mean of per-image values [n] over ``n_resamples`` resamples of the images."""
    if n_resamples <= 0 or values.size < 2:
        return None
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, (n_resamples, values.size))].mean(1)
    low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return [round(float(low), 6), round(float(high), 6)]


def segmentation_report(classes: list[str], inter: np.ndarray, pred: np.ndarray, target: np.ndarray,
                        known: np.ndarray, threshold: float, n_bootstrap: int = 0, seed: int = 0) -> dict:
    """Per-class and macro Dice / IoU under both conventions. Arrays [N, K]; ``known`` bool [N, K].
    ``n_bootstrap`` > 0 adds ``dice_positive_ci``: the 95 % percentile CI over resampled positive images."""
    dice, iou = per_image_scores(inter, pred, target)
    rows = []
    for k, name in enumerate(classes):
        keep = np.asarray(known[:, k], bool)
        positive = keep & (target[:, k] > 0)
        negative = keep & (target[:, k] == 0)
        rows.append({
            "class": name, "n": int(keep.sum()), "n_positive": int(positive.sum()), "n_negative": int(negative.sum()),
            "dice_positive": _mean(dice[positive, k]), "dice_all": _mean(dice[keep, k]),
            "dice_positive_ci": bootstrap_mean_ci(dice[positive, k], n_bootstrap, seed),
            "iou_positive": _mean(iou[positive, k]), "iou_all": _mean(iou[keep, k]),
            "negatives_predicted_empty": _mean((pred[negative, k] == 0).astype(float)),
        })
    macro = {}
    for key in ("dice_positive", "dice_all", "iou_positive", "iou_all"):
        values = [r[key] for r in rows if r[key] is not None]
        macro[key] = round(float(np.mean(values)), 6) if values else None
    # one class (SIIM): its image-level CI is the macro CI; several classes would need a joint resampling
    macro["dice_positive_ci"] = rows[0]["dice_positive_ci"] if len(rows) == 1 else None
    return {"classes": rows, "macro": macro, "threshold": threshold,
            "conventions": {"dice_positive": "mean Dice over images with a non-empty ground-truth mask",
                            "dice_all": "mean Dice over all images; an empty prediction on a negative image "
                                        "counts 1, a non-empty one 0 (MedKLIP)",
                            "iou_positive": "mean IoU over images with a non-empty ground-truth mask",
                            "iou_all": "mean IoU over all images, same empty-image convention"}}

