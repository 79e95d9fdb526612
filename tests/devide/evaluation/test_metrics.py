"""Metrics against scikit-learn and hand-computed values; bootstrap reproducibility; subgroup gaps."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import f1_score, matthews_corrcoef, precision_recall_curve, roc_auc_score

from devide.evaluation.metrics import (
    Confusion,
    bootstrap_aucs,
    class_thresholds,
    classification_report,
    max_f1_threshold,
    max_mcc_threshold,
    percentile_ci,
    roc_auc,
)
from devide.evaluation.subgroups import age_band, subgroup_report


def random_problem(n=300, k=4, seed=1):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, (n, k))
    scores = np.round(rng.random((n, k)) * 0.6 + labels * 0.3, 2)  # rounding creates ties
    return labels, scores


def test_auc_matches_sklearn_with_ties():
    labels, scores = random_problem()
    for j in range(labels.shape[1]):
        assert roc_auc(labels[:, j], scores[:, j]) == pytest.approx(roc_auc_score(labels[:, j], scores[:, j]), abs=1e-12)


def test_auc_by_hand():
    # positives 0.8, 0.4; negatives 0.4, 0.1: pairs (0.8>0.4)=1, (0.8>0.1)=1, (0.4=0.4)=0.5, (0.4>0.1)=1 -> 3.5/4
    assert roc_auc(np.array([1, 1, 0, 0]), np.array([0.8, 0.4, 0.4, 0.1])) == 0.875
    assert math.isnan(roc_auc(np.array([1, 1]), np.array([0.2, 0.3])))


def test_uncertain_and_unlabelled_are_excluded_not_coerced():
    labels = np.array([[1], [0], [-1], [-100], [1], [0]])
    scores = np.array([[0.9], [0.1], [0.0], [0.0], [0.2], [0.3]])
    report = classification_report(["x"], labels, scores, n_bootstrap=0, protocols=("max-f1-test",))
    row = report["classes"][0]
    assert row["n"] == 4 and row["n_pos"] == 2 and row["n_uncertain"] == 1
    assert row["auc"] == pytest.approx(roc_auc_score([1, 0, 1, 0], [0.9, 0.1, 0.2, 0.3]))


def test_bootstrap_equals_sklearn_on_the_resample_and_is_reproducible():
    labels, scores = random_problem(n=120, k=3)
    boot = bootstrap_aucs(labels, scores, n_resamples=20, seed=7)
    again = bootstrap_aucs(labels, scores, n_resamples=20, seed=7)
    np.testing.assert_array_equal(boot, again)
    assert not np.array_equal(boot, bootstrap_aucs(labels, scores, n_resamples=20, seed=8))
    rng = np.random.default_rng(7)  # the same resamples, materialised
    for b in range(3):
        idx = rng.integers(0, 120, 120)
        for j in range(3):
            assert boot[b, j] == pytest.approx(roc_auc_score(labels[idx, j], scores[idx, j]), abs=1e-12)


def test_percentile_ci_by_hand():
    assert percentile_ci(np.arange(101, dtype=float)) == pytest.approx((2.5, 97.5))
    assert all(math.isnan(v) for v in percentile_ci(np.array([math.nan])))


def test_confusion_metrics_match_sklearn():
    labels, scores = random_problem(n=200, k=1, seed=3)
    positive = labels[:, 0] == 1
    for t in (0.2, 0.45, 0.7):
        metrics = Confusion.at(positive, scores[:, 0], t).metrics()
        predicted = (scores[:, 0] >= t).astype(int)
        assert metrics["f1"] == pytest.approx(f1_score(labels[:, 0], predicted))
        assert metrics["mcc"] == pytest.approx(matthews_corrcoef(labels[:, 0], predicted))
        assert metrics["accuracy"] == pytest.approx((predicted == labels[:, 0]).mean())


def test_max_f1_threshold_matches_precision_recall_curve_and_max_mcc_is_the_best_scan():
    labels, scores = random_problem(n=150, k=1, seed=5)
    y, s = labels[:, 0], scores[:, 0]
    precision, recall, thresholds = precision_recall_curve(y, s)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    best = max_f1_threshold(y == 1, s)
    assert f1_score(y, (s >= best).astype(int)) == pytest.approx(f1[:-1].max())
    t_mcc = max_mcc_threshold(y == 1, s)
    brute = max(matthews_corrcoef(y, (s >= t).astype(int)) for t in np.unique(s))
    assert matthews_corrcoef(y, (s >= t_mcc).astype(int)) == pytest.approx(brute)


def test_val_protocol_uses_validation_threshold_and_falls_back_when_val_has_no_positives():
    test_labels = np.array([[1, 1], [0, 0], [1, 0], [0, 1]])
    test_scores = np.array([[0.9, 0.9], [0.1, 0.1], [0.6, 0.6], [0.4, 0.4]])
    val_labels = np.array([[1, 0], [0, 0], [1, 0]])
    val_scores = np.array([[0.7, 0.5], [0.2, 0.5], [0.8, 0.1]])
    thresholds, sources = class_thresholds("val", test_labels, test_scores, val_labels, val_scores)
    assert thresholds[0] == 0.7 and sources[0] == "validation max-F1"
    assert thresholds[1] == 0.5 and "fallback" in sources[1]
    with pytest.raises(ValueError, match="unknown threshold protocol"):
        class_thresholds("youden", test_labels, test_scores, None, None)


def test_report_macro_groups_and_optimistic_labels():
    labels, scores = random_problem(n=100, k=3)
    labels[:, 2] = 0  # no positives: AUC undefined, excluded from the macro with a reason
    report = classification_report(["a", "b", "c"], labels, scores, groups={"seen": ["a"], "unseen": ["b", "c"]},
                                   n_bootstrap=50, seed=0)
    rows = {r["class"]: r for r in report["classes"]}
    assert rows["c"]["auc"] is None and "only one" in rows["c"]["auc_undefined"]
    assert report["macro"]["all"]["auc"] == pytest.approx((rows["a"]["auc"] + rows["b"]["auc"]) / 2)
    assert report["macro"]["unseen"]["excluded"] == ["c"] and report["macro"]["seen"]["auc"] == rows["a"]["auc"]
    low, high = report["macro"]["all"]["auc_ci"]
    assert low < report["macro"]["all"]["auc"] < high
    assert "OPTIMISTIC" in report["protocols"]["max-f1-test"] and "OPTIMISTIC" in report["protocols"]["max-mcc-test"]
    assert classification_report(["a", "b", "c"], labels, scores, n_bootstrap=50, seed=0) == \
        classification_report(["a", "b", "c"], labels, scores, n_bootstrap=50, seed=0)


def test_age_bands_and_subgroup_gap_by_hand():
    assert age_band(19.9) == "0-19" and age_band(63) == "60-79" and age_band(85) == "80+" and age_band(None) is None
    labels = np.array([[1], [0], [1], [0], [1], [0]])
    # women: perfect ranking (AUC 1); men: inverted (AUC 0)
    scores = np.array([[0.9], [0.1], [0.2], [0.8], [0.7], [0.3]])
    sex = ["F", "F", "M", "M", "F", None]
    report = subgroup_report(["x"], labels, scores, sex, [30, 30, 70, 70, 30, None])
    assert report["sex"]["groups"]["F"]["auc"]["x"] == 1.0 and report["sex"]["groups"]["M"]["auc"]["x"] == 0.0
    assert report["sex"]["largest_gap"] == {"class": "x", "gap": 1.0, "best_group": "F", "best_auc": 1.0,
                                            "worst_group": "M", "worst_auc": 0.0}
    assert report["sex"]["unknown"] == 1
    assert list(report["age"]["groups"]) == ["20-39", "60-79"]
