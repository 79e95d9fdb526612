"""DevideModel: image and text towers, knowledge retrieval, cross-view fusion, presence head, multi-label
projection layer and the four losses L = L_bce + L_itc + L_tnc + α·L_pta (docs/method.md has the equations).

Shapes used throughout: B images, E entities (``config.entities`` order), K knowledge sentences per entity
(padded), N patch tokens on an h x w grid, d = ``config.embed_dim``, d_v / d_t the tower widths.
Only relative imports within this folder, so ``save_pretrained`` can copy the code next to the weights.
"""

from __future__ import annotations

import contextvars
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, AutoTokenizer, PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from .configuration_devide import DevideConfig, resolve_text_model
from .losses import check_labels, itc_loss, masked_bce, pta_loss, tnc_entity_loss, tnc_loss
from .processing_devide import DevideImageProcessor
from .text_cache import TextTower, load_pretrained_encoder, text_key

logger = logging.getLogger(__name__)
KNOWLEDGE_FILE = "knowledge.json"
# True while ``from_pretrained`` builds the model: the saved weights replace the towers, so no tower download.
_LOADING_SAVED_MODEL: contextvars.ContextVar[bool] = contextvars.ContextVar("devide_loading", default=False)


@dataclass
class DevideOutput(ModelOutput):
    """Output of ``DevideModel.forward``. A loss term is ``None`` when switched off or not computable.

    loss: scalar total; loss_bce / loss_itc / loss_tnc / loss_pta: the unweighted terms (scalars).
    logits: [B, E] presence logits. image_embeds: [B, d] normalised global image embedding.
    text_embeds: [B, d] normalised report embeddings (when report_texts given). entity_embeds: [B, E, d]
    normalised outputs of the multi-label projection layer. patch_embeds: [B, N, d] normalised local
    embeddings. cross_attentions: [B, E, h, w] last fusion layer's cross-attention (mean over heads).
    sentence_weights: [B, E, K] knowledge-retrieval weights (0 on padding). logits_per_image: [B, B_all].
    """

    loss: torch.FloatTensor | None = None
    loss_bce: torch.FloatTensor | None = None
    loss_itc: torch.FloatTensor | None = None
    loss_tnc: torch.FloatTensor | None = None
    loss_pta: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    image_embeds: torch.FloatTensor | None = None
    text_embeds: torch.FloatTensor | None = None
    entity_embeds: torch.FloatTensor | None = None
    patch_embeds: torch.FloatTensor | None = None
    cross_attentions: torch.FloatTensor | None = None
    sentence_weights: torch.FloatTensor | None = None
    logits_per_image: torch.FloatTensor | None = None


@dataclass
class PredictOutput(ModelOutput):
    """Zero-shot output for K queried entities/descriptions.

    names: list[str] (K). probs / logits: [B, K] presence probability / logit. similarity: [B, K] mean cosine of
    the multi-label projection with the entity's description sentences (what L_tnc trains). grounding:
    [B, K, h, w] maps from ``config.grounding_source`` (each sums to 1). sentence_weights: [B, K, K_max];
    sentences: list of K lists.
    """

    probs: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    similarity: torch.FloatTensor | None = None
    grounding: torch.FloatTensor | None = None
    sentence_weights: torch.FloatTensor | None = None
    names: list[str] | None = None
    sentences: list[list[str]] | None = None


@dataclass
class PackedKnowledge:
    """Entity queries and their knowledge sentences as text, ready to embed.

    names: E query texts; sentences: flat list of all sentences; owner: long [M] entity index per sentence;
    slot: long [M] position within its entity (< K).
    """

    names: list[str]
    per_entity: list[list[str]]
    sentences: list[str]
    owner: torch.Tensor
    slot: torch.Tensor
    max_sentences: int


def pack_knowledge(names: Sequence[str], per_entity: Sequence[Sequence[str]]) -> PackedKnowledge:
    """An entity without sentences uses its own name as its single sentence."""
    lists = [list(sents) if sents else [name] for name, sents in zip(names, per_entity)]
    owner = [e for e, sents in enumerate(lists) for _ in sents]
    slot = [k for sents in lists for k in range(len(sents))]
    return PackedKnowledge(list(names), lists, [s for sents in lists for s in sents],
                           torch.tensor(owner, dtype=torch.long), torch.tensor(slot, dtype=torch.long),
                           max(len(s) for s in lists))


