"""Scrapy settings of the devide crawler: polite and robust by default.

These are the project defaults (``scrapy.cfg`` points here). A crawl started by ``devide crawl`` overrides a
few of them from its :class:`~crawlers.job.CrawlJob` (delay, user agent, allow-list, output and job folders);
see :func:`crawlers.run.job_settings`. Loopback fixture crawls use a short delay so the demo stays fast;
remote hosts always get >= 1 s (the policy in :mod:`crawlers.job` refuses less).
"""

BOT_NAME = "devide"
SPIDER_MODULES = ["crawlers.spiders"]
NEWSPIDER_MODULE = "crawlers.spiders"

# Identify ourselves; a contact URL/e-mail is mandatory for non-loopback hosts (checked by the policy).
USER_AGENT = "devide-crawler/0.1 (+https://github.com/devide/devide; research crawler for radiographic descriptions)"

# Politeness.
ROBOTSTXT_OBEY = True
ROBOTSTXT_PARSER = "scrapy.robotstxt.ProtegoRobotParser"
# (RFC9309RobotsTxtMiddleware replaces Scrapy's: an unreachable robots.txt, 5xx or network error, disallows all.)
CONCURRENT_REQUESTS = 8
CONCURRENT_REQUESTS_PER_DOMAIN = 1
DOWNLOAD_DELAY = 1.0
RANDOMIZE_DOWNLOAD_DELAY = True
AUTOTHROTTLE_ENABLED = True
AUTOTHROTTLE_START_DELAY = 1.0
AUTOTHROTTLE_MAX_DELAY = 60.0
AUTOTHROTTLE_TARGET_CONCURRENCY = 1.0
COOKIES_ENABLED = False
TELNETCONSOLE_ENABLED = False
REMOTE_CONTROL_ENABLED = False  # Scrapy 2.19 opens an HTTP control port by default; a crawl needs none

# Robustness: timeouts, retries with exponential backoff (crawlers.middlewares.BackoffRetryMiddleware).
DOWNLOAD_TIMEOUT = 30
# A description page is tens of kB; anything over 8 MiB is not one (Scrapy's default is 1 GiB, and a 300 MB
# page took 93 s and 1.4 GB of memory). Bigger responses are cancelled and recorded as "oversize" rejections.
DOWNLOAD_MAXSIZE = 8 * 1024 * 1024
DOWNLOAD_WARNSIZE = 2 * 1024 * 1024
RETRY_ENABLED = True
RETRY_TIMES = 3
RETRY_HTTP_CODES = [500, 502, 503, 504, 522, 524, 408, 429]
DEVIDE_RETRY_BACKOFF = 1.0  # seconds before the first retry; doubles each time (Retry-After wins if longer)
DEVIDE_RETRY_BACKOFF_MAX = 60.0
CLOSESPIDER_PAGECOUNT = 2000  # a hard cap on responses per crawl

# HTTP cache with the RFC 2616 policy: honours Cache-Control / Expires, revalidates stale pages.
HTTPCACHE_ENABLED = True
HTTPCACHE_POLICY = "scrapy.extensions.httpcache.RFC2616Policy"
HTTPCACHE_STORAGE = "scrapy.extensions.httpcache.FilesystemCacheStorage"
HTTPCACHE_DIR = "httpcache"
HTTPCACHE_EXPIRATION_SECS = 0
HTTPCACHE_IGNORE_HTTP_CODES = [408, 429, 500, 502, 503, 504, 522, 524]

# The allow-list fails closed: with no allowed domains, every request is refused.
DEVIDE_ALLOWED_DOMAINS: list[str] = []
DEVIDE_OUTPUT_DIR = ""  # descriptions.jsonl / errors.jsonl; empty = the current directory
DEVIDE_MIN_WORDS = 3

DOWNLOADER_MIDDLEWARES = {
    "crawlers.middlewares.AllowListMiddleware": 50,  # before robots.txt, so off-domain hosts see no request
    "scrapy.downloadermiddlewares.robotstxt.RobotsTxtMiddleware": None,
    "crawlers.middlewares.RFC9309RobotsTxtMiddleware": 100,
    "scrapy.downloadermiddlewares.retry.RetryMiddleware": None,
    "crawlers.middlewares.BackoffRetryMiddleware": 550,
    "crawlers.middlewares.SizeCapMiddleware": 580,  # sees the download's exceptions before the retry middleware
}
SPIDER_CONTRACTS = {"crawlers.contracts.FixtureUrlContract": 5}
ITEM_PIPELINES = {
    "crawlers.pipelines.CleanSentencePipeline": 100,
    "crawlers.pipelines.ValidatePipeline": 200,
    "crawlers.pipelines.DedupePipeline": 300,
    "crawlers.pipelines.JsonlWriterPipeline": 900,
}
EXTENSIONS = {"crawlers.extensions.ProgressReporter": 500}
DEVIDE_PROGRESS = False  # JSON progress lines on stdout (the devide crawl stage turns them into a bar)

FEED_EXPORT_ENCODING = "utf-8"
DEFAULT_DROPITEM_LOG_LEVEL = "DEBUG"  # drops are counted in the stats and the manifest, not logged one by one
LOG_LEVEL = "INFO"
