"""Trainer behaviour that matters on real data: per-entity training positives, validation spread over subjects,
gradient checkpointing with an identical loss, per-rank seeds, and preprocessing read from pretrained towers."""

from __future__ import annotations

import json

import datasets
import numpy as np
import pytest
import torch

from devide.config import load_config
from devide.stage import execute_stage
from devide.training.config import TrainConfig
from devide.training.stage import STAGE
from devide.training.trainer import enable_gradient_checkpointing, training_positives, validation_indices

from .tiny_data import ENTITIES, TINY_MODEL, build, train_config

# ---------------------------------------------------------------------------------------------- point 6


def test_validation_rows_take_one_image_per_subject_before_a_second():
    # subject-ordered split: 3 subjects with 4, 3 and 1 images (rows 0-3, 4-6, 7)
    subjects = [1, 1, 1, 1, 2, 2, 2, 3]
    chosen = validation_indices(subjects, len(subjects), limit=3, seed=0)
    assert sorted({subjects[i] for i in chosen}) == [1, 2, 3]  # "the first 3 rows" would be subject 1 only
    assert chosen == [0, 4, 7]  # each subject's first image
    five = validation_indices(subjects, len(subjects), limit=5, seed=0)
    assert {subjects[i] for i in five} == {1, 2, 3} and sorted(five) == five and len(set(five)) == 5
    assert {0, 4, 7, 1, 5} == set(five)  # round 2 takes the second images of subjects 1 and 2
    assert validation_indices(subjects, 8, limit=20, seed=0) == list(range(8))


def test_validation_rows_without_subject_ids_are_a_seeded_sample():
    first = validation_indices(None, 1000, limit=10, seed=4)
    assert first == validation_indices(None, 1000, limit=10, seed=4) and len(set(first)) == 10
    assert max(first) > 100  # not the first rows


# ---------------------------------------------------------------------------------------------- point 1


def test_training_positives_count_ones_per_model_entity():
    rows = datasets.Dataset.from_dict({"labels": [[1, 0, -1], [1, -100, 1], [0, 0, 1], [1, 1, 0]]})
    counts = training_positives(rows, ["effusion", "edema", "mass"], ["mass", "effusion", "hernia"])
    assert counts == {"mass": 2, "effusion": 3, "hernia": 0}  # -1 (uncertain) is not a positive


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    build(folder)
    return folder


def test_training_records_positives_data_and_process_seed(tiny, tmp_path):
    cfg = load_config(TrainConfig, overrides=train_config(tiny, tmp_path / "run", max_steps=2, checkpoint_every=5,
                                                          tensorboard=False, seed=7))
    execute_stage(STAGE, cfg, quiet=True)
    config = json.loads((tmp_path / "run" / "model" / "config.json").read_text())
    labels = np.array(datasets.load_from_disk(str(tiny / "prepared" / "dataset"))["train"]["labels"])
    assert config["training_positives"] == {e: int((labels[:, j] == 1).sum()) for j, e in enumerate(ENTITIES)}
    assert config["training_data"] == {"dataset": "root", "phantom": False, "split": "train", "images": 32}
    summary = json.loads((tmp_path / "run" / "train_summary.json").read_text())
    assert summary["process_seeds"] == [7]  # rank 0: seed + 0 (rank r gets seed + r)


# ---------------------------------------------------------------------------------------------- point 15


