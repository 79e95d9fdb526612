"""DevideModel: shapes, masking through the model, gradient reach, loss switches, save/load round trip,
remote-code loading, zero-shot on unseen entities, the frozen-text cache."""

from __future__ import annotations

import json

import pytest
import torch

from devide.modeling import DevideConfig, DevideImageProcessor, DevideModel, DevideOutput, PredictOutput

ENTITIES = ["atelectasis", "pleural_effusion", "nodule", "cardiomegaly"]
KNOWLEDGE = {
    "atelectasis": ["Linear or wedge-shaped opacity with volume loss.", "Displacement of a fissure."],
    "pleural_effusion": ["Blunting of the costophrenic angle.", "A meniscus-shaped basal opacity.",
                         "Fluid layering along the lateral chest wall."],
    "nodule": ["A round, well-defined opacity under three centimetres."],
    # cardiomegaly deliberately without knowledge: its name is its query and only sentence
}
LABELS = torch.tensor([[1, 0, -100, -1], [0, 1, 1, -100], [-100, -100, 0, 1]])
REPORTS = ["Left basal atelectasis.", "Right effusion and a small nodule.", "Enlarged heart."]
SMALL = {"entities": ENTITIES, "embed_dim": 32, "fusion_layers": 2, "fusion_heads": 2, "fusion_ffn_dim": 64,
             "fusion_dropout": 0.0, "vision_config": {"model_type": "vit", "image_size": 32, "patch_size": 8, "num_channels": 1,
                                                    "hidden_size": 48, "num_hidden_layers": 2, "num_attention_heads": 2,
                                                    "intermediate_size": 96}}


@pytest.fixture(scope="module")
def model() -> DevideModel:
    torch.manual_seed(0)
    built = DevideModel(DevideConfig(**SMALL))
    built.set_knowledge(KNOWLEDGE)
    return built


