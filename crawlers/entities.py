"""Entity names and synonyms from the knowledge vocabulary, and matching of page titles / link texts to them."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from crawlers.text import normalise_term


class EntityTerms(BaseModel):
    """What the crawler needs of a vocabulary entity (it travels to the crawl process as JSON)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    name: str
    synonyms: tuple[str, ...] = ()


class UnknownEntityError(ValueError):
    """An entity id that the vocabulary does not define."""


def terms_from_vocabulary(path: Path | None = None, ids: Iterable[str] | None = None) -> list[EntityTerms]:
    """Names and synonyms of the vocabulary's entities (all, or ``ids`` in that order)."""
    from knowledge.vocabulary import load_vocabulary

    vocab = load_vocabulary(path)
    entities = {e.id: e for e in vocab.entities}
    wanted = list(ids) if ids else list(entities)
    unknown = [i for i in wanted if i not in entities]
    if unknown:
        raise UnknownEntityError(f"unknown entity id(s) {', '.join(unknown)} (the vocabulary has {len(entities)})")
    return [EntityTerms(id=i, name=entities[i].name, synonyms=tuple(entities[i].synonyms)) for i in wanted]


class TermIndex:
    """Maps a title or link text to an entity id: exact match of the normalised name or a synonym.

    Names win over synonyms, and earlier entities over later ones, when two entities share a term
    ("aspiration" is a synonym of pneumonia only; "lesion" could be several). Matching whole titles (not
    substrings) keeps "Pleural effusion in pregnancy" from being filed under pleural effusion.
    """

    def __init__(self, entities: Iterable[EntityTerms]) -> None:
        self.entities = list(entities)
        self._by_key: dict[str, str] = {}
        for entity in self.entities:
            self._by_key.setdefault(normalise_term(entity.name), entity.id)
        for entity in self.entities:
            for synonym in entity.synonyms:
                self._by_key.setdefault(normalise_term(synonym), entity.id)

    def match(self, text: str | None) -> str | None:
        if not text:
            return None
        return self._by_key.get(normalise_term(text))

    def get(self, entity_id: str) -> EntityTerms:
        return next(e for e in self.entities if e.id == entity_id)

    def __len__(self) -> int:
        return len(self.entities)
