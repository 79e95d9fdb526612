"""A SQLite cache of LLM answers, keyed by sha256 of everything that determines the answer.

The key covers the endpoint (``base_url``), the model, the prompt version and hash, the rendered messages, the
sampling parameters and the schema hash; never the API key. Only answers that passed validation are stored, so a
rerun after a crash or a fault makes no call for work already done, and a fully cached rerun makes zero calls.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS answers (
    key TEXT PRIMARY KEY,
    request TEXT NOT NULL,
    content TEXT NOT NULL,
    model TEXT,
    usage TEXT,
    created REAL NOT NULL
)
"""


def cache_key(base_url: str, model: str, prompt_version: str, messages: list[dict[str, str]],
              params: dict[str, Any]) -> str:
    """sha256 hex of the canonical JSON of the request identity."""
    identity = {"base_url": base_url.rstrip("/"), "model": model, "prompt": prompt_version,
                "messages": messages, "params": params}
    return hashlib.sha256(json.dumps(identity, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


@dataclass(frozen=True)
class CachedAnswer:
    content: str
    model: str | None
    usage: dict[str, int]


class AnswerCache:
    """Thread-safe SQLite store (WAL mode: a killed writer never corrupts earlier entries)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # WAL + NORMAL: an answer survives a killed process (what reruns need) without an fsync per insert.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(_SCHEMA)

    def get(self, key: str) -> CachedAnswer | None:
        with self._lock:
            row = self._db.execute("SELECT content, model, usage FROM answers WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        return CachedAnswer(row[0], row[1], json.loads(row[2] or "{}"))

    def put(self, key: str, request: dict[str, Any], content: str, model: str | None,
            usage: dict[str, int]) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO answers (key, request, content, model, usage, created) VALUES (?,?,?,?,?,?)",
                (key, json.dumps(request, ensure_ascii=False), content, model, json.dumps(usage), time.time()),
            )

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM answers").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()
