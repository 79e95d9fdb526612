"""`devide finetune` end to end with a tiny saved model on fixture SIIM-ACR and CheXpert roots."""

from __future__ import annotations

import json
import os

import pytest
import torch

from devide.cli import main as cli_main
from devide.config import ConfigError, build_config
from devide.finetune import stage as finetune_stage
from devide.finetune.config import FinetuneConfig
from devide.finetune.stage import STAGE
from devide.stage import execute_stage
from tests.devide.finetune import datasets

FAST = {"epochs": 1, "batch_size": 4, "eval_batch_size": 8, "workers": 0, "bootstrap": 20, "tensorboard": False}


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    torch.set_num_threads(2)
    base = tmp_path_factory.mktemp("finetune")
    datasets.siim(base / "siim", n=32)
    datasets.chexpert(base / "chexpert", n_patients=24)
    return {"model": datasets.tiny_model(base / "train" / "model").parent, "siim": base / "siim",
            "chexpert": base / "chexpert"}


def finetune(roots, dataset, out, **extra):
    cfg = FinetuneConfig(model=roots["model"], dataset=dataset, root=roots[dataset], out=out, **{**FAST, **extra})
    return execute_stage(STAGE, cfg, force=True)


def test_classification_probe_pretrained_vs_random_and_selection_reuse(roots, tmp_path):
    result = finetune(roots, "chexpert", tmp_path / "cls", fraction=0.5, modes=["probe"])
    out = tmp_path / "cls"
    counts = result.manifest["counts"]
    assert counts["variants"] == 2 and counts["test_images"] > 0
    results = json.loads((out / "results.json").read_text())
    assert set(results["variants"]) == {"pretrained-probe", "random-probe"}
    assert "pretrained-probe vs random-probe" in results["comparisons"]["pretrained_minus_random"]
    metrics = json.loads((out / "runs" / "pretrained-probe" / "metrics.json").read_text())
    macro = metrics["classification"]["macro"]["all"]
    low, high = macro["auc_ci"]
    assert low <= macro["auc"] <= high and low < high and "Cardiomegaly" in macro["classes"]  # CI brackets it
    assert metrics["classification"]["bootstrap"]["resamples"] == 20
    assert metrics["train"]["steps"] >= 1 and metrics["train"]["images_per_second"] > 0
    selection = json.loads((out / "selection.json").read_text())
    assert selection["split_protocol"] == "partition" and selection["fraction"] == 0.5
    assert (out / "runs" / "random-probe" / "model" / "model.safetensors").is_file()
    assert "macro AUC" in (out / "results.md").read_text() and (out / "summary.txt").is_file()
    # reusing the manifest gives exactly the same labelled images, whatever the seed
    again = finetune(roots, "chexpert", tmp_path / "again", fraction=0.5, modes=["probe"], init=["random"],
                     selection=out / "selection.json", seed=7)
    reused = json.loads((tmp_path / "again" / "selection.json").read_text())
    assert reused["image_ids"] == selection["image_ids"] and again.manifest["counts"]["variants"] == 1


def test_segmentation_end_to_end_with_overlays(roots, tmp_path):
    finetune(roots, "siim", tmp_path / "seg", task="segmentation", fraction=1.0, init=["pretrained"], overlays=2)
    run = tmp_path / "seg" / "runs" / "pretrained-full"
    metrics = json.loads((run / "metrics.json").read_text())
    row = metrics["segmentation"]["classes"][0]
    assert row["class"] == "Pneumothorax" and row["n_positive"] > 0 and row["n_negative"] > 0
    # per image IoU <= Dice; a negative image scores 1 exactly when its prediction is empty, so dice_all is the
    # positives' mean and the share of empty negatives, weighted by their counts
    assert row["iou_positive"] <= row["dice_positive"] and row["iou_all"] <= row["dice_all"]
    expected_all = (row["dice_positive"] * row["n_positive"] + row["negatives_predicted_empty"] * row["n_negative"]) / (
        row["n_positive"] + row["n_negative"])
    assert row["dice_all"] == pytest.approx(expected_all, abs=1e-5)
    assert len(metrics["overlays"]) == 2 and all((run / "overlays" / name).is_file() for name in metrics["overlays"])
    assert "Dice (all images, MedKLIP)" in (tmp_path / "seg" / "results.md").read_text()


def test_alignment_variant_reports_grounding(roots, tmp_path):
    finetune(roots, "siim", tmp_path / "align", head="attention", align_weights=[0.0, 2.0], init=["pretrained"])
    results = json.loads((tmp_path / "align" / "results.json").read_text())
    effect = results["comparisons"]["aligned_minus_unaligned"]["pretrained-full-align2 vs pretrained-full"]
    assert {"auc", "pointing_game", "map_auroc"} <= set(effect)
    summary = json.loads((tmp_path / "align" / "runs" / "pretrained-full-align2" / "train_summary.json").read_text())
    assert summary["final_train"]["train/loss_align"] > 0


def test_interrupted_run_keeps_finished_variants(roots, tmp_path, monkeypatch):
    original = finetune_stage.run_variant
    calls = []

    def crash_on_second(cfg, ctx, variant, data):
        calls.append(variant.name)
        if variant.init == "random":
            raise KeyboardInterrupt
        return original(cfg, ctx, variant, data)

    monkeypatch.setattr(finetune_stage, "run_variant", crash_on_second)
    cfg = FinetuneConfig(model=roots["model"], dataset="chexpert", root=roots["chexpert"], out=tmp_path / "r",
                         fraction=0.3, modes=["probe"], **FAST)
    with pytest.raises(KeyboardInterrupt):
        execute_stage(STAGE, cfg)
    finished = tmp_path / "r.partial" / "runs" / "pretrained-probe" / "metrics.json"
    stamp = os.stat(finished).st_mtime_ns
    monkeypatch.setattr(finetune_stage, "run_variant", original)
    execute_stage(STAGE, cfg)
    assert os.stat(tmp_path / "r" / "runs" / "pretrained-probe" / "metrics.json").st_mtime_ns == stamp
    assert (tmp_path / "r" / "runs" / "random-probe" / "metrics.json").is_file()


def test_bad_config_is_one_line(roots, tmp_path, capsys):
    with pytest.raises(ConfigError, match="head: attention"):
        build_config(FinetuneConfig, {"model": str(roots["model"]), "dataset": "siim", "root": str(roots["siim"]),
                                      "align_weights": [0.5]})
    code = cli_main(["finetune", "--model", str(roots["model"]), "--dataset", "nope", "--root", str(tmp_path),
                     "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "unknown dataset" in err[0]
    code = cli_main(["finetune", "--model", str(roots["model"]), "--dataset", "rsna", "--root", str(tmp_path),
                     "--out", str(tmp_path / "y")])
    assert code == 2 and "rsna" in capsys.readouterr().err


@pytest.mark.slow
def test_segmentation_learns_the_lesions(roots, tmp_path):
    """Fails when fine-tuned segmentation stops learning: the fixture's bright squares are found (Dice on
    positive images far above the ~0.1 of an all-foreground guess) with a few epochs on 32 images."""
    finetune(roots, "siim", tmp_path / "learn", task="segmentation", fraction=1.0, init=["pretrained"], epochs=25,
             overlays=0, head_learning_rate=3e-3)
    row = json.loads((tmp_path / "learn" / "runs" / "pretrained-full" / "metrics.json").read_text())[
        "segmentation"]["classes"][0]
    assert row["dice_positive"] > 0.5 and row["negatives_predicted_empty"] > 0.5, row
