"""The harmoniser against a fault-injecting OpenAI-compatible server on loopback."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from devide.stage import StageError
from knowledge.base import KnowledgeBase, load_knowledge
from knowledge.cache import AnswerCache
from knowledge.fake_server import FakeOpenAIServer
from knowledge.harmonizer import support_score
from knowledge.llm import ChatClient, ChatSettings, PrivacyError, is_loopback_url
from knowledge.schema import AnswerError, parse_answer
from tests.knowledge.conftest import harmonize

ENTITIES = ["pneumothorax", "pleural_effusion", "edema", "atelectasis", "mass", "cardiomegaly", "hernia"]
FAULTS = {
    "Finding: Pneumothorax": ["429", "500"],  # retried, then ok
    "Finding: Pleural effusion": ["timeout"],  # client timeout, retried
    "Finding: Pulmonary edema": ["malformed", "malformed"],  # invalid after the re-ask: failed
    "Finding: Atelectasis": ["schema"],  # fixed by the re-ask
    "Finding: Mass": ["500"] * 10,  # gives up after retries: failed
    "Finding: Cardiomegaly": ["hallucinate"],  # ungrounded sentence: rejected, source kept
}


def llm_config(server: FakeOpenAIServer, **over):
    config = {"entities": ENTITIES, "backend": "openai", "base_url": server.base_url, "model": "fake",
                  "llm_sources": ["definition", "description"], "timeout": 5.0, "max_retries": 2, "max_reasks": 1,
                  "concurrency": 3, "sentences_per_request": 2}
    return {**config, **over}


def test_every_entity_ends_harmonised_or_failed_with_reason(tmp_path, descriptions):
    with FakeOpenAIServer({k: list(v) for k, v in FAULTS.items()}, hang_seconds=4.0) as server:
        result, _ = harmonize(tmp_path / "kb", **llm_config(server, descriptions=descriptions, timeout=1.5))
    out = result.out
    failed = {f["entity"]: " ".join(f["reasons"]) for f in json.loads((out / "failed.json").read_text())}
    assert set(failed) == {"edema", "mass"}
    assert "invalid answer after 1 re-asks: malformed JSON" in failed["edema"]
    assert "gave up after 3 attempts: http_500" in failed["mass"]
    knowledge = load_knowledge(out)
    assert list(knowledge) == ENTITIES and all(knowledge.values())  # failed entities keep rules-tagged sources
    usage = json.loads((out / "usage.json").read_text())
    assert usage["errors"]["http_429"] == 1 and usage["errors"]["timeout"] >= 1  # more if the machine is busy
    assert usage["errors"]["http_500"] == 1 + 3
    assert usage["errors"]["invalid_answer"] == 3 and usage["reasks"] == 2
    assert usage["grounding_rejections"] == 1 and usage["models"] == ["fake-harmonizer-1"]
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0
    kb = KnowledgeBase.load(out)
    cardio = kb.for_entity("cardiomegaly")
    assert not any("green cheese" in r.sentence for r in cardio)
    assert {r.provenance["method"] for r in cardio} == {"fallback-ungrounded"}
    rejected = [json.loads(line) for line in (out / "rejections.jsonl").read_text().splitlines()]
    assert {r["reason"] for r in rejected if r["input"] == "descriptions"} == {
        "unknown entity 'unicorn_lung'", "missing field(s) sentence, url", "malformed JSON: Expecting value"}
    llm_rows = [r for r in kb.rows if r.provenance["method"] == "llm"]
    assert llm_rows and all(r.provenance["model"] == "fake-harmonizer-1" and len(r.provenance["cache_key"]) == 64
                            and r.provenance["sources"] for r in llm_rows)
    pneumo = [r for r in llm_rows if r.entity == "pneumothorax" and r.source == "description"]
    assert any(s["url"].endswith("/articles/pneumothorax") for r in pneumo for s in r.provenance["sources"])


def test_cached_rerun_makes_zero_calls(tmp_path, descriptions):
    with FakeOpenAIServer() as server:
        first, _ = harmonize(tmp_path / "kb", **llm_config(server, descriptions=descriptions))
        calls = len(server.requests)
        assert calls == first.manifest["counts"]["llm_calls"] > 0
        second, _ = harmonize(tmp_path / "kb", force=True, **llm_config(server, descriptions=descriptions))
        assert len(server.requests) == calls
    assert second.manifest["counts"]["llm_calls"] == 0
    assert second.manifest["counts"]["cache_hits"] == calls
    assert load_knowledge(first.out) == load_knowledge(second.out)


KILL_SCRIPT = """
import sys
from pathlib import Path
from knowledge.stage import STAGE, HarmonizeConfig
from devide.stage import execute_stage
cfg = HarmonizeConfig(out=Path(sys.argv[1]), base_url=sys.argv[2], backend="openai", model="fake",
                      entities={entities!r}, llm_sources=["definition"], concurrency=1, timeout=5,
                      min_semantic=None, dedup_threshold=None)  # no sentence encoder to load in each process
