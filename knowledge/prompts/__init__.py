"""Versioned prompt templates (Markdown files with ``## system`` and ``## user`` sections)."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

PROMPT_DIR = Path(__file__).parent
DEFAULT_PROMPT = "harmonize_v1"


@dataclass(frozen=True)
class PromptTemplate:
    name: str
    system: str
    user: str
    sha256: str

    @property
    def version(self) -> str:
        """Name plus content hash: what provenance records and what the cache key includes."""
        return f"{self.name}@{self.sha256[:12]}"

    def render(self, **values: object) -> list[dict[str, str]]:
        return [{"role": "system", "content": self.system.format(**values)},
                {"role": "user", "content": self.user.format(**values)}]


def load_prompt(name: str = DEFAULT_PROMPT) -> PromptTemplate:
    path = PROMPT_DIR / f"{name}.md"
    if not path.is_file():
        raise FileNotFoundError(f"prompt template not found: {path}")
    raw = path.read_text(encoding="utf-8")
    text = re.sub(r"<!--.*?-->", "", raw, flags=re.DOTALL)
    parts = re.split(r"^## (system|user)\s*$", text, flags=re.MULTILINE)
    sections = {parts[i]: parts[i + 1].strip() for i in range(1, len(parts) - 1, 2)}
    if set(sections) != {"system", "user"}:
        raise ValueError(f"{path}: needs exactly a '## system' and a '## user' section")
    return PromptTemplate(name, sections["system"], sections["user"], hashlib.sha256(raw.encode()).hexdigest())
