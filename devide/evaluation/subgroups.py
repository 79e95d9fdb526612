"""Subgroup analysis: AUC by sex and by age band where the dataset carries demographics, and the largest gap.

For each attribute (``sex``: F/M; ``age``: bands such as 0-19, 20-39, …, 80+), the images are split into groups;
each group gets per-class AUCs and a macro AUC over the classes defined in it. The *gap* of a class is the
difference between its best and worst group AUC; the report names the largest class gap and the macro gap per
attribute (after the subgroup fairness analysis of the Aligner paper). Images with unknown sex/age are counted
but belong to no group.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from devide.evaluation.config import DEFAULT_AGE_BANDS
from devide.evaluation.metrics import roc_auc, valid_mask


def age_band(age: float | None, edges: Sequence[float] = DEFAULT_AGE_BANDS) -> str | None:
    """``63`` -> ``'60-79'``; the last band is open (``'80+'``); None for unknown or below the first edge."""
    if age is None or not math.isfinite(age) or age < edges[0]:
        return None
    for low, high in zip(edges, edges[1:], strict=False):
        if low <= age < high:
            return f"{low:g}-{high - 1:g}"
    return f"{edges[-1]:g}+"


def _group_aucs(classes: list[str], labels: np.ndarray, scores: np.ndarray, rows: np.ndarray) -> dict:
    per_class = {}
    for j, name in enumerate(classes):
        keep = rows & valid_mask(labels[:, j])
        auc = roc_auc(labels[keep, j], scores[keep, j]) if keep.any() else math.nan
        per_class[name] = None if not math.isfinite(auc) else round(auc, 6)
    defined = [v for v in per_class.values() if v is not None]
    return {"n": int(rows.sum()), "macro_auc": round(float(np.mean(defined)), 6) if defined else None,
            "auc": per_class}


def subgroup_report(classes: list[str], labels: np.ndarray, scores: np.ndarray, sex: Sequence[str | None],
                    age: Sequence[float | None], age_edges: Sequence[float] = DEFAULT_AGE_BANDS) -> dict:
    """Per-attribute groups with AUCs and gaps; attributes with fewer than two known groups are reported as such."""
    attributes = {"sex": [s if s in ("F", "M") else None for s in sex],
                  "age": [age_band(a, age_edges) for a in age]}
    out: dict = {"age_bands": list(age_edges)}
    for attribute, values in attributes.items():
        names = sorted({v for v in values if v is not None}, key=_band_order)
        column = np.array(values, dtype=object)
        groups = {name: _group_aucs(classes, labels, scores, column == name) for name in names}
        out[attribute] = {"unknown": int(sum(v is None for v in values)), "groups": groups,
                          **_gaps(classes, groups)}
    return out


def _band_order(name: str) -> tuple[float, str]:
    head = name.split("-")[0].rstrip("+")
    return (float(head), name) if head.replace(".", "").isdigit() else (math.inf, name)


def _gaps(classes: list[str], groups: dict[str, dict]) -> dict:
    """Largest per-class gap and the macro gap across ``groups`` (None with a reason when < 2 groups)."""
    if len(groups) < 2:
        return {"largest_gap": None, "macro_gap": None, "note": "fewer than two groups with images"}
    best: dict | None = None
    for name in classes:
        defined = {g: v["auc"][name] for g, v in groups.items() if v["auc"][name] is not None}
        if len(defined) < 2:
            continue
        high, low = max(defined, key=defined.get), min(defined, key=defined.get)
        gap = defined[high] - defined[low]
        if best is None or gap > best["gap"]:
            best = {"class": name, "gap": round(gap, 6), "best_group": high, "best_auc": defined[high],
                    "worst_group": low, "worst_auc": defined[low]}
    macros = {g: v["macro_auc"] for g, v in groups.items() if v["macro_auc"] is not None}
    macro_gap = None
    if len(macros) >= 2:
        high, low = max(macros, key=macros.get), min(macros, key=macros.get)
        macro_gap = {"gap": round(macros[high] - macros[low], 6), "best_group": high, "worst_group": low}
    return {"largest_gap": best, "macro_gap": macro_gap}