execute_stage(STAGE, cfg)
"""


def test_killed_run_resumes_without_duplicate_calls(tmp_path):
    entities = ["pneumothorax", "pleural_effusion", "edema", "atelectasis", "mass", "cardiomegaly", "hernia", "nodule"]
    out = tmp_path / "kb"
    with FakeOpenAIServer(latency=0.3) as server:
        script = KILL_SCRIPT.format(entities=entities)
        env = {**os.environ, "DEVIDE_QUIET": "1"}
        proc = subprocess.Popen([sys.executable, "-c", script, str(out), server.base_url], env=env,
                                cwd=Path(__file__).resolve().parents[2])
        deadline = time.monotonic() + 60
        while server.ok_count() < 3 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        time.sleep(0.5)  # let an answer in flight at the kill finish on the server side
        partial = out.with_name("kb.partial")
        assert not out.exists() and partial.is_dir()
        done = len(AnswerCache(partial / "llm_cache.sqlite"))
        assert 1 <= done < len(entities)
        before = len(server.requests)
        result, _ = harmonize(out, base_url=server.base_url, backend="openai", model="fake", entities=entities,
                              llm_sources=["definition"], concurrency=1, timeout=5, min_semantic=None,
                              dedup_threshold=None)
        rerun_calls = len(server.requests) - before
    assert rerun_calls == len(entities) - done
    assert result.manifest["counts"]["cache_hits"] == done
    assert list(load_knowledge(out)) == entities


def test_privacy_guard_refuses_reports_to_remote_endpoint(tmp_path, report_root):
    with pytest.raises(StageError, match="refusing to send report-derived text"):
        harmonize(tmp_path / "kb", backend="openai", base_url="http://10.255.255.1:9/v1", model="m",
                  reports=report_root, entities=["pleural_effusion"])
    assert not (tmp_path / "kb").exists()
    settings = ChatSettings(base_url="https://api.example.com/v1", model="m")
    client = ChatClient(settings, AnswerCache(tmp_path / "c.sqlite"), "v")
    with pytest.raises(PrivacyError):
        client.check_privacy(contains_reports=True)
    client.check_privacy(contains_reports=False)
    settings.allow_remote_reports = True
    client.check_privacy(contains_reports=True)
    assert is_loopback_url("http://127.0.0.1:8080/v1") and is_loopback_url("http://localhost/v1")
    assert is_loopback_url("http://[::1]:1/v1") and not is_loopback_url("http://127.0.0.1.nip.io/v1")


def test_reports_go_to_a_loopback_server(tmp_path, report_root):
    with FakeOpenAIServer() as server:
        result, _ = harmonize(tmp_path / "kb", backend="openai", base_url=server.base_url, model="m",
                              reports=report_root, entities=["pleural_effusion", "pneumothorax", "cardiomegaly"])
        prompts = [r["user"] for r in server.requests]
    assert any("(report) Small left pleural effusion." in p for p in prompts)
    kb = KnowledgeBase.load(result.out)
    reports = [r for r in kb.rows if r.source == "report"]
    effusion = [r.sentence for r in reports if r.entity == "pleural_effusion"]
    assert effusion[0] == "Small left pleural effusion."  # the most frequent phrasing comes first
    assert "Moderate right pleural effusion." in effusion
    assert all(r.provenance["sources"][0]["ref"].startswith("files/p1") for r in reports)
    assert not any("No pneumothorax" in r.sentence for r in kb.rows)  # negated sentences are not knowledge
    assert result.manifest["counts"]["reports_read"] == 3


def test_api_key_used_but_never_written(tmp_path, descriptions, monkeypatch, caplog):
    secret = "sk-test-DO-NOT-LEAK-1234567890"
    monkeypatch.setenv("DEVIDE_TEST_KEY", secret)
    caplog.set_level(logging.DEBUG)
    with FakeOpenAIServer({"Finding: Pneumothorax": ["500"]}) as server:
        result, _ = harmonize(tmp_path / "kb", **llm_config(server, descriptions=descriptions, api_key_env="DEVIDE_TEST_KEY"))
        assert all(r["headers"].get("authorization") == f"Bearer {secret}" for r in server.requests)
    for path in result.out.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path
    assert secret not in caplog.text


def test_bad_configs_are_one_line_errors(tmp_path):
    with pytest.raises(StageError, match="needs base_url and model"):
        harmonize(tmp_path / "a", backend="openai")
    with pytest.raises(StageError, match="unknown entity ids"):
        harmonize(tmp_path / "b", backend="rules", entities=["unicorn"])
    from devide.config import ConfigError, load_config
    from knowledge.stage import HarmonizeConfig
    with pytest.raises(ConfigError, match="NAME of an environment variable"):
        load_config(HarmonizeConfig, overrides={"api_key_env": "sk-abc.def"})


def test_missing_local_extra_falls_back_loudly(tmp_path, descriptions, monkeypatch, caplog):
    monkeypatch.setattr("knowledge.stage.local_backend_problem", lambda: "llama-cpp-python is not installed")
    caplog.set_level(logging.WARNING)
    result, _ = harmonize(tmp_path / "kb", descriptions=descriptions, entities=["pneumothorax"])
    assert result.manifest["counts"]["backend_used"] == "rules"
    assert "LOCAL LLM BACKEND UNAVAILABLE" in caplog.text
    with pytest.raises(StageError, match="local LLM backend unavailable"):
        harmonize(tmp_path / "kb2", descriptions=descriptions, entities=["pneumothorax"], fallback_to_rules=False)


def test_grounding_score_by_hand():
    source = "A pneumothorax shows a thin white visceral pleural line with no lung markings beyond it."
    assert support_score("Pneumothorax shows a thin pleural line.", source, ["pneumothorax"]) == 1.0
    # content words: thin, pleura(l), line, caused, tuber(culosis) -> 3 of 5 supported
    assert support_score("Thin pleural line caused by tuberculosis.", source) == pytest.approx(3 / 5)
    assert support_score("Pneumothorax.", source, ["pneumothorax"]) == 0.0


def test_answer_validation():
    ok = parse_answer('{"sentences": [{"aspect": "location", "sentence": "At the apex.", "source": 2}]}', 2)
    assert ok.sentences[0].aspect == "location"
    assert parse_answer('```json\n{"sentences": [{"aspect": "shape", "sentence": "Round.", "source": 1}]}\n```', 1)
    for bad, message in [("", "empty"), ("{", "malformed JSON"), ('{"facts": []}', "schema violation"),
                         ('{"sentences": [{"aspect": "colour", "sentence": "Red.", "source": 1}]}', "aspect"),
                         ('{"sentences": [{"aspect": "shape", "sentence": "Round.", "source": 3}]}', "does not exist")]:
        with pytest.raises(AnswerError, match=message):
            parse_answer(bad, 2)


class _FakeLocalServer:
    """Stands in for LocalLlamaServer: serves the fake OpenAI server, counts starts."""

    starts = 0

    def __init__(self, *args, **kwargs):
        self.model_path = Path(__file__).parent / "fixtures" / "descriptions.jsonl"  # any file: identity only
        self.fake = FakeOpenAIServer()

    def start(self) -> str:
        type(self).starts += 1
        return self.fake.start().base_url

    def stop(self) -> None:
        self.fake.stop()


def test_local_backend_starts_server_only_on_cache_miss(tmp_path, descriptions, monkeypatch):
    monkeypatch.setattr("knowledge.stage.local_backend_problem", lambda: None)
    monkeypatch.setattr("knowledge.stage.LocalLlamaServer", _FakeLocalServer)
    _FakeLocalServer.starts = 0
    config = {"descriptions": descriptions, "entities": ["pneumothorax", "pleural_effusion"]}
    first, _ = harmonize(tmp_path / "kb", **config)
    assert _FakeLocalServer.starts == 1 and first.manifest["counts"]["llm_calls"] == 2
    assert first.manifest["counts"]["backend_used"] == "local"
    second, _ = harmonize(tmp_path / "kb", force=True, **config)  # new port, same cache identity
    assert _FakeLocalServer.starts == 1 and second.manifest["counts"]["llm_calls"] == 0
    assert second.manifest["counts"]["cache_hits"] == 2


def test_endpoint_start_failure_is_fatal(tmp_path, descriptions, monkeypatch):
    monkeypatch.setattr("knowledge.stage.local_backend_problem", lambda: None)

    class Broken(_FakeLocalServer):
        def start(self) -> str:
            raise RuntimeError("llama.cpp server exited with code 1 during start-up")

    monkeypatch.setattr("knowledge.stage.LocalLlamaServer", Broken)
    with pytest.raises(StageError, match="could not start the LLM server: llama.cpp server exited"):
        harmonize(tmp_path / "kb", descriptions=descriptions, entities=["pneumothorax", "pleural_effusion"])


def test_run_request_budget_rules_tags_the_rest(tmp_path, descriptions):
    with FakeOpenAIServer() as server:
        result, _ = harmonize(tmp_path / "kb", **llm_config(server, descriptions=descriptions, max_llm_requests=2))
        assert len(server.requests) == 2
    kb = KnowledgeBase.load(result.out)
    methods = {r.provenance["method"] for r in kb.rows}
    assert "over-request-budget" in methods and "llm" in methods
    assert set(load_knowledge(result.out)) == set(ENTITIES)
