"""Harmonize writes byte-identical artifacts whatever order its requests complete in."""

from __future__ import annotations

import asyncio
from pathlib import Path

from knowledge.fake_server import FakeOpenAIServer
from knowledge.llm import ChatClient
from tests.knowledge.conftest import harmonize

ENTITIES = ["pneumothorax", "pleural_effusion", "atelectasis", "cardiomegaly", "edema"]


def _files(folder: Path) -> dict[str, bytes]:
    """Every file the stage wrote, except its manifest and log (which carry timestamps)."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name not in ("manifest.json", "stage.log", "llm_cache.sqlite")}


def _delay_calls(monkeypatch, reverse: bool, finished: list[str]) -> None:
    """Make the i-th request of a run wait i (or n - i) ticks before it runs, so that requests complete in
    opposite orders in the two runs; ``finished`` records the completion order."""
    original = ChatClient.chat
    started: list[str] = []

    async def delayed(self, messages, *args, **kwargs):
        key = messages[-1]["content"]
        started.append(key)
        rank = len(started)
        await asyncio.sleep(0.02 * ((12 - rank) if reverse else rank))
        answer = await original(self, messages, *args, **kwargs)
        finished.append(key)
        return answer

    monkeypatch.setattr(ChatClient, "chat", delayed)


def test_shuffled_completion_gives_byte_identical_artifacts(tmp_path, descriptions, monkeypatch):
    config = {"entities": ENTITIES, "backend": "openai", "model": "fake", "descriptions": descriptions,
              "llm_sources": ["definition", "description"], "sentences_per_request": 1, "concurrency": 8,
              "max_requests_per_entity": 3, "timeout": 5.0,
              # the sentence encoder is deterministic and order-independent; leaving it out keeps this test fast
              "min_semantic": None, "dedup_threshold": None}
    with FakeOpenAIServer() as server:
        harmonize(tmp_path / "kb", base_url=server.base_url, **config)  # fills the answer cache
        outputs, orders = [], []
        for reverse in (False, True):
            finished: list[str] = []
            with monkeypatch.context() as patch:
                _delay_calls(patch, reverse, finished)
                result, _ = harmonize(tmp_path / "kb", force=True, base_url=server.base_url, **config)
            outputs.append((_files(result.out), result.manifest["output_hash"]))
            orders.append(finished)
    assert result.manifest["counts"]["llm_calls"] == 0  # identical (cached) answers in both reruns
    assert len(orders[0]) >= 8 and orders[0] != orders[1]  # the completion order really differed
    (files_a, hash_a), (files_b, hash_b) = outputs
    assert files_a.keys() == files_b.keys() and "knowledge.json" in files_a
    assert [name for name in files_a if files_a[name] != files_b[name]] == []
    assert hash_a == hash_b
