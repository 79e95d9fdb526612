"""The three knowledge sources of an entity: its definition, crawled descriptions and report sentences.

* definitions come from the vocabulary;
* descriptions come from a crawl artifact (``descriptions.jsonl``, one JSON object per sentence); malformed rows
  and rows about unknown entities are *rejected with a reason*, never silently skipped;
* report sentences come from a MIMIC-CXR style root (``files/pXX/p<subject>/s<study>.txt``): the labeler finds
  sentences that assert an entity as present, and the most frequent phrasings (ties by text) are kept, a
  bounded number per entity, as the entity's representative report sentences.
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from knowledge.labeler import ReportLabeler
from knowledge.vocabulary import Vocabulary

logger = logging.getLogger("devide.harmonize.sources")
DESCRIPTION_FIELDS = ("entity", "sentence", "url")


@dataclass(frozen=True)
class SourceItem:
    """One source sentence with where it came from."""

    kind: str  # definition | description | report
    text: str
    ref: str  # description id, "vocabulary:<entity>", or the report path relative to the root
    url: str | None = None
    title: str | None = None
    licence: str | None = None
    count: int = 1  # how many reports used this phrasing (report sentences)

    def provenance(self) -> dict[str, Any]:
        data = {"kind": self.kind, "ref": self.ref, "url": self.url, "title": self.title, "licence": self.licence}
        return {k: v for k, v in data.items() if v is not None}


@dataclass
class SourceSet:
    """Source items per entity plus the input rows that were rejected (with reasons)."""

    items: dict[str, list[SourceItem]] = field(default_factory=dict)
    rejected: list[dict[str, Any]] = field(default_factory=list)
    reports_read: int = 0

    def add(self, entity: str, item: SourceItem) -> None:
        self.items.setdefault(entity, []).append(item)


def definition_items(vocab: Vocabulary, entities: list[str]) -> dict[str, SourceItem]:
    return {e: SourceItem("definition", vocab.get(e).definition, f"vocabulary:{e}",
                          title=f"devide vocabulary v{vocab.version}: {vocab.get(e).name}") for e in entities}


def descriptions_file(path: Path) -> Path:
    """``descriptions.jsonl`` inside a crawl artifact folder, or the file itself."""
    path = Path(path)
    candidate = path / "descriptions.jsonl" if path.is_dir() else path
    if not candidate.is_file():
        raise FileNotFoundError(f"no descriptions.jsonl in {path} (expected a `devide crawl` artifact)")
    return candidate


def _normalized(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9 ]", " ", text.lower()).split())


def read_descriptions(path: Path, vocab: Vocabulary, wanted: set[str], out: SourceSet,
                      per_entity: int, near_duplicate: float | None = None) -> None:
    """Add up to ``per_entity`` distinct description sentences per wanted entity (file order) to ``out``.

    Exact repeats (case and punctuation aside) are skipped; with ``near_duplicate`` set, a sentence whose
    cosine similarity to an earlier kept sentence of the same entity reaches it (all-MiniLM-L6-v2) is
    rejected as a near-duplicate, before the per-entity bound is applied.
    """
    seen: set[tuple[str, str]] = set()
    candidates: dict[str, list[tuple[int, SourceItem]]] = {}
    with descriptions_file(path).open(encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, 1):
            if not line.strip():
                continue
            row, reason = _parse_description(line, vocab)
            if reason:
                out.rejected.append({"input": "descriptions", "line": line_no, "reason": reason})
                continue
            entity = row["entity"]
            key = (entity, _normalized(row["sentence"]))
            if entity not in wanted or key in seen:
                continue  # not requested / duplicate phrasing: expected, counted by the caller
            seen.add(key)
            candidates.setdefault(entity, []).append((line_no, SourceItem(
                "description", " ".join(row["sentence"].split()), str(row.get("id") or f"line:{line_no}"),
                row.get("url"), row.get("title"), row.get("licence"))))
    for entity, items in candidates.items():
        for line_no, item in _drop_near_duplicates(entity, items, near_duplicate, out):
            if sum(1 for i in out.items.get(entity, []) if i.kind == "description") >= per_entity:
                out.rejected.append({"input": "descriptions", "line": line_no, "entity": entity,
                                     "reason": f"over the per-entity bound ({per_entity})"})
                continue
            out.add(entity, item)


def _drop_near_duplicates(entity: str, items: list[tuple[int, SourceItem]], threshold: float | None,
                          out: SourceSet) -> list[tuple[int, SourceItem]]:
    """``items`` without the near-duplicates of earlier items (each recorded in ``out.rejected``)."""
    if threshold is None or len(items) < 2:
        return items
    from knowledge.embeddings import near_duplicates  # torch: only when de-duplicating
    from knowledge.grounding import same_facts

    kept = []
    verdicts = near_duplicates([item.text for _, item in items], threshold, same_facts)
    for (line_no, item), verdict in zip(items, verdicts):
        if verdict is None:
            kept.append((line_no, item))
            continue
        original, similarity = verdict
        out.rejected.append({"input": "descriptions", "line": line_no, "entity": entity,
                             "reason": f"near-duplicate of line {items[original][0]} (cosine {similarity:.3f})"})
    return kept


def _parse_description(line: str, vocab: Vocabulary) -> tuple[dict[str, Any], str | None]:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        return {}, f"malformed JSON: {exc.msg}"
    if not isinstance(row, dict):
        return {}, "not a JSON object"
    missing = [f for f in DESCRIPTION_FIELDS if not isinstance(row.get(f), str) or not row[f].strip()]
    if missing:
        return {}, f"missing field(s) {', '.join(missing)}"
    if row["entity"] not in vocab:
        return {}, f"unknown entity '{row['entity']}'"
    return row, None


def report_files(root: Path) -> Iterator[Path]:
    """Report files of a MIMIC-CXR style root in a stable order."""
    base = Path(root) / "files" if (Path(root) / "files").is_dir() else Path(root)
    yield from sorted(base.glob("p[0-9]*/p[0-9]*/s[0-9]*.txt"))


SPLIT_FILES = ("mimic-cxr-2.0.0-split.csv.gz", "mimic-cxr-2.0.0-split.csv")


def find_split_file(reports_root: Path) -> Path | None:
    """The MIMIC-CXR-JPG split CSV beside the reports (the JPG root doubles as the reports root), or None."""
    for folder in (Path(reports_root), Path(reports_root).parent):
        for name in SPLIT_FILES:
            if (folder / name).is_file():
                return folder / name
    return None


def train_subjects(split_file: Path) -> set[str]:
    """Subject ids all of whose studies are in the ``train`` split (MIMIC-CXR splits are subject-disjoint; a
    subject listed in validate/test anyway is left out), so no held-out patient's report shapes the knowledge."""
    import pandas as pd

    table = pd.read_csv(split_file, dtype=str, keep_default_na=False)
    missing = [c for c in ("subject_id", "split") if c not in table.columns]
    if missing:
        raise ValueError(f"{split_file}: lacks column(s) {', '.join(missing)}")
    splits = table.groupby(table["subject_id"].str.strip())["split"].agg(lambda s: set(s.str.strip()))
    return {subject for subject, names in splits.items() if names == {"train"}}


