"""Length-sorted text encoding (devide/modeling/text_encoding.py): both routes give the embeddings of the
former padded-chunk encoding and of each text alone, for mean and CLS pooling, unnormalised, in input order;
the sentence-transformers route is taken only where it applies; cached embeddings still train the projection."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig, AutoTokenizer

from devide.modeling import DevideConfig, DevideModel
from devide.modeling.configuration_devide import default_text_model_path
from devide.modeling.text_cache import TextTower, load_pretrained_encoder
from devide.modeling.text_encoding import (
    encode_bucketed,
    is_sentence_transformers_folder,
    length_order,
    sentence_transformers_route,
)

# lengths from 3 to past the 32-token cap, in no particular order: batches of 4 mix nothing alike
TEXTS = ["Heart size is normal.", "Small left pleural effusion with adjacent basal atelectasis, unchanged. " * 3,
         "Clear.", "There is a rounded opacity in the right upper zone, concerning for a nodule.",
         "No pneumothorax.", "Mild cardiomegaly. Pulmonary vascular congestion without frank edema.",
         "Lines and tubes in standard position.", "A", "Patchy bibasilar opacities may reflect atelectasis.",
         "Bilateral pleural effusions, moderate on the right and small on the left, with compressive atelectasis."]
MAX_LENGTH = 32
TOL = {"atol": 2e-5, "rtol": 1e-4}


@pytest.fixture(scope="module")
def folder() -> str:
    return default_text_model_path()


@pytest.fixture(scope="module")
def tokenizer(folder):
    return AutoTokenizer.from_pretrained(folder)


def _tower(folder: str, pooling: str) -> TextTower:
    tower = TextTower(AutoConfig.from_pretrained(folder), pooling=pooling)
    tower.encoder = load_pretrained_encoder(folder)
    return tower.eval()


@pytest.fixture(scope="module", params=["mean", "cls"])
def tower(request, folder) -> TextTower:
    return _tower(folder, request.param)


def _padded_chunk(tower, tokenizer, texts) -> torch.Tensor:
    """The former encoding: all texts in one chunk, padded to the longest."""
    batch = tokenizer(list(texts), padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="pt")
    return tower(batch["input_ids"], batch["attention_mask"])


def _one_by_one(tower, tokenizer, texts) -> torch.Tensor:
    return torch.cat([_padded_chunk(tower, tokenizer, [text]) for text in texts])


def test_length_order_is_longest_first_and_stable():
    assert length_order([3, 7, 3, 9, 7]) == [3, 1, 4, 0, 2]
    assert length_order([]) == []


def test_st_folder_detection(folder, tmp_path):
    assert is_sentence_transformers_folder(folder)
    assert not is_sentence_transformers_folder(tmp_path)
    assert not is_sentence_transformers_folder(None)
    assert sentence_transformers_route(str(tmp_path), "mean", 384) is None


@torch.no_grad()
def test_bucketed_matches_padded_chunk_and_each_text_alone(tower, tokenizer):
    sorted_batches = encode_bucketed(tower, tokenizer, TEXTS, MAX_LENGTH, batch_size=4)
    assert sorted_batches.shape == (len(TEXTS), tower.hidden_size)
    torch.testing.assert_close(sorted_batches, _padded_chunk(tower, tokenizer, TEXTS), **TOL)
    torch.testing.assert_close(sorted_batches, _one_by_one(tower, tokenizer, TEXTS), **TOL)


@torch.no_grad()
def test_sentence_transformers_route_matches_padded_chunk(tower, tokenizer, folder):
    route = sentence_transformers_route(folder, tower.pooling, tower.hidden_size)
    assert route is not None
    out = route.encode(tower.encoder, tokenizer, TEXTS, MAX_LENGTH, batch_size=4)
    torch.testing.assert_close(out, _padded_chunk(tower, tokenizer, TEXTS), **TOL)
    # unnormalised, like TextTower.forward: the folder's Normalize module is not applied
    assert (out.norm(dim=1) - 1.0).abs().min() > 0.5
    assert not torch.is_inference(out)  # an ordinary tensor: autograd may save it later


def test_mean_pooling_is_the_models_own(folder, tokenizer):
    """The folder's full pipeline (mean pooling + Normalize) = our mean pooling, normalised."""
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(folder, device="cpu")
    reference.max_seq_length = MAX_LENGTH
    expected = reference.encode(TEXTS, convert_to_tensor=True, batch_size=4)
    with torch.no_grad():
        ours = encode_bucketed(_tower(folder, "mean"), tokenizer, TEXTS, MAX_LENGTH, batch_size=4)
    torch.testing.assert_close(torch.nn.functional.normalize(ours, dim=1), expected, **TOL)


def test_route_restores_training_mode_and_empty_input(folder, tokenizer):
    tower = _tower(folder, "mean")
    route = sentence_transformers_route(folder, "mean", tower.hidden_size)
    tower.encoder.train()
    with torch.no_grad():
        route.encode(tower.encoder, tokenizer, TEXTS[:2], MAX_LENGTH)
        assert tower.encoder.training  # encode() switched it to eval; it is switched back
        assert encode_bucketed(tower, tokenizer, [], MAX_LENGTH).shape == (0, tower.hidden_size)
        assert route.encode(tower.encoder, tokenizer, [], MAX_LENGTH).shape == (0, tower.hidden_size)
    assert route.model[0].model is None  # no reference to the tower kept between calls


def test_bucketed_keeps_gradients(folder, tokenizer):
    tower = _tower(folder, "mean")
    out = encode_bucketed(tower, tokenizer, TEXTS[:5], MAX_LENGTH, batch_size=2)
    out[1].sum().backward()  # one text's gradient reaches the word embeddings of its tokens only
    grad = tower.encoder.embeddings.word_embeddings.weight.grad
    used = set(tokenizer(TEXTS[1], truncation=True, max_length=MAX_LENGTH)["input_ids"])
    touched = set(torch.nonzero(grad.abs().sum(1)).flatten().tolist())
    assert touched == used


SMALL = {"entities": ["nodule", "pleural_effusion"], "embed_dim": 16, "fusion_layers": 1, "fusion_heads": 2,
         "fusion_ffn_dim": 32, "text_max_length": MAX_LENGTH,
         "vision_config": {"model_type": "vit", "image_size": 16, "patch_size": 8, "num_channels": 1,
                           "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
                           "intermediate_size": 32}}


def test_model_routes_and_cached_embeddings_train_the_projection(tokenizer):
    torch.manual_seed(0)
    model = DevideModel(DevideConfig(freeze_text=True, **SMALL))
    model.train()  # the frozen tower stays in eval mode, so its cache fill takes the sentence-transformers route
    with torch.no_grad():
        expected = _padded_chunk(model.text, tokenizer, TEXTS)
    encoded = model.encode_text(TEXTS)
    assert [route is not None for route in model.text._routes.values()] == [True]
    torch.testing.assert_close(encoded, expected, **TOL)
    model.get_text_features(TEXTS).sum().backward()  # cached rows are saved for the projection's backward
    assert model.text_proj.weight.grad is not None and model.text_proj.weight.grad.abs().sum() > 0
    model.config.freeze_text = False
    model.apply_freezing()
    model.train()  # a trainable tower in training mode: the bucketing route, with gradient
    out = model._tokenize_and_encode(TEXTS[:3])
    assert out.requires_grad