def tiny_model(freeze_text: bool):
    from devide.modeling import DevideConfig, DevideModel

    torch.manual_seed(0)
    # dropout on in both towers: checkpointing must replay the same masks in the recomputation
    vision = {**TINY_MODEL["vision_config"], "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1}
    model = DevideModel(DevideConfig(entities=ENTITIES, **{**TINY_MODEL, "vision_config": vision},
                                     freeze_text=freeze_text))
    model.set_knowledge({e: [f"{e} sentence one", f"{e} sentence two"] for e in ENTITIES})
    return model.train()


def loss_and_grads(model, seed: int = 3):
    torch.manual_seed(seed)
    model.zero_grad(set_to_none=True)
    out = model(pixel_values=torch.randn(4, 1, 32, 32), labels=torch.tensor([[1, 0, 1], [0, 1, 0], [1, 1, 0],
                                                                              [0, 0, 1]]),
                report_texts=["effusion", "cardiomegaly", "both", "pneumothorax"])
    out.loss.backward()
    return out.loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("freeze_text", [True, False], ids=["frozen-text", "trained-text"])
def test_gradient_checkpointing_gives_the_identical_loss_and_gradients(freeze_text):
    model = tiny_model(freeze_text)
    plain_loss, plain_grads = loss_and_grads(model)
    enable_gradient_checkpointing(model)
    checked = [n for n, m in model.named_modules() if getattr(m, "gradient_checkpointing", False)]
    assert any(n.startswith("vision.") for n in checked) and any(n.startswith("text.") for n in checked)
    checked_loss, checked_grads = loss_and_grads(model)
    assert checked_loss.item() == plain_loss.item()
    assert plain_grads.keys() == checked_grads.keys()
    assert any(n.startswith("text.") for n in plain_grads) != freeze_text
    for name, grad in plain_grads.items():
        torch.testing.assert_close(checked_grads[name], grad, rtol=0, atol=1e-6, msg=name)


def test_gradient_checkpointing_is_a_config_switch(tiny, tmp_path):
    cfg = load_config(TrainConfig, overrides=train_config(tiny, tmp_path / "run", gradient_checkpointing=True,
                                                          max_steps=1, tensorboard=False))
    assert cfg.gradient_checkpointing is True
    assert "gradient_checkpointing" in TrainConfig.model_fields


# ---------------------------------------------------------------------------------------------- point 2


def vit_checkpoint(folder, mean: float, std: float):
    """A local 'pretrained' ViT folder with its own preprocessor_config.json, as google/vit-* ship."""
    from transformers import ViTConfig, ViTImageProcessor

    ViTConfig(image_size=32, patch_size=8, num_channels=3, hidden_size=32, num_hidden_layers=1,
              num_attention_heads=2, intermediate_size=64).save_pretrained(folder)
    ViTImageProcessor(image_mean=[mean] * 3, image_std=[std] * 3).save_pretrained(folder)
    return str(folder)


def bert_checkpoint(folder, pooling: str | None):
    """A BERT folder; with ``pooling``, the sentence-transformers modules.json + 1_Pooling/config.json."""
    from transformers import BertConfig

    BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
               vocab_size=100).save_pretrained(folder)
    if pooling:
        (folder / "modules.json").write_text(json.dumps([
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
        (folder / "1_Pooling").mkdir()
        (folder / "1_Pooling" / "config.json").write_text(json.dumps(
            {"pooling_mode_cls_token": pooling == "cls", "pooling_mode_mean_tokens": pooling == "mean"}))
    return str(folder)


def test_preprocessing_follows_the_pretrained_vision_checkpoint(tmp_path):
    from PIL import Image

    from devide.modeling import DevideConfig, DevideImageProcessor

    config = DevideConfig(entities=ENTITIES, vision_model_name_or_path=vit_checkpoint(tmp_path / "vit", 0.5, 0.5))
    assert config.image_mean == [0.5] * 3 and config.image_std == [0.5] * 3  # not the CXR default 0.5 / 0.25
    processor = DevideImageProcessor.from_model_config(config)
    grey = Image.fromarray(np.full((32, 32), 191, dtype=np.uint8))  # 191/255 = 0.749
    pixels = processor(grey)["pixel_values"]
    assert pixels.shape == (1, 3, 32, 32)
    torch.testing.assert_close(pixels, torch.full_like(pixels, (191 / 255 - 0.5) / 0.5))
    # an explicit setting wins; a from-scratch tower keeps the CXR default
    assert DevideConfig(entities=ENTITIES, vision_model_name_or_path=str(tmp_path / "vit"),
                        image_mean=[0.4] * 3, image_std=[0.2] * 3).image_mean == [0.4] * 3
    assert DevideConfig(entities=ENTITIES, vision_preset="tiny").image_mean is None


def test_text_pooling_follows_the_text_checkpoint(tmp_path):
    from devide.modeling import DevideConfig

    assert DevideConfig(entities=ENTITIES).text_pooling == "mean"  # the shipped MiniLM: sentence-transformers mean
    plain = bert_checkpoint(tmp_path / "kebert", None)  # a plain BERT checkpoint such as Med-KEBERT: [CLS]
    assert DevideConfig(entities=ENTITIES, text_model_name_or_path=plain).text_pooling == "cls"
    cls_st = bert_checkpoint(tmp_path / "st-cls", "cls")
    assert DevideConfig(entities=ENTITIES, text_model_name_or_path=cls_st).text_pooling == "cls"
    mean_st = bert_checkpoint(tmp_path / "st-mean", "mean")
    assert DevideConfig(entities=ENTITIES, text_model_name_or_path=mean_st).text_pooling == "mean"
    assert DevideConfig(entities=ENTITIES, text_model_name_or_path=plain, text_pooling="mean").text_pooling == "mean"


def test_saved_configs_keep_their_pooling_and_normalisation(tmp_path):
    from devide.modeling import DevideConfig

    config = DevideConfig(entities=ENTITIES, text_model_name_or_path=bert_checkpoint(tmp_path / "kebert", None),
                          vision_model_name_or_path=vit_checkpoint(tmp_path / "vit", 0.5, 0.5))
    config.save_pretrained(tmp_path / "saved")
    (tmp_path / "vit" / "preprocessor_config.json").unlink()  # a saved model never reads the checkpoint again
    loaded = DevideConfig.from_pretrained(tmp_path / "saved")
    assert loaded.text_pooling == "cls" and loaded.image_std == [0.5] * 3


# ---------------------------------------------------------------------------------------------- point 3


def test_train_and_eval_see_one_geometry():
    """A portrait image: the un-jittered training crop equals the evaluation processor's output exactly (was:
    the whole portrait squashed into the square, ~17 % vertical compression)."""
    from PIL import Image

    from devide.data.loading import CxrAugment
    from devide.modeling import DevideImageProcessor

    rows = np.arange(120)[:, None].repeat(100, axis=1)
    portrait = Image.fromarray(((rows * 2) % 256).astype(np.uint8))  # 100 wide, 120 high, a vertical ramp
    still = CxrAugment(scale=(1, 1), ratio=(1, 1), rotate_deg=0, translate=0, brightness=0, contrast=0,
                       gamma=(1, 1))
    processor = DevideImageProcessor(size=50, image_mean=[0.0], image_std=[1.0])
    train = processor(still(portrait, np.random.default_rng(0), 50))["pixel_values"]
    evaluation = processor(portrait)["pixel_values"]
    torch.testing.assert_close(train, evaluation, rtol=0, atol=1 / 255)


def test_random_crops_stay_inside_the_evaluation_window():
    from devide.data.loading import CxrAugment

    augment = CxrAugment()
    for seed in range(200):
        crop_w, crop_h, left, top = augment._crop_box(100, 160, np.random.default_rng(seed))
        assert left >= 0 and left + crop_w <= 100  # the centred 100 x 100 square: rows 30..130
        assert top >= 30 and top + crop_h <= 130
        assert 0.9 - 0.02 <= crop_w / crop_h <= 1.1 + 0.02  # only the configured aspect jitter (rounding)


# ---------------------------------------------------------------------------------------------- the recipe


def test_mimic_recipe_labels_every_entity_it_trains_and_samples_train_reports_only():
    """pipelines/mimic.yaml: each trained entity must be able to get a label from the configured label source
    (the CheXpert CSV covers 14 of them), and report sentences must come from train subjects."""
    from pathlib import Path

    import yaml

    from devide.data.adapters.chexpert import CLASSES as CHEXPERT_COLUMNS
    from knowledge.vocabulary import load_vocabulary

    recipe = yaml.safe_load((Path(__file__).parents[3] / "pipelines" / "mimic.yaml").read_text())["stages"]
    vocab = load_vocabulary()
    train = recipe["train"]["config"]
    trained = set(train.get("entities") or vocab.ids) - set(train.get("exclude_entities", []))
    source = recipe["prepare-data"]["config"]["label_source"]
    covered = set(vocab.ids) if source == "labeler" else {vocab.from_label("chexpert", c) for c in CHEXPERT_COLUMNS}
    assert not trained - covered, f"{len(trained - covered)} trained entities never labelled by {source}"
    assert "split" in recipe["harmonize"]["config"]["reports_split_file"]
    assert train["gradient_accumulation_steps"] == 1  # accumulation adds no contrastive negatives


# ---------------------------------------------------------------------------------------------- point 7


def test_accumulation_with_contrastive_terms_is_called_out(tiny, tmp_path, caplog):
    """Accumulation sums gradients only; the run says so where it is configured (and the config help does)."""
    import logging
    from types import SimpleNamespace

    from devide.training.trainer import Trainer

    assert "no extra negatives" in TrainConfig.model_fields["gradient_accumulation_steps"].description
    rows = datasets.Dataset.from_dict({"labels": [[1, 0, 0], [0, 0, 1]]})
    for steps, warned in ((1, False), (4, True)):
        cfg = load_config(TrainConfig, overrides=train_config(tiny, tmp_path / f"run{steps}",
                                                              gradient_accumulation_steps=steps))
        trainer = Trainer(cfg, SimpleNamespace(work_dir=tmp_path, logger=logging.getLogger("devide.train")))
        trainer.train_rows, trainer.entities = rows, list(ENTITIES)
        model = SimpleNamespace(config=SimpleNamespace(use_itc=True, use_tnc=False, use_pta=False))
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="devide.train"):
            trainer.record_training_data(model, list(ENTITIES), tmp_path)
        assert ("still see one micro-batch of negatives" in caplog.text) is warned
        assert model.config.training_positives == {"pleural_effusion": 1, "cardiomegaly": 0, "pneumothorax": 1}
        assert "cardiomegaly" in caplog.text  # the entity without a positive label is named
