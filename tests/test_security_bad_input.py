"""Bad input that crashed a stage instead of being handled (issue 19.7, 19.10)."""

from __future__ import annotations

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")


def test_auc_bars_draw_a_ci_that_does_not_contain_the_point_estimate(tmp_path, monkeypatch):
    """`evaluate --bootstrap 10` crashed: "'yerr' must not contain negative values" when the point AUC lay
    outside its percentile CI. The plot must draw exactly [low, high] for every class."""
    import matplotlib.pyplot as plt

    from devide.evaluation.report import plot_auc_bars

    rows = [{"class": "A", "auc": 0.90, "auc_ci": [0.60, 0.85]},   # point above its CI
            {"class": "B", "auc": 0.40, "auc_ci": [0.45, 0.70]},   # point below its CI
            {"class": "C", "auc": 0.70, "auc_ci": [None, None]},   # no CI (bootstrap undefined)
            {"class": "D", "auc": None, "auc_ci": [None, None]}]   # undefined AUC: not drawn
    figures = []
    monkeypatch.setattr(plt, "close", figures.append)  # keep the figure to inspect what was drawn
    plot_auc_bars(tmp_path / "auc.png", rows, {"A": "seen", "B": "unseen", "C": "seen"})
    assert (tmp_path / "auc.png").stat().st_size > 0
    ax = figures[0].axes[0]
    segments = [seg for collection in ax.collections for seg in collection.get_segments()]
    spans = sorted((round(seg[0][1], 6), round(seg[1][1], 6)) for seg in segments)
    assert spans == [(0.45, 0.7), (0.6, 0.85), (0.7, 0.7)]
    assert [round(p.get_height(), 6) for p in ax.patches] == [0.9, 0.4, 0.7]
    monkeypatch.undo()
    plt.close(figures[0])


@pytest.mark.parametrize("resamples", [2, 5, 10])
def test_small_bootstrap_counts_plot_without_error(tmp_path, resamples):
    """Percentile CIs of a few bootstrap AUCs, as evaluate computes them, for a skewed score."""
    from sklearn.metrics import roc_auc_score

    from devide.evaluation.report import plot_auc_bars

    rng = np.random.default_rng(resamples)
    labels = np.array([0, 0, 0, 0, 0, 1, 1, 1])
    scores = np.array([0.1, 0.2, 0.3, 0.4, 0.95, 0.5, 0.6, 0.9])
    aucs = []
    for _ in range(resamples):
        index = rng.integers(0, len(labels), len(labels))
        if len(set(labels[index])) == 2:
            aucs.append(roc_auc_score(labels[index], scores[index]))
    low, high = (np.percentile(aucs, [2.5, 97.5]) if aucs else (None, None))
    row = {"class": "X", "auc": float(roc_auc_score(labels, scores)), "auc_ci": [low, high]}
    plot_auc_bars(tmp_path / f"auc-{resamples}.png", [row], {"X": "seen"})
    assert (tmp_path / f"auc-{resamples}.png").stat().st_size > 0


@pytest.fixture
def fake_prepared(tmp_path):
    """A folder with the shape of a prepare-data artifact (the checks look at its shape only)."""
    folder = tmp_path / "prepared"
    (folder / "dataset").mkdir(parents=True)
    (folder / "entities.json").write_text('["pneumothorax"]')
    return folder


TINY_VIT = ("{model_type: vit, image_size: 64, patch_size: %d, num_channels: 1, hidden_size: 32, "
            "num_hidden_layers: 1, num_attention_heads: 2, intermediate_size: 64}")


@pytest.mark.parametrize("extra, expected", [
    (["--set", "model.embed_dim=abc"],
     ("invalid config key 'model.embed_dim': Input should be a valid integer, unable to parse string as an integer "
      "(got 'abc')")),
    (["--set", "model.embed_dims=64"], "unknown config key 'model.embed_dims' for DevideConfig (did you mean"),
    (["--set", f"model.vision_config={TINY_VIT % 128}"],
     "invalid config key 'model.vision_config.patch_size': 128 must be between 1 and the image size 64"),
    (["--set", f"model.vision_config={TINY_VIT % 24}"],
     "invalid config key 'model.vision_config.image_size': 64 is not a multiple of the patch size 24"),
])
def test_bad_model_settings_exit_2_in_one_line_before_any_work(tmp_path, capsys, fake_prepared, extra, expected):
    """Issue 19.10: `--set model.embed_dim=abc` said "not all arguments converted during string formatting";
    a patch larger than the image crashed mid-training with exit 1."""
    from devide import cli

    out = tmp_path / "train"
    code = cli.main(["train", "--dataset", str(fake_prepared), "--knowledge-fallback", "definitions",
                     "--out", str(out), *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert expected in err
    assert not [p for p in tmp_path.iterdir() if p.name != "prepared"]  # no work folder, no lock file


def test_a_dataset_that_is_not_an_artifact_exits_2_in_one_line(tmp_path, capsys):
    """Issue 19.10: exit 2 but with a FileNotFoundError traceback on the console."""
    from devide import cli

    (tmp_path / "images").mkdir()
    code = cli.main(["train", "--dataset", str(tmp_path / "images"), "--knowledge-fallback", "definitions",
                     "--out", str(tmp_path / "train")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "is not a `devide prepare-data` artifact (no dataset or entities.json)" in err
    assert not (tmp_path / "train.partial").exists()