def sample_report_sentences(root: Path, labeler: ReportLabeler, wanted: set[str], out: SourceSet,
                            per_entity: int, max_reports: int, subjects: set[str] | None = None) -> None:
    """Add the ``per_entity`` most frequent positive phrasings per entity from at most ``max_reports`` reports.

    subjects: when given, only reports of these subject ids (``files/pXX/p<subject>/``) are read.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"reports root not found: {root}")
    counts: dict[str, Counter[str]] = {}
    first_ref: dict[tuple[str, str], str] = {}
    for path in report_files(root):
        if out.reports_read >= max_reports:
            break
        if subjects is not None and path.parent.name[1:] not in subjects:
            continue
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            out.rejected.append({"input": "reports", "path": str(path), "reason": f"unreadable: {exc.strerror}"})
            continue
        out.reports_read += 1
        for entity, sentence in labeler.positive_sentences(text):
            if entity in wanted:
                phrase = " ".join(sentence.split())
                counts.setdefault(entity, Counter())[phrase] += 1
                first_ref.setdefault((entity, phrase), path.relative_to(root).as_posix())
    if out.reports_read == 0:
        logger.warning("no report files under %s (expected files/pXX/p<subject>/s<study>.txt)", root)
    for entity in sorted(counts):
        ranked = sorted(counts[entity].items(), key=lambda kv: (-kv[1], kv[0]))[:per_entity]
        for phrase, count in ranked:
            out.add(entity, SourceItem("report", phrase, first_ref[(entity, phrase)], count=count))
