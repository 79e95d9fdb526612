"""Shared helpers for the crawler tests: jobs against the fixture site and real crawls in a child process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from crawlers.entities import terms_from_vocabulary
from crawlers.fixture_site import FixtureSite
from crawlers.job import CrawlJob

REPO = Path(__file__).resolve().parents[2]
START = {"encyclopedia": "/encyclopaedia", "mediawiki": "/wiki/"}
# The contract's entity ids plus lung_tumor (the fixture's "Lung cancer"): every fixture article is about one
# of them, and three more ids (no fixture article) check that misses cost nothing but a search.
TEST_ENTITIES = ["atelectasis", "cardiomegaly", "pleural_effusion", "infiltration", "mass", "nodule", "pneumonia", "pneumothorax", "consolidation", "edema", "emphysema", "fibrosis", "pleural_thickening", "hernia", "fracture", "support_devices", "lung_opacity", "enlarged_cardiomediastinum", "lung_lesion", "pleural_other", "no_finding", "lung_tumor", "bulla", "granuloma", "calcification"]


def fixture_job(site: FixtureSite, out: Path, profile: str = "encyclopedia", **overrides: Any) -> CrawlJob:
    """A fast, polite-enough job for loopback: small delay and backoff, no cache unless asked."""
    values: dict[str, Any] = {
        "profile": profile, "start_urls": [site.base_url + START[profile]], "allowed_domains": ["127.0.0.1"],
        "entities": terms_from_vocabulary(ids=TEST_ENTITIES), "output_dir": out, "user_agent": "devide-tests (+mailto:tests@example.org)",
        "download_delay": 0.0, "autothrottle": False, "retry_backoff": 0.05, "http_cache": False, "log_level": "INFO"}
    values.update(overrides)
    return CrawlJob(**values)


def crawl(job: CrawlJob, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``python -m crawlers.run`` on ``job`` in a child process (the way the stage does)."""
    job.output_dir.mkdir(parents=True, exist_ok=True)
    job_file = job.output_dir / "job.json"
    job_file.write_text(job.model_dump_json())
    return subprocess.run([sys.executable, "-m", "crawlers.run", str(job_file)], check=False, cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


def rows(out: Path, name: str = "descriptions.jsonl") -> list[dict[str, Any]]:
    path = out / name
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def stats(out: Path) -> dict[str, Any]:
    return json.loads((out / "stats.json").read_text())
