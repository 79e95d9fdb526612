"""``devide crawl``: collect radiographic descriptions with Scrapy, one crawl per child process.

The stage resolves the entity names and synonyms from the vocabulary, writes a :class:`~crawlers.job.CrawlJob`
(``crawl_job.json``), checks the politeness policy, and runs ``python -m crawlers.run`` in its own process
(Scrapy's reactor cannot restart), turning its progress lines into a progress bar and its log into
``crawl.log``. With ``fixture: true`` it serves the built-in fixture site on 127.0.0.1 (free port) for the
duration of the crawl. Outputs (contracts.md, "Crawl output"): ``descriptions.jsonl``, ``descriptions/``
(Arrow), plus ``errors.jsonl`` (every refused, failed or unparseable page) and ``stats.json``.

An interrupted remote crawl resumes: the artifact's ``.partial`` folder keeps Scrapy's ``JOBDIR`` and the
lines written so far, and the next identical ``devide crawl`` continues from them.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from collections import Counter
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urljoin

from pydantic import Field
from tqdm.auto import tqdm

from devide.config import ConfigError, StageConfig, read_yaml
from devide.log import is_quiet
from devide.stage import Stage, StageContext, StageError

JOB_FILE = "crawl_job.json"
LOG_FILE = "crawl.log"
JOBDIR = ".jobdir"
FIXTURE_CACHE = ".httpcache"
DATASET_DIR = "descriptions"
FIXTURE_START = {"encyclopedia": "/encyclopaedia", "generic": "/encyclopaedia", "mediawiki": "/wiki/"}
LOOPBACK_DELAY = 0.05  # seconds; a fixture crawl on loopback need not wait a full second per request
REMOTE_DELAY = {"encyclopedia": 2.0, "mediawiki": 1.0, "generic": 1.0}
INTERRUPT_GRACE_S = 60


class CrawlConfig(StageConfig):
    """Config of ``devide crawl``."""

    profile: Literal["encyclopedia", "mediawiki", "generic"] = Field(
        "encyclopedia", description="source profile: encyclopedia (Radiopaedia-like), mediawiki, generic (selectors)")
    fixture: bool = Field(False, description="serve the built-in fixture site on 127.0.0.1 and crawl it (demo)")
    start_urls: list[str] = Field(default_factory=list, description="start URLs (paths on the fixture site "
                                  "when fixture is on; default: its index / wiki)")
    allowed_domains: list[str] = Field(default_factory=list, description="hosts that may be requested "
                                       "(subdomains included); required for remote crawls: the list fails closed")
    vocabulary: Path | None = Field(None, description="entity vocabulary YAML (default: knowledge/data/entities.yaml)")
    entities: list[str] | None = Field(None, description="entity ids to look for (default: all)")
    user_agent: str | None = Field(None, description="User-Agent with contact URL or e-mail (required for remote hosts)")
    permission: str | None = Field(None, description="your statement of the site's permission (required for the "
                                   "encyclopedia profile on a non-loopback host); recorded in the manifest")
    licence: str | None = Field(None, description="licence to record when a page states none")
    selectors: Path | None = Field(None, description="YAML of CSS selectors and section rules (generic profile)")
    search: bool = Field(True, description="also query the site's search for each entity name")
    mediawiki_api: bool = Field(False, description="mediawiki profile: use api.php instead of the HTML pages")
    download_delay: float | None = Field(None, ge=0, description="seconds between requests to a host (default: 2 "
                                         "for encyclopedia, 1 for other remote hosts, 0.05 on loopback)")
    autothrottle: bool = Field(True, description="adapt the delay to the server's latency (AutoThrottle)")
    retry_times: int = Field(3, ge=0, description="retries for 429/5xx/timeouts")
    retry_backoff: float = Field(1.0, ge=0, description="seconds before the first retry; doubles each retry")
    download_timeout: float = Field(30.0, gt=0, description="seconds before a request times out")
    max_pages: int = Field(2000, ge=1, description="hard cap on pages fetched in one crawl")
    http_cache: bool = Field(True, description="HTTP cache with the RFC 2616 policy")
    cache_dir: Path | None = Field(None, description="HTTP cache folder (default: <out>.httpcache beside the artifact)")
    min_words: int = Field(3, ge=1, description="sentences with fewer words are dropped (counted)")


# ---------------------------------------------------------------------------------------------- job


def _terms(cfg: CrawlConfig) -> list[Any]:
    from crawlers.entities import UnknownEntityError, terms_from_vocabulary

    try:
        return terms_from_vocabulary(cfg.vocabulary, cfg.entities)
    except UnknownEntityError as exc:
        raise ConfigError(str(exc)) from None


def _selectors(cfg: CrawlConfig) -> Any:
    from pydantic import ValidationError

    from crawlers.job import GenericSelectors

    if cfg.selectors is None:
        if cfg.profile == "generic":
            raise ConfigError("the generic profile needs 'selectors': a YAML file of CSS selectors (see docs/crawl.md)")
        return None
    try:
        return GenericSelectors.model_validate(read_yaml(cfg.selectors))
    except ValidationError as exc:
        err = exc.errors()[0]
        raise ConfigError(f"{cfg.selectors}: {'.'.join(map(str, err['loc']))}: {err['msg']}") from None


def build_job(cfg: CrawlConfig, work_dir: Path, fixture_base: str | None) -> Any:
    """The :class:`CrawlJob` for ``cfg`` (fixture URLs resolved, defaults for delay / user agent / cache)."""
    from crawlers.job import CrawlJob, host_of, is_loopback

    if fixture_base is not None:
        paths = cfg.start_urls or [FIXTURE_START[cfg.profile]]
        start_urls = [urljoin(fixture_base + "/", p.lstrip("/")) if "://" not in p else p for p in paths]
        allowed = cfg.allowed_domains or [host_of(fixture_base)]
    else:
        if not cfg.start_urls:
            raise ConfigError("start_urls is empty: give the site's index / wiki URL, or set fixture: true")
        bad = [u for u in cfg.start_urls if not u.startswith(("http://", "https://"))]
        if bad:
            raise ConfigError(f"start URL {bad[0]!r} is not an absolute http(s) URL")
        start_urls, allowed = cfg.start_urls, cfg.allowed_domains
    remote = any(not is_loopback(host_of(u)) for u in start_urls) or any(not is_loopback(d) for d in allowed)
    delay = cfg.download_delay if cfg.download_delay is not None else (
        REMOTE_DELAY[cfg.profile] if remote else LOOPBACK_DELAY)
    from crawlers import settings as project

    cache = cfg.cache_dir or (work_dir / FIXTURE_CACHE if fixture_base else Path(f"{work_dir.with_suffix('')}.httpcache"))
    return CrawlJob(
        profile=cfg.profile, start_urls=start_urls, allowed_domains=allowed, entities=_terms(cfg),
        output_dir=work_dir, user_agent=cfg.user_agent or ("" if remote else project.USER_AGENT),
        permission=cfg.permission, licence=cfg.licence, search=cfg.search, mediawiki_api=cfg.mediawiki_api,
        selectors=_selectors(cfg), download_delay=delay, autothrottle=cfg.autothrottle, retry_times=cfg.retry_times,
        retry_backoff=cfg.retry_backoff, download_timeout=cfg.download_timeout, max_pages=cfg.max_pages,
        http_cache=cfg.http_cache, cache_dir=cache.resolve(), jobdir=(work_dir / JOBDIR).resolve(),
        min_words=cfg.min_words,
    )


# ---------------------------------------------------------------------------------------------- process


def _last_error_line(log: Path) -> str:
    lines = [ln for ln in log.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
    for line in reversed(lines):
        if line.startswith(("crawl refused:", "crawl failed:")) or "Error" in line:
            return line.strip()
    return lines[-1].strip() if lines else "(empty log)"


def run_crawl_process(job_file: Path, log_file: Path, quiet: bool) -> int:
    """Run ``python -m crawlers.run`` and show its progress; forward one Ctrl-C so the crawl saves its JOBDIR."""
    with log_file.open("a", encoding="utf-8") as log, ExitStack() as stack:
        proc = subprocess.Popen(  # own session: a terminal Ctrl-C reaches only us, and we forward exactly one
            [sys.executable, "-m", "crawlers.run", str(job_file), "--progress"], stdout=subprocess.PIPE,
            stderr=log, text=True, start_new_session=True)
        bar = stack.enter_context(tqdm(desc="crawl", unit="page", disable=quiet or is_quiet(), dynamic_ncols=True))
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                _show_progress(bar, line)
            return proc.wait()
        except KeyboardInterrupt:
            proc.send_signal(signal.SIGINT)  # Scrapy shuts down gracefully and persists its queue
            try:
                proc.wait(timeout=INTERRUPT_GRACE_S)
            except subprocess.TimeoutExpired:
                proc.kill()
            raise


def _show_progress(bar: tqdm, line: str) -> None:
    try:
        event = json.loads(line)
    except ValueError:
        return
    if event.get("event") == "progress":
        bar.update(event["pages"] - bar.n)
        bar.set_postfix(items=event["items"], refresh=False)


# ---------------------------------------------------------------------------------------------- outputs


def read_rows(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def save_arrow(rows: list[dict[str, Any]], folder: Path) -> None:
    """The same rows as an Arrow dataset (``datasets.Dataset.save_to_disk``)."""
    from datasets import Dataset, Features, Value

    from crawlers.items import FIELDS

    features = Features({name: Value("string") for name in FIELDS})
    columns = {name: [row[name] for row in rows] for name in FIELDS}
    if folder.exists():
        shutil.rmtree(folder)
    Dataset.from_dict(columns, features=features).save_to_disk(str(folder))


def manifest_counts(stats: dict[str, Any], rows: list[dict[str, Any]], errors: list[dict[str, Any]]) -> dict[str, Any]:
    """The crawl stats the manifest records (Scrapy's names on the right)."""
    by_status = {k.rsplit("/", 1)[-1]: v for k, v in stats.items() if k.startswith("downloader/response_status_count/")}
    return {
        "requests": stats.get("downloader/request_count", 0),
        "responses": stats.get("downloader/response_count", 0),
        "responses_by_status": by_status,
        "robots_forbidden": stats.get("robotstxt/forbidden", 0),
        "robots_unreachable": stats.get("devide/robots_unreachable", 0),
        "oversize_refused": stats.get("devide/oversize_refused", 0),
        "offsite_refused": stats.get("devide/offsite_refused", 0),
        "retries": stats.get("retry/count", 0),
        "items": len(rows),
        "duplicates_dropped": stats.get("devide/duplicates_dropped", 0),
        "dropped_boilerplate": stats.get("devide/dropped/boilerplate", 0),
        "dropped_too_short": stats.get("devide/dropped/too_short", 0),
        "invalid_items": stats.get("devide/dropped/invalid", 0),
        "parse_errors": stats.get("devide/errors/parse_error", 0),
        "errors_by_kind": dict(Counter(e["kind"] for e in errors)),
        "articles_parsed": stats.get("devide/articles_parsed", 0),
        "articles_without_descriptions": stats.get("devide/articles_without_descriptions", 0),
        "items_per_entity": dict(sorted(Counter(r["entity"] for r in rows).items())),
        "finish_reason": stats.get("finish_reason"),
    }


# ---------------------------------------------------------------------------------------------- stage


def _fresh_start(work_dir: Path) -> None:
    """A fixture crawl never resumes (the site's port changes between runs): clear what a previous try left."""
    from crawlers.pipelines import DESCRIPTIONS_FILE, ERRORS_FILE

    for name in (DESCRIPTIONS_FILE, ERRORS_FILE, LOG_FILE):
        (work_dir / name).unlink(missing_ok=True)
    for name in (JOBDIR, FIXTURE_CACHE):
        shutil.rmtree(work_dir / name, ignore_errors=True)


def run(cfg: CrawlConfig, ctx: StageContext) -> dict[str, Any]:
    from crawlers.fixture_site import FixtureSite
    from crawlers.job import PolicyError, check_policy
    from crawlers.pipelines import DESCRIPTIONS_FILE, ERRORS_FILE
    from crawlers.run import STATS_FILE

    work = ctx.work_dir
    with ExitStack() as stack:
        site = stack.enter_context(FixtureSite()) if cfg.fixture else None
        if site is not None:
            _fresh_start(work)
            ctx.logger.info("fixture site on %s (off-domain trap host %s)", site.base_url, site.offsite_url)
        job = build_job(cfg, work, site.base_url if site else None)
        try:
            check_policy(job)
        except PolicyError as exc:
            raise StageError(str(exc)) from None
        if job.permission:
            ctx.counts["permission"] = job.permission
            ctx.logger.warning("crawling %s with the user's permission statement: %s", job.hosts, job.permission)
        (work / JOB_FILE).write_text(job.model_dump_json(indent=2), encoding="utf-8")
        ctx.logger.info("%s crawl of %s for %d entities (delay %.2f s)", cfg.profile, ", ".join(job.start_urls),
                        len(job.entities), job.download_delay)
        code = run_crawl_process(work / JOB_FILE, work / LOG_FILE, ctx.quiet)
    if code != 0:
        raise StageError(f"crawl process exited with {code}: {_last_error_line(work / LOG_FILE)} (log: {work / LOG_FILE})")
    rows = read_rows(work / DESCRIPTIONS_FILE)
    errors = read_rows(work / ERRORS_FILE)
    stats = json.loads((work / STATS_FILE).read_text(encoding="utf-8"))
    counts = manifest_counts(stats, rows, errors)
    if not rows:
        raise StageError(f"the crawl produced no descriptions ({counts['requests']} requests, errors: "
                         f"{counts['errors_by_kind'] or 'none'}); see {work / LOG_FILE}")
    save_arrow(rows, work / DATASET_DIR)
    for name in (JOBDIR, FIXTURE_CACHE):  # a finished crawl has nothing to resume; the fixture cache is moot
        shutil.rmtree(work / name, ignore_errors=True)
    if counts["finish_reason"] != "finished":
        ctx.logger.warning("crawl ended early: %s (max_pages=%d)", counts["finish_reason"], cfg.max_pages)
    ctx.logger.info("%d descriptions for %d entities; %d duplicates dropped, %d parse errors", len(rows),
                    len(counts["items_per_entity"]), counts["duplicates_dropped"], counts["parse_errors"])
    return counts


STAGE = Stage(
    name="crawl",
    config_cls=CrawlConfig,
    run=run,
    help="collect radiographic descriptions with Scrapy (polite by default; fixture: true crawls the local fixture site)",
    input_fields=("vocabulary", "selectors"),
    volatile_fields=("cache_dir",),
    code=("crawlers", "knowledge"),
)
