"""Item pipelines and downloader middlewares in isolation (a Scrapy test crawler, no network)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from scrapy import Request
from scrapy.exceptions import DropItem
from scrapy.http import Response
from scrapy.utils.test import get_crawler

from crawlers.items import DescriptionItem
from crawlers.middlewares import AllowListMiddleware, BackoffRetryMiddleware, OffsiteRequestRefused
from crawlers.pipelines import CleanSentencePipeline, DedupePipeline, JsonlWriterPipeline, ValidatePipeline

ITEM = DescriptionItem(entity="pneumothorax", sentence="A thin pleural line is seen [1].", source="encyclopedia",
                       site="127.0.0.1", url="http://127.0.0.1/articles/pneumothorax", title="Pneumothorax",
                       section="Radiographic features > Plain radiograph", licence="CC0-1.0",
                       attribution='"Pneumothorax", http://127.0.0.1/articles/pneumothorax',
                       retrieved_at="2025-01-06T10:00:00+00:00")


@pytest.fixture
def crawler(tmp_path):
    crawler = get_crawler(settings_dict={"DEVIDE_OUTPUT_DIR": str(tmp_path), "DEVIDE_MIN_WORDS": 3,
                                         "DEVIDE_ALLOWED_DOMAINS": ["example.org"], "DEVIDE_RETRY_BACKOFF": 1.5,
                                         "DEVIDE_RETRY_BACKOFF_MAX": 10.0})
    crawler.stats.open_spider()
    return crawler


def test_clean_pipeline_normalises_and_drops_with_counts(crawler):
    pipe = CleanSentencePipeline(crawler)
    assert pipe.process_item(replace(ITEM)).sentence == "A thin pleural line is seen."
    for sentence, reason in (("See also", "boilerplate"), ("Two words.", "too_short")):
        with pytest.raises(DropItem):
            pipe.process_item(replace(ITEM, sentence=sentence))
        assert crawler.stats.get_value(f"devide/dropped/{reason}") == 1


def test_validate_pipeline_records_invalid_items(crawler, tmp_path):
    pipe = ValidatePipeline(crawler)
    pipe.process_item(replace(ITEM))
    with pytest.raises(DropItem):
        pipe.process_item(replace(ITEM, url="ftp://elsewhere/x", retrieved_at="yesterday"))
    error = json.loads((tmp_path / "errors.jsonl").read_text())
    assert error["kind"] == "invalid_item" and error["reason"].startswith("url")
    assert crawler.stats.get_value("devide/dropped/invalid") == 1


def test_dedupe_across_a_resumed_run(crawler, tmp_path):
    item = replace(ITEM, sentence="A thin pleural line is seen.")
    first = DedupePipeline(crawler)
    first.open_spider()
    JsonlWriterPipeline(crawler).process_item(first.process_item(replace(item)))
    with pytest.raises(DropItem):
        first.process_item(replace(item, sentence="a thin pleural LINE, is seen"))
    resumed = DedupePipeline(crawler)
    resumed.open_spider()  # seeded from descriptions.jsonl
    with pytest.raises(DropItem):
        resumed.process_item(replace(item))
    assert resumed.process_item(replace(item, entity="pneumonia")).id != ""
    assert crawler.stats.get_value("devide/duplicates_dropped") == 2


def test_allow_list_fails_closed(crawler):
    middleware = AllowListMiddleware(crawler)
    assert middleware.process_request(Request("https://wiki.example.org/x")) is None  # subdomain allowed
    with pytest.raises(OffsiteRequestRefused):
        middleware.process_request(Request("https://example.org.evil.net/x"))
    empty = get_crawler(settings_dict={"DEVIDE_ALLOWED_DOMAINS": []})
    empty.stats.open_spider()
    with pytest.raises(OffsiteRequestRefused):
        AllowListMiddleware(empty).process_request(Request("https://example.org/"))


def test_backoff_doubles_honours_retry_after_and_caps(crawler):
    middleware = BackoffRetryMiddleware(crawler.settings)
    assert [middleware.backoff_seconds(n) for n in (1, 2, 3, 4)] == [1.5, 3.0, 6.0, 10.0]
    busy = Response("https://example.org/", status=429, headers={"Retry-After": "7"})
    assert middleware.backoff_seconds(1, busy) == 7.0
    assert middleware.backoff_seconds(1, Response("https://example.org/", status=503,
                                                  headers={"Retry-After": "120"})) == 10.0
