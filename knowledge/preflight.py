"""Pre-flight probe of ``devide harmonize`` (see :mod:`devide.preflight`): the LLM backend it will use can start."""

from __future__ import annotations

import importlib

from devide.preflight import PreflightError, ProbeResult
from knowledge.config import HarmonizeConfig
from knowledge.llm import local_backend_problem


def check_harmonize(cfg: HarmonizeConfig) -> ProbeResult:
    """backend local: llama.cpp's server and the SmolLM2 GGUF are installed and the compiled library loads
    (a broken build fails here, not after the crawl); a missing extra is an error without ``fallback_to_rules``
    and a warning with it. backend openai: an endpoint and a model are named."""
    if cfg.backend == "openai" and (not cfg.base_url or not cfg.model):
        raise PreflightError("backend openai needs base_url and model")
    if cfg.backend != "local":
        return ProbeResult()
    problem = local_backend_problem()
    if problem is None:
        try:
            importlib.import_module("llama_cpp")
        except Exception as exc:  # noqa: BLE001 - a broken native build: report it in one line
            problem = f"llama_cpp does not load: {type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
    if problem is None:
        return ProbeResult()
    if not cfg.fallback_to_rules:
        raise PreflightError(f"local LLM backend unavailable: {problem}")
    return ProbeResult(warning=f"local LLM backend unavailable ({problem}); harmonize will fall back to RULES")
