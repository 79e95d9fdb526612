"""Semantic de-duplication (all-MiniLM-L6-v2) of crawled descriptions and harmonised rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from knowledge.base import KnowledgeBase
from knowledge.embeddings import embed, model_path, near_duplicates
from knowledge.grounding import same_facts
from tests.knowledge.conftest import harmonize

ROWS = [  # (entity, sentence): sentences written for this test
    ("pneumothorax", "Air in the pleural space separates the lung from the chest wall."),
    ("pneumothorax", "Air within the pleural space separates the lung from the chest wall."),  # near-duplicate
    ("pneumothorax", "A small left apical pneumothorax is seen."),
    ("pneumothorax", "A large right apical pneumothorax is seen."),  # similar, but a different fact
    ("pneumothorax", "A deep sulcus sign may be the only clue on a supine film."),
    ("pleural_effusion", "Air in the pleural space separates the lung from the chest wall."),  # other entity
]


@pytest.fixture(scope="module")
def encoder_loaded():
    """Load the shipped encoder once for the module (later calls reuse it)."""
    assert (model_path() / "modules.json").is_file()
    vectors = embed(["warm-up sentence"])
    assert vectors.shape == (1, 384)


def test_embeddings_are_unit_vectors_and_duplicates_are_found_in_order(encoder_loaded):
    sentences = [s for _, s in ROWS[:5]]
    vectors = embed(sentences)
    assert vectors.shape == (5, 384)
    assert abs(float((vectors ** 2).sum(axis=1).min()) - 1.0) < 1e-4
    plain = near_duplicates(sentences, 0.9)
    assert plain[0] is None and plain[1] is not None and plain[1][0] == 0 and plain[1][1] >= 0.9
    assert plain[4] is None
    guarded = near_duplicates(sentences, 0.9, same_facts)
    assert guarded[1] is not None and guarded[3] is None  # "small left" vs "large right": kept
    assert near_duplicates([], 0.9) == []


def test_same_facts():
    assert same_facts("Air in the pleural space.", "Air within the pleural space.")
    assert not same_facts("Small left effusion.", "Large right effusion.")
    assert not same_facts("A 2 cm nodule.", "A 3 cm nodule.")
    assert not same_facts("No effusion.", "Effusion.")


def test_stage_rejects_near_duplicate_descriptions_with_a_reason(tmp_path: Path, encoder_loaded):
    crawl = tmp_path / "descriptions.jsonl"
    crawl.write_text("".join(json.dumps({"id": f"d{i}", "entity": e, "sentence": s, "url": f"http://127.0.0.1/{i}"})
                             + "\n" for i, (e, s) in enumerate(ROWS)))
    result, _ = harmonize(tmp_path / "kb", backend="rules", descriptions=crawl,
                          entities=["pneumothorax", "pleural_effusion"])
    rejected = [json.loads(line) for line in (result.out / "rejections.jsonl").read_text().splitlines()]
    near = [r for r in rejected if "near-duplicate" in r["reason"]]
    assert [(r["line"], r["entity"]) for r in near] == [(2, "pneumothorax")]
    assert near[0]["reason"].startswith("near-duplicate of line 1 (cosine 0.9")
    sentences = [r.sentence for r in KnowledgeBase.load(result.out).for_entity("pneumothorax")]
    assert ROWS[0][1] in sentences and ROWS[1][1] not in sentences
    assert ROWS[2][1] in sentences and ROWS[3][1] in sentences
    effusion = [r.sentence for r in KnowledgeBase.load(result.out).for_entity("pleural_effusion")]
    assert ROWS[5][1] in effusion  # de-duplication is per entity


def test_threshold_none_switches_it_off(tmp_path: Path):
    crawl = tmp_path / "descriptions.jsonl"
    crawl.write_text("".join(json.dumps({"id": f"d{i}", "entity": e, "sentence": s, "url": f"http://127.0.0.1/{i}"})
                             + "\n" for i, (e, s) in enumerate(ROWS)))
    result, _ = harmonize(tmp_path / "kb", backend="rules", descriptions=crawl, entities=["pneumothorax"],
                          dedup_threshold=None)
    sentences = [r.sentence for r in KnowledgeBase.load(result.out).for_entity("pneumothorax")]
    assert ROWS[1][1] in sentences
    assert result.manifest["counts"]["near_duplicates_dropped"] == 0
