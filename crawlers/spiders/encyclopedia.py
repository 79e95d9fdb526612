"""``encyclopedia``: articles in an encyclopedia structure like Radiopaedia's.

Title ``h1.header-title``; body ``div.body.user-generated-content`` (or ``div.user-generated-content``), a
flat run of headings (any of h2-h6) and blocks; the "Radiographic features" section and its "Plain
radiograph" / "Chest radiograph" subsection (the whole section when it has no modality subsections).
Articles are found from the paginated A-Z index (link text = title, matched to names and synonyms) and from
the paginated search (one query per entity name).

Radiopaedia's terms forbid automated copying: against any non-loopback host this spider refuses to start
unless the job carries the user's ``permission`` statement (see :func:`crawlers.job.check_policy`).
"""

from __future__ import annotations

from collections.abc import Iterator

import scrapy
from scrapy.http import Response

from crawlers.items import DescriptionItem
from crawlers.job import GenericSelectors
from crawlers.sections import ENCYCLOPEDIA_RULE
from crawlers.spiders.generic import GenericSpider

ENCYCLOPEDIA_SELECTORS = GenericSelectors(
    index_links="ul.article-index a, .article-index a, a.search-result-title",
    next_page="a.next_page",
    title="h1.header-title",
    content="div.body.user-generated-content, div.user-generated-content",
    sections=list(ENCYCLOPEDIA_RULE.sections),
    modalities=list(ENCYCLOPEDIA_RULE.modalities),
    exclude=list(ENCYCLOPEDIA_RULE.exclude),
    search_url="/search?q={query}&scope=articles",
    search_links="a.search-result-title, .search-result a",
)


class EncyclopediaSpider(GenericSpider):
    name = "encyclopedia"
    source = "encyclopedia"
    default_start_path = "/encyclopaedia"

    @classmethod
    def default_selectors(cls) -> GenericSelectors:
        return ENCYCLOPEDIA_SELECTORS

    @property
    def selectors(self) -> GenericSelectors:
        assert self.job is not None
        return self.job.selectors or ENCYCLOPEDIA_SELECTORS

    # The overrides only add spider contracts (`scrapy check`) against the fixture site.

    def parse_index(self, response: Response) -> Iterator[scrapy.Request]:
        """Index page: follow links that name an entity, then the next page.

        @fixture /encyclopaedia?page=1
        @returns requests 8 8
        @returns items 0 0
        """
        return super().parse_index(response)

    def parse_search(self, response: Response, entity: str, page: int) -> Iterator[scrapy.Request]:
        """Search results: the hit that names the entity, else the next results page.

        @fixture /search?q=Lung+lesion&scope=articles
        @cb_kwargs {"entity": "lung_lesion", "page": 1}
        @returns requests 1 1
        @returns items 0 0
        """
        return super().parse_search(response, entity, page)

    def parse_article(self, response: Response, entity: str) -> Iterator[DescriptionItem]:
        """An article: one item per sentence of "Radiographic features > Plain radiograph".

        @fixture /articles/atelectasis
        @cb_kwargs {"entity": "atelectasis"}
        @returns items 4 4
        @returns requests 0 0
        @scrapes entity sentence source site url title section licence attribution retrieved_at
        """
        return super().parse_article(response, entity)
