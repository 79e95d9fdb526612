"""Metrics of one fine-tuned variant on the test split, through the evaluation module.

Classification: :func:`devide.evaluation.metrics.classification_report` (AUC with bootstrap CIs, threshold
protocols with validation-split thresholds); class-attention maps against boxes/masks with
:class:`devide.evaluation.grounding.GroundingAccumulator`. Segmentation: :mod:`devide.finetune.segmentation`
(Dice/IoU, both conventions) and overlay PNGs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from devide.data.adapters.base import EvalRecord, EvalSet
from devide.evaluation.grounding import GroundingAccumulator
from devide.evaluation.metrics import classification_report
from devide.evaluation.report import slug
from devide.evaluation.zero_shot import crop_window
from devide.finetune.data import FinetuneDataset
from devide.finetune.segmentation import per_image_scores, segmentation_report
from devide.finetune.trainer import FinetuneTrainer, PredictionSet

OVERLAY_SIDE = 256


def label_matrix(records: list[EvalRecord], classes: list[str]) -> np.ndarray:
    """Labels [N, K] (1, 0, -1, -100) in ``classes`` order, via the evaluation module's EvalSet."""
    return EvalSet("finetune", "", Path("."), list(classes), list(records)).label_matrix().astype(np.int64)


def grounding_metrics(records: list[EvalRecord], predictions: PredictionSet, classes: list[str],
                      center_crop: bool) -> dict | None:
    """Class-attention maps vs annotated boxes/masks (pointing game, IoU/Dice at thresholds, map AUROC)."""
    if predictions.maps is None:
        return None
    accumulator = GroundingAccumulator()
    index = {name: k for k, name in enumerate(classes)}
    for i, record in enumerate(records):
        if not record.has_annotations:
            continue
        frame = (int(predictions.frames[i][0]), int(predictions.frames[i][1]))
        masks = record.mask_fn(frame) if record.mask_fn is not None else {}
        for label in sorted(set(record.boxes) | set(masks)):
            if label in index and record.labels.get(label) == 1:
                accumulator.add(label, record.image_id, predictions.maps[i, index[label]], frame,
                                boxes=record.boxes.get(label), mask=masks.get(label),
                                window=crop_window(frame, center_crop))
    return accumulator.summary() if accumulator.items else None


def classification_metrics(trainer: FinetuneTrainer, cfg: Any) -> dict[str, Any]:
    data = trainer.data
    test = trainer.predict(data.test)
    val = trainer.predict(data.val)
    labels = label_matrix(data.test, data.classes)
    val_labels = label_matrix(data.val, data.classes) if data.val else None
    groups = {name: [c for c in members if c in data.classes] for name, members in data.label_sets.items()}
    report = classification_report(data.classes, labels, test.probs, groups={k: v for k, v in groups.items() if v},
                                   val_labels=val_labels, val_scores=val.probs, n_bootstrap=cfg.bootstrap,
                                   seed=cfg.seed)
    return {"classification": report, "grounding": grounding_metrics(data.test, test, data.classes,
                                                                      data.processor.center_crop),
            "n_test": len(data.test), "n_val": len(data.val)}


def segmentation_metrics(trainer: FinetuneTrainer, cfg: Any, overlay_dir: Path) -> dict[str, Any]:
    data = trainer.data
    test = trainer.predict(data.test)
    counts = test.counts.astype(np.int64)
    report = segmentation_report(data.classes, counts[:, 0], counts[:, 1], counts[:, 2], test.known, cfg.threshold,
                                 n_bootstrap=cfg.bootstrap, seed=cfg.seed)
    written = []
    if trainer.accelerator.is_main_process and cfg.overlays:
        written = write_overlays(trainer, overlay_dir, pick_overlays(counts, test.known, cfg.overlays))
    return {"segmentation": report, "n_test": len(data.test), "overlays": written}


# ---------------------------------------------------------------------------------------------- overlays


def pick_overlays(counts: np.ndarray, known: np.ndarray, limit: int) -> list[int]:
    """Test rows to draw: positives first (in order), then negatives, ``limit`` in all."""
    has_known = known.any(1)
    positive = [i for i in range(len(counts)) if has_known[i] and counts[i, 2].sum() > 0]
    negative = [i for i in range(len(counts)) if has_known[i] and counts[i, 2].sum() == 0]
    return (positive + negative)[:limit]


def write_overlays(trainer: FinetuneTrainer, folder: Path, rows: list[int]) -> list[str]:
    """PNG per image: the model's input view, ground truth outlined in green, prediction filled in red."""
    if not rows:
        return []
    folder.mkdir(parents=True, exist_ok=True)
    data, model = trainer.data, trainer.accelerator.unwrap_model(trainer.model)
    dataset = FinetuneDataset([data.test[i] for i in rows], data.classes, data.processor, with_masks=True)
    model.eval()
    written = []
    with torch.no_grad():
        for j, row in enumerate(rows):
            item = dataset[j]
            pixels = item["pixel_values"][None].to(trainer.accelerator.device)
            probs = model(pixels)["logits"].float().sigmoid()[0].cpu().numpy()
            for k, name in enumerate(data.classes):
                if not item["mask_known"][k]:
                    continue
                truth, pred = item["masks"][k].numpy().astype(bool), probs[k] >= trainer.cfg.threshold
                dice = per_image_scores(*(np.array([[v]]) for v in ((truth & pred).sum(), pred.sum(), truth.sum())))[0]
                path = folder / f"{row:04d}_{slug(data.test[row].image_id)[:60]}_{slug(name)}.png"
                overlay(item["pixel_values"], data.processor, truth, pred, f"{name}  Dice {dice[0, 0]:.2f}").save(path)
                written.append(path.name)
    model.train()
    return written


def overlay(pixel_values: torch.Tensor, processor: Any, truth: np.ndarray, pred: np.ndarray, title: str) -> Image.Image:
    """The normalised input [C, S, S] back to grey, prediction in translucent red, ground truth outline green."""
    grey = pixel_values[0].numpy() * processor.image_std[0] + processor.image_mean[0]
    base = np.repeat((np.clip(grey, 0, 1) * 255).astype(np.uint8)[..., None], 3, axis=2).astype(np.float32)
    base[pred] = 0.55 * base[pred] + 0.45 * np.array([255, 40, 40])
    edge = truth & ~_erode(truth)
    base[edge] = [40, 255, 40]
    image = Image.fromarray(base.astype(np.uint8)).resize((OVERLAY_SIDE, OVERLAY_SIDE), Image.Resampling.NEAREST)
    ImageDraw.Draw(image).text((4, 4), title, fill=(255, 255, 0))
    return image


def _erode(mask: np.ndarray) -> np.ndarray:
    """4-neighbour binary erosion (edges of the image count as outside)."""
    padded = np.pad(mask, 1)
    return (padded[1:-1, 1:-1] & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:])
