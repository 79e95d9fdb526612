"""Report labeler benchmark on real reports: writes benchmarks/results/labeler.json.

Scores ``knowledge/labeler.py`` against the MeSH-derived reference entities of the Indiana University chest
X-ray reports (Open-i, development half; see ../shared/data/README.md for the licence, the 17 entities and the
scoring rule), next to baselines measured in the same run on the same reports:

* ``keyword``: vocabulary terms anywhere in FINDINGS/IMPRESSION;
* ``keyword_negation``: the same, negated when "no / without / negative for / free of / clear of / resolved"
  precedes the term in its sentence (the issue's five-minute rule), with the current vocabulary and (``..._
  previous_vocabulary``) with the vocabulary of commit 99886f4;
* ``previous``: the labeler as of commit 99886f4 (read from git, when the checkout has that commit);
* ``ours``: the current labeler (``alternatives="present"``, the default) and ``ours_alternatives_uncertain``;
* ``medspacy``: medspaCy's PyRuSH sentence splitter and ConText (default rules) with our vocabulary as
  TargetRules and our sectioning and aggregation, run in-process when medspaCy imports, or with
  ``--medspacy-python`` in another interpreter (medspaCy 1.3 pins spacy 3.7 and numpy < 2, so it is kept out of
  the project's environment).

Micro- and per-entity precision/recall/F1 ("uncertain" counts as not present, as in the README's rule), the
F1 of two halves of the file split by a hash of the report id (a stability check, not the held-out half), and
single-process throughput (reports/s, best of ``--repeat`` passes). No report text is written.

    .venv/bin/python benchmarks/labeler.py [--reports ../shared/data/openi_reports_dev.jsonl]
                                           [--medspacy-python /path/to/python]
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import importlib.util
import json
import re
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from knowledge.labeler import (
    ABSENT,
    PRESENT,
    UNCERTAIN,
    Mention,
    ReportLabeler,
    inflections,
    label_text,
    split_sentences,
)
from knowledge.vocabulary import load_vocabulary

RESULTS = Path(__file__).parent / "results" / "labeler.json"
DEFAULT_REPORTS = ROOT.parent / "shared" / "data" / "openi_reports_dev.jsonl"
PREVIOUS_COMMIT = "99886f4"
ENTITIES = {
    "cardiomegaly": "cardiomegaly", "atelectasis": "atelectasis", "pleural effusion": "pleural_effusion",
    "nodule": "nodule", "emphysema": "emphysema", "pneumonia": "pneumonia", "edema": "edema",
    "pneumothorax": "pneumothorax", "fracture": "fracture", "infiltration": "infiltration", "hernia": "hernia",
    "consolidation": "consolidation", "mass": "mass", "support devices": "support_devices",
    "granuloma": "granuloma", "scoliosis": "scoliosis", "pulmonary congestion": "vascular_congestion",
}
"""Reference entity (README) -> vocabulary id."""
NEGATION_CUES = re.compile(r"\b(?:no|without|negative for|free of|clear of|resolved)\b")

Labeler = Callable[[str], dict[str, int]]


class BenchError(Exception):
    """A one-line problem with the inputs (exit 2)."""


# ---------------------------------------------------------------------------------------------- data


def read_reports(path: Path) -> list[dict]:
    if not path.is_file():
        raise BenchError(f"reports file not found: {path} (expected the Open-i development half, "
                         "../shared/data/openi_reports_dev.jsonl; pass --reports PATH)")
    rows = []
    with path.open(encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise BenchError(f"{path}:{line_no}: malformed JSON ({exc.msg})") from None
            if not isinstance(row, dict) or not {"id", "report", "present"} <= set(row):
                raise BenchError(f"{path}:{line_no}: expected an object with id, report and present")
            unknown = set(row["present"]) - set(ENTITIES)
            if unknown:
                raise BenchError(f"{path}:{line_no}: unknown reference entities {sorted(unknown)}")
            rows.append(row)
    if not rows:
        raise BenchError(f"{path}: no reports")
    return rows


def half_of(report_id: str) -> int:
    return hashlib.sha256(report_id.encode()).digest()[0] % 2


# ---------------------------------------------------------------------------------------------- labelers


def keyword_labeler(negation: bool, vocab_path: Path | None = None) -> Labeler:
    """Vocabulary terms as whole words in the labelled sections; optionally the sentence-prefix negation."""
    vocab = load_vocabulary(vocab_path)
    patterns = {}
    for entity_id in ENTITIES.values():
        children = [e for e in vocab if e.id == entity_id or entity_id in e.parents]
        terms = sorted({t for e in children for t in e.terms}, key=len, reverse=True)
        patterns[entity_id] = re.compile(r"\b(?:" + "|".join(re.escape(t) for t in terms) + r")(?:e?s)?\b")

    def label(text: str) -> dict[str, int]:
        labels: dict[str, int] = {}
        for sentence in split_sentences(label_text(text)):
            lowered = sentence.lower()
            for entity_id, pattern in patterns.items():
                for match in pattern.finditer(lowered):
                    status = ABSENT if negation and NEGATION_CUES.search(lowered[:match.start()]) else PRESENT
                    labels[entity_id] = max(labels.get(entity_id, ABSENT), status)
        return labels

    return label


def _previous_file(path: str) -> str:
    return subprocess.run(["git", "show", f"{PREVIOUS_COMMIT}:{path}"], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout


def _previous_vocabulary() -> Path:
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as handle:
        handle.write(_previous_file("knowledge/data/entities.yaml"))
    return Path(handle.name)


def previous_keyword_labeler() -> Labeler | str:
    """``keyword_negation`` with the vocabulary of :data:`PREVIOUS_COMMIT`."""
    try:
        return keyword_labeler(negation=True, vocab_path=_previous_vocabulary())
    except (OSError, subprocess.CalledProcessError) as exc:
        return f"git show {PREVIOUS_COMMIT} failed: {exc}"


def previous_labeler() -> Labeler | str:
    """The labeler of :data:`PREVIOUS_COMMIT` (with that commit's vocabulary), or why it is unavailable."""
    try:
        code = _previous_file("knowledge/labeler.py")
        vocab_path = _previous_vocabulary()
    except (OSError, subprocess.CalledProcessError) as exc:
        return f"git show {PREVIOUS_COMMIT} failed: {exc}"
    module = types.ModuleType("labeler_previous")
    sys.modules[module.__name__] = module  # dataclasses look their module up
    exec(compile(code, f"{PREVIOUS_COMMIT}:knowledge/labeler.py", "exec"), module.__dict__)  # noqa: S102
    return module.ReportLabeler(load_vocabulary(vocab_path)).label


def medspacy_labeler() -> Labeler | str:
    """medspaCy (PyRuSH sentences + ConText default rules) with our vocabulary, sections and aggregation."""
    if importlib.util.find_spec("medspacy") is None:
        return "medspacy is not installed in this interpreter (use --medspacy-python)"
    import medspacy
    from medspacy.target_matcher import TargetRule

    ours = ReportLabeler()
    nlp = medspacy.load()
    rules = []
    for entity in ours.vocab:
        for term in entity.terms:
            words = term.split()
            for form in sorted(inflections(words[-1])):
                rules.append(TargetRule(" ".join([*words[:-1], form]), entity.id))
    nlp.get_pipe("medspacy_target_matcher").add(rules)

    def label(text: str) -> dict[str, int]:
        doc = nlp(label_text(text))
        mentions = []
        for ent in doc.ents:
            if ent._.is_hypothetical or ent._.is_family:
                continue
            status = ABSENT if ent._.is_negated else UNCERTAIN if ent._.is_uncertain else PRESENT
            mentions.append(Mention(ent.label_, status, ent.sent.text, ent.start_char, ent.end_char, ent.text))
        return ours.aggregate(mentions)

    return label


# ---------------------------------------------------------------------------------------------- scoring


def score(rows: list[dict], predictions: list[dict[str, int]]) -> dict:
    """Micro and per-entity precision / recall / F1 of "present"."""
    counts = {name: [0, 0, 0] for name in ENTITIES}  # tp, fp, fn
    for row, labels in zip(rows, predictions):
        gold = set(row["present"])
        for name, entity_id in ENTITIES.items():
            said, truth = labels.get(entity_id) == PRESENT, name in gold
            counts[name][0 if said and truth else 1 if said else 2] += said or truth
    per_entity = {name: _prf(*c) for name, c in counts.items()}
    total = [sum(c[i] for c in counts.values()) for i in range(3)]
    return {"micro": _prf(*total), "per_entity": per_entity}


def _prf(tp: int, fp: int, fn: int) -> dict:
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
    return {"precision": round(precision, 4), "recall": round(recall, 4), "f1": round(f1, 4),
            "tp": tp, "fp": fp, "fn": fn}


def run_engine(label: Labeler, rows: list[dict], repeat: int) -> dict:
    texts = [row["report"] for row in rows]
    best = float("inf")
    predictions: list[dict[str, int]] = []
    for _ in range(repeat):
        start = time.perf_counter()
        predictions = [label(text) for text in texts]
        best = min(best, time.perf_counter() - start)
    result = score(rows, predictions)
    halves = {}
    for half in (0, 1):
        picked = [(r, p) for r, p in zip(rows, predictions) if half_of(str(r["id"])) == half]
        halves[f"half_{half}"] = {"reports": len(picked),
                                  "micro_f1": score([r for r, _ in picked], [p for _, p in picked])["micro"]["f1"]}
    return {**result, "split_halves": halves, "reports_per_s": round(len(texts) / best, 1)}


def engines(names: list[str]) -> dict[str, Labeler | str]:
    makers: dict[str, Callable[[], Labeler | str]] = {
        "keyword": lambda: keyword_labeler(negation=False),
        "keyword_negation": lambda: keyword_labeler(negation=True),
        "keyword_negation_previous_vocabulary": previous_keyword_labeler,
        "previous": previous_labeler,
        "ours": lambda: ReportLabeler().label,
        "ours_alternatives_uncertain": lambda: ReportLabeler(alternatives="uncertain").label,
        "medspacy": medspacy_labeler,
    }
    unknown = [n for n in names if n not in makers]
    if unknown:
        raise BenchError(f"unknown engines {unknown} (known: {', '.join(makers)})")
    return {name: makers[name]() for name in names}


def medspacy_elsewhere(python: Path, reports: Path, repeat: int) -> dict:
    """Run the medspaCy engine in another interpreter and return its result."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "medspacy.json"
        proc = subprocess.run([str(python), __file__, "--reports", str(reports), "--engines", "medspacy",
                               "--repeat", str(repeat), "--out", str(out)], capture_output=True, text=True,
                              check=False)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            return {"skipped": f"{python} failed: {tail[0]}"}
        return {**json.loads(out.read_text())["engines"]["medspacy"], "python": str(python)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reports", type=Path, default=DEFAULT_REPORTS, help="openi_reports_dev.jsonl")
    parser.add_argument("--engines", nargs="+", default=["keyword", "keyword_negation",
                                                          "keyword_negation_previous_vocabulary", "previous", "ours",
                                                          "ours_alternatives_uncertain", "medspacy"])
    parser.add_argument("--medspacy-python", type=Path, help="interpreter with medspaCy installed")
    parser.add_argument("--repeat", type=int, default=3, help="timing passes (best is kept)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    try:
        rows = read_reports(args.reports)
        chosen = engines(args.engines)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    results: dict[str, dict] = {}
    for name, label in chosen.items():
        if name == "medspacy" and isinstance(label, str) and args.medspacy_python:
            results[name] = medspacy_elsewhere(args.medspacy_python, args.reports, args.repeat)
        elif isinstance(label, str):
            results[name] = {"skipped": label}
        else:
            results[name] = run_engine(label, rows, args.repeat)
            if name == "medspacy":
                results[name]["version"] = importlib.metadata.version("medspacy")
        summary = results[name].get("skipped") or (
            f"micro-F1 {results[name]['micro']['f1']:.4f}  P {results[name]['micro']['precision']:.3f}  "
            f"R {results[name]['micro']['recall']:.3f}  {results[name]['reports_per_s']:.0f} reports/s")
        print(f"{name:30s} {summary}")
    best = results.get("ours", {})
    if "per_entity" in best:
        print("ours, per entity:")
        for entity, value in best["per_entity"].items():
            print(f"  {entity:22s} P {value['precision']:.3f}  R {value['recall']:.3f}  F1 {value['f1']:.3f}  "
                  f"(tp {value['tp']}, fp {value['fp']}, fn {value['fn']})")
    payload = {"reports_file": args.reports.name, "reports": len(rows), "entities": ENTITIES,
               "scoring": "micro-F1 over report-entity pairs; uncertain counts as not present",
               "timing": "single process, best of --repeat passes, labelling only", "engines": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
