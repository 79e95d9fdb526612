"""The entity vocabulary: chest radiograph observations with synonyms, definitions and dataset label mappings.

The vocabulary is data (``knowledge/data/entities.yaml``) validated on load:

>>> vocab = load_vocabulary()
>>> vocab.get("pleural_effusion").name
'Pleural effusion'
>>> vocab.from_label("chestxray14", "Pleural_Thickening")
'pleural_thickening'

Label names are matched after normalisation (case, ``_``/``-``/spaces, surrounding blanks), so
``"Pleural_Thickening"``, ``"pleural thickening"`` and ``" Pleural Thickening "`` are the same label. Each
(dataset, label) pair maps to exactly one entity; a YAML that breaks this (or any other rule) is rejected with a
one-line :class:`VocabularyError`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from devide.config import ConfigError

DEFAULT_PATH = Path(__file__).parent / "data" / "entities.yaml"
DATASETS = ("mimic", "chexpert", "chestxray14", "padchest", "rsna", "siim", "covidx", "vindr")
CATEGORIES = ("finding", "disease", "device", "sign")
_ID_PATTERN = re.compile(r"^[a-z][a-z0-9]*(?:_[a-z0-9]+)*$")


class VocabularyError(ConfigError):
    """The vocabulary file is malformed (message is one line)."""


def normalize_label(label: str) -> str:
    """Canonical form of a dataset label: lower case, ``_``/``-`` as spaces, single spaces, stripped."""
    return " ".join(re.sub(r"[_\-]+", " ", str(label)).lower().split())


@dataclass(frozen=True)
class Entity:
    """One observation of the vocabulary."""

    id: str
    name: str
    category: str
    definition: str
    synonyms: list[str] = field(default_factory=list)
    mappings: dict[str, list[str]] = field(default_factory=dict)
    absent_phrases: list[str] = field(default_factory=list)
    """Phrases that state the observation is absent (``heart size is normal`` for cardiomegaly)."""
    parents: list[str] = field(default_factory=list)
    """Broader entities this one implies, as CheXpert groups them (a nodule is a lung lesion)."""

    @property
    def terms(self) -> list[str]:
        """The name and synonyms, lower case, de-duplicated, longest first (what a text matcher looks for)."""
        seen = dict.fromkeys(t.lower().strip() for t in [self.name, *self.synonyms] if t.strip())
        return sorted(seen, key=len, reverse=True)


class Vocabulary:
    """An ordered list of :class:`Entity` with look-ups by id, term and dataset label."""

    def __init__(self, entities: list[Entity], version: int | str = 1, source: str = "") -> None:
        self.entities = list(entities)
        self.version = version
        self.source = source
        self._by_id = {e.id: e for e in self.entities}
        self._by_label = _label_index(self.entities)

    # -- look-ups
    @property
    def ids(self) -> list[str]:
        return [e.id for e in self.entities]

    def get(self, entity_id: str) -> Entity:
        try:
            return self._by_id[entity_id]
        except KeyError:
            raise KeyError(f"unknown entity '{entity_id}' (known: {len(self._by_id)} ids, "
                           f"e.g. {', '.join(self.ids[:5])})") from None

    def from_label(self, dataset: str, label: str) -> str | None:
        """The entity id a dataset's label name maps to, or None when the label is not in the vocabulary."""
        dataset = dataset.lower()
        if dataset not in DATASETS:
            raise KeyError(f"unknown dataset '{dataset}' (known: {', '.join(DATASETS)})")
        return self._by_label.get((dataset, normalize_label(label)))

    def labels_for(self, dataset: str) -> dict[str, str]:
        """Every label name of ``dataset`` (as written in the YAML) -> entity id."""
        return {label: e.id for e in self.entities for label in e.mappings.get(dataset, [])}

    def subset(self, ids: list[str]) -> Vocabulary:
        """A vocabulary restricted to ``ids`` in that order (unknown ids raise KeyError)."""
        return Vocabulary([self.get(i) for i in ids], self.version, self.source)

    # -- container protocol
    def __len__(self) -> int:
        return len(self.entities)

    def __iter__(self) -> Iterator[Entity]:
        return iter(self.entities)

    def __contains__(self, entity_id: object) -> bool:
        return entity_id in self._by_id

    def __repr__(self) -> str:
        return f"Vocabulary({len(self)} entities, version={self.version})"


