"""Spider contracts for ``scrapy check`` against the local fixture site.

``@fixture /articles/pneumothorax`` sets the sample request's URL to that path on the fixture site whose base
URL is in ``$DEVIDE_FIXTURE_URL`` (the site runs on a free port, so a fixed ``@url`` cannot name it)::

    python -m crawlers.fixture_site &   # prints the base URL
    cd crawlers && DEVIDE_FIXTURE_URL=http://127.0.0.1:PORT scrapy check -s DEVIDE_ALLOWED_DOMAINS=127.0.0.1
"""

from __future__ import annotations

import os
from typing import Any

from scrapy.contracts import Contract
from scrapy.exceptions import UsageError

FIXTURE_ENV = "DEVIDE_FIXTURE_URL"


class FixtureUrlContract(Contract):
    """``@fixture PATH``: the sample URL is ``$DEVIDE_FIXTURE_URL`` + PATH."""

    name = "fixture"

    def adjust_request_args(self, args: dict[str, Any]) -> dict[str, Any]:
        base = os.environ.get(FIXTURE_ENV)
        if not base:
            raise UsageError(f"set {FIXTURE_ENV} to the fixture site's base URL (python -m crawlers.fixture_site)")
        args["url"] = base.rstrip("/") + self.args[0]
        return args
