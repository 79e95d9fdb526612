"""Item pipelines: clean -> validate -> dedupe -> write JSONL. Every drop is counted; invalid items are recorded.

Stats keys (copied into the stage manifest): ``devide/dropped/boilerplate``, ``devide/dropped/too_short``,
``devide/dropped/invalid``, ``devide/duplicates_dropped``, ``devide/items_written``.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from itemadapter import ItemAdapter
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from scrapy.crawler import Crawler
from scrapy.exceptions import DropItem

from crawlers.items import FIELDS
from crawlers.text import clean_text, is_boilerplate, sentence_id, word_count

logger = logging.getLogger(__name__)
DESCRIPTIONS_FILE = "descriptions.jsonl"
ERRORS_FILE = "errors.jsonl"


def output_dir(crawler: Crawler) -> Path:
    path = Path(crawler.settings.get("DEVIDE_OUTPUT_DIR") or ".")
    path.mkdir(parents=True, exist_ok=True)
    return path


def append_jsonl(path: Path, row: dict[str, Any]) -> None:
    """Append one JSON line and flush, so an interrupted crawl keeps everything written so far."""
    with path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def record_error(crawler: Crawler, kind: str, url: str, reason: str) -> None:
    """Count an error under ``devide/errors/<kind>`` and append it to errors.jsonl."""
    assert crawler.stats is not None
    crawler.stats.inc_value(f"devide/errors/{kind}")
    append_jsonl(output_dir(crawler) / ERRORS_FILE, {"kind": kind, "url": url, "reason": reason,
                                                     "at": datetime.now().astimezone().isoformat(timespec="seconds")})


class _Pipeline:
    def __init__(self, crawler: Crawler) -> None:
        self.crawler = crawler

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Any:
        return cls(crawler)

    def drop(self, reason: str, message: str) -> DropItem:
        assert self.crawler.stats is not None
        self.crawler.stats.inc_value(f"devide/dropped/{reason}" if reason != "duplicate" else
                                     "devide/duplicates_dropped")
        return DropItem(message)


class CleanSentencePipeline(_Pipeline):
    """Normalise the sentence again (idempotent) and drop page furniture and fragments."""

    def process_item(self, item: Any) -> Any:
        adapter = ItemAdapter(item)
        sentence = clean_text(adapter.get("sentence") or "")
        adapter["sentence"] = sentence
        if is_boilerplate(sentence):
            raise self.drop("boilerplate", f"boilerplate: {sentence[:60]!r}")
        min_words = self.crawler.settings.getint("DEVIDE_MIN_WORDS")
        if word_count(sentence) < min_words:
            raise self.drop("too_short", f"fewer than {min_words} words: {sentence!r}")
        return item


class DescriptionRecord(BaseModel):
    """The schema of one output row (contracts.md, "Crawl output")."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=r"^([0-9a-f]{64})?$")
    entity: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    sentence: str = Field(min_length=1)
    source: Literal["encyclopedia", "mediawiki", "generic"]
    site: str = Field(min_length=1)
    url: str = Field(pattern=r"^https?://")
    title: str = Field(min_length=1)
    section: str = Field(min_length=1)
    licence: str = Field(min_length=1)
    attribution: str = Field(min_length=1)
    retrieved_at: str

    @field_validator("retrieved_at")
    @classmethod
    def _iso8601(cls, value: str) -> str:
        datetime.fromisoformat(value)
        return value


class ValidatePipeline(_Pipeline):
    """Reject (and record in errors.jsonl) any item that does not fit the output schema."""

    def process_item(self, item: Any) -> Any:
        adapter = ItemAdapter(item)
        try:
            DescriptionRecord.model_validate(dict(adapter))
        except ValidationError as exc:
            err = exc.errors()[0]
            reason = f"{'.'.join(map(str, err['loc']))}: {err['msg']}"
            record_error(self.crawler, "invalid_item", str(adapter.get("url", "")), reason)
            raise self.drop("invalid", f"invalid item ({reason})") from None
        return item


class DedupePipeline(_Pipeline):
    """Fill ``id`` (sha256 of entity + normalised sentence) and drop repeats, across resumed runs too."""

    def __init__(self, crawler: Crawler) -> None:
        super().__init__(crawler)
        self.seen: set[str] = set()

    def open_spider(self) -> None:
        existing = output_dir(self.crawler) / DESCRIPTIONS_FILE
        if existing.is_file():  # a resumed crawl: what is already written counts as seen
            for line in existing.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    self.seen.add(json.loads(line)["id"])

    def process_item(self, item: Any) -> Any:
        adapter = ItemAdapter(item)
        key = sentence_id(adapter["entity"], adapter["sentence"])
        if key in self.seen:
            raise self.drop("duplicate", f"duplicate sentence for {adapter['entity']}: {adapter['sentence'][:60]!r}")
        self.seen.add(key)
        adapter["id"] = key
        return item


class JsonlWriterPipeline(_Pipeline):
    """Append each item to descriptions.jsonl in the contract's column order."""

    def process_item(self, item: Any) -> Any:
        adapter = ItemAdapter(item)
        append_jsonl(output_dir(self.crawler) / DESCRIPTIONS_FILE, {name: adapter[name] for name in FIELDS})
        assert self.crawler.stats is not None
        self.crawler.stats.inc_value("devide/items_written")
        return item
