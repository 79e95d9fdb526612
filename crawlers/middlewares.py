"""Downloader middlewares: a fail-closed domain allow-list, robots.txt with RFC 9309's failure rules, and
retries with exponential backoff."""

from __future__ import annotations

import logging
from email.utils import parsedate_to_datetime
from time import time
from typing import Any

from scrapy import Request, signals
from scrapy.crawler import Crawler
from scrapy.downloadermiddlewares.retry import RetryMiddleware
from scrapy.downloadermiddlewares.robotstxt import RobotsTxtMiddleware
from scrapy.exceptions import DownloadCancelledError, IgnoreRequest
from scrapy.http import Response
from scrapy.utils.defer import maybe_deferred_to_future
from scrapy.utils.misc import build_from_crawler
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


class OversizeRefused(IgnoreRequest):
    """A response over ``DOWNLOAD_MAXSIZE``: cancelled by the download handler, never parsed."""


class SizeCapMiddleware:
    """Turn Scrapy's size cancellation into a recorded ``oversize`` rejection.

    Scrapy cancels a download over ``DOWNLOAD_MAXSIZE`` (at once when Content-Length says so, else when the
    count passes the limit) with a bare ``DownloadCancelledError`` whose message is empty in the second case;
    counting the bytes of each request (``bytes_received`` signal) tells a size cancellation from any other.
    """

    def __init__(self, crawler: Crawler) -> None:
        self.crawler = crawler
        self.maxsize = crawler.settings.getint("DOWNLOAD_MAXSIZE")
        crawler.signals.connect(self._received, signal=signals.bytes_received)

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> SizeCapMiddleware:
        return cls(crawler)

    @staticmethod
    def _received(data: bytes, request: Request, **_: Any) -> None:
        request.meta["devide_bytes"] = request.meta.get("devide_bytes", 0) + len(data)

    async def process_exception(self, request: Request, exception: Exception) -> None:
        if not isinstance(exception, DownloadCancelledError) or not self.maxsize:
            return
        received = int(request.meta.get("devide_bytes", 0))
        if "max size" not in str(exception) and received <= self.maxsize:
            return  # cancelled for another reason
        assert self.crawler.stats is not None
        self.crawler.stats.inc_value("devide/oversize_refused")
        seen = f" ({received} bytes received)" if received else " (announced by Content-Length)"
        raise OversizeRefused(f"response larger than the {self.maxsize} byte limit (DOWNLOAD_MAXSIZE){seen}")


DISALLOW_ALL = b"User-agent: *\nDisallow: /\n"


class RFC9309RobotsTxtMiddleware(RobotsTxtMiddleware):
    """Scrapy's robots.txt middleware, with what RFC 9309 (section 2.3.1) says about failures.

    Scrapy parses whatever body the robots.txt request returns and allows everything when the request fails,
    so a server answering 503 (its error page parsed as rules) or timing out was crawled freely. Here:

    * 2xx: the rules as served;
    * 4xx ("unavailable"): no rules, crawling allowed — except 429, which says "come back later", treated as
      unreachable as search engines do;
    * 5xx, 429, or a network failure after retries ("unreachable"): complete disallow.

    Every disallowed page is then refused by the parent class ("Forbidden by robots.txt") and recorded as
    ``robots_forbidden``; unreachable robots.txt files are counted in ``devide/robots_unreachable``.
    """

    async def _parse_robots(self, response: Response, netloc: str, request: Request) -> None:
        if response.status >= 500 or response.status == 429:
            self._unreachable(netloc, f"HTTP {response.status}")
            response = response.replace(body=DISALLOW_ALL)
        elif response.status >= 400:
            response = response.replace(body=b"")
        await super()._parse_robots(response, netloc, request)

    def _robots_error(self, exc: Exception, netloc: str) -> None:
        if isinstance(exc, IgnoreRequest):  # refused before sending (allow-list): the pages are refused too
            super()._robots_error(exc, netloc)
            return
        self._unreachable(netloc, type(exc).__name__)
        parser = build_from_crawler(self._parserimpl, self.crawler, DISALLOW_ALL)
        waiting = self._parsers[netloc]
        self._parsers[netloc] = parser
        if hasattr(waiting, "callback"):
            waiting.callback(parser)

    def _unreachable(self, netloc: str, why: str) -> None:
        self._stats.inc_value("devide/robots_unreachable")
        logger.warning("robots.txt of %s is unreachable (%s): nothing on it is crawled (RFC 9309)", netloc, why)


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
