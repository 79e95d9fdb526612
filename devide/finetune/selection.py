"""The labelled fraction: a fixed, seeded, stratified, patient-level selection saved as a manifest.

Patients, not images, are selected (all images of a selected patient are labelled, none of the others), so a
1 % run never sees a patient that a different image of which is left unlabelled. Each patient is put in one
stratum: the *rarest* class it is positive for (counted in patients of the training pool), or ``negative``.
Each stratum contributes ``fraction`` of its patients (floor), every non-empty stratum at least one patient
while the budget allows (so a 1 % run still has a positive of each class; rarest strata first), and the rest
of the budget ``fraction * patients`` (rounded half up) goes by largest remainder. The order inside a stratum is one seeded
permutation of the sorted patient keys: the same pool, fraction and seed give the same selection on any machine.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from devide.data.adapters.base import EvalRecord
from devide.finetune.splits import patient_key
from devide.stage import StageError, write_json_atomic

NEGATIVE = "negative"
MANIFEST = "selection.json"


@dataclass
class Selection:
    """The labelled subset of the training pool."""

    image_ids: list[str]
    patients: dict[str, dict[str, Any]]
    """patient key -> {"stratum": str, "selected": bool, "images": [image ids]}"""
    summary: dict[str, Any]

    def records(self, pool: Sequence[EvalRecord]) -> list[EvalRecord]:
        chosen = set(self.image_ids)
        return [r for r in pool if r.image_id in chosen]


def group_by_patient(pool: Sequence[EvalRecord]) -> dict[str, list[EvalRecord]]:
    groups: dict[str, list[EvalRecord]] = defaultdict(list)
    for record in pool:
        groups[patient_key(record)].append(record)
    return dict(groups)


def patient_strata(groups: dict[str, list[EvalRecord]], classes: Sequence[str]) -> dict[str, str]:
    """patient -> the rarest class (fewest positive patients; class order breaks ties) it is positive for."""
    positive = {p: [c for c in classes if any(r.labels.get(c) == 1 for r in records)] for p, records in groups.items()}
    counts = {c: sum(c in found for found in positive.values()) for c in classes}
    rank = {c: (counts[c], i) for i, c in enumerate(classes)}
    return {p: min(found, key=rank.__getitem__) if found else NEGATIVE for p, found in positive.items()}


def stratum_quotas(sizes: dict[str, int], fraction: float) -> dict[str, int]:
    """Patients to take per stratum: floor(fraction * n), >= 1 per stratum while the budget allows, largest
    remainder for the rest; the total is ``fraction * sum(n)`` rounded half up (at least 1)."""
    total = min(sum(sizes.values()), max(1, math.floor(fraction * sum(sizes.values()) + 0.5)))
    quotas = {s: min(n, math.floor(fraction * n)) for s, n in sizes.items()}
    budget = total - sum(quotas.values())
    for stratum in sorted((s for s in sizes if quotas[s] == 0 and sizes[s] > 0), key=lambda s: (sizes[s], s)):
        if budget <= 0:
            break
        quotas[stratum], budget = 1, budget - 1
    by_remainder = sorted(sizes, key=lambda s: (-(fraction * sizes[s] - math.floor(fraction * sizes[s])), sizes[s], s))
    while budget > 0:
        progressed = False
        for stratum in by_remainder:
            if budget > 0 and quotas[stratum] < sizes[stratum]:
                quotas[stratum], budget, progressed = quotas[stratum] + 1, budget - 1, True
        if not progressed:
            break
    while budget < 0:  # the minimum of one per stratum overshot: trim the largest strata
        stratum = max(quotas, key=lambda s: (quotas[s], s))
        quotas[stratum], budget = quotas[stratum] - 1, budget + 1
    return quotas


def select_fraction(pool: Sequence[EvalRecord], classes: Sequence[str], fraction: float, seed: int) -> Selection:
    """The stratified, patient-level selection of ``fraction`` of the training pool (deterministic)."""
    if not pool:
        raise StageError("the training split is empty: nothing to select labels from")
    groups = group_by_patient(pool)
    strata = patient_strata(groups, classes)
    order = sorted(groups)
    permuted = [order[i] for i in np.random.default_rng(seed).permutation(len(order))]
    members: dict[str, list[str]] = defaultdict(list)
    for patient in permuted:
        members[strata[patient]].append(patient)
    quotas = stratum_quotas({s: len(p) for s, p in members.items()}, fraction)
    chosen = {p for s, patients in members.items() for p in patients[: quotas[s]]}
    patients = {p: {"stratum": strata[p], "selected": p in chosen, "images": [r.image_id for r in groups[p]]}
                for p in order}
    image_ids = [r.image_id for r in pool if patient_key(r) in chosen]
    summary = _summary(pool, classes, fraction, seed, members, quotas, chosen, image_ids)
    return Selection(image_ids, patients, summary)


def _summary(pool, classes, fraction, seed, members, quotas, chosen, image_ids) -> dict[str, Any]:
    selected_records = [r for r in pool if patient_key(r) in chosen]
    return {
        "fraction": fraction, "seed": seed, "classes": list(classes),
        "pool_patients": sum(len(p) for p in members.values()), "pool_images": len(pool),
        "selected_patients": len(chosen), "selected_images": len(image_ids),
        "strata": {s: {"patients": len(members[s]), "selected": quotas[s]} for s in sorted(members)},
        "positives": {c: {"pool": sum(r.labels.get(c) == 1 for r in pool),
                          "selected": sum(r.labels.get(c) == 1 for r in selected_records)} for c in classes},
        "images_sha256": hashlib.sha256("\n".join(sorted(image_ids)).encode()).hexdigest(),
    }


# ---------------------------------------------------------------------------------------------- manifest


def save_selection(path: Path, selection: Selection, context: dict[str, Any]) -> None:
    """Write the manifest: the summary, the context (dataset, protocol) and every patient's decision."""
    write_json_atomic(path, {**context, **selection.summary, "image_ids": selection.image_ids,
                             "patients": selection.patients})


def load_selection(path: Path, pool: Sequence[EvalRecord]) -> Selection:
    """A saved selection, checked against the current training pool (every image must still be there)."""
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST
    if not path.is_file():
        raise StageError(f"selection manifest not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        image_ids, patients = list(data["image_ids"]), dict(data["patients"])
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise StageError(f"{path}: not a finetune selection manifest ({exc})") from None
    known = {r.image_id for r in pool}
    missing = [i for i in image_ids if i not in known]
    if missing:
        raise StageError(f"{path}: {len(missing)} selected image(s) are not in this training pool "
                         f"(first: {missing[0]}); was it made for another dataset root or split protocol?")
    summary = {k: v for k, v in data.items() if k not in ("image_ids", "patients")}
    summary["reused_from"] = str(path)
    return Selection(image_ids, patients, summary)
