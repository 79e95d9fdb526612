"""Grounding metrics: how well a class's attention / similarity map points at its annotated boxes or mask.

For each (image, class) with a ground-truth region, the model's map [h, w] (covering the whole image, as the
image processor resizes without cropping) is resized bilinearly to a working grid with the annotation frame's
aspect ratio, and compared with the region rasterised on that grid:

* **pointing game** - 1 when the map's maximum falls inside the region;
* **IoU / Dice at thresholds** - the map min-max normalised to [0, 1] and binarised at each threshold;
* **map AUROC** - the map's values as a pixel classifier of inside/outside the region (0.5 = no better than
  chance; undefined when the region covers the whole grid).

These follow the localisation evaluations of grounding benchmarks for chest X-ray VLP models (pointing game and
IoU/Dice on boxes and masks).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from devide.evaluation.metrics import roc_auc

DEFAULT_THRESHOLDS = (0.3, 0.5, 0.7)
GRID_LONG_SIDE = 224


def grid_for(frame: tuple[int, int], long_side: int = GRID_LONG_SIDE) -> tuple[int, int]:
    """(width, height) of the working grid: the frame scaled so its longer side is ``long_side`` (never up)."""
    width, height = frame
    scale = min(1.0, long_side / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def resize_map(heatmap: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a map [h, w] to float32 [grid_h, grid_w]."""
    image = Image.fromarray(np.asarray(heatmap, dtype=np.float32))
    return np.asarray(image.resize(grid, Image.Resampling.BILINEAR), dtype=np.float32)


def place_map(heatmap: np.ndarray, grid: tuple[int, int],
              window: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0)) -> np.ndarray:
    """A map covering ``window`` (left, top, right, bottom fractions of the frame: the part the model saw, e.g.
    a centre crop) -> float32 [grid_h, grid_w] over the whole frame; outside the window: the map's minimum."""
    grid_w, grid_h = grid
    left, top = math.floor(window[0] * grid_w), math.floor(window[1] * grid_h)
    right = min(grid_w, max(left + 1, math.ceil(window[2] * grid_w)))
    bottom = min(grid_h, max(top + 1, math.ceil(window[3] * grid_h)))
    if (left, top, right, bottom) == (0, 0, grid_w, grid_h):
        return resize_map(heatmap, grid)
    full = np.full((grid_h, grid_w), float(np.min(heatmap)), np.float32)
    full[top:bottom, left:right] = resize_map(heatmap, (right - left, bottom - top))
    return full


def region_from_boxes(boxes: Sequence[tuple[float, float, float, float]], frame: tuple[int, int],
                      grid: tuple[int, int]) -> np.ndarray:
    """Union of boxes (x1, y1, x2, y2 in ``frame`` pixels) as bool [grid_h, grid_w]; every box covers >= 1 cell."""
    (width, height), (grid_w, grid_h) = frame, grid
    sx, sy = grid_w / width, grid_h / height
    region = np.zeros((grid_h, grid_w), dtype=bool)
    for x1, y1, x2, y2 in boxes:
        c1 = min(grid_w - 1, max(0, math.floor(x1 * sx)))
        r1 = min(grid_h - 1, max(0, math.floor(y1 * sy)))
        c2 = max(c1 + 1, min(grid_w, math.ceil(x2 * sx)))
        r2 = max(r1 + 1, min(grid_h, math.ceil(y2 * sy)))
        region[r1:r2, c1:c2] = True
    return region


def region_from_mask(mask: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """A bool mask [H, W] resized (nearest) to bool [grid_h, grid_w]."""
    image = Image.fromarray(np.asarray(mask, dtype=np.uint8) * 255)
    return np.asarray(image.resize(grid, Image.Resampling.NEAREST)) > 127


def normalise(heatmap: np.ndarray) -> np.ndarray:
    """Min-max to [0, 1]; a constant map becomes all zeros."""
    low, high = float(heatmap.min()), float(heatmap.max())
    return (heatmap - low) / (high - low) if high > low else np.zeros_like(heatmap)


def score_map(heatmap: np.ndarray, region: np.ndarray,
              thresholds: Sequence[float] = DEFAULT_THRESHOLDS) -> dict[str, float]:
    """Grounding metrics of one map [gh, gw] (already on the grid) against one region (bool, same shape)."""
    if heatmap.shape != region.shape:
        raise ValueError(f"map {heatmap.shape} and region {region.shape} differ in shape")
    flat = heatmap.reshape(-1)
    peak = int(np.argmax(flat))
    out = {"pointing_game": float(region.reshape(-1)[peak]),
           "map_auroc": roc_auc(region.reshape(-1).astype(int), flat) if 0 < region.sum() < region.size else math.nan}
    unit = normalise(heatmap)
    area = region.sum()
    for t in thresholds:
        predicted = unit >= t
        inter, union = float((predicted & region).sum()), float((predicted | region).sum())
        out[f"iou@{t:g}"] = inter / union if union else math.nan
        out[f"dice@{t:g}"] = 2 * inter / (predicted.sum() + area) if predicted.sum() + area else math.nan
    return out


@dataclass
class GroundingAccumulator:
    """Collects per-(image, class) grounding scores and summarises them per class and overall."""

    thresholds: Sequence[float] = DEFAULT_THRESHOLDS
    scores: dict[str, list[dict[str, float]]] = field(default_factory=lambda: defaultdict(list))
    items: list[dict] = field(default_factory=list)

    def add(self, name: str, image_id: str, heatmap: np.ndarray, frame: tuple[int, int],
            boxes: Sequence | None = None, mask: np.ndarray | None = None, kind: str = "class",
            window: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0)) -> dict[str, float]:
        """Score ``heatmap`` [h, w] (covering ``window`` of the frame) for class ``name`` against boxes (in
        ``frame`` pixels) or a mask [H, W]."""
        grid = grid_for(frame)
        region = region_from_mask(mask, grid) if mask is not None else region_from_boxes(boxes or [], frame, grid)
        result = score_map(place_map(np.asarray(heatmap, np.float32), grid, window), region, self.thresholds)
        self.scores[name].append(result)
        self.items.append({"image_id": image_id, "class": name, "kind": kind,
                           **{k: (None if not math.isfinite(v) else round(v, 6)) for k, v in result.items()}})
        return result

    def summary(self) -> dict:
        """{'classes': {name: {metric: mean, 'n': count}}, 'overall': {...}} (NaNs skipped in means)."""
        per_class = {name: _means(rows) for name, rows in sorted(self.scores.items())}
        every = [row for rows in self.scores.values() for row in rows]
        return {"classes": per_class, "overall": _means(every), "thresholds": list(self.thresholds),
                "grid_long_side": GRID_LONG_SIDE}


def _means(rows: list[dict[str, float]]) -> dict[str, float | int | None]:
    out: dict[str, float | int | None] = {"n": len(rows)}
    for key in (rows[0] if rows else {}):
        values = [r[key] for r in rows if math.isfinite(r[key])]
        out[key] = round(float(np.mean(values)), 6) if values else None
    return out
