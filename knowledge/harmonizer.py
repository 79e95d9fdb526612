"""Harmonise an entity's sources into short aspect-tagged sentences (the knowledge base rows).

Per entity, the definition, the crawled descriptions and the representative report sentences are numbered and
sent, a bounded number per request and a bounded number of requests per entity, to an LLM that must answer with
aspect-tagged sentences citing their source (JSON schema in :mod:`knowledge.schema`). Every generated sentence
goes through the **grounding check** of :mod:`knowledge.grounding` against the source it cites (entity,
assertion, negation, numbers, laterality and other qualifiers, direction, lexical and semantic support); a
rejected sentence is recorded with the failed check, and the source sentence itself is kept instead. Sources the
LLM did not use, sources beyond the request budget, and the sources of a request that failed for good are kept
too, tagged by the rules backend, so no input is silently lost; each row's provenance says which path it took.

**Deterministic output.** Requests run concurrently and finish in any order; their rows are assembled
afterwards in a canonical order (entities in vocabulary order, then by the position of the first source a
chunk of rows comes from), so a rerun with the same answers writes byte-identical artifacts whatever the
completion order. **Near-duplicates** (cosine >= ``dedup_threshold`` under all-MiniLM-L6-v2) within an entity
are dropped after that ordering, the first phrasing kept, and recorded as rejections.

Rows: ``entity, source, aspect, sentence, provenance (JSON), hash`` where hash = sha256(entity, sentence).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from devide.log import progress
from knowledge.grounding import GroundingChecker, content_words, support_score  # noqa: F401  (re-exported)
from knowledge.llm import ChatClient, EndpointError, LLMError, PrivacyError
from knowledge.prompts import PromptTemplate
from knowledge.rules import normalize_sentence, rules_sentences, tag_aspect
from knowledge.schema import ASPECTS, HarmonizedAnswer, parse_answer
from knowledge.sources import SourceItem
from knowledge.vocabulary import Vocabulary

logger = logging.getLogger("devide.harmonize")


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
    duplicates: list[dict[str, Any]] = field(default_factory=list)
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
    min_semantic: float | None = 0.5
    """Cosine similarity a generated sentence needs with its source (None: no semantic check)."""
    max_reasks: int = 1
    llm_sources: tuple[str, ...] = ("description", "report")
    max_total_requests: int | None = None
    """A budget for the whole run (vocabulary order); batches beyond it are rules-tagged, never dropped."""


def render_sources(items: list[SourceItem]) -> str:
    return "\n".join(f"[{i}] ({item.kind}) {item.text}" for i, item in enumerate(items, 1))


def reask_message(content: str, error: str) -> str:
    return (f"That answer was rejected: {error}. Reply again with JSON only, exactly in the form "
            '{"sentences": [{"aspect": "...", "sentence": "...", "source": 1}]}, using only the numbered sources.')


@dataclass
class _Chunk:
    """The rows (and failures, rejections) that come from consecutive sources of one entity, starting at the
    entity's source number ``position``: what one request, or one rules-tagged source, produced."""

    position: int
    rows: list[KnowledgeRow] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    rejections: list[dict[str, Any]] = field(default_factory=list)
    requests: int = 0


def assemble(entity: str, chunks: list[_Chunk]) -> EntityResult:
    """An entity's result from its chunks in source order (never in the order requests completed)."""
    result = EntityResult(entity)
    for chunk in sorted(chunks, key=lambda c: c.position):
        result.requests += chunk.requests
        result.failures += chunk.failures
        result.grounding_rejections += chunk.rejections
        for row in chunk.rows:
            result.add(row)
    return result


