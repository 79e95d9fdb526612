"""The harmoniser's output schema: aspect-tagged sentences citing a numbered source.

The same pydantic model gives the JSON schema sent to the LLM (``response_format``) and validates answers, so
what the server is asked for and what the client accepts cannot drift apart.
"""

from __future__ import annotations

import hashlib
import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

ASPECTS = ("location", "shape", "density", "border", "texture", "distribution", "associated_signs", "definition")
SOURCES = ("definition", "description", "report")
Aspect = Literal["location", "shape", "density", "border", "texture", "distribution", "associated_signs",
                 "definition"]


class GeneratedSentence(BaseModel):
    model_config = ConfigDict(extra="forbid")

    aspect: Aspect
    sentence: str = Field(min_length=3, max_length=400)
    source: int = Field(ge=1, description="number of the source sentence this fact comes from")


class HarmonizedAnswer(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sentences: list[GeneratedSentence] = Field(min_length=1, max_length=16)


def answer_schema() -> dict:
    """The JSON schema of :class:`HarmonizedAnswer` (what the LLM is constrained to)."""
    return HarmonizedAnswer.model_json_schema()


def schema_hash() -> str:
    return hashlib.sha256(json.dumps(answer_schema(), sort_keys=True).encode()).hexdigest()[:16]


class AnswerError(ValueError):
    """An LLM answer that is not valid JSON or violates the schema (message is one line)."""


def parse_answer(content: str | None, n_sources: int) -> HarmonizedAnswer:
    """Parse and validate an answer; source numbers must point at one of the ``n_sources`` sources."""
    if not content or not content.strip():
        raise AnswerError("empty answer")
    text = content.strip()
    if text.startswith("```"):  # some servers wrap JSON in a Markdown fence despite JSON mode
        text = text.strip("`").removeprefix("json").strip()
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise AnswerError(f"malformed JSON: {exc.msg} at char {exc.pos}") from None
    try:
        answer = HarmonizedAnswer.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "<root>"
        raise AnswerError(f"schema violation at {where}: {err['msg']}") from None
    bad = [s.source for s in answer.sentences if s.source > n_sources]
    if bad:
        raise AnswerError(f"schema violation: source {bad[0]} does not exist (there are {n_sources})")
    return answer