@pytest.fixture(scope="module")
def pixels() -> torch.Tensor:
    return torch.randn(3, 1, 32, 32, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def saved(model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("devide_model")
    model.save_pretrained(folder)
    return folder


def _grid(config: DevideConfig) -> int:
    return config.image_size // config.vision_config["patch_size"]


def test_forward_shapes(model, pixels):
    out = model(pixels, labels=LABELS, report_texts=REPORTS)
    assert isinstance(out, DevideOutput)
    b, e, d, g = 3, len(ENTITIES), model.config.embed_dim, _grid(model.config)
    assert out.logits.shape == (b, e)
    assert out.image_embeds.shape == (b, d) and out.text_embeds.shape == (b, d)
    assert out.entity_embeds.shape == (b, e, d)
    assert out.patch_embeds.shape == (b, g * g, d)
    assert out.cross_attentions.shape == (b, e, g, g)
    assert out.sentence_weights.shape == (b, e, 3)  # K = most sentences of any entity
    assert out.logits_per_image.shape == (b, b)
    for name in ("loss", "loss_bce", "loss_itc", "loss_tnc", "loss_pta"):
        assert getattr(out, name).dim() == 0 and torch.isfinite(getattr(out, name))
    # attention and retrieval weights are distributions; padding slots get no weight
    torch.testing.assert_close(out.cross_attentions.sum((-1, -2)), torch.ones(b, e))
    torch.testing.assert_close(out.sentence_weights.sum(-1), torch.ones(b, e))
    assert torch.all(out.sentence_weights[:, ENTITIES.index("nodule"), 1:] == 0)
    norms = out.entity_embeds.norm(dim=-1)
    torch.testing.assert_close(norms, torch.ones_like(norms))


def test_total_is_weighted_sum_of_terms(model, pixels):
    out = model(pixels, labels=LABELS, report_texts=REPORTS)
    cfg = model.config
    expected = (cfg.bce_weight * out.loss_bce + cfg.itc_weight * out.loss_itc + cfg.tnc_weight * out.loss_tnc
                + cfg.pta_alpha * out.loss_pta)
    torch.testing.assert_close(out.loss, expected)


def test_switched_off_terms_are_absent(model, pixels):
    cfg = model.config
    try:
        cfg.use_pta, cfg.use_itc = False, False
        out = model(pixels, labels=LABELS, report_texts=REPORTS)
        assert out.loss_pta is None and out.loss_itc is None
        torch.testing.assert_close(out.loss, cfg.bce_weight * out.loss_bce + cfg.tnc_weight * out.loss_tnc)
    finally:
        cfg.use_pta, cfg.use_itc = True, True
    # inputs that a term needs, missing: the term is absent rather than zero
    out = model(pixels, labels=LABELS)
    assert out.loss_itc is None and out.loss_bce is not None
    out = model(pixels, report_texts=REPORTS)
    assert out.loss_bce is None and out.loss_tnc is None and out.loss_pta is None
    torch.testing.assert_close(out.loss, cfg.itc_weight * out.loss_itc)
    assert model(pixels).loss is None


def test_term_built_off_has_no_head_and_cannot_be_switched_on():
    cfg = DevideConfig(**SMALL, use_pta=False, use_bce=False)
    ablated = DevideModel(cfg, load_pretrained_towers=False)
    assert ablated.local_proj is None and ablated.pta_scale is None and ablated.presence_head is None
    ablated.set_knowledge(KNOWLEDGE)
    pixels = torch.randn(2, 1, 32, 32)
    out = ablated(pixels, labels=LABELS[:2], report_texts=REPORTS[:2])
    assert out.loss_pta is None and out.loss_bce is None and out.loss_tnc is not None
    assert ablated.predict(pixels, entities=["nodule"]).probs.shape == (2, 1)  # similarity-based presence
    cfg.use_pta = True
    with pytest.raises(ValueError, match="use_pta"):
        ablated(pixels, labels=LABELS[:2])


def test_bce_masking_through_the_model(model, pixels):
    cfg = model.config
    out = model(pixels, labels=LABELS, report_texts=REPORTS)
    out.logits.retain_grad()
    out.loss_bce.backward()
    assert cfg.uncertain_policy == "ignore"
    assert torch.all(out.logits.grad[LABELS < 0] == 0)  # not mentioned and (ignored) uncertain
    assert torch.all(out.logits.grad[LABELS >= 0] != 0)
    model.zero_grad(set_to_none=True)


def test_unmentioned_weight_gives_not_mentioned_pairs_a_gradient_towards_absent(model, pixels):
    model.config.unmentioned_weight = 0.5
    try:
        out = model(pixels, labels=LABELS, report_texts=REPORTS)
        out.logits.retain_grad()
        out.loss_bce.backward()
    finally:
        model.config.unmentioned_weight = 0.0
        model.zero_grad(set_to_none=True)
    not_mentioned = LABELS == -100
    assert torch.all(out.logits.grad[not_mentioned] > 0)  # d BCE(target 0) / d logit = sigmoid > 0
    assert torch.all(out.logits.grad[LABELS == -1] == 0)
    with pytest.raises(ValueError, match="unmentioned_weight"):
        DevideConfig(**SMALL, unmentioned_weight=1.5)


def _assert_every_trainable_module_gets_gradient(model: DevideModel) -> None:
    missing = [name for name, p in model.named_parameters()
               if p.requires_grad and (p.grad is None or not torch.any(p.grad != 0))]
    assert not missing, f"no gradient reaches: {missing[:10]}"


def test_gradients_reach_every_trainable_module(model, pixels):
    model.train()
    model.zero_grad(set_to_none=True)
    model(pixels, labels=LABELS, report_texts=REPORTS).loss.backward()
    _assert_every_trainable_module_gets_gradient(model)
    assert all(p.grad is None for p in model.text.parameters())  # frozen text tower
    assert not model.text.training  # frozen tower stays in eval mode (no dropout) under model.train()
    model.zero_grad(set_to_none=True)
    model.eval()


def test_unfrozen_text_tower_is_trained(model, pixels):
    cfg = model.config
    try:
        cfg.freeze_text = False
        model.apply_freezing()
        model.train()
        model.zero_grad(set_to_none=True)
        model(pixels, labels=LABELS, report_texts=REPORTS).loss.backward()
        _assert_every_trainable_module_gets_gradient(model)
        embeddings = model.text.encoder.embeddings.word_embeddings.weight
        assert embeddings.grad is not None and embeddings.grad.abs().sum() > 0
    finally:
        cfg.freeze_text = True
        model.apply_freezing()
        model.zero_grad(set_to_none=True)
        model.eval()


def test_frozen_text_cache_encodes_each_sentence_once(model, pixels):
    model.clear_text_cache()
    model(pixels, labels=LABELS, report_texts=REPORTS)
    first = len(model.text.cache)
    misses = model.text.cache.misses
    model(pixels, labels=LABELS, report_texts=REPORTS)
    assert len(model.text.cache) == first == len(ENTITIES) + 6 + len(REPORTS)  # names + sentences + reports
    assert model.text.cache.misses == misses  # second pass: all hits
    cached = model.encode_text(["Left basal atelectasis."])
    fresh = model._tokenize_and_encode(["Left basal atelectasis."])
    torch.testing.assert_close(cached, fresh)


def test_bad_inputs_give_clear_errors(model, pixels):
    with pytest.raises(ValueError, match="shape"):
        model(pixels, labels=LABELS[:, :2])
    with pytest.raises(ValueError, match="report_texts"):
        model(pixels, report_texts=REPORTS[:2])
    with pytest.raises(ValueError, match="channels"):
        model(torch.randn(1, 2, 32, 32))
    with pytest.raises(ValueError, match="pixel_values"):
        model(torch.randn(32, 32))
    with pytest.raises(TypeError, match="list of sentences"):
        model.set_knowledge({"nodule": "a string"})
    with pytest.raises(ValueError, match="at least one"):
        model.predict(pixels, entities=[], descriptions={})


def test_round_trip_gives_identical_outputs(model, pixels, saved):
    model.eval()
    reloaded = DevideModel.from_pretrained(saved)
    assert reloaded.knowledge == model.knowledge
    assert json.loads((saved / "knowledge.json").read_text()) == model.knowledge
    assert (saved / "model.safetensors").is_file() and (saved / "preprocessor_config.json").is_file()
    assert not reloaded.training
    first = model(pixels, labels=LABELS, report_texts=REPORTS)
    second = reloaded(pixels, labels=LABELS, report_texts=REPORTS)
    for name in ("loss", "logits", "image_embeds", "text_embeds", "cross_attentions", "sentence_weights"):
        torch.testing.assert_close(getattr(first, name), getattr(second, name), rtol=0, atol=0)
    zero_a = model.predict(pixels, descriptions={"honeycombing": ["Clustered cystic air spaces."]})
    zero_b = reloaded.predict(pixels, descriptions={"honeycombing": ["Clustered cystic air spaces."]})
    torch.testing.assert_close(zero_a.probs, zero_b.probs, rtol=0, atol=0)
    processor = DevideImageProcessor.from_pretrained(saved)
    assert processor.size == model.config.image_size and processor.num_channels == 1


def test_automodel_trust_remote_code_loads_local_folder(model, pixels, saved):
    from transformers import AutoConfig, AutoImageProcessor, AutoModel

    config = AutoConfig.from_pretrained(saved, trust_remote_code=True)
    assert config.model_type == "devide" and config.auto_map["AutoModel"] == "modeling_devide.DevideModel"
    remote = AutoModel.from_pretrained(saved, trust_remote_code=True)
    assert type(remote).__name__ == "DevideModel" and type(remote) is not DevideModel  # the copied code
    model.eval()
    torch.testing.assert_close(remote(pixels).logits, model(pixels).logits, rtol=0, atol=0)
    assert remote.knowledge == model.knowledge
    processor = AutoImageProcessor.from_pretrained(saved, trust_remote_code=True)
    assert type(processor).__name__ == "DevideImageProcessor"


def test_zero_shot_unseen_entity_depends_on_its_descriptions(model, pixels):
    model.eval()
    first = model.predict(pixels, entities=["nodule", "pneumothorax"],
                          descriptions={"kerley_b_lines": ["Short horizontal lines at the lung periphery."]})
    assert isinstance(first, PredictOutput)
    g = _grid(model.config)
    assert first.names == ["nodule", "pneumothorax", "kerley_b_lines"]
    assert first.probs.shape == (3, 3) and torch.all((first.probs > 0) & (first.probs < 1))
    assert first.grounding.shape == (3, 3, g, g)
    assert first.sentence_weights.shape == (3, 3, 1) and first.similarity.shape == (3, 3)
    assert first.sentences[1] == ["pneumothorax"]  # unseen id without knowledge: queried by its name
    other = model.predict(pixels, descriptions={"kerley_b_lines": ["A large dense opacity filling the apex.",
                                                                   "Air outlining the visceral pleura."]})
    assert not torch.allclose(other.probs[:, 0], first.probs[:, 2])
    assert other.sentence_weights.shape == (3, 1, 2)
    # a query's answer does not depend on the other queries (no self-attention between entity queries)
    alone = model.predict(pixels, entities=["nodule"])
    torch.testing.assert_close(alone.probs[:, 0], first.probs[:, 0])


def test_predict_defaults_to_config_entities_and_keeps_mode(model, pixels):
    model.train()
    result = model.predict(pixels)
    assert result.names == ENTITIES and model.training
    model.eval()
    torch.testing.assert_close(result.logits, model(pixels).logits)


def test_predict_cache_with_trainable_text_tower_follows_weight_updates(model, pixels):
    """Unfrozen tower: predict caches sentence embeddings, and an optimizer step on the tower invalidates them."""
    cfg = model.config
    state = {k: v.clone() for k, v in model.text.state_dict().items()}
    try:
        cfg.freeze_text = False
        model.apply_freezing()
        model.eval()
        model.clear_text_cache()
        before = model.predict(pixels, entities=["nodule"])
        assert len(model.text.cache) > 0
        optimizer = torch.optim.SGD(model.text.parameters(), lr=1.0)
        model.train()
        model.zero_grad(set_to_none=True)
        model(pixels, labels=LABELS, report_texts=REPORTS).loss.backward()
        optimizer.step()
        model.eval()
        after = model.predict(pixels, entities=["nodule"])
        model.clear_text_cache()
        fresh = model.predict(pixels, entities=["nodule"])
        torch.testing.assert_close(after.probs, fresh.probs, rtol=0, atol=0)
        assert not torch.allclose(after.probs, before.probs)
    finally:
        cfg.freeze_text = True
        model.text.load_state_dict(state)
        model.apply_freezing()
        model.zero_grad(set_to_none=True)
        model.eval()


def test_custom_image_processor_travels_with_the_model(model, tmp_path):
    processor = DevideImageProcessor(size=model.config.image_size, per_image_standardize=True, image_std=[0.3])
    model.set_image_processor(processor)
    try:
        model.save_pretrained(tmp_path)
        reloaded = DevideModel.from_pretrained(tmp_path)
        assert reloaded.image_processor().to_dict() == processor.to_dict()
        with pytest.raises(ValueError, match="image_size"):
            model.set_image_processor(DevideImageProcessor(size=model.config.image_size + 1))
    finally:
        model._image_processor = None


def test_grounding_sources_each_sum_to_one_and_differ(model, pixels):
    g = _grid(model.config)
    maps = {source: model.predict(pixels, entities=["pleural_effusion", "nodule"], grounding_source=source).grounding
            for source in ("attention", "patch", "combined")}
    for source, grounding in maps.items():
        assert grounding.shape == (3, 2, g, g), source
        torch.testing.assert_close(grounding.sum((-2, -1)), torch.ones(3, 2))
    assert not torch.allclose(maps["attention"], maps["patch"])
    product = maps["attention"] * maps["patch"]  # combined = renormalised product of the two
    torch.testing.assert_close(maps["combined"], product / product.sum((-2, -1), keepdim=True))
    with pytest.raises(ValueError, match="grounding source"):
        model.predict(pixels, entities=["nodule"], grounding_source="gradcam")
    with pytest.raises(ValueError, match="use_pta"):
        DevideModel(DevideConfig(**{**SMALL, "use_pta": False, "grounding_source": "patch"}))


def test_ablation_switches_projection_and_retrieval(pixels):
    torch.manual_seed(0)
    plain = DevideModel(DevideConfig(**{**SMALL, "use_projection": False, "use_retrieval": False}))
    plain.set_knowledge(KNOWLEDGE)
    out = plain(pixels, labels=LABELS, report_texts=REPORTS)
    # without the projection every entity reads the global image embedding
    torch.testing.assert_close(out.entity_embeds, out.image_embeds[:, None, :].expand_as(out.entity_embeds))
    # without retrieval the sentence weights are uniform over each entity's sentences (3 for pleural_effusion)
    effusion = ENTITIES.index("pleural_effusion")
    torch.testing.assert_close(out.sentence_weights[:, effusion, :3], torch.full((3, 3), 1 / 3))
    assert out.loss_tnc is not None and torch.isfinite(out.loss)
