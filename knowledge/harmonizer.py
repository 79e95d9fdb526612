"""Harmonise an entity's sources into short aspect-tagged sentences (the knowledge base rows).

Per entity, the definition, the crawled descriptions and the representative report sentences are numbered and
sent, a bounded number per request and a bounded number of requests per entity, to an LLM that must answer with
aspect-tagged sentences citing their source (JSON schema in :mod:`knowledge.schema`). Every generated sentence
goes through a **grounding check** against the source it cites: one whose content words are not mostly found
in that source is rejected (counted, and the source sentence itself is kept instead). Sources the LLM did not
use, sources beyond the request budget, and the sources of a request that failed for good are kept too, tagged
by the rules backend, so no input is silently lost; each row's provenance says which path it took.

Rows: ``entity, source, aspect, sentence, provenance (JSON), hash`` where hash = sha256(entity, sentence).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from devide.log import progress
from knowledge.llm import ChatClient, EndpointError, LLMError, PrivacyError
from knowledge.prompts import PromptTemplate
from knowledge.rules import normalize_sentence, rules_sentences, tag_aspect
from knowledge.schema import ASPECTS, HarmonizedAnswer, parse_answer
from knowledge.sources import SourceItem
from knowledge.vocabulary import Vocabulary

logger = logging.getLogger("devide.harmonize")
_STOPWORDS = frozenset({
    "a", "an", "the", "of", "in", "on", "at", "to", "for", "from", "by", "with", "and", "or", "as", "is",
    "are", "was", "were", "be", "been", "being", "it", "its", "this", "that", "these", "those", "which",
    "who", "whom", "there", "their", "they", "them", "than", "then", "into", "onto", "over", "under", "may",
    "can", "could", "might", "should", "would", "will", "often", "usually", "typically", "most", "more",
    "less", "very", "also", "such", "one", "two", "both", "each", "any", "all", "some", "other", "seen",
    "see", "shows", "show", "showing", "appears", "appear", "appearance", "finding", "findings", "radiograph",
    "radiographs", "chest", "film", "films", "image", "images",
})


# ---------------------------------------------------------------------------------------------- grounding


def _stem(word: str) -> str:
    """A crude stem (first 5 letters): "effusions" ~ "effusion", "opacities" ~ "opacity"."""
    return word[:5] if len(word) > 5 else word


def content_words(text: str) -> set[str]:
    return {_stem(w) for w in re.findall(r"[a-z0-9]+", text.lower()) if len(w) > 2 and w not in _STOPWORDS}


def support_score(generated: str, source: str, allowed: Iterable[str] = ()) -> float:
    """Share of the generated sentence's content words found in its source (words of ``allowed``, the
    finding's own names, are free). A sentence with no content words of its own scores 0."""
    free = set().union(*(content_words(a) for a in allowed)) if allowed else set()
    words = content_words(generated) - free
    if not words:
        return 0.0
    return len(words & (content_words(source) | free)) / len(words)


# ---------------------------------------------------------------------------------------------- rows


@dataclass
class KnowledgeRow:
    entity: str
    source: str
    aspect: str
    sentence: str
    provenance: dict[str, Any]

    @property
    def hash(self) -> str:
        return hashlib.sha256(f"{self.entity}\0{self.sentence.lower()}".encode()).hexdigest()

    def as_record(self) -> dict[str, str]:
        return {"entity": self.entity, "source": self.source, "aspect": self.aspect, "sentence": self.sentence,
                "provenance": json.dumps(self.provenance, sort_keys=True, ensure_ascii=False), "hash": self.hash}


@dataclass
class EntityResult:
    entity: str
    rows: list[KnowledgeRow] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    grounding_rejections: list[dict[str, Any]] = field(default_factory=list)
    requests: int = 0

    def add(self, row: KnowledgeRow) -> None:
        if row.sentence and all(r.hash != row.hash for r in self.rows):
            self.rows.append(row)


def rules_rows(entity: str, items: Iterable[SourceItem], method: str, base: dict[str, Any]) -> list[KnowledgeRow]:
    """Rows for ``items`` tagged by the rules backend (``method`` says why they did not go through an LLM)."""
    rows = []
    for item in items:
        for aspect, sentence in rules_sentences(item.text, item.kind):
            rows.append(KnowledgeRow(entity, item.kind, aspect, sentence,
                                     {**base, "method": method, "sources": [item.provenance()]}))
    return rows


# ---------------------------------------------------------------------------------------------- LLM path


@dataclass
class HarmonizerSettings:
    sentences_per_request: int = 6
    max_requests_per_entity: int = 3
    max_sentences_per_answer: int = 8
    min_support: float = 0.6
    max_reasks: int = 1
    llm_sources: tuple[str, ...] = ("description", "report")
    max_total_requests: int | None = None
    """A budget for the whole run (vocabulary order); batches beyond it are rules-tagged, never dropped."""


def render_sources(items: list[SourceItem]) -> str:
    return "\n".join(f"[{i}] ({item.kind}) {item.text}" for i, item in enumerate(items, 1))


def reask_message(content: str, error: str) -> str:
    return (f"That answer was rejected: {error}. Reply again with JSON only, exactly in the form "
            '{"sentences": [{"aspect": "...", "sentence": "...", "source": 1}]}, using only the numbered sources.')


