"""Evaluation protocol fixes for real data: val thresholds aligned by class name, patient bootstrap with dropped
resamples counted, phantom results kept out of published comparisons, "seen" = had a positive training label."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from devide.data.adapters.base import EvalSet
from devide.evaluation import report as rep
from devide.evaluation.metrics import (
    align_columns,
    bootstrap_aucs,
    class_thresholds,
    classification_report,
    cluster_index,
    max_f1_threshold,
)
from devide.evaluation.stage import STAGE, EvaluateConfig
from devide.evaluation.zero_shot import load_vocabulary_optional, plan_queries
from devide.stage import execute_stage
from tests.devide.evaluation import fixtures

# ---------------------------------------------------------------------------------------------- point 8


def test_val_labels_are_aligned_by_class_name_not_position():
    val_classes = ["nodule", "pleural effusion"]  # val lists fewer classes, in another order
    val_labels = np.array([[1, 0], [0, 1], [0, 1], [1, 0]])
    aligned = align_columns(val_classes, val_labels, ["pleural effusion", "cardiomegaly", "nodule"])
    assert aligned[:, 0].tolist() == [0, 1, 1, 0]  # pleural effusion
    assert aligned[:, 1].tolist() == [-100] * 4  # the val split never labels cardiomegaly
    assert aligned[:, 2].tolist() == [1, 0, 0, 1]


def test_val_thresholds_come_from_the_same_class_and_fall_back_when_val_lacks_it():
    test_labels = np.array([[1, 1, 0], [0, 0, 1], [1, 0, 0], [0, 1, 1]])
    test_scores = np.full((4, 3), 0.5)
    val_scores = np.array([[0.9, 0.1, 0.8], [0.3, 0.8, 0.1], [0.6, 0.2, 0.35], [0.2, 0.4, 0.9]])
    val_labels = align_columns(["nodule", "pleural effusion"], np.array([[1, 0], [0, 1], [0, 1], [1, 0]]),
                               ["pleural effusion", "cardiomegaly", "nodule"])
    thresholds, sources = class_thresholds("val", test_labels, test_scores, val_labels, val_scores)
    # pleural effusion: val positives are rows 1, 2 with scores 0.3, 0.6 -> max-F1 threshold by hand: 0.3
    assert thresholds[0] == pytest.approx(max_f1_threshold(np.array([False, True, True, False]),
                                                           val_scores[:, 0])) == pytest.approx(0.3)
    assert sources[1].startswith("fallback 0.5") and thresholds[1] == 0.5
    assert thresholds[2] == pytest.approx(0.8)  # nodule: positives 0.8 / 0.9, negatives 0.1 / 0.35 -> 0.8
    # position-based columns of another width are refused, not silently misapplied
    with pytest.raises(ValueError, match="align them by class name"):
        class_thresholds("val", test_labels, test_scores, np.array([[1, 0], [0, 1]]), val_scores[:2, :2])


# ---------------------------------------------------------------------------------------------- point 9


def test_patient_bootstrap_equals_the_image_bootstrap_of_one_image_per_patient():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, (40, 2))
    scores = rng.random((40, 2))
    # every patient has two identical images: resampling patients must weight both together
    doubled_labels, doubled_scores = np.repeat(labels, 2, axis=0), np.repeat(scores, 2, axis=0)
    clusters = cluster_index([f"p{i // 2}" for i in range(80)], 80)
    by_patient = bootstrap_aucs(doubled_labels, doubled_scores, 50, seed=7, clusters=clusters)
    by_image = bootstrap_aucs(labels, scores, 50, seed=7)
    np.testing.assert_allclose(by_patient, by_image, rtol=0, atol=1e-12)
    # resampling images of the doubled set instead is a different (too narrow) bootstrap
    assert not np.allclose(bootstrap_aucs(doubled_labels, doubled_scores, 50, seed=7), by_image)


def test_cluster_index_keeps_images_without_id_apart():
    assert cluster_index(["a", None, "a", "", "b"], 5).tolist() == [0, 1, 0, 2, 3]
    assert cluster_index([None, None], 2) is None
    with pytest.raises(ValueError, match="3 patient ids for 2 images"):
        cluster_index(["a", "b", "c"], 2)


def test_dropped_resamples_are_counted_per_class_and_macro():
    labels = np.zeros((10, 2), dtype=int)
    labels[0, 0] = 1  # class 0: one positive image -> undefined whenever patient p0 is not drawn
    labels[:5, 1] = 1
    scores = np.linspace(0, 1, 10)[:, None].repeat(2, axis=1)
    patients = [f"p{i}" for i in range(10)]
    out = classification_report(["rare", "common"], labels, scores, protocols=("max-f1-test",), n_bootstrap=200,
                                 seed=5, patient_ids=patients)
    rng = np.random.default_rng(5)
    expected = sum(np.bincount(rng.integers(0, 10, 10), minlength=10)[0] == 0 for _ in range(200))
    assert 0 < expected < 200
    assert out["classes"][0]["bootstrap_dropped"] == expected
    assert out["bootstrap"]["unit"] == "patient" and out["bootstrap"]["units"] == 10
    boot = bootstrap_aucs(labels, scores, 200, seed=5, clusters=cluster_index(patients, 10))
    macro = out["macro"]["all"]
    assert macro["bootstrap_dropped"] == int(np.isnan(boot).all(axis=1).sum())
    assert macro["bootstrap_partial"] == int((np.isnan(boot).any(axis=1) & ~np.isnan(boot).all(axis=1)).sum())
    assert macro["bootstrap_partial"] >= expected - macro["bootstrap_dropped"] > 0
    common_dropped = out["classes"][1]["bootstrap_dropped"]
    text = rep._bootstrap_text(out)
    assert "of 10 patients" in text and f"up to {max(expected, common_dropped)} for one class" in text


# ---------------------------------------------------------------------------------------------- point 10


def _results(phantom: bool) -> dict:
    labels = np.array([[1], [0], [1], [0]])
    metrics = classification_report(["Pneumonia"], labels, np.array([[0.9], [0.1], [0.6], [0.4]]),
                                     protocols=("max-f1-test",), n_bootstrap=0)
    return {"dataset": "rsna", "metrics": metrics, "phantom": phantom}


def test_phantom_results_never_share_a_table_with_published_baselines():
    real = "\n".join(rep._baseline_section(_results(False)))
    assert "**this model**" in real and "MedKLIP" in real
    phantom = "\n".join(rep._baseline_section(_results(True)))
    assert "**this model**" not in phantom and "MedKLIP" not in phantom and "phantom" in phantom


# ---------------------------------------------------------------------------------------------- point 1


def _model(positives):
    config = SimpleNamespace(entities=["cardiomegaly", "mass", "pneumothorax"], training_positives=positives)
    return SimpleNamespace(config=config, knowledge={})


def test_seen_means_at_least_one_positive_training_label():
    vocab = load_vocabulary_optional()
    eval_set = EvalSet("chestxray14", "test", fixtures.Path("."), ["Cardiomegaly", "Mass", "Hernia"], [])
    queries = plan_queries(eval_set, "chestxray14", _model({"cardiomegaly": 12, "mass": 0, "pneumothorax": 3}),
                           vocab, {}, {}, set())
    groups = {q.label: (q.group, q.training_positives) for q in queries}
    assert groups == {"Cardiomegaly": ("seen", 12), "Mass": ("unseen", 0), "Hernia": ("unseen", None)}
    # a model saved before training_positives existed: the old rule, which the report flags
    old = {q.label: q.group for q in plan_queries(eval_set, "chestxray14", _model(None), vocab, {}, {}, set())}
    assert old == {"Cardiomegaly": "seen", "Mass": "seen", "Hernia": "unseen"}


# ---------------------------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def model_with_positives(tmp_path_factory):
    from devide.modeling import DevideConfig, DevideModel

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("model") / "final"
    config = DevideConfig(vision_preset="tiny", fusion_layers=1, embed_dim=32, fusion_ffn_dim=64,
                          entities=["cardiomegaly", "pleural_effusion", "nodule"],
                          training_positives={"cardiomegaly": 4, "pleural_effusion": 9, "nodule": 0},
                          training_data={"dataset": "phantom (synthetic radiographs)", "phantom": True})
    DevideModel(config).save_pretrained(folder)
    return folder


def padchest_with_val(root):
    """Physician rows (test) with 3 classes; RNN rows of val patients (pv3, pv27: sha1 bucket < 5) with 1."""
    cols = ["ImageID", "ImageDir", "StudyDate_DICOM", "PatientID", "PatientBirth", "PatientSex_DICOM",
            "Projection", "MethodLabel", "Labels"]
    rows = [("t1.png", "0", "20140512", "p1", "1950.0", "M", "PA", "Physician", "['pleural effusion', 'cardiomegaly']"),
            ("t2.png", "0", "20140512", "p2", "1950.0", "F", "PA", "Physician", "['nodule']"),
            ("t3.png", "0", "20140512", "p3", "1950.0", "F", "PA", "Physician", "['normal']"),
            ("t4.png", "0", "20140512", "p4", "1950.0", "M", "PA", "Physician", "['cardiomegaly']"),
            ("v1.png", "1", "20140512", "pv3", "1950.0", "M", "PA", "RNN_model", "['nodule']"),
            ("v2.png", "1", "20140512", "pv27", "1950.0", "M", "PA", "RNN_model", "['normal']")]
    text = "," + ",".join(cols) + "\n" + "".join(
        f"{i}," + ",".join(f'"{v}"' if "," in v or "'" in v else v for v in row) + "\n" for i, row in enumerate(rows))
    fixtures.write_text(root / "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv", text)
    for row in rows:
        fixtures.write_png(root / row[1] / row[0], bits=16)


def test_padchest_val_protocol_with_fewer_val_classes_end_to_end(model_with_positives, tmp_path):
    root = tmp_path / "padchest"
    padchest_with_val(root)
    cfg = EvaluateConfig(model=model_with_positives, dataset="padchest", root=root, out=tmp_path / "out",
                         bootstrap=20, batch_size=4)
    assert execute_stage(STAGE, cfg, force=True).status == "complete"  # was: IndexError
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    rows = {r["class"]: r for r in results["metrics"]["classes"]}
    assert set(rows) >= {"cardiomegaly", "nodule", "pleural effusion", "normal"}
    assert rows["nodule"]["val"]["threshold_source"] == "validation max-F1"  # val's only class, found by name
    assert rows["cardiomegaly"]["val"]["threshold_source"].startswith("fallback")
    groups = {q["label"]: (q["group"], q["training_positives"]) for q in results["queries"]}
    assert groups["cardiomegaly"] == ("seen", 4) and groups["nodule"] == ("unseen", 0)
    assert any("at least one positive label" in note for note in results["notes"])
    report = (tmp_path / "out" / "report.md").read_text()
    assert "train pos" in report and "of 4 patients" in report


def test_phantom_trained_model_is_flagged_on_real_data(model_with_positives, tmp_path):
    root = tmp_path / "padchest"
    padchest_with_val(root)  # no findings.json: real-looking data, but the model was trained on phantoms
    cfg = EvaluateConfig(model=model_with_positives, dataset="padchest", root=root, out=tmp_path / "out",
                         bootstrap=0, batch_size=4, protocols=["max-f1-test"], headline_protocol="max-f1-test")
    execute_stage(STAGE, cfg, force=True)
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["phantom"] is True and results["model_trained_on"]["phantom"] is True
    assert "**this model**" not in (tmp_path / "out" / "report.md").read_text()

