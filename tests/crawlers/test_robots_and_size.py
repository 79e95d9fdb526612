"""Issue 19.8: a robots.txt answering 5xx was treated as allow-all (RFC 9309 says: assume complete disallow),
and pages had no size cap (a 300 MB page was downloaded and parsed). A small loopback site per test; each
crawl runs in its own process, as the stage runs it."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from crawlers.entities import terms_from_vocabulary
from crawlers.job import CrawlJob

from .helpers import crawl, rows, stats

PAGE = b"<html><body><h1>Pneumothorax</h1><p>A visceral pleural line is seen.</p></body></html>"
BIG = 9 * 1024 * 1024  # over the 8 MiB DOWNLOAD_MAXSIZE


class Site:
    """127.0.0.1 site whose robots.txt answers ``robots`` (an HTTP status, or "drop": close without a reply)
    and whose start page is ``page_bytes`` long (sent with or without Content-Length)."""

    def __init__(self, robots: int | str, page_bytes: int = len(PAGE), content_length: bool = True) -> None:
        self.paths: list[str] = []
        site = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                site.paths.append(self.path)
                if self.path == "/robots.txt":
                    if robots == "drop":
                        self.close_connection = True
                        return
                    body = b"<html>Service unavailable</html>" if robots >= 500 else b"not found"
                    self._reply(int(robots), body)
                    return
                self._reply(200, PAGE + b" " * max(0, page_bytes - len(PAGE)), content_length)

            def _reply(self, status: int, body: bytes, length: bool = True) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "text/html")
                if length:
                    self.send_header("Content-Length", str(len(body)))
                else:
                    self.close_connection = True  # the body ends when the connection closes
                self.end_headers()
                for start in range(0, len(body), 1 << 20):
                    try:
                        self.wfile.write(body[start:start + (1 << 20)])
                    except (BrokenPipeError, ConnectionResetError):
                        return  # the crawler cancelled the download

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def job_for(site: Site, out) -> CrawlJob:
    return CrawlJob(profile="encyclopedia", start_urls=[site.base_url + "/encyclopaedia"],
                    allowed_domains=["127.0.0.1"], entities=terms_from_vocabulary(ids=["pneumothorax"]),
                    output_dir=out, user_agent="devide-tests (+mailto:tests@example.org)", download_delay=0.0,
                    autothrottle=False, retry_times=0, retry_backoff=0.05, http_cache=False, log_level="INFO")


@pytest.fixture
def site_factory():
    sites: list[Site] = []

    def make(*args, **kwargs) -> Site:
        sites.append(Site(*args, **kwargs))
        return sites[-1]

    yield make
    for site in sites:
        site.close()


@pytest.mark.parametrize("robots", [503, 500, 429, "drop"])
def test_unreachable_robots_txt_disallows_the_whole_site(tmp_path, site_factory, robots):
    site = site_factory(robots)
    proc = crawl(job_for(site, tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert set(site.paths) == {"/robots.txt"}  # nothing else was requested
    errors = rows(tmp_path / "out", "errors.jsonl")
    assert {e["kind"] for e in errors} == {"robots_forbidden"}
    assert site.base_url + "/encyclopaedia" in {e["url"] for e in errors}
    assert stats(tmp_path / "out")["devide/robots_unreachable"] == 1
    from crawlers.stage import manifest_counts

    counts = manifest_counts(stats(tmp_path / "out"), [], errors)
    assert counts["robots_unreachable"] == 1 and counts["robots_forbidden"] == len(errors)


def test_a_missing_robots_txt_allows_crawling(tmp_path, site_factory):
    site = site_factory(404)
    proc = crawl(job_for(site, tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "/encyclopaedia" in site.paths
    assert "devide/robots_unreachable" not in stats(tmp_path / "out")
    assert not [e for e in rows(tmp_path / "out", "errors.jsonl") if e["kind"] == "robots_forbidden"]


@pytest.mark.parametrize("content_length", [True, False])
def test_an_oversize_page_is_cancelled_and_recorded(tmp_path, site_factory, content_length):
    site = site_factory(404, page_bytes=BIG, content_length=content_length)
    proc = crawl(job_for(site, tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    errors = {e["url"]: e for e in rows(tmp_path / "out", "errors.jsonl")}
    start = errors[site.base_url + "/encyclopaedia"]
    assert start["kind"] == "oversize" and "8388608" in start["reason"]
    assert {e["kind"] for e in errors.values()} == {"oversize"}
    assert stats(tmp_path / "out")["devide/oversize_refused"] == len(errors)
