"""Downloader middlewares: a fail-closed domain allow-list and retries with exponential backoff."""

from __future__ import annotations

import logging
from email.utils import parsedate_to_datetime
from time import time
from typing import Any

from scrapy import Request
from scrapy.crawler import Crawler
from scrapy.downloadermiddlewares.retry import RetryMiddleware
from scrapy.exceptions import IgnoreRequest
from scrapy.http import Response
from scrapy.utils.defer import maybe_deferred_to_future
from twisted.internet.task import deferLater

from crawlers.job import host_allowed, host_of

logger = logging.getLogger(__name__)


class OffsiteRequestRefused(IgnoreRequest):
    """A request to a host outside the allow-list (never sent)."""


class AllowListMiddleware:
    """Refuse every request whose host is not on ``DEVIDE_ALLOWED_DOMAINS``; an empty list refuses all.

    It sits before the robots.txt middleware, so an off-domain host receives nothing, not even a robots.txt
    request; redirects are new requests and pass through here again.
    """

    def __init__(self, crawler: Crawler) -> None:
        self.crawler = crawler
        self.allowed = [d for d in crawler.settings.getlist("DEVIDE_ALLOWED_DOMAINS") if d]

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> AllowListMiddleware:
        return cls(crawler)

    def process_request(self, request: Request) -> None:
        host = host_of(request.url)
        if host_allowed(host, self.allowed):
            return
        assert self.crawler.stats is not None
        self.crawler.stats.inc_value("devide/offsite_refused")
        logger.info("refused off-domain request %s (allow-list: %s)", request.url, ", ".join(self.allowed) or "empty")
        raise OffsiteRequestRefused(f"host {host} is not on the allow-list")


def retry_after_seconds(response: Response | None) -> float | None:
    """The ``Retry-After`` header of a 429/503 in seconds (delta-seconds or an HTTP date), if any."""
    if response is None:
        return None
    value = response.headers.get(b"Retry-After")
    if not value:
        return None
    text = value.decode("latin-1").strip()
    if text.isdigit():
        return float(text)
    try:
        return max(0.0, parsedate_to_datetime(text).timestamp() - time())
    except (TypeError, ValueError):
        return None


class BackoffRetryMiddleware(RetryMiddleware):
    """Scrapy's retry middleware (429 / 5xx / timeouts), waiting before each retry.

    The wait is ``DEVIDE_RETRY_BACKOFF * 2 ** (attempt - 1)`` seconds, or the server's ``Retry-After`` if
    longer, capped at ``DEVIDE_RETRY_BACKOFF_MAX``. The wait holds only the retried request, not the crawl.
    """

    def __init__(self, settings: Any) -> None:
        super().__init__(settings)
        self.backoff = settings.getfloat("DEVIDE_RETRY_BACKOFF")
        self.backoff_max = settings.getfloat("DEVIDE_RETRY_BACKOFF_MAX")

    def backoff_seconds(self, attempt: int, response: Response | None = None) -> float:
        delay = self.backoff * 2 ** max(0, attempt - 1)
        server = retry_after_seconds(response)
        if server is not None:
            delay = max(delay, server)
        return min(delay, self.backoff_max)

    async def _wait(self, result: Any, response: Response | None) -> Any:
        if isinstance(result, Request):
            delay = self.backoff_seconds(int(result.meta.get("retry_times", 1)), response)
            if delay > 0:
                assert self.crawler.stats is not None
                self.crawler.stats.inc_value("devide/retry_backoff_seconds", delay)
                # the installed reactor; importing it at module level would install the default (epoll) one
                from twisted.internet import reactor

                await maybe_deferred_to_future(deferLater(reactor, delay, lambda: None))
        return result

    async def process_response(self, request: Request, response: Response) -> Request | Response:  # type: ignore[override]
        return await self._wait(super().process_response(request, response), response)

    async def process_exception(self, request: Request, exception: Exception) -> Request | Response | None:  # type: ignore[override]
        return await self._wait(super().process_exception(request, exception), None)
