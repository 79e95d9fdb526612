"""The text tower (any BERT-family encoder) and the sentence-embedding cache used when it is frozen.

A frozen tower encodes each distinct sentence once: knowledge sentences and report texts are looked up by the
SHA-256 of their text. The cache holds the tower's pooled outputs (width ``d_t``, before any trainable
projection), so the projections keep training on top of it.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn
from transformers import AutoModel, PretrainedConfig
from transformers.utils import logging as hf_logging

from .text_encoding import encode_bucketed, sentence_transformers_route


def text_key(text: str) -> str:
    """Cache key of a sentence: SHA-256 hex of its UTF-8 bytes."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class EmbeddingCache:
    """A bounded LRU map ``sha256(text) -> FloatTensor [d_t]`` kept on the CPU in float32."""

    def __init__(self, max_entries: int = 500_000) -> None:
        self.max_entries = max_entries
        self._store: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.hits = 0
        self.misses = 0
        self.version: int | None = None  # weight version of the tower that filled the cache

    def __len__(self) -> int:
        return len(self._store)

    def get(self, key: str) -> torch.Tensor | None:
        value = self._store.get(key)
        if value is None:
            self.misses += 1
            return None
        self.hits += 1
        self._store.move_to_end(key)
        return value

    def put(self, key: str, value: torch.Tensor) -> None:
        self._store[key] = value.detach().to("cpu", torch.float32)
        self._store.move_to_end(key)
        while len(self._store) > self.max_entries:
            self._store.popitem(last=False)

    def clear(self) -> None:
        self._store.clear()
        self.hits = self.misses = 0


def _build_encoder(config: PretrainedConfig) -> nn.Module:
    """A bare encoder (no pooler: its weights would receive no gradient) from a transformers config."""
    try:
        return AutoModel.from_config(config, add_pooling_layer=False)
    except TypeError:  # encoders without a pooler option (DistilBERT, ...)
        return AutoModel.from_config(config)


def load_pretrained_encoder(name_or_path: str) -> nn.Module:
    """Pretrained tower weights from a hub id or local folder, without the pooler (same layout as
    ``_build_encoder``). The checkpoint's pooler weights are expected leftovers: their load report is silenced."""
    previous = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        try:
            return AutoModel.from_pretrained(name_or_path, add_pooling_layer=False)
        except TypeError:
            return AutoModel.from_pretrained(name_or_path)
    finally:
        hf_logging.set_verbosity(previous)


class TextTower(nn.Module):
    """Tokenizer-agnostic wrapper: ``forward(input_ids, attention_mask) -> [n, d_t]`` pooled sentence embeddings.

    Tokenisation lives in the owning model (the tokenizer is not an ``nn.Module`` and is saved beside the
    weights). ``pooling="mean"`` is the masked token mean (sentence-transformers' MiniLM pooling); ``"cls"``
    takes the first token (BERT/Med-KEBERT style).
    """

    def __init__(self, config: PretrainedConfig, pooling: str = "mean", cache_size: int = 500_000) -> None:
        super().__init__()
        self.encoder = _build_encoder(config)
        self.pooling = pooling
        self.hidden_size = int(config.hidden_size)
        self.cache = EmbeddingCache(cache_size)
        self._routes: dict[str, object] = {}  # source folder -> sentence-transformers route (or None)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """input_ids, attention_mask: [n, L] -> FloatTensor [n, d_t]."""
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # [n, L, d_t]
        if self.pooling == "cls":
            return hidden[:, 0]
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)

    def encode_texts(self, texts: Sequence[str], tokenizer, max_length: int, source: str | None = None
                     ) -> torch.Tensor:
        """``texts`` -> [n, d_t] pooled embeddings (input order), in length-sorted batches (text_encoding.py).

        ``source``: the folder the tower came from; a sentence-transformers folder lets
        ``SentenceTransformer.encode`` run the batches when no gradient is wanted and the tower is in eval
        mode. Same embeddings as ``forward`` on each text alone, to float rounding.
        """
        if source is not None and not torch.is_grad_enabled() and not self.encoder.training:
            if source not in self._routes:
                self._routes[source] = sentence_transformers_route(source, self.pooling, self.hidden_size)
            route = self._routes[source]
            if route is not None:
                return route.encode(self.encoder, tokenizer, texts, max_length)
        return encode_bucketed(self, tokenizer, texts, max_length)

    def encode_cached(self, texts: Sequence[str], encode_fn, device: torch.device) -> torch.Tensor:
        """Embeddings of ``texts`` [n, d_t] from the cache; misses are encoded (no grad) by ``encode_fn``.

        ``encode_fn(list[str]) -> [m, d_t]`` runs the tower on the distinct missing sentences only.
        """
        keys = [text_key(t) for t in texts]
        missing: dict[str, str] = {}
        for key, text in zip(keys, texts):
            if key not in missing and self.cache.get(key) is None:
                missing[key] = text
        if missing:
            with torch.no_grad():
                encoded = encode_fn(list(missing.values()))
            for key, row in zip(missing, encoded):
                self.cache.put(key, row)
        rows = [self.cache._store.get(k) for k in keys]
        if any(r is None for r in rows):  # evicted while filling (a batch larger than the cache bound)
            with torch.no_grad():
                return encode_fn(list(texts)).float().to(device)
        return torch.stack(rows).to(device)
