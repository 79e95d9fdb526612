"""The crawl's item: one sentence of a radiographic description with its provenance (contracts.md)."""

from __future__ import annotations

from dataclasses import dataclass, fields

SOURCES = ("encyclopedia", "mediawiki", "generic")


@dataclass
class DescriptionItem:
    """One sentence about one entity; ``id`` is filled by the dedupe pipeline (sha256 of entity + sentence)."""

    entity: str
    sentence: str
    source: str
    site: str
    url: str
    title: str
    section: str
    licence: str
    attribution: str
    retrieved_at: str
    id: str = ""


# Column order of descriptions.jsonl and the Arrow dataset (the contract's order).
FIELDS: tuple[str, ...] = ("id", "entity", "sentence", "source", "site", "url", "title", "section", "licence",
                           "attribution", "retrieved_at")
assert set(FIELDS) == {f.name for f in fields(DescriptionItem)}
