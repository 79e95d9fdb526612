"""The local fixture website (original text only) that the crawler's tests and the demo crawl."""

from crawlers.fixture_site.content import expected_sentences, load_content
from crawlers.fixture_site.server import FixtureSite, RequestRecord

__all__ = ["FixtureSite", "RequestRecord", "expected_sentences", "load_content"]
