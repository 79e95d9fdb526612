"""Length-sorted batched encoding of many texts through the text tower.

Padding every chunk of texts to its longest member wastes most of the tower's work on report-like text
(mean ~64 tokens, the longest truncated at 128): sorting by length and batching neighbours pads each batch
only to its own longest, about half the tokens and less than half the attention. Two routes, one result:

* the tower comes from a sentence-transformers model folder (``modules.json``, e.g. the shipped MiniLM):
  ``SentenceTransformer.encode`` on modules wrapping *this* tower's encoder and tokenizer, with the tower's
  own pooling (``mean``/``cls``) and no normalisation, exactly what ``TextTower.forward`` gives. It is
  handed the batches of the token-count order one at a time: its own sort by characters pads ~12 % more
  tokens on reports;
* otherwise (or when sentence-transformers is not installed, e.g. code loaded next to saved weights): the
  same batches run through ``TextTower.forward`` here.

Both give the embeddings of padding each text alone, to float rounding. Gradient-carrying calls and a
tower in training mode (dropout) take the second route: ``SentenceTransformer.encode`` runs under
``torch.inference_mode`` in eval mode.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from torch import nn

TEXT_BATCH_SIZE = 64  # texts per forward pass once sorted by length


def is_sentence_transformers_folder(source: str | os.PathLike | None) -> bool:
    """True when ``source`` is a local sentence-transformers model folder (it has ``modules.json``)."""
    return bool(source) and os.path.isfile(os.path.join(os.fspath(source), "modules.json"))


def length_order(lengths: Sequence[int]) -> list[int]:
    """Indices sorting ``lengths`` longest first (ties keep input order): the largest batch runs first, so
    an out-of-memory shows up at once, and neighbours in the order pad to nearly the same length."""
    return sorted(range(len(lengths)), key=lambda i: -lengths[i])


def encode_bucketed(tower: nn.Module, tokenizer, texts: Sequence[str], max_length: int,
                    batch_size: int = TEXT_BATCH_SIZE) -> torch.Tensor:
    """``tower(input_ids, attention_mask)`` on ``texts`` in length-sorted batches -> [n, d_t] in input order.

    ``tower`` is a :class:`~devide.modeling.text_cache.TextTower` (pooled output [b, d_t]); keeps gradients
    when grad mode is on. Texts are tokenised once to get their token counts, then batch by batch (the
    tokenizer's own padding side and pad id).
    """
    texts = list(texts)
    device = next(tower.parameters()).device
    if not texts:
        return torch.empty(0, tower.hidden_size, device=device)
    lengths = [len(ids) for ids in tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]]
    order = length_order(lengths)
    outputs = []
    for start in range(0, len(order), batch_size):
        batch = tokenizer([texts[i] for i in order[start:start + batch_size]], padding=True, truncation=True,
                          max_length=max_length, return_tensors="pt").to(device)
        outputs.append(tower(batch["input_ids"], batch["attention_mask"]))  # [b, d_t]
    return _restore_order(torch.cat(outputs), order)


def _restore_order(rows: torch.Tensor, order: list[int]) -> torch.Tensor:
    """``rows`` [n, d] in ``order`` -> [n, d] in input order (a gathered copy)."""
    inverse = torch.empty(len(order), dtype=torch.long)
    inverse[torch.tensor(order)] = torch.arange(len(order))
    return rows[inverse.to(rows.device)]


class SentenceTransformerRoute:
    """``SentenceTransformer.encode`` over a tower's encoder and tokenizer (shared, not copied).

    Built once from the sentence-transformers folder the tower came from (its Transformer module's own copy of
    the weights is dropped at once); encoder and tokenizer are re-attached before every call, so replaced
    weights or a tokenizer loaded with a saved model are always the ones used.
    """

    def __init__(self, source: str, pooling: str, hidden_size: int) -> None:
        from sentence_transformers import SentenceTransformer
        from sentence_transformers.base.modules import Transformer
        from sentence_transformers.sentence_transformer.modules import Pooling

        # the tower's pooling, not the folder's; no Normalize module: TextTower returns unnormalised embeddings
        self.model = SentenceTransformer(modules=[Transformer(source), Pooling(hidden_size, pooling)], device="cpu")
        self.model[0].model = None  # drop the folder's copy of the weights: the tower's encoder replaces it
        self.source = source

    def encode(self, encoder: nn.Module, tokenizer, texts: Sequence[str], max_length: int,
               batch_size: int = TEXT_BATCH_SIZE) -> torch.Tensor:
        """[n, d_t] embeddings of ``texts`` (input order) on the encoder's device; no gradient."""
        if not texts:
            return torch.empty(0, self.model[1].get_embedding_dimension(), device=next(encoder.parameters()).device)
        texts = list(texts)
        # encode() sorts by characters; token counts sort exactly (~12 % fewer padded tokens on reports), so
        # it is handed one bucket of the token-count order at a time
        lengths = [len(ids) for ids in tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]]
        order = length_order(lengths)
        transformer = self.model[0]
        transformer.model, transformer.processor = encoder, tokenizer
        was_training = encoder.training
        outputs = []
        try:
            for start in range(0, len(order), batch_size):
                bucket = [texts[i] for i in order[start:start + batch_size]]
                outputs.append(self.model.encode(
                    bucket, batch_size=len(bucket), convert_to_tensor=True, show_progress_bar=False,
                    processing_kwargs={"text": {"max_length": max_length, "truncation": True}}))
        finally:
            encoder.train(was_training)  # encode() switches every module to eval mode
            transformer.model = transformer.processor = None  # hold no stale tower between calls
        # encode() runs under inference_mode: the copy made by the reordering is an ordinary tensor, which
        # autograd may save later (the cached embeddings feed the trainable projections)
        return _restore_order(torch.cat(outputs), order)


def sentence_transformers_route(source: str | None, pooling: str, hidden_size: int
                                ) -> SentenceTransformerRoute | None:
    """The sentence-transformers route for a tower from ``source``, or None (not such a folder, or the
    library is not installed)."""
    if not is_sentence_transformers_folder(source):
        return None
    try:
        return SentenceTransformerRoute(str(source), pooling, hidden_size)
    except ImportError:  # remote code loaded without sentence-transformers: the bucketing route does the same
        return None
