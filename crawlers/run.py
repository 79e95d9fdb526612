"""Run one crawl in this process: ``python -m crawlers.run JOB.json``.

``devide crawl`` writes the job and starts this module in a child process, because Scrapy's Twisted reactor
cannot be restarted inside one process. The crawl writes ``descriptions.jsonl`` and ``errors.jsonl`` into
the job's output folder as it goes, and ``stats.json`` (Scrapy's stats) when it ends. Progress lines go to
stdout (``--progress``), Scrapy's log to stderr. Exit status: 0 finished, 3 refused by the policy,
1 anything else.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from scrapy.crawler import CrawlerProcess
from scrapy.settings import Settings

from crawlers.job import CrawlJob, PolicyError, check_policy
from crawlers.spiders.encyclopedia import EncyclopediaSpider
from crawlers.spiders.generic import GenericSpider
from crawlers.spiders.mediawiki import MediaWikiSpider

SPIDERS = {"encyclopedia": EncyclopediaSpider, "mediawiki": MediaWikiSpider, "generic": GenericSpider}
STATS_FILE = "stats.json"
EXIT_POLICY = 3


class CrawlFailed(RuntimeError):
    """The crawler process could not run the crawl."""


def job_settings(job: CrawlJob, *, progress: bool = False) -> Settings:
    """The project settings (crawlers/settings.py) with this job's overrides."""
    settings = Settings()
    settings.setmodule("crawlers.settings", priority="project")
    overrides: dict[str, Any] = {
        "USER_AGENT": job.user_agent,
        "DEVIDE_ALLOWED_DOMAINS": job.allowed_domains,
        "DEVIDE_OUTPUT_DIR": str(job.output_dir),
        "DEVIDE_MIN_WORDS": job.min_words,
        "DEVIDE_PROGRESS": progress,
        "DOWNLOAD_DELAY": job.download_delay,
        "AUTOTHROTTLE_ENABLED": job.autothrottle,
        "AUTOTHROTTLE_START_DELAY": max(job.download_delay, 0.01),
        "CONCURRENT_REQUESTS_PER_DOMAIN": job.concurrent_requests_per_domain,
        "RETRY_TIMES": job.retry_times,
        "DEVIDE_RETRY_BACKOFF": job.retry_backoff,
        "DEVIDE_RETRY_BACKOFF_MAX": job.retry_backoff_max,
        "DOWNLOAD_TIMEOUT": job.download_timeout,
        "CLOSESPIDER_PAGECOUNT": job.max_pages,
        "HTTPCACHE_ENABLED": job.http_cache,
        "LOG_LEVEL": job.log_level,
    }
    if job.cache_dir is not None:
        overrides["HTTPCACHE_DIR"] = str(Path(job.cache_dir).resolve())
    if job.jobdir is not None:
        overrides["JOBDIR"] = str(job.jobdir)
    settings.setdict(overrides, priority="cmdline")
    return settings


def run(job: CrawlJob, *, progress: bool = False) -> dict[str, Any]:
    """Crawl to completion (or interruption) and return Scrapy's stats (also written to stats.json)."""
    check_policy(job)
    job.output_dir.mkdir(parents=True, exist_ok=True)
    process = CrawlerProcess(job_settings(job, progress=progress), install_root_handler=True)
    crawler = process.create_crawler(SPIDERS[job.profile])
    process.crawl(crawler, job=job)
    process.start()
    stats = crawler.stats.get_stats() if crawler.stats is not None else {}
    stats = {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in stats.items()}
    (job.output_dir / STATS_FILE).write_text(json.dumps(stats, indent=2, sort_keys=True, default=str) + "\n")
    reason = stats.get("finish_reason")
    if reason is None or reason.endswith("_error"):  # e.g. start_error: Scrapy logged why on stderr
        raise CrawlFailed(f"the crawl did not run to completion (finish reason: {reason}); see the log above")
    return stats


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m crawlers.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("job", type=Path, help="crawl job JSON (written by `devide crawl`)")
    parser.add_argument("--progress", action="store_true", help="JSON progress lines on stdout")
    args = parser.parse_args(argv)
    try:
        job = CrawlJob.model_validate_json(args.job.read_text(encoding="utf-8"))
        run(job, progress=args.progress)
    except PolicyError as exc:
        print(f"crawl refused: {exc}", file=sys.stderr)
        return EXIT_POLICY
    except CrawlFailed as exc:
        print(f"crawl failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
