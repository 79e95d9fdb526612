"""``devide crawl``: the Radiopaedia guard and other policy refusals (before any request), and the fixture crawl
through the stage machinery (manifest counts, Arrow dataset, permission recorded, skip when up to date)."""

from __future__ import annotations

import json

import pytest
from datasets import load_from_disk

from crawlers.stage import STAGE, CrawlConfig
from devide.cli import main
from devide.config import ConfigError
from devide.stage import StageError, execute_stage
from tests.crawlers.helpers import TEST_ENTITIES

REMOTE = ["--start-urls", "https://radiopaedia.org/encyclopaedia", "--allowed-domains", "radiopaedia.org"]
CONTACT_UA = ["--user-agent", "devide-research (+mailto:someone@example.org)"]


def run_cli(args, capsys):
    code = main(["crawl", *args])
    return code, capsys.readouterr().err


def test_encyclopedia_refuses_remote_host_without_permission(tmp_path, capsys):
    code, err = run_cli([*REMOTE, *CONTACT_UA, "--out", str(tmp_path / "c")], capsys)
    assert code == 2
    assert "radiopaedia.org" in err and '--permission "<statement>"' in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "c.partial" / "crawl_job.json").exists()  # refused before anything was started


@pytest.mark.parametrize("extra, message", [
    ([], "User-Agent with contact details"),
    ([*CONTACT_UA, "--download-delay", "0.2"], "download_delay must be >= 1.0"),
], ids=["no-contact", "too-fast"])
def test_remote_politeness_refusals(tmp_path, capsys, extra, message):
    args = ["--profile", "mediawiki", "--start-urls", "https://wiki.example.org/wiki/", "--allowed-domains",
            "wiki.example.org", *extra, "--out", str(tmp_path / "c")]
    code, err = run_cli(args, capsys)
    assert code == 2 and message in err


def test_empty_allow_list_fails_closed(tmp_path, capsys):
    code, err = run_cli(["--profile", "mediawiki", "--start-urls", "https://wiki.example.org/wiki/", *CONTACT_UA,
                         "--out", str(tmp_path / "c")], capsys)
    assert code == 2 and "allow-list fails closed" in err


def test_permission_lets_the_policy_pass():
    from crawlers.job import check_policy
    from crawlers.stage import build_job

    cfg = CrawlConfig(start_urls=["https://radiopaedia.org/encyclopaedia"], allowed_domains=["radiopaedia.org"],
                      user_agent="x (+https://example.org/contact)", permission="Written permission of 2025-01-01",
                      entities=["pneumothorax"])
    job = build_job(cfg, __import__("pathlib").Path("/tmp/unused"), None)
    assert job.download_delay == 2.0  # encyclopedia default for remote hosts
    check_policy(job)  # no exception


def test_unknown_entity_and_generic_without_selectors_are_config_errors(tmp_path):
    from crawlers.stage import build_job

    with pytest.raises(ConfigError, match="unknown entity id"):
        build_job(CrawlConfig(fixture=True, entities=["not_an_entity"]), tmp_path, "http://127.0.0.1:1")
    with pytest.raises(ConfigError, match="needs 'selectors'"):
        build_job(CrawlConfig(fixture=True, profile="generic"), tmp_path, "http://127.0.0.1:1")


def test_fixture_crawl_through_the_stage(tmp_path):
    cfg = CrawlConfig(fixture=True, out=tmp_path / "crawl", entities=list(TEST_ENTITIES), retry_backoff=0.05,
                      permission="loopback test statement", autothrottle=False)
    result = execute_stage(STAGE, cfg, quiet=True)
    assert result.status == "complete"
    out = tmp_path / "crawl"
    lines = [json.loads(line) for line in (out / "descriptions.jsonl").read_text().splitlines()]
    dataset = load_from_disk(str(out / "descriptions"))
    assert dataset.num_rows == len(lines) and dataset[0] == lines[0]
    counts = json.loads((out / "manifest.json").read_text())["counts"]
    assert counts["permission"] == "loopback test statement"
    assert counts["items"] == len(lines) and len(counts["items_per_entity"]) >= 20
    assert counts["robots_forbidden"] == 1 and counts["offsite_refused"] == 1 and counts["retries"] == 2
    assert counts["duplicates_dropped"] == 4 and counts["parse_errors"] == 1
    assert counts["responses_by_status"]["500"] == 2 and counts["responses_by_status"]["404"] == 1
    assert not (out / ".jobdir").exists() and not (out / ".httpcache").exists()
    assert execute_stage(STAGE, cfg, quiet=True).status == "skipped"


def test_generic_profile_with_selectors_file(tmp_path):
    selectors = tmp_path / "selectors.yaml"
    selectors.write_text(
        "index_links: ul.article-index a\nnext_page: a.next_page\ntitle: h1.header-title\n"
        "content: div.user-generated-content\nsections: ['^radiographic features$']\n"
        "modalities: ['^(plain|chest) radiograph$']\n")
    cfg = CrawlConfig(fixture=True, profile="generic", selectors=selectors, out=tmp_path / "g", search=False,
                      entities=["atelectasis", "consolidation", "nodule"], autothrottle=False)
    execute_stage(STAGE, cfg, quiet=True)
    lines = [json.loads(line) for line in (tmp_path / "g" / "descriptions.jsonl").read_text().splitlines()]
    assert {r["entity"] for r in lines} == {"atelectasis", "consolidation", "nodule"}
    assert {r["source"] for r in lines} == {"generic"}


@pytest.mark.slow
def test_a_crawl_that_finds_nothing_fails(tmp_path):
    cfg = CrawlConfig(fixture=True, out=tmp_path / "none", entities=["scoliosis"], search=False,
                      start_urls=["/encyclopaedia?page=3"], autothrottle=False)
    with pytest.raises(StageError, match="no descriptions"):
        execute_stage(STAGE, cfg, quiet=True)
