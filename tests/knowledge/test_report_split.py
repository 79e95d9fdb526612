"""Knowledge report sentences come from train-split subjects only (validate/test reports never shape it)."""

from __future__ import annotations

import pytest

from devide.stage import StageError
from knowledge.config import HarmonizeConfig
from knowledge.labeler import ReportLabeler
from knowledge.sources import SourceSet, sample_report_sentences, train_subjects
from knowledge.stage import report_subjects
from knowledge.vocabulary import load_vocabulary

SPLIT = ("dicom_id,study_id,subject_id,split\n"
         "d1,50000001,10000001,train\n"
         "d2,50000002,10000002,test\n"
         "d3,50000003,10000003,validate\n"
         "d4,50000004,10000004,train\n"
         "d5,50000005,10000004,test\n")  # a subject in two splits: not a train subject


def reports_root(tmp_path):
    root = tmp_path / "mimic"
    texts = {"10000001": "FINDINGS: Small left pleural effusion.",
             "10000002": "FINDINGS: Large right pneumothorax.",
             "10000003": "IMPRESSION: Moderate cardiomegaly.",
             "10000004": "FINDINGS: Right lower lobe consolidation."}
    for subject, text in texts.items():
        path = root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s5{subject[1:]}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    (root / "mimic-cxr-2.0.0-split.csv").write_text(SPLIT, encoding="utf-8")
    return root


def sampled_entities(root, subjects):
    out = SourceSet()
    vocab = load_vocabulary()
    sample_report_sentences(root, ReportLabeler(vocab), set(vocab.ids), out, per_entity=3, max_reports=100,
                            subjects=subjects)
    return {entity for entity, items in out.items.items() if any(i.kind == "report" for i in items)}


def test_only_train_subjects_contribute_report_sentences(tmp_path):
    root = reports_root(tmp_path)
    assert train_subjects(root / "mimic-cxr-2.0.0-split.csv") == {"10000001"}
    everyone = sampled_entities(root, None)
    assert {"pleural_effusion", "pneumothorax", "cardiomegaly"} <= everyone  # what the old sampling did
    train_only = sampled_entities(root, {"10000001"})
    assert "pleural_effusion" in train_only
    assert not {"pneumothorax", "cardiomegaly", "consolidation"} & train_only


def test_the_split_file_is_found_beside_the_reports_or_named(tmp_path):
    root = reports_root(tmp_path)
    assert report_subjects(HarmonizeConfig(reports=root, out=tmp_path / "out")) == {"10000001"}
    moved = tmp_path / "elsewhere.csv"
    (root / "mimic-cxr-2.0.0-split.csv").rename(moved)
    assert report_subjects(HarmonizeConfig(reports=root, out=tmp_path / "out")) is None  # warned, not silent
    assert report_subjects(HarmonizeConfig(reports=root, reports_split_file=moved,
                                           out=tmp_path / "out")) == {"10000001"}
    with pytest.raises(StageError, match="reports_split_file not found"):
        report_subjects(HarmonizeConfig(reports=root, reports_split_file=tmp_path / "nope.csv", out=tmp_path / "o"))
