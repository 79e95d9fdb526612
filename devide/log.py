"""Console logging, per-stage log files and progress bars.

``--quiet`` (or ``DEVIDE_QUIET=1``, which child processes inherit) silences progress bars and info logs.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from tqdm.auto import tqdm

from devide.config import redact_text

T = TypeVar("T")
LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def is_quiet() -> bool:
    return os.environ.get("DEVIDE_QUIET", "") not in ("", "0", "false")


class RedactingFilter(logging.Filter):
    """Credentials inside URLs (``http://user:key@host``, ``?api_key=``) never reach a log: HTTP clients log
    the full request URL."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = redact_text(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


def setup_logging(quiet: bool = False, verbose: bool = False) -> None:
    """Configure the ``devide`` logger family for console use (idempotent)."""
    if quiet:
        os.environ["DEVIDE_QUIET"] = "1"
    level = logging.DEBUG if verbose else logging.WARNING if is_quiet() else logging.INFO
    root = logging.getLogger()
    root.setLevel(logging.DEBUG)
    handler = next((h for h in root.handlers if getattr(h, "_devide_console", False)), None)
    if handler is None:
        handler = logging.StreamHandler(sys.stderr)
        handler._devide_console = True  # type: ignore[attr-defined]
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        handler.addFilter(RedactingFilter())
        root.addHandler(handler)
    handler.setLevel(level)
    for noisy in ("httpx", "httpx2", "urllib3", "filelock", "matplotlib", "PIL", "scrapy", "twisted"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))


@contextmanager
def stage_log_file(path: Path) -> Iterator[None]:
    """Copy every log record (DEBUG and up) emitted while the block runs into ``path``."""
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    previous_level = root.level
    root.setLevel(logging.DEBUG)
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(previous_level)
        handler.close()


def progress(iterable: Iterable[T], *, total: int | None = None, desc: str = "", unit: str = "it",
             disable: bool | None = None) -> Iterator[T]:
    """A tqdm progress bar on stderr, silent under ``--quiet``."""
    if disable is None:
        disable = is_quiet()
    yield from tqdm(iterable, total=total, desc=desc, unit=unit, disable=disable, dynamic_ncols=True,
                    mininterval=0.5)