def _label_index(entities: list[Entity]) -> dict[tuple[str, str], str]:
    index: dict[tuple[str, str], str] = {}
    for entity in entities:
        for dataset, labels in entity.mappings.items():
            for label in labels:
                key = (dataset, normalize_label(label))
                if index.get(key, entity.id) != entity.id:
                    raise VocabularyError(f"{dataset} label '{label}' maps to both '{index[key]}' and '{entity.id}'")
                index[key] = entity.id
    return index


def _string_list(value: Any, where: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, (str, int, float)) for v in value):
        raise VocabularyError(f"{where} must be a list of strings")
    return [str(v).strip() for v in value if str(v).strip()]


def _parse_entity(raw: Any, index: int) -> Entity:
    if not isinstance(raw, dict):
        raise VocabularyError(f"entity #{index} must be a mapping")
    entity_id = raw.get("id")
    where = f"entity '{entity_id}'" if entity_id else f"entity #{index}"
    unknown = set(raw) - {"id", "name", "category", "definition", "synonyms", "mappings", "absent_phrases",
                          "parents"}
    if unknown:
        raise VocabularyError(f"{where}: unknown keys {sorted(unknown)}")
    if not isinstance(entity_id, str) or not _ID_PATTERN.match(entity_id):
        raise VocabularyError(f"{where}: id must be snake_case (got {entity_id!r})")
    for key in ("name", "definition"):
        if not isinstance(raw.get(key), str) or not raw[key].strip():
            raise VocabularyError(f"{where}: '{key}' must be a non-empty string")
    if raw.get("category") not in CATEGORIES:
        raise VocabularyError(f"{where}: category must be one of {', '.join(CATEGORIES)} (got {raw.get('category')!r})")
    mappings = raw.get("mappings") or {}
    if not isinstance(mappings, dict):
        raise VocabularyError(f"{where}: mappings must be a mapping of dataset -> labels")
    bad = set(mappings) - set(DATASETS)
    if bad:
        raise VocabularyError(f"{where}: unknown datasets in mappings {sorted(bad)} (known: {', '.join(DATASETS)})")
    return Entity(
        id=entity_id,
        name=raw["name"].strip(),
        category=raw["category"],
        definition=" ".join(raw["definition"].split()),
        synonyms=_string_list(raw.get("synonyms"), f"{where}: synonyms"),
        mappings={k: _string_list(v, f"{where}: mappings.{k}") for k, v in mappings.items()},
        absent_phrases=_string_list(raw.get("absent_phrases"), f"{where}: absent_phrases"),
        parents=_string_list(raw.get("parents"), f"{where}: parents"),
    )


def _check_terms_unique(entities: list[Entity]) -> None:
    """A term may name only one entity, or the report labeler could not decide between them."""
    owner: dict[str, str] = {}
    for entity in entities:
        for term in entity.terms:
            if owner.setdefault(term, entity.id) != entity.id:
                raise VocabularyError(f"term '{term}' is a synonym of both '{owner[term]}' and '{entity.id}'")


def parse_vocabulary(data: Any, source: str = "<data>") -> Vocabulary:
    """Validate a parsed YAML document into a :class:`Vocabulary`."""
    if not isinstance(data, dict) or not isinstance(data.get("entities"), list):
        raise VocabularyError(f"{source}: expected a mapping with an 'entities' list")
    entities = [_parse_entity(raw, i) for i, raw in enumerate(data["entities"])]
    ids = [e.id for e in entities]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise VocabularyError(f"{source}: duplicate entity ids {duplicates}")
    _check_terms_unique(entities)
    for entity in entities:
        bad = [p for p in entity.parents if p not in ids or p == entity.id]
        if bad:
            raise VocabularyError(f"{source}: entity '{entity.id}' has unknown or self parent {bad[0]!r}")
    return Vocabulary(entities, version=data.get("version", 1), source=source)


@lru_cache(maxsize=8)
def _load_cached(path: str, mtime_ns: int) -> Vocabulary:
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise VocabularyError(f"{path}: invalid YAML: {getattr(exc, 'problem', exc)}") from None
    return parse_vocabulary(data, source=path)


def load_vocabulary(path: str | Path | None = None) -> Vocabulary:
    """Load and validate the vocabulary (the packaged ``entities.yaml`` by default; cached per file version)."""
    path = Path(path) if path is not None else DEFAULT_PATH
    if not path.is_file():
        raise VocabularyError(f"vocabulary file not found: {path}")
    return _load_cached(str(path.resolve()), path.stat().st_mtime_ns)
