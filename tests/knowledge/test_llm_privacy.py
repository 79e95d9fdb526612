"""Issue 19.2 and 19.9 for the LLM client: proxy variables must not carry report text off the machine, a
redirect must not either, and credentials inside ``base_url`` never reach the answer cache.

Every listener is on 127.0.0.0/8. The "proxy" and the redirect target are recording listeners on
127.0.0.2 standing in for a remote host; a refusal to reach a non-loopback address is tested with a transport
that records and fails, so a broken guard cannot send a byte anywhere.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx2
import openai
import pytest

from knowledge.cache import AnswerCache
from knowledge.fake_server import FakeOpenAIServer
from knowledge.llm import ChatClient, ChatSettings, LLMError, PrivacyError, proxy_for, request_route

REPORT = [{"role": "user", "content": "[1] (report) Large right pleural effusion."}]
PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "all_proxy",
              "no_proxy")


class Recorder:
    """A TCP listener on 127.0.0.2 that records every connection and what arrived, then hangs up."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.2", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.received: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.2:{self.sock.getsockname()[1]}"

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(1.0)
                try:
                    self.received.append(conn.recv(65536))
                except OSError:
                    self.received.append(b"")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()


@pytest.fixture
def recorder():
    listener = Recorder()
    yield listener
    listener.close()


@pytest.fixture(autouse=True)
def no_inherited_proxies(monkeypatch):
    for name in PROXY_VARS:
        monkeypatch.delenv(name, raising=False)


def ask(settings: ChatSettings, tmp_path, name: str = "c.sqlite") -> tuple[ChatClient, object]:
    client = ChatClient(settings, AnswerCache(tmp_path / name), "v1")

    async def go():
        try:
            return await client.chat(REPORT, json.loads, contains_reports=True)
        finally:
            await client.aclose()

    return client, asyncio.run(go())


def test_proxy_variables_do_not_route_a_loopback_endpoint_through_the_proxy(tmp_path, monkeypatch, recorder):
    """Before the fix every request, report batches included, went to HTTP_PROXY."""
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY"):
        monkeypatch.setenv(name, recorder.url)
    with FakeOpenAIServer() as server:
        _, answer = ask(ChatSettings(base_url=server.base_url, model="m", max_retries=0, timeout=5), tmp_path)
        assert len(server.requests) == 1 and "pleural effusion" in server.requests[0]["user"]
    assert answer.value["sentences"][0]["sentence"] == "Large right pleural effusion."
    assert recorder.received == []


class Redirector(BaseHTTPRequestHandler):
    target = ""

    def log_message(self, *args) -> None:
        pass

    def do_POST(self) -> None:
        self.send_response(307)
        self.send_header("Location", self.target + self.path)
        self.send_header("Content-Length", "0")
        self.end_headers()


def test_a_redirect_from_a_loopback_endpoint_is_not_followed(tmp_path, recorder):
    handler = type("To", (Redirector,), {"target": recorder.url})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        settings = ChatSettings(base_url=f"http://127.0.0.1:{server.server_address[1]}/v1", model="m",
                                max_retries=0, timeout=5)
        with pytest.raises(LLMError, match="307"):
            ask(settings, tmp_path)
    finally:
        server.shutdown()
        server.server_close()
    assert recorder.received == []


def test_a_configured_proxy_counts_as_an_endpoint_for_the_guard(tmp_path, monkeypatch):
    monkeypatch.setenv("HTTPS_PROXY", "http://10.1.2.3:3128")
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:3128")
    assert request_route("https://llm.example.org/v1") == ["https://llm.example.org/v1", "http://10.1.2.3:3128"]
    assert request_route("http://llm.example.org/v1") == ["http://llm.example.org/v1", "http://127.0.0.1:3128"]
    assert request_route("http://127.0.0.1:8000/v1") == ["http://127.0.0.1:8000/v1"]  # loopback: always direct
    monkeypatch.setenv("NO_PROXY", "llm.example.org")
    assert proxy_for("https://llm.example.org/v1") is None

    sent: list[str] = []

    def record_and_fail(request):
        sent.append(str(request.url))
        raise AssertionError("the guard let a request through")

    settings = ChatSettings(base_url="https://llm.example.com/v1", model="m", max_retries=0, timeout=5)
    client = ChatClient(settings, AnswerCache(tmp_path / "c.sqlite"), "v1")
    client._http_client = lambda: openai.DefaultAsyncHttpxClient(  # type: ignore[method-assign]
        transport=httpx2.MockTransport(record_and_fail), timeout=5)
    with pytest.raises(PrivacyError, match=r"llm.example.com \(through proxy 10.1.2.3\)"):
        asyncio.run(client.chat(REPORT, json.loads, contains_reports=True))
    assert sent == []


def test_credentials_in_base_url_never_reach_the_cache(tmp_path):
    secret = "sk-live-TopSecretValue1234567890"
    with FakeOpenAIServer() as server:
        url = server.base_url.replace("http://", f"http://alice:{secret}@")
        client, _ = ask(ChatSettings(base_url=url, model="m", max_retries=0, timeout=5), tmp_path)
        assert len(server.requests) == 1
        assert client.identity() == server.base_url.replace("http://", "http://***REDACTED***@")
    assert secret.encode() not in (tmp_path / "c.sqlite").read_bytes()
    query = ChatClient(ChatSettings(base_url="https://h.example/v1?api_key=K123&region=eu", model="m"),
                       AnswerCache(tmp_path / "d.sqlite"), "v1")
    assert query.identity() == "https://h.example/v1?api_key=***REDACTED***&region=eu"
