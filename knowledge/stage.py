"""``devide harmonize``: descriptions + definitions + report sentences -> an aspect-tagged knowledge base.

Backends: ``local`` (default; llama.cpp's OpenAI-compatible server with SmolLM2-135M-Instruct, started on
127.0.0.1 and stopped when done; falls back to ``rules``, loudly, when the ``llm-local`` extra is missing),
``openai`` (any OpenAI-compatible ``base_url``: hosted, vLLM, Ollama, llama.cpp) and ``rules`` (no LLM).

Report-derived text never goes to a non-loopback endpoint unless ``allow_remote_reports`` is set. The API key is
read from the environment variable named by ``api_key_env``; it is never a config value and never written.
Answers are cached in SQLite (``llm_cache.sqlite`` in the artifact, seeded from the previous artifact and kept
in the partial folder across interruptions), so a rerun makes no call for work already done.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path

from devide.config import redact_url
from devide.stage import StageContext, StageError
from knowledge.base import write_knowledge_base
from knowledge.cache import AnswerCache
from knowledge.config import STAGE, HarmonizeConfig  # noqa: F401  (re-exported)
from knowledge.harmonizer import (
    EntityResult,
    Harmonizer,
    HarmonizerSettings,
    drop_near_duplicates,
    rules_only,
)
from knowledge.labeler import ReportLabeler
from knowledge.llm import (
    LOCAL_MODEL_ALIAS,
    ChatClient,
    ChatSettings,
    EndpointError,
    LocalLlamaServer,
    PrivacyError,
    is_loopback_url,
    local_backend_problem,
)
from knowledge.prompts import load_prompt
from knowledge.schema import answer_schema, schema_hash
from knowledge.sources import (
    SourceSet,
    definition_items,
    find_split_file,
    read_descriptions,
    sample_report_sentences,
    train_subjects,
)
from knowledge.vocabulary import load_vocabulary

logger = logging.getLogger("devide.harmonize")
CACHE_FILE = "llm_cache.sqlite"


# ---------------------------------------------------------------------------------------------- inputs


def collect_sources(cfg: HarmonizeConfig) -> tuple[list[str], SourceSet]:
    vocab = load_vocabulary(cfg.vocabulary)
    entities = cfg.entities or vocab.ids
    unknown = [e for e in entities if e not in vocab]
    if unknown:
        raise StageError(f"unknown entity ids {unknown[:5]} (see knowledge/data/entities.yaml)")
    sources = SourceSet()
    for entity, item in definition_items(vocab, entities).items():
        sources.add(entity, item)
    wanted = set(entities)
    if cfg.descriptions is not None:
        read_descriptions(cfg.descriptions, vocab, wanted, sources, cfg.descriptions_per_entity,
                          cfg.dedup_threshold)
    if cfg.reports is not None and cfg.report_sentences_per_entity:
        sample_report_sentences(cfg.reports, ReportLabeler(vocab), wanted, sources,
                                cfg.report_sentences_per_entity, cfg.max_reports, report_subjects(cfg))
    return entities, sources


def report_subjects(cfg: HarmonizeConfig) -> set[str] | None:
    """Train-split subjects whose reports may be sampled (validate/test reports never shape the knowledge);
    None, with a warning, when no split file is known."""
    split_file = cfg.reports_split_file or find_split_file(cfg.reports)
    if split_file is None:
        logger.warning("no MIMIC-CXR split file for %s: report sentences come from every subject, validate/test "
                       "included (set reports_split_file)", cfg.reports)
        return None
    if not Path(split_file).is_file():
        raise StageError(f"reports_split_file not found: {split_file}")
    try:
        subjects = train_subjects(Path(split_file))
    except ValueError as exc:
        raise StageError(str(exc)) from None
    logger.info("report sentences from the %d train subjects of %s", len(subjects), split_file)
    return subjects


def resolve_backend(cfg: HarmonizeConfig) -> str:
    if cfg.backend == "openai" and (not cfg.base_url or not cfg.model):
        raise StageError("backend openai needs base_url and model (e.g. --base-url http://127.0.0.1:8000/v1 --model M)")
    if cfg.backend != "local":
        return cfg.backend
    problem = local_backend_problem()
    if problem is None:
        return "local"
    if not cfg.fallback_to_rules:
        raise StageError(f"local LLM backend unavailable: {problem}")
    banner = "!" * 100
    logger.warning("%s\nLOCAL LLM BACKEND UNAVAILABLE: %s\nFalling back to the RULES backend: the knowledge base "
                   "will NOT be LLM-harmonised. Install it with `make install-llm`, then rerun with --force.\n%s",
                   banner, problem, banner)
    return "rules"


def guard_privacy(cfg: HarmonizeConfig, base_url: str, sources: SourceSet) -> None:
    """Fail before any call when report sentences would go to a remote endpoint without consent."""
    has_reports = "report" in cfg.llm_sources and any(
        i.kind == "report" for items in sources.items.values() for i in items)
    if has_reports and not is_loopback_url(base_url) and not cfg.allow_remote_reports:
        raise StageError("refusing to send report-derived text to a non-loopback endpoint "
                         f"({redact_url(base_url)}); reports are credentialed data: pass "
                         "--allow-remote-reports only if your data use agreement permits it, or drop 'report' "
                         "from llm_sources")


# ---------------------------------------------------------------------------------------------- LLM run


def _seed_cache(ctx: StageContext) -> Path:
    """The cache file in the work dir, seeded from the previous complete artifact when there is one."""
    path = ctx.work_dir / CACHE_FILE
    previous = ctx.out / CACHE_FILE
    if not path.exists() and previous.is_file():
        shutil.copy2(previous, path)
    return path


def _chat_settings(cfg: HarmonizeConfig, base_url: str, model: str, local: bool) -> ChatSettings:
    fmt = cfg.response_format
    if fmt == "auto":
        fmt = "json_object" if local else "json_schema"
    return ChatSettings(base_url=base_url, model=model, api_key_env=None if local else cfg.api_key_env,
                        timeout=cfg.timeout, max_retries=cfg.max_retries, concurrency=cfg.concurrency,
                        temperature=cfg.temperature, seed=cfg.seed, max_tokens=cfg.max_tokens,
                        response_format=fmt, allow_remote_reports=cfg.allow_remote_reports)


async def _harmonize_async(cfg: HarmonizeConfig, settings: ChatSettings, sources: SourceSet, cache: AnswerCache,
                           backend: str, start_endpoint: Callable[[], str] | None = None
                           ) -> tuple[dict[str, EntityResult], dict]:
    prompt = load_prompt(cfg.prompt)
    vocab = load_vocabulary(cfg.vocabulary)
    client = ChatClient(settings, cache, f"{prompt.version}+schema@{schema_hash()}", answer_schema(), start_endpoint)
    harmonizer = Harmonizer(vocab, client, prompt, HarmonizerSettings(
        sentences_per_request=cfg.sentences_per_request, max_requests_per_entity=cfg.max_requests_per_entity,
        min_support=cfg.min_support, min_semantic=cfg.min_semantic, max_reasks=cfg.max_reasks,
        llm_sources=tuple(cfg.llm_sources), max_total_requests=cfg.max_llm_requests), backend)
    try:
        results = await harmonizer.harmonize(sources.items)
    finally:
        await client.aclose()
    return results, client.stats.as_dict()


def run_llm(cfg: HarmonizeConfig, ctx: StageContext, sources: SourceSet, backend: str
            ) -> tuple[dict[str, EntityResult], dict]:
    cache = AnswerCache(_seed_cache(ctx))
    try:
        if backend == "local":
            server = LocalLlamaServer(threads=cfg.server_threads, n_ctx=cfg.server_ctx,
                                      start_timeout=cfg.server_start_timeout, log_path=ctx.work_dir / "llm_server.log")
            settings = _chat_settings(cfg, "http://127.0.0.1/v1", LOCAL_MODEL_ALIAS, local=True)
            model_file = server.model_path
            settings.cache_identity = f"llama.cpp-local:{model_file.name}:{model_file.stat().st_size}"
            try:  # the server starts on the first cache miss only: a cached rerun never starts it
                return asyncio.run(_harmonize_async(cfg, settings, sources, cache, backend, server.start))
            finally:
                server.stop()
        assert cfg.base_url and cfg.model
        guard_privacy(cfg, cfg.base_url, sources)
        settings = _chat_settings(cfg, cfg.base_url, cfg.model, local=False)
        return asyncio.run(_harmonize_async(cfg, settings, sources, cache, backend))
    except (PrivacyError, EndpointError) as exc:
        raise StageError(str(exc)) from None
    finally:
        cache.close()


# ---------------------------------------------------------------------------------------------- stage


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def run(cfg: HarmonizeConfig, ctx: StageContext) -> dict:
    entities, sources = collect_sources(cfg)
    backend = resolve_backend(cfg)
    ctx.logger.info("harmonize: %d entities, %d source sentences (%s), backend %s", len(entities),
                    sum(len(v) for v in sources.items.values()), _kind_counts(sources), backend)
    if backend == "rules":
        results, usage = rules_only(load_vocabulary(cfg.vocabulary), sources.items), {}
    else:
        results, usage = run_llm(cfg, ctx, sources, backend)
    duplicates = drop_near_duplicates(results, cfg.dedup_threshold)
    records = [row.as_record() for entity in entities for row in results[entity].rows]
    failed = [{"entity": e, "reasons": results[e].failures} for e in entities if results[e].failures]
    grounding = [r for e in entities for r in results[e].grounding_rejections]
    write_knowledge_base(ctx.work_dir, records)
    (ctx.work_dir / "failed.json").write_text(json.dumps(failed, indent=2) + "\n", encoding="utf-8")
    _write_jsonl(ctx.work_dir / "rejections.jsonl",
                 sources.rejected + [{"input": "generated", "reason": "ungrounded", **r} for r in grounding]
                 + [{"input": "row", "reason": "near-duplicate", **r}
                    for e in entities for r in results[e].duplicates])
    usage = {**usage, "backend_requested": cfg.backend, "backend_used": backend,
             "grounding_rejections": len(grounding), "near_duplicates_dropped": duplicates,
             "entities_failed": len(failed)}
    (ctx.work_dir / "usage.json").write_text(json.dumps(usage, indent=2) + "\n", encoding="utf-8")
    if failed:
        ctx.logger.warning("%d entities had failed LLM requests (their sources were rules-tagged): %s",
                           len(failed), ", ".join(f["entity"] for f in failed))
    return {"entities": len(entities), "rows": len(records), "backend_used": backend,
            "entities_failed": len(failed), "grounding_rejections": len(grounding),
            "near_duplicates_dropped": duplicates,
            "inputs_rejected": len(sources.rejected), "reports_read": sources.reports_read,
            "llm_calls": usage.get("calls", 0), "cache_hits": usage.get("cache_hits", 0),
            "total_tokens": usage.get("total_tokens", 0)}


def _kind_counts(sources: SourceSet) -> str:
    counts: dict[str, int] = {}
    for items in sources.items.values():
        for item in items:
            counts[item.kind] = counts.get(item.kind, 0) + 1
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
