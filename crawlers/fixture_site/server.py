"""The fixture website on loopback: an encyclopedia, a MediaWiki (HTML + API) and every trap a crawler meets.

``FixtureSite`` serves two hosts from threads of the calling process:

* the site itself on ``127.0.0.1:<free port>``: robots.txt, a paginated A-Z index, a paginated search, ~24
  encyclopedia articles, 11 MediaWiki pages, ``Special:Search`` with "go" redirects, ``/w/api.php``
  (``action=parse`` and ``action=query&list=search``), a 404, a page that answers 500 twice before
  succeeding, a slow page, a 301 from an old slug, malformed HTML, one article under two URLs;
* an "off-domain" host on ``127.0.0.2:<free port>`` that the index links to and no crawler may touch.

Every request to either host is appended to :attr:`FixtureSite.requests` (host, path, status, user agent)
before it is answered, so tests assert on what the server saw, not on what the crawler says it did.

Run it by hand with ``python -m crawlers.fixture_site`` (prints the base URL, Ctrl-C stops it).
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self
from urllib.parse import parse_qs, unquote, urlsplit

from crawlers.fixture_site import content as fc

ROBOTS_TXT = """# devide fixture site
User-agent: *
Disallow: /private/
Disallow: /wiki/Special:Random
"""
INDEX_PAGE_SIZE = 8
SEARCH_PAGE_SIZE = 3


@dataclass(frozen=True)
class RequestRecord:
    host: str
    path: str
    status: int
    user_agent: str
    at: float


@dataclass
class Reply:
    status: int
    body: str = ""
    content_type: str = "text/html; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()
    delay: float = 0.0


def _not_found(path: str) -> Reply:
    return Reply(404, fc.page("Not found", f"<h1>Page not found</h1><p>{path}</p>", fc.ENCYCLOPEDIA_NAME),
                 headers=(("Cache-Control", "no-store"),))


class FixtureSite:
    """The fixture website; use as a context manager or call :meth:`start` / :meth:`stop`."""

    def __init__(self, *, host: str = "127.0.0.1", offsite_host: str = "127.0.0.2", slow_seconds: float = 0.8,
                 flaky_failures: int = 2) -> None:
        self.content = fc.load_content()
        self.host, self.offsite_host = host, offsite_host
        self.slow_seconds, self.flaky_failures = slow_seconds, flaky_failures
        self.requests: list[RequestRecord] = []
        self._lock = threading.Lock()
        self._hits: Counter[str] = Counter()
        self._servers: list[ThreadingHTTPServer] = []
        self._threads: list[threading.Thread] = []

    # ------------------------------------------------------------------------------------------ lifecycle

    def start(self) -> FixtureSite:
        self._servers = [self._serve(self.host, offsite=False), self._serve(self.offsite_host, offsite=True)]
        return self

    def _serve(self, host: str, *, offsite: bool) -> ThreadingHTTPServer:
        server = ThreadingHTTPServer((host, 0), _handler_for(self, offsite))
        server.daemon_threads = True
        thread = threading.Thread(target=server.serve_forever, name=f"fixture-{host}", daemon=True)
        thread.start()
        self._threads.append(thread)
        return server

    def stop(self) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()
        for thread in self._threads:
            thread.join(timeout=5)
        self._servers, self._threads = [], []

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self._servers[0].server_address[1]}"

    @property
    def offsite_url(self) -> str:
        return f"http://{self.offsite_host}:{self._servers[1].server_address[1]}"

    # ------------------------------------------------------------------------------------------ request log

    def record(self, host: str, path: str, status: int, user_agent: str) -> None:
        with self._lock:
            self.requests.append(RequestRecord(host, path, status, user_agent, time.time()))

    def paths(self, *, offsite: bool = False) -> list[str]:
        host = self.offsite_host if offsite else self.host
        with self._lock:
            return [r.path for r in self.requests if r.host == host]

    def reset_log(self) -> None:
        with self._lock:
            self.requests.clear()

    # ------------------------------------------------------------------------------------------ routing

    def respond(self, path: str, *, offsite: bool) -> Reply:
        if offsite:
            return Reply(200, fc.page("Off-domain", "<p>This host must never be crawled.</p>", "elsewhere"))
        parts = urlsplit(path)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        route = unquote(parts.path)
        if route == "/robots.txt":
            return Reply(200, ROBOTS_TXT, "text/plain; charset=utf-8")
        if route in ("/", "/index.html"):
            return self._home()
        if route == "/encyclopaedia":
            return self._index(int(query.get("page", "1") or 1))
        if route == "/search":
            return self._search(query.get("q", ""), int(query.get("page", "1") or 1))
        if route.startswith("/articles/"):
            return self._article(route.removeprefix("/articles/"), query)
        if route == "/wiki/Special:Search":
            return self._wiki_search(query.get("search", ""))
        if route.startswith("/wiki/"):
            return self._wiki_page(route.removeprefix("/wiki/"))
        if route == "/w/api.php":
            return self._api(query)
        if route.startswith("/private/"):
            return Reply(200, fc.page("Private", "<p>Disallowed by robots.txt.</p>", fc.ENCYCLOPEDIA_NAME))
        return _not_found(route)

    def _home(self) -> Reply:
        body = ('<h1>devide fixture site</h1><ul><li><a href="/encyclopaedia">Encyclopaedia A-Z</a></li>'
                '<li><a href="/wiki/Main_Page">Fixturepedia</a></li></ul>')
        return Reply(200, fc.page("Home", body, fc.ENCYCLOPEDIA_NAME))

    def _index(self, number: int) -> Reply:
        entries = fc.index_entries(self.content, self.offsite_url)
        return self._listing("Encyclopaedia A-Z", entries, number, INDEX_PAGE_SIZE, "/encyclopaedia?page={}",
                             "article-index")

    def _search(self, q: str, number: int) -> Reply:
        hits = fc.search_results(self.content, q)
        template = "/search?q=" + q.replace(" ", "+") + "&scope=articles&page={}"
        return self._listing(f"Search: {q}", hits, number, SEARCH_PAGE_SIZE, template, "search-results")

    def _listing(self, title: str, entries: list[tuple[str, str]], number: int, size: int, template: str,
                 list_class: str) -> Reply:
        chunk = entries[(number - 1) * size: number * size]
        if number < 1 or (number > 1 and not chunk):
            return _not_found(template.format(number))
        next_href = template.format(number + 1) if number * size < len(entries) else None
        return Reply(200, fc.listing_html(title, chunk, next_href, list_class),
                     headers=(("Cache-Control", "max-age=300"),))

    def _article(self, slug: str, query: dict[str, str]) -> Reply:
        moved = next((a for a in self.content.encyclopedia if a.old_slug == slug), None)
        if moved is not None:
            return Reply(301, headers=(("Location", f"/articles/{moved.slug}"),))
        article = self.content.article(slug)
        if article is None or (query.get("lang") == "gb" and article.behaviour != "second_url"):
            return _not_found(f"/articles/{slug}")
        if article.behaviour == "flaky":
            with self._lock:
                self._hits[slug] += 1
                failing = self._hits[slug] <= self.flaky_failures
            if failing:
                return Reply(500, "<h1>Internal server error</h1>", headers=(("Cache-Control", "no-store"),))
        position = self.content.encyclopedia.index(article)
        delay = self.slow_seconds if article.behaviour == "slow" else 0.0
        return Reply(200, fc.encyclopedia_article_html(article, self.content, position), delay=delay,
                     headers=(("Cache-Control", "max-age=3600"),
                              ("Last-Modified", "Mon, 06 Jan 2025 10:00:00 GMT")))

    def _wiki_lookup(self, title: str) -> fc.WikiArticle | None:
        key = title.replace("_", " ").strip().casefold()
        found = self.content.wiki_page(key)
        return found or next((p for p in self.content.mediawiki if key in (a.casefold() for a in p.aliases)), None)

    def _wiki_page(self, title: str) -> Reply:
        article = self.content.wiki_page(title)
        if article is None:
            return _not_found(f"/wiki/{title}")
        return Reply(200, fc.wiki_article_html(article, self.content), headers=(("Cache-Control", "max-age=3600"),))

    def _wiki_hits(self, q: str) -> list[fc.WikiArticle]:
        words = {w for w in q.casefold().split() if len(w) > 2}
        return [p for p in self.content.mediawiki if words & set(p.title.casefold().split())]

    def _wiki_search(self, q: str) -> Reply:
        article = self._wiki_lookup(q)
        if article is not None:  # MediaWiki's "go": an exact title (or alias) redirects to the article
            return Reply(302, headers=(("Location", fc.wiki_href(article.title)),))
        return Reply(200, fc.wiki_search_html(q, self._wiki_hits(q)))

    def _api(self, query: dict[str, str]) -> Reply:
        action = query.get("action")
        if action == "parse":
            article = self._wiki_lookup(query.get("page", "")) if query.get("redirects") else \
                self.content.wiki_page(query.get("page", ""))
            if article is None:
                data = {"error": {"code": "missingtitle", "info": "The page you specified doesn't exist."}}
            else:
                data = {"parse": {"title": article.title, "pageid": 1000 + self.content.mediawiki.index(article),
                                  "text": fc.wiki_parser_output(article)}}
        elif action == "query" and query.get("list") == "search":
            data = {"query": {"search": [{"title": p.title} for p in self._wiki_hits(query.get("srsearch", ""))]}}
        else:
            data = {"error": {"code": "badvalue", "info": "Unsupported action in the fixture API."}}
        return Reply(200, json.dumps(data), "application/json; charset=utf-8")


def _handler_for(site: FixtureSite, offsite: bool) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            reply = site.respond(self.path, offsite=offsite)
            site.record(site.offsite_host if offsite else site.host, self.path, reply.status,
                        self.headers.get("User-Agent", ""))
            if reply.delay:
                time.sleep(reply.delay)
            body = reply.body.encode("utf-8")
            self.send_response(reply.status)
            self.send_header("Content-Type", reply.content_type)
            self.send_header("Content-Length", str(len(body)))
            for name, value in reply.headers:
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            return  # the request log is site.requests; stderr stays quiet

    return Handler
