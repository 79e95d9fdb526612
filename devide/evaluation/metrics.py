"""Classification metrics for zero-shot evaluation: AUC with bootstrap CIs and threshold protocols.

Conventions: ``labels`` is an int array [N, K] with 1 present, 0 absent, -1 uncertain and -100 not labelled;
only 0/1 entries count for a class (uncertain and unlabelled images are excluded from that class, never
coerced). ``scores`` is a float array [N, K] of probabilities.

AUC is the Mann–Whitney statistic with ties counted one half (identical to ``sklearn.metrics.roc_auc_score``).
The bootstrap resamples *patients* when patient ids are known (ChestX-ray14 has many images per patient, and
images of one patient are not independent), otherwise images; the same resample serves every class, so macro
averages get a CI too. A resample is represented by per-image multiplicities (a drawn patient contributes all
of its images), so the AUC of a resample is computed exactly with weights instead of re-sorting. A resample in
which a class has only positives or only negatives has no AUC for that class: it is dropped from that class's
interval and the number dropped is reported (``bootstrap_dropped``), never hidden.

Threshold protocols (every output names the protocol of each F1/accuracy/MCC):

* ``val`` (default): per class, the threshold that maximises F1 on the *validation* split, applied to test.
* ``max-f1-test``: the threshold that maximises F1 on the test set itself (MedKLIP/MAVL). Optimistic.
* ``max-mcc-test``: the threshold that maximises MCC on the test set itself (KAD). Optimistic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import precision_recall_curve

PROTOCOLS: dict[str, str] = {
    "val": "threshold maximising F1 on the validation split, applied to the test split",
    "max-f1-test": "threshold maximising F1 on the test set itself (MedKLIP/MAVL protocol) - OPTIMISTIC",
    "max-mcc-test": "threshold maximising MCC on the test set itself (KAD protocol) - OPTIMISTIC",
}
OPTIMISTIC = {"max-f1-test", "max-mcc-test"}
FALLBACK_THRESHOLD = 0.5


def valid_mask(labels: np.ndarray) -> np.ndarray:
    """True where a label is a definite 0 or 1 (same shape as ``labels``)."""
    return (labels == 0) | (labels == 1)


# ---------------------------------------------------------------------------------------------- AUC


@dataclass
class RankedClass:
    """One class's valid entries, grouped by tied score, ready for weighted AUCs.

    ``group`` [n] maps each valid image to its score rank group (ascending); ``index`` [n] are the image rows.
    """

    index: np.ndarray
    positive: np.ndarray
    group: np.ndarray
    n_groups: int

    @classmethod
    def build(cls, labels: np.ndarray, scores: np.ndarray) -> RankedClass:
        keep = np.flatnonzero(valid_mask(labels))
        _, group = np.unique(scores[keep], return_inverse=True)
        return cls(keep, labels[keep] == 1, group, int(group.max()) + 1 if len(group) else 0)

    def auc(self, weights: np.ndarray | None = None) -> float:
        """Weighted Mann–Whitney AUC; ``weights`` [N] are per-image multiplicities (None = all 1)."""
        w = np.ones(len(self.index)) if weights is None else weights[self.index].astype(float)
        pos = np.bincount(self.group, w * self.positive, minlength=self.n_groups)
        neg = np.bincount(self.group, w * ~self.positive, minlength=self.n_groups)
        total_pos, total_neg = pos.sum(), neg.sum()
        if total_pos == 0 or total_neg == 0:
            return math.nan
        neg_below = np.cumsum(neg) - neg
        return float((pos * (neg_below + 0.5 * neg)).sum() / (total_pos * total_neg))


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """AUC of one class ([N] arrays); NaN when only one of the classes 0/1 is present."""
    return RankedClass.build(np.asarray(labels), np.asarray(scores, dtype=float)).auc()


def cluster_index(groups: list | np.ndarray | None, n: int) -> np.ndarray | None:
    """Per-image cluster number [n] from patient ids (None / empty id = a cluster of its own); None if no ids."""
    if groups is None or not any(g not in (None, "") for g in groups):
        return None
    if len(groups) != n:
        raise ValueError(f"{len(groups)} patient ids for {n} images")
    numbers: dict[str, int] = {}
    out = np.empty(n, dtype=np.int64)
    for i, group in enumerate(groups):
        key = f"id:{group}" if group not in (None, "") else f"image:{i}"
        out[i] = numbers.setdefault(key, len(numbers))
    return out


def bootstrap_aucs(labels: np.ndarray, scores: np.ndarray, n_resamples: int = 1000, seed: int = 0,
                   clusters: np.ndarray | None = None) -> np.ndarray:
    """AUC of every class on ``n_resamples`` bootstrap resamples: float [B, K] (NaN = undefined).

    clusters: int [N] cluster (patient) number per image; resamples draw clusters with replacement and weight
    each image by how often its cluster was drawn. None: images are resampled individually.
    Reproducible: the same ``seed`` gives the same resamples (numpy ``default_rng``).
    """
    n, k = labels.shape
    ranked = [RankedClass.build(labels[:, j], scores[:, j]) for j in range(k)]
    rng = np.random.default_rng(seed)
    out = np.full((n_resamples, k), math.nan)
    n_clusters = int(clusters.max()) + 1 if clusters is not None and n else n
    for b in range(n_resamples):
        drawn = np.bincount(rng.integers(0, n_clusters, n_clusters), minlength=n_clusters)
        weights = drawn[clusters] if clusters is not None else drawn
        out[b] = [r.auc(weights) for r in ranked]
    return out


def percentile_ci(samples: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """(low, high) percentile interval of the finite samples; NaNs when there are none."""
    finite = samples[np.isfinite(samples)]
    if finite.size == 0:
        return math.nan, math.nan
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(finite, [tail, 100 - tail])
    return float(low), float(high)


def macro_samples(boot: np.ndarray, columns: list[int]) -> np.ndarray:
    """Per-resample macro AUC over ``columns`` (classes undefined in a resample are left out of its mean)."""
    if not columns:
        return np.full(boot.shape[0], math.nan)
    sub = boot[:, columns]
    counts = np.isfinite(sub).sum(axis=1)
    sums = np.where(np.isfinite(sub), sub, 0).sum(axis=1)
    return np.where(counts > 0, sums / np.maximum(counts, 1), math.nan)


# ---------------------------------------------------------------------------------------------- thresholds


@dataclass
class Confusion:
    tp: int
    fp: int
    tn: int
    fn: int

    @classmethod
    def at(cls, positive: np.ndarray, scores: np.ndarray, threshold: float) -> Confusion:
        """Counts with ``score >= threshold`` predicted positive (``positive`` is a bool array)."""
        predicted = scores >= threshold
        return cls(int((predicted & positive).sum()), int((predicted & ~positive).sum()),
                   int((~predicted & ~positive).sum()), int((~predicted & positive).sum()))

    def metrics(self) -> dict[str, float]:
        tp, fp, tn, fn = self.tp, self.fp, self.tn, self.fn
        n = tp + fp + tn + fn
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        denominator = math.sqrt(float((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)))
        return {
            "f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0,
            "accuracy": (tp + tn) / n if n else math.nan,
            "mcc": (tp * tn - fp * fn) / denominator if denominator else 0.0,
            "precision": precision,
            "sensitivity": recall,
            "specificity": tn / (tn + fp) if tn + fp else 0.0,
        }


def max_f1_threshold(positive: np.ndarray, scores: np.ndarray) -> float:
    """The score threshold with the highest F1 (``precision_recall_curve``, as MedKLIP/MAVL)."""
    if positive.sum() == 0:
        return math.nan
    precision, recall, thresholds = precision_recall_curve(positive.astype(int), scores)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)[:-1]
    return float(thresholds[int(np.argmax(f1))])


def max_mcc_threshold(positive: np.ndarray, scores: np.ndarray) -> float:
    """The score threshold (one of the scores) with the highest MCC, scanning every score as KAD does."""
    if positive.sum() == 0 or positive.all():
        return math.nan
    order = np.argsort(-scores, kind="stable")
    sorted_scores, sorted_pos = scores[order], positive[order]
    last_of_tie = np.r_[sorted_scores[1:] != sorted_scores[:-1], True]
    tp = np.cumsum(sorted_pos)[last_of_tie].astype(float)
    fp = np.cumsum(~sorted_pos)[last_of_tie].astype(float)
    total_pos, total_neg = float(positive.sum()), float((~positive).sum())
    fn, tn = total_pos - tp, total_neg - fp
    with np.errstate(invalid="ignore", divide="ignore"):
        mcc = (tp * tn - fp * fn) / np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    mcc = np.nan_to_num(mcc, nan=0.0)
    return float(sorted_scores[last_of_tie][int(np.argmax(mcc))])


# ---------------------------------------------------------------------------------------------- per class


def class_thresholds(protocol: str, labels: np.ndarray, scores: np.ndarray, val_labels: np.ndarray | None,
                     val_scores: np.ndarray | None) -> tuple[np.ndarray, list[str]]:
    """Per-class thresholds [K] under ``protocol`` and, per class, where the threshold came from."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown threshold protocol '{protocol}' (choose from {', '.join(PROTOCOLS)})")
    k = labels.shape[1]
    if protocol == "val" and val_labels is not None and val_scores is not None \
            and not val_labels.shape[1] == val_scores.shape[1] == k:
        raise ValueError(f"validation labels {val_labels.shape} / scores {val_scores.shape} do not have the test's "
                         f"{k} class columns (align them by class name)")
    thresholds, sources = np.full(k, math.nan), [""] * k
    for j in range(k):
        if protocol == "val":
            threshold = math.nan
            if val_labels is not None and val_scores is not None:
                keep = valid_mask(val_labels[:, j])
                threshold = max_f1_threshold(val_labels[keep, j] == 1, val_scores[keep, j])
            if math.isnan(threshold):
                thresholds[j], sources[j] = FALLBACK_THRESHOLD, "fallback 0.5 (no validation positives)"
            else:
                thresholds[j], sources[j] = threshold, "validation max-F1"
            continue
        keep = valid_mask(labels[:, j])
        finder = max_f1_threshold if protocol == "max-f1-test" else max_mcc_threshold
        thresholds[j] = finder(labels[keep, j] == 1, scores[keep, j])
        sources[j] = protocol
    return thresholds, sources


