"""Config of ``devide harmonize`` and its Stage, kept light: planning a pipeline imports this module only."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from devide.config import StageConfig
from devide.stage import Stage
from knowledge.prompts import DEFAULT_PROMPT
from knowledge.schema import SOURCES


class HarmonizeConfig(StageConfig):
    """Config of ``devide harmonize``."""

    descriptions: Path | None = Field(None, description="crawl artifact folder (or a descriptions.jsonl file)")
    reports: Path | None = Field(None, description="MIMIC-CXR style root with files/pXX/p<subject>/s<study>.txt")
    reports_split_file: Path | None = Field(
        None, description="MIMIC-CXR-JPG split CSV: report sentences come from train subjects only (default: "
                          "mimic-cxr-2.0.0-split.csv[.gz] beside the reports, if there)")
    vocabulary: Path | None = Field(None, description="entities.yaml (default: the packaged vocabulary)")
    entities: list[str] | None = Field(None, description="entity ids to harmonise (default: all)")
    backend: Literal["local", "openai", "rules"] = Field("local", description="LLM backend")
    fallback_to_rules: bool = Field(True, description="use the rules backend when the local extra is missing")
    base_url: str | None = Field(None, description="OpenAI-compatible endpoint (backend openai)")
    model: str | None = Field(None, description="model id (backend openai; local uses the SmolLM2 GGUF)")
    api_key_env: str = Field("OPENAI_API_KEY", description="NAME of the environment variable holding the key")
    allow_remote_reports: bool = Field(False, description="allow report-derived text to a non-loopback endpoint")
    response_format: Literal["auto", "json_schema", "json_object", "none"] = Field(
        "auto", description="auto: json_object+schema for local (llama.cpp), json_schema for openai")
    prompt: str = Field(DEFAULT_PROMPT, description="prompt template name in knowledge/prompts")
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    seed: int = 0
    max_tokens: int = Field(384, ge=16)
    timeout: float = Field(60.0, gt=0, description="seconds per request")
    max_retries: int = Field(4, ge=0, description="retries on 429/5xx/timeouts (exponential backoff)")
    max_reasks: int = Field(1, ge=0, description="re-asks after an invalid (non-JSON / off-schema) answer")
    concurrency: int = Field(2, ge=1, description="requests in flight")
    sentences_per_request: int = Field(6, ge=1)
    max_requests_per_entity: int = Field(2, ge=1, description="sources beyond the budget are rules-tagged")
    max_llm_requests: int | None = Field(None, ge=0, description="request budget of the whole run (None: "
                                         "unbounded); batches beyond it are rules-tagged")
    descriptions_per_entity: int = Field(12, ge=0)
    report_sentences_per_entity: int = Field(3, ge=0)
    max_reports: int = Field(2000, ge=0, description="reports scanned for representative sentences")
    llm_sources: list[str] = Field(["description", "report"], description="sources rewritten by the LLM")
    min_support: float = Field(0.6, ge=0.0, le=1.0, description="grounding threshold (share of content words)")
    min_semantic: float | None = Field(0.5, ge=-1.0, le=1.0, description="grounding threshold (cosine similarity "
                                       "to the source, all-MiniLM-L6-v2); None: no semantic check")
    dedup_threshold: float | None = Field(0.9, ge=0.0, le=1.0, description="cosine similarity from which a "
                                          "description or row is a near-duplicate of an earlier one; None: off")
    server_threads: int = Field(2, ge=1, description="llama.cpp threads (backend local)")
    server_ctx: int = Field(2048, ge=512)
    server_start_timeout: float = Field(180.0, gt=0)

    @field_validator("llm_sources")
    @classmethod
    def _known_sources(cls, value: list[str]) -> list[str]:
        bad = [v for v in value if v not in SOURCES]
        if bad:
            raise ValueError(f"unknown source {bad[0]!r} (known: {', '.join(SOURCES)})")
        return value

    @field_validator("api_key_env")
    @classmethod
    def _env_name(cls, value: str) -> str:
        if not value.replace("_", "").isalnum():
            raise ValueError("must be the NAME of an environment variable (the key itself never goes in a config)")
        return value


STAGE = Stage(
    name="harmonize",
    config_cls=HarmonizeConfig,
    run="knowledge.stage:run",
    help="harmonise descriptions, definitions and report sentences into a knowledge base with an LLM",
    input_fields=("descriptions", "reports", "reports_split_file", "vocabulary"),
    volatile_fields=("concurrency", "timeout", "server_threads", "server_start_timeout"),
    preflight="knowledge.preflight:check_harmonize",
)