class Harmonizer:
    """Runs the LLM path for many entities concurrently (bounded by the client's semaphore)."""

    def __init__(self, vocab: Vocabulary, client: ChatClient, prompt: PromptTemplate,
                 settings: HarmonizerSettings, backend: str) -> None:
        self.vocab, self.client, self.prompt, self.settings = vocab, client, prompt, settings
        self.base = {"backend": backend, "prompt": prompt.version}

    def batches(self, items: list[SourceItem]) -> tuple[list[list[SourceItem]], list[SourceItem]]:
        """(request batches within the budget, items over the budget)."""
        size = max(1, self.settings.sentences_per_request)
        chunks = [items[i:i + size] for i in range(0, len(items), size)]
        budget = self.settings.max_requests_per_entity
        return chunks[:budget], [item for chunk in chunks[budget:] for item in chunk]

    def messages(self, entity: str, batch: list[SourceItem]) -> list[dict[str, str]]:
        ent = self.vocab.get(entity)
        return self.prompt.render(entity_name=ent.name, entity_id=ent.id, aspects=", ".join(ASPECTS),
                                  sources=render_sources(batch),
                                  max_sentences=min(self.settings.max_sentences_per_answer, 2 * len(batch)))

    async def _request(self, entity: str, batch: list[SourceItem], result: EntityResult) -> None:
        result.requests += 1
        try:
            answer = await self.client.chat(
                self.messages(entity, batch), lambda content: parse_answer(content, len(batch)),
                contains_reports=any(item.kind == "report" for item in batch),
                max_reasks=self.settings.max_reasks, reask=reask_message)
        except (PrivacyError, EndpointError):
            raise  # fatal for the run, not for this entity
        except LLMError as exc:
            result.failures.append(str(exc))
            for row in rules_rows(entity, batch, "rules-fallback", self.base):
                result.add(row)
            return
        self._accept(entity, batch, answer.value, result, {
            **self.base, "model": answer.model, "cache_key": answer.cache_key, "cached": answer.cached})

    def _accept(self, entity: str, batch: list[SourceItem], answer: HarmonizedAnswer, result: EntityResult,
                base: dict[str, Any]) -> None:
        names = [self.vocab.get(entity).name, *self.vocab.get(entity).synonyms]
        used: set[int] = set()
        for generated in answer.sentences:
            item = batch[generated.source - 1]
            used.add(generated.source)
            sentence = normalize_sentence(generated.sentence)
            score = support_score(sentence, item.text, names)
            provenance = {**base, "sources": [item.provenance()], "support": round(score, 3)}
            if score >= self.settings.min_support and len(sentence.split()) >= 3:
                result.add(KnowledgeRow(entity, item.kind, generated.aspect, sentence,
                                        {**provenance, "method": "llm"}))
                continue
            result.grounding_rejections.append({"entity": entity, "generated": generated.sentence,
                                                "source": item.text, "support": round(score, 3)})
            for aspect, fallback in rules_sentences(item.text, item.kind):
                result.add(KnowledgeRow(entity, item.kind, aspect, fallback,
                                        {**provenance, "method": "fallback-ungrounded"}))
        unused = [item for i, item in enumerate(batch, 1) if i not in used]
        for row in rules_rows(entity, unused, "uncovered-source", base):
            result.add(row)

    async def harmonize(self, sources: dict[str, list[SourceItem]]) -> dict[str, EntityResult]:
        """Harmonise every entity of ``sources`` (definition first) and return the results per entity."""
        results = {entity: EntityResult(entity) for entity in sources}
        jobs = []
        for entity, items in sources.items():
            llm_items = [i for i in items if i.kind in self.settings.llm_sources]
            direct = [i for i in items if i.kind not in self.settings.llm_sources]
            for item in direct:  # definitions are our own curated sentences: kept verbatim
                aspect = "definition" if item.kind == "definition" else tag_aspect(item.text, item.kind)
                results[entity].add(KnowledgeRow(entity, item.kind, aspect, normalize_sentence(item.text),
                                                 {**self.base, "method": "verbatim", "sources": [item.provenance()]}))
            batches, over = self.batches(llm_items)
            for row in rules_rows(entity, over, "over-request-budget", self.base):
                results[entity].add(row)
            jobs += [(entity, batch) for batch in batches]
        budget = self.settings.max_total_requests
        if budget is not None and len(jobs) > budget:
            logger.info("request budget %d: %d batches rules-tagged instead", budget, len(jobs) - budget)
            for entity, batch in jobs[budget:]:
                for row in rules_rows(entity, batch, "over-request-budget", self.base):
                    results[entity].add(row)
            jobs = jobs[:budget]
        tasks = [asyncio.ensure_future(self._request(entity, batch, results[entity])) for entity, batch in jobs]
        try:
            for task in progress(asyncio.as_completed(tasks), total=len(tasks), desc="harmonize", unit="req"):
                await task
        finally:
            for task in tasks:
                task.cancel()
        return results


def rules_only(vocab: Vocabulary, sources: dict[str, list[SourceItem]]) -> dict[str, EntityResult]:
    """The ``rules`` backend: every source sentence kept and tagged deterministically (no LLM)."""
    results = {}
    for entity, items in sources.items():
        result = EntityResult(entity)
        for item in items:
            method = "verbatim" if item.kind == "definition" else "rules"
            base = {"backend": "rules"}
            if item.kind == "definition":
                result.add(KnowledgeRow(entity, "definition", "definition", normalize_sentence(item.text),
                                        {**base, "method": method, "sources": [item.provenance()]}))
                continue
            for row in rules_rows(entity, [item], method, base):
                result.add(row)
        results[entity] = result
    return results
