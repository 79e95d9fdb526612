"""`devide evaluate` end to end with a tiny saved model on fixture datasets: outputs, cache, rejections, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from devide.cli import main as cli_main
from devide.evaluation.stage import STAGE, EvaluateConfig, _unseen_from_findings
from devide.evaluation.zero_shot import Predictions
from devide.stage import execute_stage
from tests.devide.evaluation import fixtures


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from devide.modeling import DevideConfig, DevideModel

    torch.manual_seed(0)
    torch.set_num_threads(2)
    folder = tmp_path_factory.mktemp("model") / "final"
    config = DevideConfig(vision_preset="tiny", fusion_layers=1, embed_dim=32, fusion_ffn_dim=64,
                          entities=["cardiomegaly", "pleural_effusion", "pneumothorax", "pneumonia", "mass"])
    model = DevideModel(config)
    model.set_knowledge({"cardiomegaly": ["the cardiac silhouette is enlarged"],
                         "pleural_effusion": ["the costophrenic angle is blunted"]})
    model.save_pretrained(folder)
    return folder


def evaluate(model, dataset, root, out, **extra):
    cfg = EvaluateConfig(model=model, dataset=dataset, root=root, out=out, bootstrap=20, batch_size=4, **extra)
    return execute_stage(STAGE, cfg, force=True)


def test_chestxray14_end_to_end_with_rejected_image_and_cache(tiny_model, tmp_path, capsys):
    root = tmp_path / "nih"
    fixtures.chestxray14(root)
    # an HTML error page saved with a .png name: rejected with its reason, never silently skipped
    (root / "images_001" / "images" / "00000002_000.png").write_text("<html>404</html>")
    (root / "findings.json").write_text(json.dumps({"unseen": ["cardiomegaly"]}))
    result = evaluate(tiny_model.parent, "chestxray14", root, tmp_path / "out")  # the train artifact folder
    counts = result.manifest["counts"]
    assert counts["manifest_rows"] == 3 and counts["evaluated"] == 2 and counts["rejected_images"] == 1
    assert counts["predictions_from_cache"] is False
    out = tmp_path / "out"
    results = json.loads((out / "results.json").read_text())
    groups = {q["label"]: q["group"] for q in results["queries"]}
    assert groups["Cardiomegaly"] == "unseen" and groups["Effusion"] == "seen" and groups["Hernia"] == "unseen"
    assert results["phantom"] is True
    assert any("html" in r["reason"] for r in results["rejections"])
    manifest_rows = (out / "split_manifest.csv").read_text().splitlines()
    assert len(manifest_rows) == 1 + 3 and sum("html" in row for row in manifest_rows) == 1
    for name in ("results.csv", "report.md", "rejections.csv", "summary.txt", "plots/auc_bars.png"):
        assert (out / name).is_file(), name
    report = (out / "report.md").read_text()
    assert "OPTIMISTIC" in report and "Published baselines" in report and "Phantom" in report
    printed = capsys.readouterr().out
    assert "seen findings" in printed and "unseen findings" in printed and f"report: {out / 'report.md'}" in printed

    first = Predictions.load(next((out / "predictions").glob("chestxray14-test-*.npz")))[0]
    again = evaluate(tiny_model, "chestxray14", root, tmp_path / "out")
    assert again.manifest["counts"]["predictions_from_cache"] is True
    second = Predictions.load(next((out / "predictions").glob("chestxray14-test-*.npz")))[0]
    np.testing.assert_array_equal(first.probs, second.probs)
    assert json.loads((out / "results.json").read_text())["metrics"] == results["metrics"]


def test_siim_masks_and_ms_cxr_phrases_are_grounded(tiny_model, tmp_path):
    fixtures.siim(tmp_path / "siim")
    for split in ("test", "val"):
        cfg = dict(split=split, protocols=["max-f1-test"], headline_protocol="max-f1-test")
        result = evaluate(tiny_model, "siim", tmp_path / "siim", tmp_path / f"siim-{split}", **cfg)
        results = json.loads((tmp_path / f"siim-{split}" / "results.json").read_text())
        if results["grounding"]:
            assert results["grounding"]["classes"]["Pneumothorax"]["n"] == 1
            break
        assert result.status == "complete"
    else:
        pytest.fail("the positive SIIM image fell in neither split")
    fixtures.ms_cxr(tmp_path / "mscxr")
    evaluate(tiny_model, "ms-cxr", tmp_path / "mscxr", tmp_path / "ms-out")
    results = json.loads((tmp_path / "ms-out" / "results.json").read_text())
    assert results["grounding"]["phrases"]["overall"]["n"] == 2  # two phrases on the test image
    assert results["metrics"]["classes"][0]["auc"] is None  # grounding-only: no negatives


def test_cli_errors_are_one_line(tiny_model, tmp_path, capsys):
    code = cli_main(["evaluate", "--model", str(tiny_model), "--dataset", "mimic", "--root", str(tmp_path),
                     "--out", str(tmp_path / "o")])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unknown dataset 'mimic'" in err
    code = cli_main(["evaluate", "--model", str(tmp_path), "--dataset", "rsna", "--root", str(tmp_path),
                     "--out", str(tmp_path / "o")])
    assert code == 2 and "stage_2_train_labels.csv" in capsys.readouterr().err


def test_unseen_from_phantom_findings_formats():
    assert _unseen_from_findings({"unseen": ["a"]}) == {"a"}
    assert _unseen_from_findings({"findings": {"a": {"unseen": True}, "b": {"seen": True}}}) == {"a"}
    assert _unseen_from_findings({"a": {"seen": False}, "b": {}}) == {"a"}


def test_dataset_without_boxes_reports_no_grounding(tiny_model, tmp_path):
    """CheXpert has labels but no boxes: grounding is absent from results, and the report and console table
    say nothing of it instead of failing (a regression seen in the demo on the phantom CheXpert set)."""
    fixtures.chexpert(tmp_path / "chexpert")
    result = evaluate(tiny_model, "chexpert", tmp_path / "chexpert", tmp_path / "out", split="val")
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert result.status == "complete" and not results["grounding"]
    summary = (tmp_path / "out" / "summary.txt").read_text()
    assert "grounding:" not in summary and "report:" in summary
