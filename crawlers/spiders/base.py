"""What every description spider shares: the job, entity matching, error recording and item building."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, ClassVar

import scrapy
from lxml import html as lxml_html
from scrapy.crawler import Crawler
from scrapy.exceptions import DownloadTimeoutError, IgnoreRequest, UsageError
from scrapy.http import Response, TextResponse
from scrapy.spidermiddlewares.httperror import HttpError
from twisted.internet.error import DNSLookupError
from twisted.internet.error import TimeoutError as TwistedTimeoutError
from twisted.python.failure import Failure

from crawlers.contracts import FIXTURE_ENV
from crawlers.entities import TermIndex, terms_from_vocabulary
from crawlers.items import DescriptionItem
from crawlers.job import CrawlJob, check_policy, host_of
from crawlers.middlewares import OffsiteRequestRefused, OversizeRefused
from crawlers.pipelines import record_error
from crawlers.sections import (
    Block,
    ParseError,
    SectionRule,
    first,
    iter_sentences_of,
    parse_html,
    walk_blocks,
)

UNKNOWN_LICENCE = "unknown (no licence stated on the page)"


def load_job(job: CrawlJob | str | os.PathLike[str]) -> CrawlJob:
    """A job object, or one read from a JSON file (``scrapy crawl NAME -a job=JOB.json``)."""
    if isinstance(job, CrawlJob):
        return job
    return CrawlJob.model_validate_json(Path(job).read_text(encoding="utf-8"))


def classify_failure(failure: Failure) -> tuple[str, str]:
    """(kind, reason) of a failed request, for errors.jsonl and the ``devide/errors/<kind>`` stats."""
    if failure.check(HttpError):
        status = failure.value.response.status
        return f"http_{status}", f"HTTP {status}"
    if failure.check(OffsiteRequestRefused):
        return "offsite", str(failure.value)
    if failure.check(OversizeRefused):
        return "oversize", str(failure.value)
    if failure.check(IgnoreRequest):
        message = str(failure.value)
        return ("robots_forbidden" if "robots" in message.lower() else "ignored"), message
    if failure.check(DownloadTimeoutError, TwistedTimeoutError):
        return "timeout", str(failure.value)
    if failure.check(DNSLookupError):
        return "dns", str(failure.value)
    return "download_error", f"{failure.type.__name__}: {failure.value}"


class DescriptionSpider(scrapy.Spider):
    """Base class: a spider built from a :class:`CrawlJob` (``-a job=JOB.json`` or ``job=`` in code)."""

    source: ClassVar[str]
    default_start_path: ClassVar[str] = "/"

    def __init__(self, job: CrawlJob | str | None = None, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.job: CrawlJob | None = load_job(job) if job is not None else None
        self.terms = TermIndex([])

    @classmethod
    def from_crawler(cls, crawler: Crawler, *args: Any, **kwargs: Any) -> DescriptionSpider:
        spider = super().from_crawler(crawler, *args, **kwargs)
        if spider.job is None:
            spider.job = cls.fixture_job(crawler)
        check_policy(spider.job)  # the stage checked already; a direct `scrapy crawl` is checked here
        spider.terms = TermIndex(spider.job.entities)
        return spider

    @classmethod
    def fixture_job(cls, crawler: Crawler) -> CrawlJob:
        """The job used without ``-a job=...``: the fixture site at ``$DEVIDE_FIXTURE_URL`` (scrapy check)."""
        base = os.environ.get(FIXTURE_ENV)
        if not base:
            raise UsageError(f"give the spider a job (-a job=JOB.json, written by `devide crawl`) or set {FIXTURE_ENV}")
        settings = crawler.settings
        return CrawlJob(
            profile=cls.source, start_urls=[base.rstrip("/") + cls.default_start_path],
            allowed_domains=settings.getlist("DEVIDE_ALLOWED_DOMAINS") or [host_of(base)],
            entities=terms_from_vocabulary(), output_dir=Path(settings.get("DEVIDE_OUTPUT_DIR") or "."),
            user_agent=settings.get("USER_AGENT"), download_delay=settings.getfloat("DOWNLOAD_DELAY"),
            selectors=cls.default_selectors() if hasattr(cls, "default_selectors") else None,
        )

    # ------------------------------------------------------------------------------------------ requests

    def request(self, url: str, callback: Any, **cb_kwargs: Any) -> scrapy.Request:
        return scrapy.Request(url, callback=callback, errback=self.on_error, cb_kwargs=cb_kwargs)

    def on_error(self, failure: Failure) -> None:
        kind, reason = classify_failure(failure)
        url = failure.request.url if hasattr(failure, "request") else ""
        self.logger.info("request failed (%s): %s %s", kind, url, reason)
        record_error(self.crawler, kind, url, reason)

    def record_parse_error(self, response: Response, reason: str) -> None:
        self.logger.warning("parse error on %s: %s", response.url, reason)
        record_error(self.crawler, "parse_error", response.url, reason)

    # ------------------------------------------------------------------------------------------ pages

    @staticmethod
    def page_root(response: Response) -> lxml_html.HtmlElement:
        if not isinstance(response, TextResponse):
            raise ParseError(f"not a text page ({response.headers.get('Content-Type', b'?').decode()})")
        return parse_html(response.text)

    def article_parts(self, response: Response, title_css: list[str], content_css: list[str]
                      ) -> tuple[lxml_html.HtmlElement, str, lxml_html.HtmlElement] | None:
        """(page root, title, article body) of an article page, or None after recording why it has none."""
        try:
            root = self.page_root(response)
            heading = first(root, title_css)
            if heading is None or not heading.text_content().strip():
                raise ParseError(f"no title ({', '.join(title_css)})")
            body = first(root, content_css)
            if body is None:
                raise ParseError(f"no article body ({', '.join(content_css)})")
        except ParseError as exc:
            self.record_parse_error(response, str(exc))
            return None
        return root, " ".join(heading.text_content().split()), body

    @staticmethod
    def licence_of(root: lxml_html.HtmlElement, css: str, default: str | None) -> str:
        found = first(root, [css])
        text = found.text_content().strip() if found is not None else ""
        return text or default or UNKNOWN_LICENCE

    @staticmethod
    def retrieved_at(response: Response) -> str:
        """When the page was fetched: its ``Date`` header (right for cached pages too), else now."""
        header = response.headers.get(b"Date")
        if header:
            try:
                return parsedate_to_datetime(header.decode("latin-1")).astimezone(UTC).isoformat(timespec="seconds")
            except (TypeError, ValueError):
                pass
        return datetime.now(UTC).isoformat(timespec="seconds")

    def article_items(self, response: Response, *, entity: str, title: str, container: lxml_html.HtmlElement,
                      rule: SectionRule, licence: str, attribution: str, url: str | None = None
                      ) -> Iterator[DescriptionItem]:
        """One item per sentence of the blocks ``rule`` keeps; counts articles with nothing to keep."""
        entity = self.terms.match(title) or entity  # the page's own title outranks the link text
        blocks: list[Block] = rule.select(walk_blocks(container))
        stats = self.crawler.stats
        assert stats is not None
        stats.inc_value("devide/articles_parsed")
        if not blocks:
            stats.inc_value("devide/articles_without_descriptions")
            self.logger.info("no radiographic section in %s (%s)", response.url, title)
        page_url = url or response.url
        when = self.retrieved_at(response)
        for block, sentence in iter_sentences_of(blocks):
            yield DescriptionItem(entity=entity, sentence=sentence, source=self.source, site=host_of(page_url),
                                  url=page_url, title=title, section=block.section, licence=licence,
                                  attribution=attribution, retrieved_at=when)