class Harmonizer:
    """Runs the LLM path for many entities concurrently (bounded by the client's semaphore)."""

    def __init__(self, vocab: Vocabulary, client: ChatClient, prompt: PromptTemplate,
                 settings: HarmonizerSettings, backend: str) -> None:
        self.vocab, self.client, self.prompt, self.settings = vocab, client, prompt, settings
        self.base = {"backend": backend, "prompt": prompt.version}
        self.checker = GroundingChecker(vocab, settings.min_support, settings.min_semantic)

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

    async def _request(self, entity: str, batch: list[SourceItem], chunk: _Chunk) -> None:
        chunk.requests += 1
        try:
            answer = await self.client.chat(
                self.messages(entity, batch), lambda content: parse_answer(content, len(batch)),
                contains_reports=any(item.kind == "report" for item in batch),
                max_reasks=self.settings.max_reasks, reask=reask_message)
        except (PrivacyError, EndpointError):
            raise  # fatal for the run, not for this entity
        except LLMError as exc:
            chunk.failures.append(str(exc))
            chunk.rows += rules_rows(entity, batch, "rules-fallback", self.base)
            return
        self._accept(entity, batch, answer.value, chunk, {
            **self.base, "model": answer.model, "cache_key": answer.cache_key, "cached": answer.cached})

    def _accept(self, entity: str, batch: list[SourceItem], answer: HarmonizedAnswer, chunk: _Chunk,
                base: dict[str, Any]) -> None:
        generated = [(g, batch[g.source - 1], normalize_sentence(g.sentence)) for g in answer.sentences]
        verdicts = self.checker.check_all([(sentence, item.text, entity) for _, item, sentence in generated])
        for (raw, item, sentence), verdict in zip(generated, verdicts):
            provenance = {**base, "sources": [item.provenance()], "support": verdict.lexical,
                          "semantic": verdict.semantic}
            if verdict.accepted and len(sentence.split()) >= 3:
                chunk.rows.append(KnowledgeRow(entity, item.kind, raw.aspect, sentence,
                                               {**provenance, "method": "llm"}))
                continue
            chunk.rejections.append({"entity": entity, "generated": raw.sentence, "source": item.text,
                                     "check": verdict.reason or "fewer than 3 words", "support": verdict.lexical,
                                     "semantic": verdict.semantic})
            for aspect, fallback in rules_sentences(item.text, item.kind):
                chunk.rows.append(KnowledgeRow(entity, item.kind, aspect, fallback,
                                               {**provenance, "method": "fallback-ungrounded"}))
        used = {g.source for g in answer.sentences}
        unused = [item for i, item in enumerate(batch, 1) if i not in used]
        chunk.rows += rules_rows(entity, unused, "uncovered-source", base)

    def _plan(self, sources: dict[str, list[SourceItem]]
              ) -> tuple[dict[str, list[_Chunk]], list[tuple[str, list[SourceItem], _Chunk]]]:
        """Chunks that need no request (verbatim and over-budget sources) and the request jobs."""
        chunks: dict[str, list[_Chunk]] = {entity: [] for entity in sources}
        jobs = []
        for entity, items in sources.items():
            positions = {id(item): i for i, item in enumerate(items)}
            llm_items = [i for i in items if i.kind in self.settings.llm_sources]
            for item in items:
                if item.kind in self.settings.llm_sources:
                    continue  # definitions are our own curated sentences: kept verbatim
                aspect = "definition" if item.kind == "definition" else tag_aspect(item.text, item.kind)
                chunks[entity].append(_Chunk(positions[id(item)], [KnowledgeRow(
                    entity, item.kind, aspect, normalize_sentence(item.text),
                    {**self.base, "method": "verbatim", "sources": [item.provenance()]})]))
            batches, over = self.batches(llm_items)
            for item in over:
                chunks[entity].append(_Chunk(positions[id(item)],
                                             rules_rows(entity, [item], "over-request-budget", self.base)))
            jobs += [(entity, batch, _Chunk(positions[id(batch[0])])) for batch in batches]
        budget = self.settings.max_total_requests
        if budget is not None and len(jobs) > budget:
            logger.info("request budget %d: %d batches rules-tagged instead", budget, len(jobs) - budget)
            for entity, batch, chunk in jobs[budget:]:
                chunk.rows = rules_rows(entity, batch, "over-request-budget", self.base)
                chunks[entity].append(chunk)
            jobs = jobs[:budget]
        return chunks, jobs

    async def harmonize(self, sources: dict[str, list[SourceItem]]) -> dict[str, EntityResult]:
        """Harmonise every entity of ``sources`` and return the results per entity, in canonical order."""
        chunks, jobs = self._plan(sources)
        tasks = [asyncio.ensure_future(self._request(entity, batch, chunk)) for entity, batch, chunk in jobs]
        try:
            for task in progress(asyncio.as_completed(tasks), total=len(tasks), desc="harmonize", unit="req"):
                await task
        finally:
            for task in tasks:
                task.cancel()
        for entity, _, chunk in jobs:
            chunks[entity].append(chunk)
        return {entity: assemble(entity, entity_chunks) for entity, entity_chunks in chunks.items()}


def drop_near_duplicates(results: dict[str, EntityResult], threshold: float | None) -> int:
    """Drop rows whose sentence is a near-duplicate (cosine >= ``threshold``) of an earlier row of the same
    entity; definitions are never dropped. Each drop is recorded in ``EntityResult.duplicates``. Returns the
    number of rows dropped (0 when ``threshold`` is None)."""
    if threshold is None:
        return 0
    from knowledge.embeddings import near_duplicates  # torch: only when de-duplicating
    from knowledge.grounding import same_facts

    dropped = 0
    for entity, result in results.items():
        if len(result.rows) < 2:
            continue
        verdicts = near_duplicates([row.sentence for row in result.rows], threshold, same_facts)
        kept = []
        for row, verdict in zip(result.rows, verdicts):
            if verdict is None or row.source == "definition":
                kept.append(row)
                continue
            original, similarity = verdict
            result.duplicates.append({"entity": entity, "sentence": row.sentence, "source": row.source,
                                      "duplicate_of": result.rows[original].sentence, "similarity": similarity})
        dropped += len(result.rows) - len(kept)
        result.rows = kept
    return dropped


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