def threshold_metrics(labels: np.ndarray, scores: np.ndarray, thresholds: np.ndarray) -> list[dict[str, float]]:
    """F1, accuracy, MCC, precision, sensitivity, specificity per class at ``thresholds`` [K]."""
    out = []
    for j in range(labels.shape[1]):
        keep = valid_mask(labels[:, j])
        if not keep.any() or math.isnan(thresholds[j]):
            out.append({key: math.nan for key in ("f1", "accuracy", "mcc", "precision", "sensitivity",
                                                  "specificity")})
            continue
        out.append(Confusion.at(labels[keep, j] == 1, scores[keep, j], float(thresholds[j])).metrics())
    return out


def align_columns(source_classes: list[str], labels: np.ndarray, target_classes: list[str]) -> np.ndarray:
    """Label matrix [M, len(source_classes)] -> [M, len(target_classes)] matched by class *name*.

    A target class the source lacks is all -100 (not labelled), so its ``val`` threshold falls back to 0.5.
    Column positions are never trusted: two splits of one dataset (PadChest) can list different classes.
    """
    where = {name: j for j, name in enumerate(source_classes)}
    out = np.full((labels.shape[0], len(target_classes)), -100, dtype=labels.dtype)
    for k, name in enumerate(target_classes):
        if name in where:
            out[:, k] = labels[:, where[name]]
    return out


