"""Progress lines for the parent process: ``{"event": "progress", "pages": N, "items": M}`` on stdout."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from scrapy import signals
from scrapy.crawler import Crawler
from scrapy.exceptions import NotConfigured

MIN_INTERVAL = 0.2  # seconds between two progress lines


class ProgressReporter:
    """Enabled by ``DEVIDE_PROGRESS``; the ``devide crawl`` stage reads these lines to drive its progress bar."""

    def __init__(self, crawler: Crawler) -> None:
        self.pages = self.items = 0
        self.last = 0.0
        crawler.signals.connect(self.response_received, signal=signals.response_received)
        crawler.signals.connect(self.item_scraped, signal=signals.item_scraped)
        crawler.signals.connect(self.spider_closed, signal=signals.spider_closed)

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> ProgressReporter:
        if not crawler.settings.getbool("DEVIDE_PROGRESS"):
            raise NotConfigured
        return cls(crawler)

    def emit(self, force: bool = False, **extra: Any) -> None:
        now = time.monotonic()
        if force or now - self.last >= MIN_INTERVAL:
            self.last = now
            sys.stdout.write(json.dumps({"event": "progress", "pages": self.pages, "items": self.items, **extra}) + "\n")
            sys.stdout.flush()

    def response_received(self, response: Any, request: Any) -> None:
        self.pages += 1
        self.emit()

    def item_scraped(self, item: Any) -> None:
        self.items += 1
        self.emit()

    def spider_closed(self, reason: str) -> None:
        self.emit(force=True, closed=reason)
