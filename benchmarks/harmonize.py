"""Harmoniser and labeler benchmark: writes benchmarks/results/harmonize.json.

1. LLM client throughput (items/s) versus concurrency against the loopback fake server with a fixed latency,
   next to the ideal concurrency / latency (target: >= 0.8 x ideal).
2. The local backend (llama.cpp + SmolLM2-135M-Instruct): latency per harmonisation request, tokens, and how
   many answers were valid JSON on the first try (skipped, with the reason, when the extra is missing).
3. The report labeler: reports/s, and per-entity F1 against the CheXpert-style labels of a MIMIC-CXR style root
   (``--reports artifacts/demo/phantom/mimic-cxr-jpg``: its mimic-cxr-2.0.0-chexpert.csv.gz is the ground truth).
   Real reports: benchmarks/labeler.py.
4. Grounding acceptance per backend: the harmonize stage on ``--grounding-entities`` with their definitions and
   the crawled ``--descriptions``; for each backend, how many generated sentences the grounding check accepted,
   why the others were rejected, and how many the former word-overlap rule alone would have accepted
   (``--grounding-only`` runs just this part and updates its key in the results file).

    .venv/bin/python benchmarks/harmonize.py [--reports ROOT] [--latency 0.2] [--items 32] [--local-requests 5]
                                             [--descriptions CRAWL] [--grounding-only]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from knowledge.cache import AnswerCache
from knowledge.fake_server import FakeOpenAIServer
from knowledge.harmonizer import render_sources
from knowledge.labeler import ReportLabeler
from knowledge.llm import (
    LOCAL_MODEL_ALIAS,
    ChatClient,
    ChatSettings,
    LocalLlamaServer,
    local_backend_problem,
)
from knowledge.prompts import load_prompt
from knowledge.schema import ASPECTS, answer_schema, parse_answer
from knowledge.sources import SourceItem, report_files
from knowledge.vocabulary import load_vocabulary

RESULTS = Path(__file__).parent / "results" / "harmonize.json"
CHEXPERT_COLUMNS = ["No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion",
                    "Edema", "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion",
                    "Pleural Other", "Fracture", "Support Devices"]


def _messages(i: int, entity: str = "Pneumothorax") -> list[dict[str, str]]:
    prompt = load_prompt()
    items = [SourceItem("description", f"A thin white pleural line is seen at the apex in case {i}.", f"d{i}")]
    return prompt.render(entity_name=entity, entity_id=entity.lower(), aspects=", ".join(ASPECTS),
                         sources=render_sources(items), max_sentences=2)


async def _drive(settings: ChatSettings, n_items: int, cache_dir: Path, contains_reports: bool = False,
                 offset: int = 0) -> tuple[float, list[float], ChatClient]:
    cache_dir.mkdir(parents=True, exist_ok=True)
    client = ChatClient(settings, AnswerCache(cache_dir / f"c{settings.concurrency}.sqlite"), "bench",
                        answer_schema())
    latencies: list[float] = []

    async def one(i: int) -> None:
        start = time.perf_counter()
        await client.chat(_messages(i + offset), lambda c: parse_answer(c, 1), contains_reports=contains_reports)
        latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n_items)))
    elapsed = time.perf_counter() - start
    await client.aclose()
    return elapsed, latencies, client


def bench_concurrency(latency: float, n_items: int, levels: list[int]) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp, FakeOpenAIServer(latency=latency) as server:
        warm = Path(tmp) / "warm"  # first SDK call pays imports and connection set-up: not measured
        warm.mkdir()
        asyncio.run(_drive(ChatSettings(server.base_url, "fake", concurrency=1, timeout=30), 2, warm))
        for level in levels:
            settings = ChatSettings(server.base_url, "fake", concurrency=level, timeout=30)
            elapsed, _, client = asyncio.run(_drive(settings, n_items, Path(tmp)))
            ideal = level / latency
            rows.append({"concurrency": level, "items": n_items, "seconds": round(elapsed, 3),
                         "items_per_s": round(n_items / elapsed, 2), "ideal_items_per_s": round(ideal, 2),
                         "ratio_to_ideal": round(n_items / elapsed / ideal, 3), "calls": client.stats.calls})
            print(f"concurrency {level}: {n_items / elapsed:.2f} items/s (ideal {ideal:.2f}, "
                  f"ratio {n_items / elapsed / ideal:.2f})")
    return rows


def bench_local(n_requests: int) -> dict:
    problem = local_backend_problem() if n_requests > 0 else "--local-requests 0"
    if problem:
        print(f"local backend skipped: {problem}")
        return {"skipped": problem}
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        with LocalLlamaServer(threads=2, log_path=Path(tmp) / "server.log") as base_url:
            startup = time.perf_counter() - started
            settings = ChatSettings(base_url, LOCAL_MODEL_ALIAS, api_key_env=None, concurrency=1, timeout=120,
                                    max_tokens=256, response_format="json_object")
            # one request at a time, so each latency is a request's own time (not time queued behind others)
            latencies, client = [], None
            for i in range(n_requests):
                start = time.perf_counter()
                _, _, client = asyncio.run(_drive(settings, 1, Path(tmp) / f"r{i}", contains_reports=True,
                                                  offset=i))
                latencies.append(time.perf_counter() - start)
    stats = client.stats.as_dict()
    result = {"requests": n_requests, "server_start_s": round(startup, 2),
              "latency_median_s": round(statistics.median(latencies), 3),
              "latency_max_s": round(max(latencies), 3), "calls": stats["calls"], "reasks": stats["reasks"],
              "failures": stats["failures"], "completion_tokens": stats["completion_tokens"],
              "prompt_tokens": stats["prompt_tokens"], "models": stats["models"]}
    print(f"local SmolLM2: start {startup:.1f} s, median latency {result['latency_median_s']} s/request "
          f"(one request at a time), re-asks {stats['reasks']}")
    return result


def _read_chexpert(root: Path) -> dict[str, dict[str, int]]:
    import pandas as pd

    frame = pd.read_csv(root / "mimic-cxr-2.0.0-chexpert.csv.gz")
    truth = {}
    for values in frame.to_dict("records"):
        # blank (NaN) = not mentioned: NaN != NaN
        labels = {c: int(values[c]) for c in CHEXPERT_COLUMNS if c in values and values[c] == values[c]}
        truth[f"s{int(values['study_id'])}"] = labels
    return truth


def bench_labeler(root: Path | None, synthetic: int) -> dict:
    vocab = load_vocabulary()
    labeler = ReportLabeler(vocab)
    if root is None or not root.is_dir():
        texts = [" FINDINGS: Small left pleural effusion, not significantly changed. No pneumothorax. Heart size "
                 f"is normal.\n \n IMPRESSION: {i % 3 + 1}. Possible right lower lobe pneumonia." for i in range(synthetic)]
        start = time.perf_counter()
        for text in texts:
            labeler.label(text)
        elapsed = time.perf_counter() - start
        print(f"labeler: {len(texts) / elapsed:.0f} reports/s (synthetic reports; no --reports root for F1)")
        return {"reports": len(texts), "reports_per_s": round(len(texts) / elapsed, 1), "f1": None}
    files = list(report_files(root))
    texts = {p.stem: p.read_text(encoding="utf-8", errors="replace") for p in files}
    start = time.perf_counter()
    predicted = {study: labeler.label(text) for study, text in texts.items()}
    elapsed = time.perf_counter() - start
    truth = _read_chexpert(root)
    f1 = {}
    for column in CHEXPERT_COLUMNS:
        entity = vocab.from_label("chexpert", column)
        tp = fp = fn = 0
        for study, labels in truth.items():
            gold = labels.get(column) == 1
            pred = predicted.get(study, {}).get(entity) == 1
            tp += gold and pred
            fp += pred and not gold
            fn += gold and not pred
        support = tp + fn
        f1[column] = {"f1": round(2 * tp / (2 * tp + fp + fn), 3) if (tp + fp + fn) else None, "support": support}
    print(f"labeler: {len(texts) / elapsed:.0f} reports/s on {len(texts)} reports; F1 (positive) per label:")
    for column, value in f1.items():
        print(f"  {column:28} {value['f1']}  (n={value['support']})")
    return {"reports": len(texts), "reports_per_s": round(len(texts) / elapsed, 1), "f1": f1, "root": str(root)}


GROUNDING_ENTITIES = ["atelectasis", "cardiomegaly", "pleural_effusion", "pneumothorax", "edema", "consolidation",
                      "pneumonia", "emphysema"]


def bench_grounding(descriptions: Path, entities: list[str], backends: list[str]) -> dict:
    """Run the stage per backend and count accepted / rejected generated sentences."""
    from devide.stage import execute_stage
    from knowledge.base import KnowledgeBase
    from knowledge.stage import STAGE, HarmonizeConfig

    out: dict[str, dict] = {"descriptions": descriptions.name, "entities": entities}
    for backend in backends:
        if backend == "local" and local_backend_problem():
            out[backend] = {"skipped": local_backend_problem()}
            continue
        with tempfile.TemporaryDirectory() as tmp:
            cfg = HarmonizeConfig(out=Path(tmp) / "kb", backend=backend, entities=entities,
                                  descriptions=descriptions, llm_sources=["definition", "description"],
                                  fallback_to_rules=False, concurrency=1, timeout=180, max_requests_per_entity=2)
            start = time.perf_counter()
            result = execute_stage(STAGE, cfg, force=True)
            elapsed = time.perf_counter() - start
            rows = KnowledgeBase.load(result.out).rows
            rejections = [json.loads(line) for line in (result.out / "rejections.jsonl").read_text().splitlines()]
        accepted = [r for r in rows if r.provenance.get("method") == "llm"]
        rejected = [r for r in rejections if r.get("input") == "generated"]
        reasons: dict[str, int] = {}
        for r in rejected:
            kind = str(r.get("check", "")).split(":")[0].split(" ")[0] or "?"
            reasons[kind] = reasons.get(kind, 0) + 1
        generated = len(accepted) + len(rejected)
        lexical_only = len(accepted) + sum(1 for r in rejected if r.get("support", 0) >= cfg.min_support)
        out[backend] = {
            "rows": len(rows), "generated": generated, "accepted": len(accepted),
            "acceptance_rate": round(len(accepted) / generated, 3) if generated else None,
            "rejected_by_check": dict(sorted(reasons.items())),
            "word_overlap_rule_would_accept": lexical_only,
            "examples_rejected": [{"entity": r["entity"], "generated": r["generated"], "check": r.get("check")}
                                  for r in rejected[:10]],
            "examples_accepted": [{"entity": r.entity, "sentence": r.sentence} for r in accepted[:5]],
            "near_duplicates_dropped": result.manifest["counts"].get("near_duplicates_dropped"),
            "llm_calls": result.manifest["counts"].get("llm_calls"), "seconds": round(elapsed, 1)}
        print(f"grounding, backend {backend}: {out[backend]}")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reports", type=Path, help="MIMIC-CXR style root with mimic-cxr-2.0.0-chexpert.csv.gz")
    parser.add_argument("--latency", type=float, default=0.2, help="fake server latency per request (s)")
    parser.add_argument("--items", type=int, default=64)
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--local-requests", type=int, default=5, help="0 skips the local backend")
    parser.add_argument("--synthetic-reports", type=int, default=2000)
    parser.add_argument("--descriptions", type=Path, default=Path(__file__).resolve().parents[1] / "tests" /
                        "knowledge" / "fixtures" / "descriptions.jsonl", help="crawl artifact for the grounding part")
    parser.add_argument("--grounding-entities", nargs="+", default=GROUNDING_ENTITIES)
    parser.add_argument("--grounding-backends", nargs="+", default=["rules", "local"])
    parser.add_argument("--grounding-only", action="store_true", help="run only part 4, update its key")
    args = parser.parse_args()
    os.environ.setdefault("DEVIDE_QUIET", "1")
    grounding = bench_grounding(args.descriptions, args.grounding_entities, args.grounding_backends)
    if args.grounding_only:
        previous = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
        RESULTS.write_text(json.dumps({**previous, "grounding": grounding}, indent=2) + "\n")
        print(f"updated {RESULTS}")
        return 0
    result = {
        "grounding": grounding,
        "concurrency": bench_concurrency(args.latency, args.items, args.levels),
        "fake_latency_s": args.latency,
        "local_smollm2": bench_local(args.local_requests),
        "labeler": bench_labeler(args.reports, args.synthetic_reports),
        "cpu_count": os.cpu_count(),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
