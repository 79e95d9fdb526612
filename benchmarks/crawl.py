"""Crawl throughput against the loopback fixture site: throttling off vs the polite defaults.

Each crawl is a real ``python -m crawlers.run`` child process against a fresh fixture site (slow page at 0 s
so it does not dominate). Pages/s = responses / Scrapy's own ``elapsed_time_seconds`` (process start-up
excluded). Writes ``benchmarks/results/crawl.json``.

    .venv/bin/python benchmarks/crawl.py            # ~30 s on 2 cores
"""

from __future__ import annotations

import json
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from crawlers.fixture_site import FixtureSite
from crawlers.stage import LOOPBACK_DELAY, REMOTE_DELAY
from tests.crawlers.helpers import crawl, fixture_job, stats

RESULTS = REPO / "benchmarks" / "results" / "crawl.json"
SETTINGS = {
    # no delay, no AutoThrottle, no backoff, 8 requests in flight: what Scrapy + our pipelines sustain on loopback
    "throttling_off": {"download_delay": 0.0, "autothrottle": False, "retry_backoff": 0.0, "concurrent_requests_per_domain": 8},
    # what `devide crawl --fixture` uses: AutoThrottle on, 0.05 s delay, 1 s backoff
    "polite_loopback_default": {"download_delay": LOOPBACK_DELAY, "autothrottle": True, "retry_backoff": 1.0},
    # the remote defaults (1 s delay for mediawiki/generic, 2 s for encyclopedia), capped at 12 pages
    "polite_remote_default_1s": {"download_delay": REMOTE_DELAY["mediawiki"], "autothrottle": True,
                                     "retry_backoff": 1.0, "max_pages": 12},
}


def measure(name: str, overrides: dict) -> dict:
    with tempfile.TemporaryDirectory() as tmp, FixtureSite(slow_seconds=0.0) as site:
        job = fixture_job(site, Path(tmp) / name, **overrides)
        started = time.perf_counter()
        result = crawl(job, timeout=300)
        wall = time.perf_counter() - started
        if result.returncode != 0:
            raise SystemExit(f"{name}: crawl failed\n{result.stderr[-2000:]}")
        s = stats(job.output_dir)
    pages = s.get("response_received_count", 0)
    elapsed = s["elapsed_time_seconds"]
    return {"pages": pages, "items": s.get("item_scraped_count", 0), "crawl_seconds": round(elapsed, 3),
            "process_wall_seconds": round(wall, 3), "pages_per_second": round(pages / elapsed, 2),
            "settings": overrides}


def main() -> None:
    results = {name: measure(name, overrides) for name, overrides in SETTINGS.items()}
    off, polite = results["throttling_off"], results["polite_loopback_default"]
    report = {
        "benchmark": "crawl", "python": platform.python_version(), "machine": platform.machine(),
        "results": results,
        "ratio_throttling_off_vs_polite_loopback": round(off["pages_per_second"] / polite["pages_per_second"], 2),
        "target_throttling_off_pages_per_second": 50,
        "meets_target": off["pages_per_second"] >= 50,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    for name, r in results.items():
        print(f"{name:28s} {r['pages']:4d} pages in {r['crawl_seconds']:6.2f} s = {r['pages_per_second']:7.2f} pages/s")
    print(f"ratio off/polite-loopback: {report['ratio_throttling_off_vs_polite_loopback']}  -> {RESULTS}")


if __name__ == "__main__":
    main()
