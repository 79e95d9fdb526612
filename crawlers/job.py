"""A crawl job: everything one crawl process needs, validated, plus the politeness policy that guards it.

The ``devide crawl`` stage writes a :class:`CrawlJob` as JSON and starts ``python -m crawlers.run JOB.json``
in its own process (Scrapy's reactor cannot restart). The spiders read the same object, so the policy is
checked twice: by the stage before it spawns anything, and by the spider before its first request.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field

from crawlers.entities import EntityTerms
from crawlers.sections import OTHER_MODALITIES

Profile = Literal["encyclopedia", "mediawiki", "generic"]
PROFILES: tuple[str, ...] = ("encyclopedia", "mediawiki", "generic")
MIN_REMOTE_DELAY = 1.0
CONTACT = re.compile(r"(https?://\S+|[\w.+-]+@[\w-]+\.[\w.-]+)")


class PolicyError(ValueError):
    """A crawl the politeness policy refuses (one line, meant for the user)."""


class GenericSelectors(BaseModel):
    """CSS selectors and section rules of the ``generic`` profile (read from a YAML file)."""

    model_config = ConfigDict(extra="forbid")

    index_links: str = Field("a", description="links on index pages whose text names an article")
    next_page: str | None = Field(None, description="the 'next page' link of index pages")
    title: str = Field("h1", description="the article title")
    content: str = Field("article, main, #content, body", description="the article body (first match wins)")
    sections: list[str] = Field(description="regexes of headings whose text holds radiographic descriptions")
    modalities: list[str] = Field(default_factory=list, description="preferred subsections (plain radiograph)")
    exclude: list[str] = Field(default_factory=lambda: [OTHER_MODALITIES], description="headings never taken")
    search_url: str | None = Field(None, description="search URL with {query}, resolved against the start URL")
    search_links: str | None = Field(None, description="result links on search pages")
    licence: str | None = None
    licence_css: str = 'a[rel="license"]'


class CrawlJob(BaseModel):
    """One crawl: source profile, targets, entities, output and the politeness settings."""

    model_config = ConfigDict(extra="forbid")

    profile: Profile
    start_urls: list[str] = Field(min_length=1)
    allowed_domains: list[str]
    entities: list[EntityTerms] = Field(min_length=1)
    output_dir: Path
    user_agent: str
    permission: str | None = None
    licence: str | None = None
    search: bool = True
    mediawiki_api: bool = False
    max_search_pages: int = Field(3, ge=1)
    selectors: GenericSelectors | None = None
    download_delay: float = Field(ge=0)
    autothrottle: bool = True
    concurrent_requests_per_domain: int = Field(1, ge=1)
    retry_times: int = Field(3, ge=0)
    retry_backoff: float = Field(1.0, ge=0)
    retry_backoff_max: float = Field(60.0, ge=0)
    download_timeout: float = Field(30.0, gt=0)
    max_pages: int = Field(2000, ge=0)
    http_cache: bool = True
    cache_dir: Path | None = None
    jobdir: Path | None = None
    min_words: int = Field(3, ge=1)
    log_level: str = "INFO"

    @property
    def hosts(self) -> set[str]:
        return {host_of(u) for u in self.start_urls} | {d.lower() for d in self.allowed_domains}


def host_of(url: str) -> str:
    return (urlsplit(url).hostname or "").lower()


def is_loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_allowed(host: str, allowed: list[str]) -> bool:
    """``host`` is an allowed domain or a subdomain of one (empty list: nothing is allowed)."""
    host = host.lower().rstrip(".")
    return any(host == d or host.endswith("." + d) for d in (a.lower().lstrip(".") for a in allowed) if d)


def remote_hosts(job: CrawlJob) -> list[str]:
    return sorted(h for h in job.hosts if not is_loopback(h))


def check_policy(job: CrawlJob) -> None:
    """Raise :class:`PolicyError` for a crawl that is not polite or not permitted."""
    if not job.allowed_domains:
        raise PolicyError("allowed_domains is empty: the allow-list fails closed, so nothing would be crawled")
    outside = [u for u in job.start_urls if not host_allowed(host_of(u), job.allowed_domains)]
    if outside:
        raise PolicyError(f"start URL {outside[0]} is not on the allow-list ({', '.join(job.allowed_domains)})")
    remote = remote_hosts(job)
    if not remote:
        return
    if job.profile == "encyclopedia" and not (job.permission or "").strip():
        raise PolicyError(
            f"the encyclopedia profile refuses non-loopback host(s) {', '.join(remote)} without "
            '--permission "<statement>": Radiopaedia-style sites forbid automated copying unless they grant it')
    if not CONTACT.search(job.user_agent or ""):
        raise PolicyError("a User-Agent with contact details (a URL or an e-mail address) is required for "
                          f"non-loopback host(s) {', '.join(remote)}")
    if job.download_delay < MIN_REMOTE_DELAY:
        raise PolicyError(f"download_delay must be >= {MIN_REMOTE_DELAY} s for non-loopback hosts "
                          f"(got {job.download_delay})")
    if job.concurrent_requests_per_domain > 1:
        raise PolicyError("concurrent_requests_per_domain must be 1 for non-loopback hosts")
