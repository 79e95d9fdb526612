"""Integration with the real llama.cpp server and SmolLM2-135M-Instruct (needs the llm-local extra)."""

from __future__ import annotations

import json
import socket
from urllib.parse import urlparse

import pytest

from knowledge.base import KnowledgeBase
from knowledge.llm import LocalLlamaServer, local_backend_problem
from tests.knowledge.conftest import harmonize

PROBLEM = local_backend_problem()
pytestmark = [pytest.mark.slow, pytest.mark.llm,
              pytest.mark.skipif(PROBLEM is not None, reason=f"llm-local extra missing: {PROBLEM}")]


def _port_open(url: str) -> bool:
    parsed = urlparse(url)
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((parsed.hostname, parsed.port)) == 0


def test_local_server_starts_answers_and_stops(tmp_path):
    server = LocalLlamaServer(threads=2, log_path=tmp_path / "server.log")
    with server as base_url:
        assert base_url.startswith("http://127.0.0.1:") and _port_open(base_url)
    assert server.process is not None and server.process.poll() is not None
    assert not _port_open(base_url)


def test_harmonize_with_local_smollm2(tmp_path, descriptions, report_root):
    out = tmp_path / "kb"
    result, _ = harmonize(out, backend="local", descriptions=descriptions, reports=report_root,
                          entities=["pneumothorax", "pleural_effusion"], timeout=120, max_tokens=256)
    counts = result.manifest["counts"]
    assert counts["backend_used"] == "local" and counts["llm_calls"] >= 2
    usage = json.loads((out / "usage.json").read_text())
    assert usage["models"] and usage["completion_tokens"] > 0
    kb = KnowledgeBase.load(out)
    assert {r.entity for r in kb.rows} == {"pneumothorax", "pleural_effusion"}
    # Whatever the 135M model wrote, every kept sentence is grounded or is a source sentence itself.
    for row in kb.rows:
        method = row.provenance["method"]
        assert method in {"llm", "fallback-ungrounded", "uncovered-source", "verbatim", "rules-fallback"}
        if method == "llm":
            assert row.provenance["support"] >= 0.6
    again, _ = harmonize(out, force=True, backend="local", descriptions=descriptions, reports=report_root,
                         entities=["pneumothorax", "pleural_effusion"], timeout=120, max_tokens=256)
    assert again.manifest["counts"]["llm_calls"] == 0
