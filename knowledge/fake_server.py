"""A fault-injecting OpenAI-compatible chat server on loopback, for tests and benchmarks.

It answers ``POST /v1/chat/completions`` and ``GET /v1/models`` like a real server. A valid answer rewrites
nothing: it cites each numbered source of the prompt (``[3] (description) text``) and returns the source text
as the sentence, tagged by the rules backend, so the harmoniser's grounding check accepts it. A *fault plan*
decides, per request, what happens instead::

    FakeOpenAIServer(faults={"Pneumothorax": ["429", "500", "ok"], "Edema": ["malformed"] * 9})

The plan is keyed by a substring of the last user message (e.g. the finding's name); each matching request
consumes the next behaviour; an exhausted or missing plan answers ``ok``. Behaviours: ``ok``, ``429``, ``500``,
``timeout`` (hangs ``hang_seconds``), ``malformed`` (not JSON), ``schema`` (JSON in the wrong shape),
``hallucinate`` (valid JSON, sentence not supported by its source). Every request is recorded with its headers.
"""

from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

from knowledge.rules import tag_aspect

SOURCE_LINE = re.compile(r"^\[(\d+)\] \((\w+)\) (.+)$", re.MULTILINE)


class FakeOpenAIServer:
    """``with FakeOpenAIServer(...) as server:`` serves on ``server.base_url`` until the block exits."""

    def __init__(self, faults: dict[str, list[str]] | None = None, *, latency: float = 0.0,
                 hang_seconds: float = 3.0, model: str = "fake-harmonizer-1") -> None:
        self.faults = {k: list(v) for k, v in (faults or {}).items()}
        self.latency = latency
        self.hang_seconds = hang_seconds
        self.model = model
        self.requests: list[dict[str, Any]] = []
        self.outcomes: list[str] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def ok_count(self) -> int:
        with self._lock:
            return self.outcomes.count("ok")

    # -- behaviour
    def next_behaviour(self, user_text: str) -> str:
        with self._lock:
            for marker, plan in self.faults.items():
                if marker in user_text and plan:
                    return plan.pop(0)
        return "ok"

    def answer(self, body: dict[str, Any], behaviour: str) -> str:
        user = next((m["content"] for m in body.get("messages", []) if m.get("role") == "user"), "")
        sources = SOURCE_LINE.findall(user)
        if behaviour == "malformed":
            return '{"sentences": [ {"aspect": "location", "sentence": '
        if behaviour == "schema":
            return json.dumps({"facts": [s[2] for s in sources]})
        if behaviour == "hallucinate":
            return json.dumps({"sentences": [{"aspect": "shape", "source": 1,
                                              "sentence": "It is caused by eating green cheese on Tuesdays."}]})
        sentences = [{"aspect": tag_aspect(text, kind), "sentence": text, "source": int(n)}
                     for n, kind, text in sources]
        return json.dumps({"sentences": sentences or [{"aspect": "definition", "sentence": "None given.",
                                                       "source": 1}]})

    # -- server
    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, like real servers: no TCP set-up per request
            disable_nagle_algorithm = True  # headers and body are separate writes: no 40 ms delayed-ACK stall

            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def _send(self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for name, value in (headers or {}).items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test)

            def do_GET(self) -> None:
                self._send(200, {"object": "list", "data": [{"id": fake.model, "object": "model"}]})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                user = next((m["content"] for m in reversed(body.get("messages", [])) if m.get("role") == "user"), "")
                first_user = next((m["content"] for m in body.get("messages", []) if m.get("role") == "user"), "")
                behaviour = fake.next_behaviour(first_user)
                with fake._lock:
                    fake.requests.append({"body": body, "headers": {k.lower(): v for k, v in self.headers.items()}, "behaviour": behaviour,
                                          "user": user})
                if fake.latency:
                    time.sleep(fake.latency)
                if behaviour == "429":
                    self._send(429, {"error": {"message": "rate limited", "type": "rate_limit"}}, {"Retry-After": "0"})
                elif behaviour == "500":
                    self._send(500, {"error": {"message": "internal error", "type": "server_error"}})
                elif behaviour == "timeout":
                    time.sleep(fake.hang_seconds)
                    self._send(200, {"error": "too late"})
                else:
                    content = fake.answer(body, behaviour)
                    words = sum(len(str(m.get("content", "")).split()) for m in body.get("messages", []))
                    self._send(200, {
                        "id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()),
                        "model": fake.model,
                        "choices": [{"index": 0, "finish_reason": "stop",
                                     "message": {"role": "assistant", "content": content}}],
                        "usage": {"prompt_tokens": words, "completion_tokens": len(content.split()),
                                  "total_tokens": words + len(content.split())},
                    })
                with fake._lock:
                    fake.outcomes.append(behaviour)

        return Handler

    def start(self) -> FakeOpenAIServer:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
