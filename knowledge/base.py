"""The knowledge base artifact: an Arrow dataset of rows and a readable JSON export.

Layout of a ``devide harmonize`` artifact folder::

    knowledge/          datasets.Dataset.save_to_disk: entity, source, aspect, sentence, provenance (JSON), hash
    knowledge.json      {entity_id: {aspect: [sentences]}}  (what the model and the evaluation load)
    failed.json         entities whose LLM requests failed for good, with reasons
    usage.json          calls, cache hits, retries, re-asks, tokens, grounding rejections, backend used
    rejections.jsonl    input rows that were not used, and generated sentences that failed grounding

``load_knowledge(path)`` returns ``{entity_id: [sentences]}`` (aspect order, definition first);
:class:`KnowledgeBase` gives the richer view (aspects, sources, provenance).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from knowledge.schema import ASPECTS

KNOWLEDGE_JSON = "knowledge.json"
KNOWLEDGE_ARROW = "knowledge"
COLUMNS = ("entity", "source", "aspect", "sentence", "provenance", "hash")
ASPECT_ORDER = ("definition", *[a for a in ASPECTS if a != "definition"])


def group_by_aspect(records: Iterable[dict[str, Any]]) -> dict[str, dict[str, list[str]]]:
    """{entity: {aspect: [sentences]}} with aspects in :data:`ASPECT_ORDER`, entities in first-seen order."""
    grouped: dict[str, dict[str, list[str]]] = {}
    for record in records:
        aspects = grouped.setdefault(record["entity"], {})
        aspects.setdefault(record["aspect"], []).append(record["sentence"])
    return {entity: {a: aspects[a] for a in ASPECT_ORDER if a in aspects} for entity, aspects in grouped.items()}


def write_knowledge_base(folder: Path, records: list[dict[str, str]]) -> None:
    """Write the Arrow dataset and the JSON export of ``records`` into ``folder``."""
    from datasets import Dataset, Features, Value  # heavy import, only when writing
    from datasets.utils.logging import disable_progress_bar

    from devide.log import is_quiet

    if is_quiet():
        disable_progress_bar()

    features = Features({name: Value("string") for name in COLUMNS})
    data = {name: [r[name] for r in records] for name in COLUMNS}
    Dataset.from_dict(data, features=features).save_to_disk(str(folder / KNOWLEDGE_ARROW))
    text = json.dumps(group_by_aspect(records), indent=2, ensure_ascii=False) + "\n"
    (folder / KNOWLEDGE_JSON).write_text(text, encoding="utf-8")


def _json_path(path: Path) -> Path:
    path = Path(path)
    candidate = path / KNOWLEDGE_JSON if path.is_dir() else path
    if not candidate.is_file():
        raise FileNotFoundError(f"no {KNOWLEDGE_JSON} in {path} (expected a `devide harmonize` artifact)")
    return candidate


def load_knowledge(path: str | Path) -> dict[str, list[str]]:
    """``{entity_id: [sentences]}`` from a harmonize artifact folder or its ``knowledge.json``."""
    grouped = json.loads(_json_path(Path(path)).read_text(encoding="utf-8"))
    return {entity: [s for sentences in aspects.values() for s in sentences] for entity, aspects in grouped.items()}


@dataclass(frozen=True)
class KnowledgeSentence:
    entity: str
    source: str
    aspect: str
    sentence: str
    provenance: dict[str, Any]
    hash: str


class KnowledgeBase:
    """The rows of a harmonize artifact (read from the Arrow dataset)."""

    def __init__(self, rows: list[KnowledgeSentence], folder: Path | None = None) -> None:
        self.rows = rows
        self.folder = folder

    @classmethod
    def load(cls, folder: str | Path) -> KnowledgeBase:
        from datasets import load_from_disk

        folder = Path(folder)
        arrow = folder / KNOWLEDGE_ARROW
        if not arrow.is_dir():
            raise FileNotFoundError(f"no {KNOWLEDGE_ARROW}/ dataset in {folder} (expected a `devide harmonize` artifact)")
        dataset = load_from_disk(str(arrow))
        rows = [KnowledgeSentence(r["entity"], r["source"], r["aspect"], r["sentence"], json.loads(r["provenance"]),
                                  r["hash"]) for r in dataset]
        return cls(rows, folder)

    @property
    def entities(self) -> list[str]:
        return list(dict.fromkeys(r.entity for r in self.rows))

    def for_entity(self, entity: str) -> list[KnowledgeSentence]:
        return [r for r in self.rows if r.entity == entity]

    def by_aspect(self, entity: str) -> dict[str, list[KnowledgeSentence]]:
        grouped: dict[str, list[KnowledgeSentence]] = {}
        for row in self.for_entity(entity):
            grouped.setdefault(row.aspect, []).append(row)
        return {a: grouped[a] for a in ASPECT_ORDER if a in grouped}

    def sentences(self) -> dict[str, list[str]]:
        return {e: [r.sentence for rows in self.by_aspect(e).values() for r in rows] for e in self.entities}