# ============================================================================================ building blocks
class VisionTower(nn.Module):
    """Any transformers vision backbone -> (patch tokens [B, N, d_v], global token [B, d_v], grid (h, w))."""

    def __init__(self, config) -> None:
        super().__init__()
        try:
            self.backbone = AutoModel.from_config(config, add_pooling_layer=False)
        except TypeError:
            self.backbone = AutoModel.from_config(config)
        self.num_channels = int(getattr(config, "num_channels", 3))
        sizes = getattr(config, "hidden_sizes", None)
        self.hidden_size = int(sizes[-1] if sizes else config.hidden_size)

    def adapt_channels(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Greyscale handling: 1 -> 3 channels by replication, 3 -> 1 by averaging."""
        channels = pixel_values.shape[1]
        if channels == self.num_channels:
            return pixel_values
        if channels == 1:
            return pixel_values.expand(-1, self.num_channels, -1, -1)
        if self.num_channels == 1 and channels == 3:
            return pixel_values.mean(1, keepdim=True)
        raise ValueError(f"pixel_values has {channels} channels; the vision tower expects {self.num_channels}")

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
        outputs = self.backbone(pixel_values=self.adapt_channels(pixel_values))
        hidden = outputs.last_hidden_state
        pooled = getattr(outputs, "pooler_output", None)
        if hidden.dim() == 4:  # CNN feature map [B, C, h, w]
            h, w = hidden.shape[-2:]
            patches = hidden.flatten(2).transpose(1, 2)
            glob = pooled.flatten(1) if pooled is not None else patches.mean(1)
            return patches, glob, (h, w)
        side = math.isqrt(hidden.shape[1])
        prefix = hidden.shape[1] - side * side  # CLS (+ register) tokens before a square patch grid
        patches = hidden[:, prefix:]
        if pooled is not None:
            glob = pooled
        else:
            glob = hidden[:, 0] if prefix > 0 else patches.mean(1)
        return patches, glob, (side, side)


class KnowledgeRetrieval(nn.Module):
    """Image-conditioned attention over each entity's knowledge sentences.

    u = W_u g + n_e;  a_k = u·W_k s_k / sqrt(d);  w = softmax_k(a) (padding masked);  q_e = LN(n_e + W_o Σ_k w_k s_k).
    """

    def __init__(self, dim: int, image_conditioned: bool = True) -> None:
        super().__init__()
        self.image_conditioned = image_conditioned
        self.image_query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)
        self.scale = dim ** -0.5

    def forward(self, global_embed: torch.Tensor, name_embeds: torch.Tensor, sentence_embeds: torch.Tensor,
                sentence_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """global_embed [B, d]; name_embeds [E, d]; sentence_embeds [E, K, d]; sentence_mask bool [E, K]
        -> (queries [B, E, d], weights [B, E, K]). Not image-conditioned (ablation): w = uniform over sentences."""
        if self.image_conditioned:
            query = self.image_query(global_embed)[:, None, :] + name_embeds[None]  # [B, E, d]
            scores = torch.einsum("bed,ekd->bek", query, self.key(sentence_embeds)) * self.scale
        else:  # equal scores (the trainer lets DDP find the unused query/key weights: a use_* switch is off)
            scores = sentence_embeds.new_zeros(global_embed.shape[0], *sentence_mask.shape)
        scores = scores.masked_fill(~sentence_mask[None], torch.finfo(scores.dtype).min)
        weights = scores.softmax(-1)
        retrieved = torch.einsum("bek,ekd->bed", weights, self.value(sentence_embeds))
        return self.norm(name_embeds[None] + self.out(retrieved)), weights


class FusionLayer(nn.Module):
    """Pre-norm transformer decoder layer: [self-attention] -> cross-attention to patches (SDPA) -> FFN."""

    def __init__(self, dim: int, heads: int, ffn_dim: int, dropout: float, self_attention: bool) -> None:
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.self_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True) if self_attention else None
        self.norm_self = nn.LayerNorm(dim) if self_attention else None
        self.norm_query = nn.LayerNorm(dim)
        self.norm_memory = nn.LayerNorm(dim)
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = (nn.Linear(dim, dim) for _ in range(4))
        self.norm_ffn = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(ffn_dim, dim))
        self.drop = nn.Dropout(dropout)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        return x.view(b, t, self.heads, d // self.heads).transpose(1, 2)  # [B, H, T, d_h]

    def forward(self, queries: torch.Tensor, memory: torch.Tensor,
                return_attention: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """queries [B, E, d]; memory (patch tokens) [B, N, d] -> (queries [B, E, d], attention [B, E, N] | None)."""
        if self.self_attn is not None:
            x = self.norm_self(queries)
            queries = queries + self.drop(self.self_attn(x, x, x, need_weights=False)[0])
        q = self._split(self.q_proj(self.norm_query(queries)))
        mem = self.norm_memory(memory)
        k, v = self._split(self.k_proj(mem)), self._split(self.v_proj(mem))
        attended = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        b, _, e, _ = attended.shape
        queries = queries + self.drop(self.o_proj(attended.transpose(1, 2).reshape(b, e, -1)))
        queries = queries + self.drop(self.ffn(self.norm_ffn(queries)))
        attention = None
        if return_attention:  # SDPA does not expose its weights: recompute them (E x N is small)
            attention = ((q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5).softmax(-1).mean(1)
        return queries, attention


class CrossViewFusion(nn.Module):
    """Entity queries attend to patch tokens through ``layers`` decoder layers; returns the last layer's map."""

    def __init__(self, dim: int, layers: int, heads: int, ffn_dim: int, dropout: float, self_attention: bool):
        super().__init__()
        self.layers = nn.ModuleList(FusionLayer(dim, heads, ffn_dim, dropout, self_attention) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)

    def forward(self, queries: torch.Tensor, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """queries [B, E, d], memory [B, N, d] -> (outputs [B, E, d], cross-attention [B, E, N])."""
        attention = None
        for index, layer in enumerate(self.layers):
            queries, attention = layer(queries, memory, return_attention=index == len(self.layers) - 1)
        return self.norm(queries), attention


class _OneValue(nn.Module):
    """A learnable number stored with shape [1], not as a scalar: FSDP2 (``fully_shard``) refuses 0-dim
    parameters ("fully_shard doesn't support scalar parameters")."""

    def __init__(self, initial: float) -> None:
        super().__init__()
        self.initial = initial
        self.value = nn.Parameter(torch.tensor([float(initial)]))


class LogitBias(_OneValue):
    """A learnable additive logit bias β (SigLIP), initialised at ``initial``."""

    def __init__(self, initial: float = 0.0) -> None:
        super().__init__(initial)

    def forward(self) -> torch.Tensor:
        return self.value.squeeze(0)


class LogitScale(_OneValue):
    """A learnable temperature exp(s), clamped at ``maximum`` (CLIP)."""

    def __init__(self, initial: float, maximum: float) -> None:
        super().__init__(initial)
        self.maximum = maximum

    def forward(self) -> torch.Tensor:
        return self.value.clamp(max=self.maximum).exp().squeeze(0)


def _normalize(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x.float(), dim=-1)


def _text_ids(texts: Sequence[str], device: torch.device) -> torch.Tensor:
    """A 63-bit id per text (from its SHA-256): equal texts, equal ids, on every process. [n] long."""
    return torch.tensor([int(text_key(t)[:15], 16) for t in texts], dtype=torch.long, device=device)


def _mean_description(sentences: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of each entity's normalised sentence embeddings (not renormalised): [E, K, d], [E, K] -> [E, d].

    v · mean_k ŝ_k is the mean cosine of v with the entity's sentences, the quantity L_tnc trains."""
    return (_normalize(sentences) * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp_min(1)


def _patch_maps(patch_embeds: torch.Tensor, description: torch.Tensor, gamma: float) -> torch.Tensor:
    """Where each entity's descriptions match the patches: softmax_n(γ · p̂_n · mean_k ŝ_k).

    patch_embeds [B, N, d] normalised; description [E, d] (``_mean_description``) -> [B, E, N], each sums to 1
    (γ = ``pta_gamma``, the sharpness of L_pta's smooth maximum over patches)."""
    return (gamma * torch.einsum("bnd,ed->ben", patch_embeds.float(), description.float())).softmax(-1)


# ============================================================================================ the model
class DevideModel(PreTrainedModel):
    """DeViDe: knowledge-augmented chest-radiograph vision-language model (see docs/method.md).

    ``DevideModel(config)`` loads the pretrained text tower (``config.text_model_name_or_path``, default the
    shipped MiniLM) and, when ``config.vision_model_name_or_path`` is set, the pretrained vision backbone;
    ``DevideModel.from_pretrained(folder)`` restores a saved model (weights, knowledge, tokenizer) instead.
    Knowledge sentences: ``model.set_knowledge({entity_id: [sentences]})``.
    """

    config_class = DevideConfig
    base_model_prefix = "devide"
    main_input_name = "pixel_values"
    input_modalities = ("image", "text")
    _supports_sdpa = True
    # gradient_checkpointing_enable() reaches the towers' encoders (ViT/BERT layers), not the small heads
    supports_gradient_checkpointing = True

    def __init__(self, config: DevideConfig, load_pretrained_towers: bool | None = None) -> None:
        super().__init__(config)
        dim = config.embed_dim
        self.vision = VisionTower(config.vision_tower_config())
        self.text = TextTower(config.text_tower_config(), config.text_pooling, config.text_cache_size)
        self.patch_proj = nn.Linear(self.vision.hidden_size, dim)
        self.global_proj = nn.Linear(self.vision.hidden_size, dim)
        self.text_proj = nn.Linear(self.text.hidden_size, dim)
        self.retrieval = KnowledgeRetrieval(dim, image_conditioned=config.use_retrieval)
        self.fusion = CrossViewFusion(dim, config.fusion_layers, config.fusion_heads, config.fusion_ffn_dim,
                                      config.fusion_dropout, config.fusion_self_attention)
        # A switched-off term's head is not built: its weights would be untrained (and unused under DDP).
        # The multi-label projection layer is always built: zero-shot `similarity` reads it.
        self.presence_head = (nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, 1))
                              if config.use_bce else None)
        self.label_projection = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim))
        self.tnc_scale = LogitScale(config.logit_scale_init, config.logit_scale_max)
        self.tnc_bias = LogitBias(0.0)
        self.itc_scale = LogitScale(config.logit_scale_init, config.logit_scale_max) if config.use_itc else None
        self.local_proj = nn.Linear(dim, dim) if config.use_pta else None
        self.pta_scale = LogitScale(config.logit_scale_init, config.logit_scale_max) if config.use_pta else None
        self._tokenizer = None
        self._tokenizer_source: str | None = None
        self._image_processor: DevideImageProcessor | None = None
        self.knowledge: dict[str, list[str]] = {}
        self._packed_cache: tuple | None = None
        self.post_init()
        if config.grounding_source != "attention" and not config.use_pta:
            raise ValueError(f"grounding_source={config.grounding_source!r} reads the L_pta patch embeddings; "
                             "it needs use_pta=True")
        if load_pretrained_towers is None:
            load_pretrained_towers = not _LOADING_SAVED_MODEL.get()
        if load_pretrained_towers:
            self._load_pretrained_towers()
        self.apply_freezing()
        # Weights replaced by load_state_dict invalidate cached sentence embeddings.
        self.register_load_state_dict_post_hook(lambda module, keys: module.clear_text_cache())

    # ------------------------------------------------------------------ setup
    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, (LogitScale, LogitBias)):
            init.constant_(module.value, module.initial)

    def _load_pretrained_towers(self) -> None:
        """Replace the randomly initialised towers by pretrained weights (text always; vision when named)."""
        text_path = resolve_text_model(self.config.text_model_name_or_path)
        self.text.encoder = load_pretrained_encoder(text_path)
        self._tokenizer_source = text_path
        if self.config.vision_model_name_or_path:
            self.vision.backbone = load_pretrained_encoder(self.config.vision_model_name_or_path)

    def apply_freezing(self) -> None:
        """Frozen towers get ``requires_grad=False`` (and the text tower stays in eval mode: no dropout)."""
        for parameter in self.text.parameters():
            parameter.requires_grad_(not self.config.freeze_text)
        for parameter in self.vision.parameters():
            parameter.requires_grad_(not self.config.freeze_vision)

    def train(self, mode: bool = True) -> DevideModel:
        super().train(mode)
        if self.config.freeze_text:
            self.text.eval()
        return self

    @property
    def tokenizer(self):
        """The text tower's tokenizer (saved with the model; loaded lazily)."""
        if self._tokenizer is None:
            source = self._tokenizer_source or resolve_text_model(self.config.text_model_name_or_path)
            self._tokenizer = AutoTokenizer.from_pretrained(source)
        return self._tokenizer

    def clear_text_cache(self) -> None:
        self.text.cache.clear()
        self._packed_cache = None

    # ------------------------------------------------------------------ knowledge
    def set_knowledge(self, knowledge: Mapping[str, Sequence[str]]) -> None:
        """Knowledge sentences per entity id ({entity_id: [sentences]}); saved as knowledge.json.

        Entities of ``config.entities`` without knowledge use their name as their only sentence; ids outside
        ``config.entities`` are kept for zero-shot ``predict``. Sentences are de-duplicated (order kept) and
        capped at ``config.max_sentences_per_entity``.
        """
        cleaned: dict[str, list[str]] = {}
        for entity, sentences in knowledge.items():
            if isinstance(sentences, str):
                raise TypeError(f"knowledge for {entity!r} must be a list of sentences, not a string")
            unique = list(dict.fromkeys(s.strip() for s in sentences if s and s.strip()))
            cleaned[str(entity)] = unique[: self.config.max_sentences_per_entity]
        missing = [e for e in self.config.entities if not cleaned.get(e)]
        if missing:
            logger.info("no knowledge sentences for %d entities (their name is used): %s", len(missing),
                        ", ".join(missing[:10]))
        self.knowledge = cleaned
        self._packed_cache = None

    def _training_knowledge(self) -> PackedKnowledge:
        entities = self.config.entities
        return pack_knowledge([self.config.entity_name(e) for e in entities],
                              [self.knowledge.get(e, []) for e in entities])

    # ------------------------------------------------------------------ text
    def _tokenize_and_encode(self, texts: Sequence[str]) -> torch.Tensor:
        """Run the text tower on ``texts`` in length-sorted batches (text_encoding.py) -> [n, d_t]."""
        try:  # the folder the tower came from: a sentence-transformers one is encoded by that library
            source = self._tokenizer_source or resolve_text_model(self.config.text_model_name_or_path)
        except ValueError:  # no shipped MiniLM (code loaded beside saved weights): the same bucketing here
            source = None
        return self.text.encode_texts(texts, self.tokenizer, self.config.text_max_length, source).float()

    def _text_cache_usable(self) -> bool:
        """The cache serves a frozen tower, and a trainable one under no_grad in eval mode (``predict``).

        Entries are stamped with the tower's weight version (the sum of its parameters' in-place version
        counters, bumped by every optimizer step and by ``load_state_dict``): a changed tower empties the cache.
        """
        usable = self.config.freeze_text or (not torch.is_grad_enabled() and not self.text.training)
        if usable:
            version = sum(p._version for p in self.text.parameters())
            if version != self.text.cache.version:
                self.clear_text_cache()
                self.text.cache.version = version
        return usable

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """Tower embeddings [n, d_t]: cached when the tower cannot change them (frozen, or predict), else
        encoded with gradient."""
        if self._text_cache_usable():
            embeddings = self.text.encode_cached(texts, self._tokenize_and_encode, self.text_proj.weight.device)
        else:
            embeddings = self._tokenize_and_encode(texts)
        return embeddings.to(self.text_proj.weight.dtype)

    def get_text_features(self, texts: Sequence[str]) -> torch.Tensor:
        """Normalised text embeddings in the joint space: [n, d]."""
        return _normalize(self.text_proj(self.encode_text(texts)))

    def _embed_knowledge(self, packed: PackedKnowledge) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> (name embeds [E, d], sentence embeds [E, K, d] (zero padded), sentence mask bool [E, K])."""
        key = (tuple(packed.names), tuple(packed.sentences))
        cacheable = self._text_cache_usable()
        if cacheable and self._packed_cache is not None and self._packed_cache[0] == key:
            tower_names, tower_sentences = self._packed_cache[1]
        else:
            tower = self.encode_text(packed.names + packed.sentences)
            tower_names, tower_sentences = tower[: len(packed.names)], tower[len(packed.names):]
            if cacheable:
                self._packed_cache = (key, (tower_names, tower_sentences))
        names = self.text_proj(tower_names)
        flat = self.text_proj(tower_sentences)  # [M, d]
        device = flat.device
        owner, slot = packed.owner.to(device), packed.slot.to(device)
        num_entities = len(packed.names)
        sentences = flat.new_zeros(num_entities, packed.max_sentences, flat.shape[-1])
        sentences = sentences.index_put((owner, slot), flat)
        mask = torch.zeros(num_entities, packed.max_sentences, dtype=torch.bool, device=device)
        mask[owner, slot] = True
        return names, sentences, mask

    # ------------------------------------------------------------------ image
    def encode_image(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
        """pixel_values [B, C, H, W] -> (patch tokens [B, N, d], global [B, d], grid (h, w)) in the joint width."""
        if pixel_values.dim() != 4:
            raise ValueError(f"pixel_values must be [B, C, H, W], got shape {list(pixel_values.shape)}")
        patches, glob, grid = self.vision(pixel_values.to(self.patch_proj.weight.dtype))
        return self.patch_proj(patches), self.global_proj(glob), grid

    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Normalised global image embeddings [B, d] (the L_itc image side)."""
        return _normalize(self.encode_image(pixel_values)[1])

    def _entity_pass(self, patches: torch.Tensor, glob: torch.Tensor, packed: PackedKnowledge) -> dict:
        """Knowledge retrieval + cross-view fusion + heads for the entities in ``packed``."""
        names, sentences, mask = self._embed_knowledge(packed)
        queries, weights = self.retrieval(glob, names, sentences, mask)
        fused, attention = self.fusion(queries, patches)
        if self.config.use_projection:
            entity_embeds = _normalize(self.label_projection(fused))
        else:  # ablation: one embedding per image, the global one, for every entity
            entity_embeds = _normalize(glob)[:, None, :].expand(-1, fused.shape[1], -1)
        description = _mean_description(sentences, mask)  # [E, d]
        similarity = torch.einsum("bed,ed->be", entity_embeds, description)  # mean cosine with e's sentences
        if self.presence_head is not None:
            logits = self.presence_head(fused).squeeze(-1).float()
        else:  # trained without L_bce: L_tnc's own logit, s·similarity + β
            logits = self.tnc_scale() * similarity + self.tnc_bias()
        return {"logits": logits, "entity_embeds": entity_embeds, "attention": attention, "weights": weights,
                "sentences": sentences, "sentence_mask": mask, "similarity": similarity,
                "description": description}

    # ------------------------------------------------------------------ forward
    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None,
                report_texts: Sequence[str | None] | None = None, return_loss: bool = True) -> DevideOutput:
        """pixel_values [B, C, H, W]; labels long [B, E] (1/0/-1/-100, ``config.entities`` order);
        report_texts: B strings (None/empty = no report: excluded from L_itc). Returns ``DevideOutput``."""
        cfg = self.config
        batch = pixel_values.shape[0]
        if labels is not None:
            check_labels(labels, len(cfg.entities))
        if report_texts is not None and len(report_texts) != batch:
            raise ValueError(f"report_texts has {len(report_texts)} entries for {batch} images")
        if return_loss:
            self._check_loss_switches()
        patches, glob, grid = self.encode_image(pixel_values)
        packed = self._training_knowledge()
        heads = self._entity_pass(patches, glob, packed)
        image_embeds = _normalize(glob)
        patch_embeds = _normalize(self.local_proj(patches)) if self.local_proj is not None else None
        output = DevideOutput(
            logits=heads["logits"], image_embeds=image_embeds, entity_embeds=heads["entity_embeds"],
            patch_embeds=patch_embeds, cross_attentions=heads["attention"].reshape(batch, -1, *grid),
            sentence_weights=heads["weights"])
        if report_texts is not None:
            texts = [t.strip() if t else "" for t in report_texts]
            valid = torch.tensor([bool(t) for t in texts], device=pixel_values.device)
            output.text_embeds = self.get_text_features(texts)
            if return_loss and cfg.use_itc:
                output.loss_itc, output.logits_per_image = itc_loss(
                    image_embeds, output.text_embeds, self.itc_scale(), valid, _text_ids(texts, valid.device))
        if return_loss and labels is not None:
            self._label_losses(output, heads, labels, packed)
        if return_loss:
            output.loss = self._total(output)
        return output

    def _check_loss_switches(self) -> None:
        """A term switched on after construction has no head to train: say so instead of crashing later."""
        cfg = self.config
        for flag, module in (("use_bce", self.presence_head), ("use_itc", self.itc_scale),
                             ("use_pta", self.pta_scale)):
            if getattr(cfg, flag) and module is None:
                raise ValueError(f"config.{flag} is on but the model was built without that term; "
                                 "build a new model with it enabled")

    def _label_losses(self, output: DevideOutput, heads: dict, labels: torch.Tensor, packed: PackedKnowledge) -> None:
        cfg = self.config
        if cfg.use_bce:
            output.loss_bce = masked_bce(heads["logits"], labels, cfg.uncertain_policy, cfg.uncertain_soft_target,
                                         cfg.unmentioned_weight)
        if cfg.use_tnc or cfg.use_pta:
            descriptions = _normalize(heads["sentences"][heads["sentence_mask"]])  # [M, d], entity-major order
            owner = torch.nonzero(heads["sentence_mask"], as_tuple=True)[0]
            if cfg.use_tnc and cfg.tnc_objective == "entity":
                output.loss_tnc = tnc_entity_loss(heads["entity_embeds"], labels, descriptions, owner,
                                                  self.tnc_scale())
            elif cfg.use_tnc:
                output.loss_tnc = tnc_loss(heads["entity_embeds"], labels, descriptions, owner, self.tnc_scale(),
                                           self.tnc_bias())
            if cfg.use_pta:
                output.loss_pta = pta_loss(output.patch_embeds, labels, descriptions, owner, self.pta_scale(),
                                           cfg.pta_gamma)

    def _total(self, output: DevideOutput) -> torch.Tensor | None:
        cfg = self.config
        weighted = [(output.loss_bce, cfg.bce_weight), (output.loss_itc, cfg.itc_weight),
                    (output.loss_tnc, cfg.tnc_weight), (output.loss_pta, cfg.pta_alpha)]
        terms = [weight * term for term, weight in weighted if term is not None]
        return torch.stack(terms).sum() if terms else None

    # ------------------------------------------------------------------ zero-shot
    @torch.no_grad()
    def predict(self, pixel_values: torch.Tensor, entities: Sequence[str] | None = None,
                descriptions: Mapping[str, Sequence[str]] | None = None,
                grounding_source: str | None = None) -> PredictOutput:
        """Zero-shot presence of entities, also ones never seen in training.

        entities: ids answered with the model's knowledge (an id without knowledge is queried by its name);
        descriptions: {name: [sentences]} free descriptions (the name is the query text). Both None = all
        ``config.entities``. Order of the K outputs: entities, then descriptions. grounding_source: override of
        ``config.grounding_source`` (attention / patch / combined).
        """
        names, texts, per_entity = self._predict_queries(entities, descriptions)
        packed = pack_knowledge(texts, per_entity)
        was_training = self.training
        self.eval()
        try:
            patches, glob, grid = self.encode_image(pixel_values)
            heads = self._entity_pass(patches, glob, packed)
            maps = self._grounding(patches, heads, grounding_source or self.config.grounding_source)
        finally:
            self.train(was_training)
        batch = pixel_values.shape[0]
        return PredictOutput(probs=heads["logits"].sigmoid(), logits=heads["logits"], similarity=heads["similarity"],
                             grounding=maps.reshape(batch, -1, *grid),
                             sentence_weights=heads["weights"], names=names,
                             sentences=packed.per_entity)

    def _grounding(self, patches: torch.Tensor, heads: dict, source: str) -> torch.Tensor:
        """Grounding maps [B, K, N] (each sums to 1) from ``source``: the last fusion layer's cross-attention,
        the patch-description similarity of L_pta (``_patch_maps``), or their renormalised product."""
        if source == "attention":
            return heads["attention"]
        if source not in ("patch", "combined"):
            raise ValueError(f"grounding source must be attention, patch or combined, got {source!r}")
        if self.local_proj is None:
            raise ValueError(f"grounding source {source!r} needs the L_pta patch embeddings (use_pta=True)")
        patch_maps = _patch_maps(_normalize(self.local_proj(patches)), heads["description"], self.config.pta_gamma)
        if source == "patch":
            return patch_maps
        combined = heads["attention"].float() * patch_maps
        return combined / combined.sum(-1, keepdim=True).clamp_min(torch.finfo(combined.dtype).tiny)

    def _predict_queries(self, entities, descriptions) -> tuple[list[str], list[str], list[list[str]]]:
        if isinstance(entities, str):
            entities = [entities]
        if entities is None and descriptions is None:
            entities = list(self.config.entities)
        names, texts, per_entity = [], [], []
        for entity in entities or []:
            names.append(entity)
            texts.append(self.config.entity_name(entity))
            per_entity.append(list(self.knowledge.get(entity, []))[: self.config.max_sentences_per_entity])
        for name, sentences in (descriptions or {}).items():
            if isinstance(sentences, str):
                sentences = [sentences]
            names.append(name)
            texts.append(name.replace("_", " "))
            per_entity.append([s for s in sentences if s and s.strip()][: self.config.max_sentences_per_entity])
        if not names:
            raise ValueError("predict needs at least one entity or description")
        return names, texts, per_entity

    # ------------------------------------------------------------------ save / load
    def image_processor(self) -> DevideImageProcessor:
        """The image processor saved with this model (or set with ``set_image_processor``), else the one
        matching its vision tower."""
        return self._image_processor or DevideImageProcessor.from_model_config(self.config)

    def set_image_processor(self, processor: DevideImageProcessor) -> None:
        """Attach the processor that ``save_pretrained`` writes beside the weights."""
        if processor.size != self.config.image_size:
            raise ValueError(f"processor size {processor.size} != vision tower image_size {self.config.image_size}")
        self._image_processor = processor

    def save_pretrained(self, save_directory: str | os.PathLike, *args, **kwargs) -> None:
        """Weights (safetensors) + config + code, and beside them knowledge.json, the tokenizer and the
        image processor (preprocessor_config.json). ``push_to_hub=True`` uploads the complete folder."""
        push_to_hub = kwargs.pop("push_to_hub", False)
        super().save_pretrained(save_directory, *args, **kwargs)
        if not kwargs.get("is_main_process", True):
            return
        with open(os.path.join(save_directory, KNOWLEDGE_FILE), "w", encoding="utf-8") as handle:
            json.dump(self.knowledge, handle, ensure_ascii=False, indent=1, sort_keys=True)
        self.tokenizer.save_pretrained(save_directory)
        self.image_processor().save_pretrained(save_directory)
        if push_to_hub:
            from huggingface_hub import create_repo, upload_folder

            repo_id = kwargs.get("repo_id") or os.path.basename(os.path.abspath(save_directory))
            token = kwargs.get("token")
            create_repo(repo_id, token=token, private=kwargs.get("private"), exist_ok=True)
            upload_folder(repo_id=repo_id, folder_path=save_directory, token=token,
                          commit_message=kwargs.get("commit_message") or "Upload DevideModel")

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs) -> DevideModel:
        """Restore a saved model: weights, then knowledge.json and the tokenizer from the same folder/repo."""
        token = _LOADING_SAVED_MODEL.set(True)
        try:
            model = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        finally:
            _LOADING_SAVED_MODEL.reset(token)
        hub_kwargs = {k: kwargs[k] for k in ("revision", "cache_dir", "token", "local_files_only", "subfolder")
                      if k in kwargs}
        knowledge_path = _resolve_file(str(pretrained_model_name_or_path), KNOWLEDGE_FILE, hub_kwargs)
        if knowledge_path:
            with open(knowledge_path, encoding="utf-8") as handle:
                model.set_knowledge(json.load(handle))
        tokenizer_config = _resolve_file(str(pretrained_model_name_or_path), "tokenizer_config.json", hub_kwargs)
        if tokenizer_config:
            model._tokenizer = _load_tokenizer(str(pretrained_model_name_or_path), tokenizer_config, hub_kwargs)
        if _resolve_file(str(pretrained_model_name_or_path), "preprocessor_config.json", hub_kwargs):
            model._image_processor = DevideImageProcessor.from_pretrained(pretrained_model_name_or_path,
                                                                          **hub_kwargs)
        model.apply_freezing()
        return model