# ---------------------------------------------------------------------------------------------- summary


def _clean(value: float) -> float | None:
    """JSON-friendly: NaN -> None, floats rounded to 6 places."""
    return None if value is None or not math.isfinite(value) else round(float(value), 6)


def _mean_of(values) -> float | None:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return _clean(float(np.mean(finite))) if finite else None


def classification_report(
    classes: list[str],
    labels: np.ndarray,
    scores: np.ndarray,
    *,
    groups: dict[str, list[str]] | None = None,
    protocols: tuple[str, ...] = ("val", "max-f1-test", "max-mcc-test"),
    val_labels: np.ndarray | None = None,
    val_scores: np.ndarray | None = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    patient_ids: list | None = None,
) -> dict:
    """Per-class and macro metrics of one split.

    Args:
        classes: K class names; ``labels``/``scores`` are [N, K] in this order.
        groups: named class subsets (e.g. ``seen``/``unseen``, ``competition``) that get a macro AUC with CI.
        val_labels, val_scores: [M, K] validation predictions for the ``val`` threshold protocol, columns in
            ``classes`` order (align by class name first: :func:`align_columns`).
        patient_ids: [N] patient id per image (None entries allowed): the bootstrap resamples patients.

    Returns a JSON-ready dict: ``classes`` (list of per-class dicts) and ``macro`` (group -> dict).
    """
    clusters = cluster_index(patient_ids, len(labels))
    boot = (bootstrap_aucs(labels, scores, n_bootstrap, seed, clusters) if n_bootstrap > 0
            else np.empty((0, len(classes))))
    per_protocol = {}
    for protocol in protocols:
        thresholds, sources = class_thresholds(protocol, labels, scores, val_labels, val_scores)
        per_protocol[protocol] = (thresholds, sources, threshold_metrics(labels, scores, thresholds))
    rows = []
    for j, name in enumerate(classes):
        keep = valid_mask(labels[:, j])
        auc = roc_auc(labels[keep, j], scores[keep, j]) if keep.any() else math.nan
        low, high = percentile_ci(boot[:, j], level) if len(boot) else (math.nan, math.nan)
        n_pos = int((labels[:, j] == 1).sum())
        row = {"class": name, "n": int(keep.sum()), "n_pos": n_pos, "n_uncertain": int((labels[:, j] == -1).sum()),
               "auc": _clean(auc), "auc_ci": [_clean(low), _clean(high)],
               "bootstrap_dropped": int(np.isnan(boot[:, j]).sum()),
               "auc_undefined": None if math.isfinite(auc) else
               ("no labelled images" if not keep.any() else "only one of positive/negative present")}
        for protocol, (thresholds, sources, metrics) in per_protocol.items():
            row[protocol] = {"threshold": _clean(thresholds[j]), "threshold_source": sources[j],
                             **{key: _clean(value) for key, value in metrics[j].items()}}
        rows.append(row)
    macro = {}
    index = {name: j for j, name in enumerate(classes)}
    for group, members in {"all": list(classes), **(groups or {})}.items():
        columns = [index[m] for m in members if m in index and rows[index[m]]["auc"] is not None]
        values = [rows[c]["auc"] for c in columns]
        samples = macro_samples(boot, columns)
        low, high = percentile_ci(samples, level) if len(boot) else (math.nan, math.nan)
        partial = int((np.isnan(boot[:, columns]).any(axis=1) & np.isfinite(samples)).sum()) if columns else 0
        entry = {"classes": [classes[c] for c in columns], "auc": _clean(float(np.mean(values))) if values else None,
                 "auc_ci": [_clean(low), _clean(high)], "bootstrap_dropped": int(np.isnan(samples).sum()),
                 "bootstrap_partial": partial,
                 "excluded": [m for m in members if m in index and index[m] not in columns]}
        for protocol in protocols:
            entry[protocol] = {key: _mean_of(rows[c][protocol][key] for c in columns)
                               for key in ("f1", "accuracy", "mcc")}
        macro[group] = entry
    unit = "patient" if clusters is not None else "image"
    units = int(clusters.max()) + 1 if clusters is not None and len(clusters) else len(labels)
    return {"classes": rows, "macro": macro,
            "bootstrap": {"resamples": n_bootstrap, "seed": seed, "level": level, "unit": unit, "units": units},
            "protocols": {p: PROTOCOLS[p] for p in protocols}}
