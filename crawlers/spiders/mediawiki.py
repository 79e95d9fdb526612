"""``mediawiki``: MediaWiki articles, from the HTML pages or through the MediaWiki API.

HTML mode asks ``Special:Search?search=<entity name>&go=Go`` per entity: MediaWiki redirects an exact title
(or a redirect page) to the article, otherwise it shows results, of which the first that names the entity
is followed. API mode (``mediawiki_api: true``) calls ``api.php?action=parse&page=<name>&redirects=1`` and
falls back to ``action=query&list=search``. Either way the article's ``div.mw-parser-output`` is read, keeping
the "Imaging" / "Radiography" / "Chest X-ray" sections (also as subsections of "Diagnosis").

The start URL is the wiki's article path, e.g. ``https://en.wikipedia.org/wiki/``; the API endpoint is
``/w/api.php`` on the same host.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, urlencode, urljoin

import scrapy
from scrapy.http import Response

from crawlers.items import DescriptionItem
from crawlers.sections import MEDIAWIKI_RULE, first, parse_html
from crawlers.spiders.base import UNKNOWN_LICENCE, DescriptionSpider

API_PATH = "/w/api.php"
CONTENT = ".mw-parser-output"


class MediaWikiSpider(DescriptionSpider):
    name = "mediawiki"
    source = "mediawiki"
    default_start_path = "/wiki/"

    @property
    def wiki_base(self) -> str:
        assert self.job is not None
        base = self.job.start_urls[0]
        return base if base.endswith("/") else base + "/"

    def article_url(self, title: str) -> str:
        return urljoin(self.wiki_base, "./" + quote(title.replace(" ", "_")))  # "./": "Foo:Bar" is no scheme

    def api_url(self, **params: str) -> str:
        return urljoin(self.wiki_base, API_PATH) + "?" + urlencode({**params, "format": "json", "formatversion": "2"})

    async def start(self) -> Any:
        assert self.job is not None
        for entity in self.terms.entities:
            if self.job.mediawiki_api:
                url = self.api_url(action="parse", page=entity.name, redirects="1", prop="text")
                yield self.request(url, self.parse_api, entity=entity.id, searched=False)
            else:
                url = urljoin(self.wiki_base, "./Special:Search?" + urlencode({"search": entity.name, "go": "Go"}))
                yield self.request(url, self.parse_search, entity=entity.id)

    # ------------------------------------------------------------------------------------------ HTML

    def parse_search(self, response: Response, entity: str) -> Iterator[scrapy.Request | DescriptionItem]:
        """Special:Search: an article (after MediaWiki's "go" redirect) or a list of results.

        @fixture /wiki/Special:Search?search=Nodule&go=Go
        @cb_kwargs {"entity": "nodule"}
        @returns requests 1 1
        @returns items 0 0
        """
        if response.css(f"#firstHeading, {CONTENT}") and response.css(CONTENT):
            yield from self.parse_article(response, entity)
            return
        for link in response.css("ul.mw-search-results a"):
            title = link.attrib.get("title") or " ".join(link.css("::text").getall())
            if self.terms.match(title) == entity and link.attrib.get("href"):
                yield self.request(response.urljoin(link.attrib["href"]), self.parse_article, entity=entity)
                return

    def parse_article(self, response: Response, entity: str) -> Iterator[DescriptionItem]:
        """An article page: one item per sentence of its imaging sections.

        @fixture /wiki/Pleural_effusion
        @cb_kwargs {"entity": "pleural_effusion"}
        @returns items 3 3
        @returns requests 0 0
        @scrapes entity sentence source site url title section licence attribution retrieved_at
        """
        parts = self.article_parts(response, ["#firstHeading .mw-page-title-main", "#firstHeading", "h1"],
                                   [CONTENT, "#mw-content-text"])
        if parts is None:
            return
        root, title, container = parts
        assert self.job is not None
        licence = self.licence_of(root, 'a[rel="license"]', self.job.licence)
        yield from self.wiki_items(response, entity, title, container, licence)

    def wiki_items(self, response: Response, entity: str, title: str, container: Any, licence: str,
                   url: str | None = None) -> Iterator[DescriptionItem]:
        assert self.job is not None
        page_url = url or response.url
        yield from self.article_items(response, entity=entity, title=title, container=container,
                                      rule=MEDIAWIKI_RULE, licence=licence or UNKNOWN_LICENCE,
                                      attribution=f'"{title}", {page_url}, MediaWiki contributors', url=page_url)

    # ------------------------------------------------------------------------------------------ API

    def api_json(self, response: Response) -> dict[str, Any] | None:
        try:
            data = json.loads(response.text)
        except (ValueError, AttributeError) as exc:
            self.record_parse_error(response, f"API answer is not JSON: {exc}")
            return None
        return data if isinstance(data, dict) else None

    def parse_api(self, response: Response, entity: str, searched: bool) -> Iterator[Any]:
        """``action=parse``: the page's HTML; a missing title falls back to a search (once)."""
        data = self.api_json(response)
        if data is None:
            return
        if "error" in data:
            code = data["error"].get("code", "?")
            if code == "missingtitle" and not searched:
                name = self.terms.get(entity).name
                yield self.request(self.api_url(action="query", list="search", srsearch=name, srlimit="10"),
                                   self.parse_api_search, entity=entity)
            elif code != "missingtitle":
                self.record_parse_error(response, f"API error {code}: {data['error'].get('info', '')}")
            return
        parsed = data.get("parse") or {}
        text = parsed.get("text")
        html = text.get("*") if isinstance(text, dict) else text  # formatversion 1 nests it under "*"
        title = parsed.get("title")
        if not html or not title:
            self.record_parse_error(response, "API parse answer without title or text")
            return
        root = parse_html(f"<html><body>{html}</body></html>")
        container = first(root, [CONTENT]) or root
        assert self.job is not None
        yield from self.wiki_items(response, entity, title, container, self.job.licence or UNKNOWN_LICENCE,
                                   url=self.article_url(title))

    def parse_api_search(self, response: Response, entity: str) -> Iterator[scrapy.Request]:
        data = self.api_json(response)
        hits = ((data or {}).get("query") or {}).get("search") or []
        for hit in hits:
            if self.terms.match(hit.get("title")) == entity:
                url = self.api_url(action="parse", page=hit["title"], redirects="1", prop="text")
                yield self.request(url, self.parse_api, entity=entity, searched=True)
                return