def _load_tokenizer(name_or_path: str, tokenizer_config: str, hub_kwargs: dict):
    """The tokenizer saved beside the weights, by the class its tokenizer_config.json names.

    AutoTokenizer would read config.json first and stop at our auto_map (a trust_remote_code prompt).
    """
    from transformers import PreTrainedTokenizerFast
    from transformers.models.auto.tokenization_auto import tokenizer_class_from_name

    with open(tokenizer_config, encoding="utf-8") as handle:
        class_name = json.load(handle).get("tokenizer_class")
    tokenizer_class = (tokenizer_class_from_name(class_name) if class_name else None) or PreTrainedTokenizerFast
    return tokenizer_class.from_pretrained(name_or_path, **hub_kwargs)


def _resolve_file(name_or_path: str, filename: str, hub_kwargs: dict) -> str | None:
    """Local path of ``filename`` in a model folder or hub repo, or None when the repo has no such file."""
    if os.path.isdir(name_or_path):
        path = os.path.join(name_or_path, hub_kwargs.get("subfolder", "") or "", filename)
        return path if os.path.isfile(path) else None
    from transformers.utils import cached_file

    return cached_file(name_or_path, filename, _raise_exceptions_for_missing_entries=False, **hub_kwargs)


DevideConfig.register_for_auto_class()
DevideModel.register_for_auto_class("AutoModel")
DevideImageProcessor.register_for_auto_class("AutoImageProcessor")
