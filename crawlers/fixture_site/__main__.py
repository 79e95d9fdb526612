"""``python -m crawlers.fixture_site``: serve the fixture website until Ctrl-C (prints its URLs)."""

import time

from crawlers.fixture_site.server import FixtureSite


def main() -> None:
    with FixtureSite() as site:
        print(f"fixture site: {site.base_url}/  (encyclopaedia: /encyclopaedia, wiki: /wiki/Pneumothorax)")
        print(f"off-domain trap host: {site.offsite_url}/   Ctrl-C stops.", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
