"""``generic``: index pages -> article pages, with CSS selectors and section rules from a YAML file.

The encyclopedia spider is this spider with built-in selectors for an encyclopedia-article structure.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import quote_plus, urljoin

import scrapy
from scrapy.http import Response

from crawlers.items import DescriptionItem
from crawlers.job import GenericSelectors
from crawlers.sections import ParseError, SectionRule
from crawlers.spiders.base import DescriptionSpider


class GenericSpider(DescriptionSpider):
    """Follow index pages (and search pages) to articles whose link text names an entity."""

    name = "generic"
    source = "generic"

    @property
    def selectors(self) -> GenericSelectors:
        assert self.job is not None
        if self.job.selectors is None:
            raise ParseError(f"the {self.name} profile needs selectors (a YAML file)")
        return self.job.selectors

    @property
    def rule(self) -> SectionRule:
        sel = self.selectors
        return SectionRule(tuple(sel.sections), tuple(sel.modalities), tuple(sel.exclude))

    async def start(self) -> Any:
        assert self.job is not None
        for url in self.job.start_urls:
            yield self.request(url, self.parse_index)
        if self.job.search and self.selectors.search_url:
            base = self.job.start_urls[0]
            for entity in self.terms.entities:
                url = urljoin(base, self.selectors.search_url.format(query=quote_plus(entity.name)))
                yield self.request(url, self.parse_search, entity=entity.id, page=1)

    def links(self, response: Response, css: str) -> Iterator[tuple[str, str]]:
        """(text, absolute URL) of the links matching ``css``."""
        for link in response.css(css):
            href = link.attrib.get("href")
            text = " ".join(t.strip() for t in link.css("::text").getall()).strip()
            if href and text:
                yield text, response.urljoin(href)

    def next_page(self, response: Response) -> str | None:
        css = self.selectors.next_page
        if not css:
            return None
        href = response.css(css).attrib.get("href")
        return response.urljoin(href) if href else None

    def parse_index(self, response: Response) -> Iterator[scrapy.Request]:
        """Index page: follow links that name an entity, then the next page."""
        for text, url in self.links(response, self.selectors.index_links):
            entity = self.terms.match(text)
            if entity is not None:
                yield self.request(url, self.parse_article, entity=entity)
        next_url = self.next_page(response)
        if next_url:
            yield self.request(next_url, self.parse_index)

    def parse_search(self, response: Response, entity: str, page: int) -> Iterator[scrapy.Request]:
        """Search results for one entity: follow the first hit that names it, else the next results page."""
        css = self.selectors.search_links or self.selectors.index_links
        for text, url in self.links(response, css):
            if self.terms.match(text) == entity:
                yield self.request(url, self.parse_article, entity=entity)
                return
        next_url = self.next_page(response)
        assert self.job is not None
        if next_url and page < self.job.max_search_pages:
            yield self.request(next_url, self.parse_search, entity=entity, page=page + 1)

    def parse_article(self, response: Response, entity: str) -> Iterator[DescriptionItem]:
        """An article: the sentences of its radiographic sections, one item each."""
        sel = self.selectors
        parts = self.article_parts(response, [sel.title], [c.strip() for c in sel.content.split(",")])
        if parts is None:
            return
        root, title, container = parts
        assert self.job is not None
        licence = self.licence_of(root, sel.licence_css, sel.licence or self.job.licence)
        authors = [a.text_content().strip() for a in root.cssselect(".authors a")]
        attribution = f'"{title}", {response.url}' + (f", by {', '.join(authors)}" if authors else "")
        yield from self.article_items(response, entity=entity, title=title, container=container, rule=self.rule,
                                      licence=licence, attribution=attribution)
