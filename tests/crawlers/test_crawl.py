"""Real Scrapy crawls of the fixture site, in child processes, checked against the server's own request log."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections import Counter, defaultdict

import pytest

from crawlers.fixture_site import FixtureSite, expected_sentences
from crawlers.items import FIELDS
from crawlers.text import sentence_id
from tests.crawlers.helpers import REPO, crawl, fixture_job, rows, stats

ENTITY_OF_TITLE = {  # the fixture titles and the vocabulary entity each must be filed under
    "Atelectasis": "atelectasis", "Cardiomegaly": "cardiomegaly", "Pleural effusion": "pleural_effusion",
    "Infiltration": "infiltration", "Lung mass": "mass", "Pulmonary nodule": "nodule", "Pneumonia": "pneumonia",
    "Pneumothorax": "pneumothorax", "Consolidation": "consolidation", "Pulmonary oedema": "edema",
    "Emphysema": "emphysema", "Pulmonary fibrosis": "fibrosis", "Pleural thickening": "pleural_thickening",
    "Hiatus hernia": "hernia", "Rib fracture": "fracture", "Support devices": "support_devices",
    "Lung opacity": "lung_opacity", "Enlarged cardiomediastinum": "enlarged_cardiomediastinum",
    "Lung lesion": "lung_lesion", "Pleural plaque": "pleural_other", "Normal chest radiograph": "no_finding",
    "Lung cancer": "lung_tumor", "Pulmonary edema": "edema",
}


def by_entity(items: list[dict]) -> dict[str, set[str]]:
    grouped: dict[str, set[str]] = defaultdict(set)
    for item in items:
        grouped[item["entity"]].add(item["sentence"])
    return grouped


def expected_by_entity(source: str) -> dict[str, set[str]]:
    return {ENTITY_OF_TITLE[title]: set(s) for title, s in expected_sentences()[source].items()}


@pytest.fixture(scope="module")
def encyclopedia_crawl(tmp_path_factory):
    """One full encyclopedia crawl shared by the tests below (its own site: the flaky counter is per site)."""
    out = tmp_path_factory.mktemp("encyclopedia")
    with FixtureSite(slow_seconds=0.3) as site:
        job = fixture_job(site, out)
        result = crawl(job)
        log = list(site.requests)
        yield {"out": out, "result": result, "log": log, "site": site, "job": job}


def test_exact_items_per_entity(encyclopedia_crawl):
    assert encyclopedia_crawl["result"].returncode == 0, encyclopedia_crawl["result"].stderr[-2000:]
    items = rows(encyclopedia_crawl["out"])
    expected = expected_by_entity("encyclopedia")
    assert len(expected) >= 20
    assert by_entity(items) == expected
    assert len(items) == sum(len(s) for s in expected.values())  # nothing twice


def test_item_schema_and_provenance(encyclopedia_crawl):
    items = rows(encyclopedia_crawl["out"])
    base = encyclopedia_crawl["site"].base_url
    for item in items:
        assert list(item) == list(FIELDS)
        assert item["id"] == sentence_id(item["entity"], item["sentence"])
        assert item["source"] == "encyclopedia" and item["site"] == "127.0.0.1"
        assert item["url"].startswith(base + "/articles/")
        assert item["section"] in ("Radiographic features > Plain radiograph",
                                   "Radiographic features > Chest radiograph", "Radiographic features")
        assert item["licence"].startswith("CC0-1.0")
        assert item["title"] in item["attribution"] and "Fixture Author" in item["attribution"]
        assert item["retrieved_at"].endswith("+00:00")
        assert "[" not in item["sentence"] and "\u200b" not in item["sentence"]
    nodule = {i["section"] for i in items if i["entity"] == "nodule"}
    assert nodule == {"Radiographic features"}  # no modality subsection: the whole section


def test_robots_disallowed_never_requested(encyclopedia_crawl):
    paths = [r.path for r in encyclopedia_crawl["log"] if r.host == "127.0.0.1"]
    assert paths.count("/robots.txt") == 1
    assert not [p for p in paths if p.startswith("/private/")]
    assert stats(encyclopedia_crawl["out"])["robotstxt/forbidden"] == 1


def test_off_domain_never_fetched(encyclopedia_crawl):
    assert [r for r in encyclopedia_crawl["log"] if r.host == "127.0.0.2"] == []
    assert stats(encyclopedia_crawl["out"])["devide/offsite_refused"] == 1
    kinds = Counter(e["kind"] for e in rows(encyclopedia_crawl["out"], "errors.jsonl"))
    assert kinds == {"offsite": 1, "robots_forbidden": 1, "http_404": 1, "parse_error": 1}


def test_flaky_page_recovered_by_retries(encyclopedia_crawl):
    statuses = [r.status for r in encyclopedia_crawl["log"] if r.path == "/articles/pneumothorax"]
    assert statuses == [500, 500, 200]
    assert stats(encyclopedia_crawl["out"])["retry/count"] == 2
    assert "pneumothorax" in by_entity(rows(encyclopedia_crawl["out"]))


def test_duplicates_dropped(encyclopedia_crawl):
    paths = [r.path for r in encyclopedia_crawl["log"]]
    assert "/articles/pleural-effusion" in paths and "/articles/pleural-effusion?lang=gb" in paths
    assert stats(encyclopedia_crawl["out"])["devide/duplicates_dropped"] == 4  # its 4 sentences, second copy
    ids = [i["id"] for i in rows(encyclopedia_crawl["out"])]
    assert len(ids) == len(set(ids))


def test_redirect_followed_and_404_recorded(encyclopedia_crawl):
    log = {(r.path, r.status) for r in encyclopedia_crawl["log"]}
    assert ("/articles/cardiac-enlargement", 301) in log and ("/articles/cardiomegaly", 200) in log
    assert ("/articles/lobar-collapse", 404) in log


def test_malformed_page_is_a_recorded_parse_error(encyclopedia_crawl):
    assert encyclopedia_crawl["result"].returncode == 0
    errors = [e for e in rows(encyclopedia_crawl["out"], "errors.jsonl") if e["kind"] == "parse_error"]
    assert [e["url"].rsplit("/", 1)[-1] for e in errors] == ["bulla"]
    assert "no article body" in errors[0]["reason"]
    assert "bulla" not in by_entity(rows(encyclopedia_crawl["out"]))


def test_user_agent_sent(encyclopedia_crawl):
    agents = {r.user_agent for r in encyclopedia_crawl["log"]}
    assert agents == {encyclopedia_crawl["job"].user_agent}


@pytest.mark.parametrize("api", [False, True], ids=["html", "api"])
def test_mediawiki_exact_items(tmp_path, api):
    with FixtureSite() as site:
        result = crawl(fixture_job(site, tmp_path, "mediawiki", mediawiki_api=api))
        log = list(site.requests)
    assert result.returncode == 0, result.stderr[-2000:]
    items = rows(tmp_path)
    expected = expected_by_entity("mediawiki")
    assert len(expected) >= 10
    assert by_entity(items) == expected
    assert all(i["source"] == "mediawiki" and "/wiki/" in i["url"] for i in items)
    if not api:  # Special:Search "go" redirected the alias to the article
        assert ("/wiki/Special:Search?search=Hiatal+hernia&go=Go", 302) in {(r.path, r.status) for r in log}


@pytest.mark.slow
def test_interrupted_crawl_resumes_without_refetching(tmp_path):
    """Ctrl-C (SIGINT) mid-crawl, then the same job again: JOBDIR continues where it stopped."""
    out = tmp_path / "out"
    with FixtureSite(slow_seconds=0.3) as site:
        job = fixture_job(site, out, jobdir=tmp_path / "jobdir", download_delay=0.05)
        out.mkdir()
        (out / "job.json").write_text(job.model_dump_json())
        proc = subprocess.Popen([sys.executable, "-m", "crawlers.run", str(out / "job.json"), "--progress"],
                                cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for line in proc.stdout:  # wait until the crawl is well under way
            if json.loads(line).get("pages", 0) >= 20:
                break
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)
        first = [(r.path, r.status) for r in site.requests]
        first_stats = stats(out)
        site.reset_log()
        second_result = crawl(job)
        second = [(r.path, r.status) for r in site.requests]
    assert first_stats["finish_reason"] == "shutdown"
    assert 0 < len(rows(out)) or first_stats.get("item_scraped_count", 0) == 0
    assert second_result.returncode == 0, second_result.stderr[-2000:]
    fetched_first = {p for p, s in first if s == 200 and p != "/robots.txt"}
    refetched = [p for p, s in second if p in fetched_first]
    assert refetched == []
    assert by_entity(rows(out)) == expected_by_entity("encyclopedia")
    assert len(rows(out)) == sum(len(s) for s in expected_by_entity("encyclopedia").values())


def test_policy_refusal_exits_3(tmp_path):
    with FixtureSite() as site:
        job = fixture_job(site, tmp_path, allowed_domains=["127.0.0.1", "radiopaedia.org"])
        result = crawl(job)
        assert site.requests == []
    assert result.returncode == 3
    assert "without --permission" in result.stderr


def test_scrapy_check_contracts(tmp_path):
    with FixtureSite() as site:
        env = {**__import__("os").environ, "DEVIDE_FIXTURE_URL": site.base_url}
        result = subprocess.run(
            [sys.executable, "-m", "scrapy", "check", "encyclopedia", "mediawiki", "-s", "HTTPCACHE_ENABLED=0",
             "-s", "DEVIDE_ALLOWED_DOMAINS=127.0.0.1", "-s", f"DEVIDE_OUTPUT_DIR={tmp_path}", "-s", "DOWNLOAD_DELAY=0"],
            check=False, cwd=REPO / "crawlers", env=env, capture_output=True, text=True, timeout=60)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "contracts" in output and "OK" in output
    ran = int(output.split("Ran ")[1].split(" contract")[0])
    assert ran >= 10
