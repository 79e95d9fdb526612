"""The grounding check: contradicting rewrites are rejected (with the right reason), faithful ones accepted."""

from __future__ import annotations

import pytest

from knowledge.grounding import GroundingChecker, directions, numbers, qualifier_problem
from knowledge.vocabulary import load_vocabulary

ATELECTASIS = ("Incomplete expansion or collapse of part or all of a lung, seen as increased density with loss of "
               "volume, often with displacement of fissures, the hilum or the hemidiaphragm toward the affected "
               "region.")
CARDIOMEGALY = ("Enlargement of the heart, judged on a frontal radiograph by a cardiothoracic ratio above about one "
                "half, with a widened cardiac silhouette that may displace the left heart border laterally.")
EFFUSION = ("Abnormal accumulation of fluid in the pleural space, which on an upright radiograph blunts the "
            "costophrenic angle and forms a dependent opacity with a concave upper margin (meniscus) along the "
            "chest wall.")
PNEUMOTHORAX = ("Air in the pleural space that separates the visceral pleura from the chest wall, seen as a thin "
                "white pleural line with absent lung markings beyond it, most often at the apex on an upright film.")
NODULE_REPORT = "A 2 cm nodule is seen in the right upper lobe."
EMPHYSEMA = "Emphysema produces hyperlucent, overinflated lungs with flattened hemidiaphragms."
ELEVATION = "The left hemidiaphragm is elevated, with volume loss in the left lower lobe."

CONTRADICTING = [
    # (entity, source, rewrite, reason prefix)
    ("atelectasis", ATELECTASIS,
     "Atelectasis is a condition characterized by increased lung volume and opacity with signs of volume loss.",
     "direction"),
    ("atelectasis", ATELECTASIS, "Atelectasis is seen as decreased density with loss of volume.", "direction"),
    ("pleural_effusion", EFFUSION, "Cardiomegaly displaces the left heart border.", "entity"),
    ("pneumothorax", CARDIOMEGALY, "Cardiomegaly displaces the left heart border laterally.", "entity"),
    ("pleural_effusion", EFFUSION, "Pleural effusion is associated with pneumothorax along the chest wall.",
     "entity"),
    ("pneumothorax", PNEUMOTHORAX, "Pneumothorax shows lung markings beyond a thin white pleural line at the apex.",
     "negation"),
    ("pneumothorax", PNEUMOTHORAX, "There is no pneumothorax; a thin white pleural line is seen at the apex.",
     "assertion"),
    ("cardiomegaly", CARDIOMEGALY, "Cardiomegaly may displace the right heart border laterally.", "side"),
    ("cardiomegaly", CARDIOMEGALY, "Cardiomegaly is a cardiothoracic ratio above about one third.", "number"),
    ("nodule", NODULE_REPORT, "A 3 cm nodule is seen in the right upper lobe.", "number"),
    ("nodule", NODULE_REPORT, "A 2 cm nodule is seen in the right lower lobe.", "level"),
    ("nodule", NODULE_REPORT, "A 2 cm nodule is seen in the left upper lobe.", "side"),
    ("emphysema", EMPHYSEMA, "Emphysema produces hypolucent, overinflated lungs with flattened hemidiaphragms.",
     "direction"),
    ("emphysema", EMPHYSEMA, "Emphysema produces hyperlucent, underinflated lungs with flattened hemidiaphragms.",
     "direction"),
    ("elevated_hemidiaphragm", ELEVATION, ("The left hemidiaphragm is depressed, with volume loss in the left lower "
     "lobe."), "direction"),
    ("pleural_effusion", EFFUSION, ("Pleural effusion forms a dependent opacity with a convex upper margin along "
     "the chest wall."), "contour"),
    ("pleural_effusion", EFFUSION, "Pleural effusion blunts the costophrenic angle on the left.", "side"),
    ("pleural_effusion", EFFUSION, "It is caused by eating green cheese on Tuesdays.", "lexical"),
]
FAITHFUL = [
    ("atelectasis", ATELECTASIS, ("Atelectasis is incomplete expansion or collapse of a lung, seen as increased "
     "density with loss of volume.")),
    ("atelectasis", ATELECTASIS, ("Atelectasis often displaces fissures, the hilum or the hemidiaphragm toward the "
     "affected region.")),
    ("atelectasis", ATELECTASIS, "Collapse of part of a lung appears as increased density with volume loss."),
    ("cardiomegaly", CARDIOMEGALY, ("In cardiomegaly the cardiothoracic ratio is above about one half on a frontal "
     "radiograph.")),
    ("cardiomegaly", CARDIOMEGALY, "A widened cardiac silhouette may displace the left heart border laterally."),
    ("pleural_effusion", EFFUSION, "Pleural effusion blunts the costophrenic angle on an upright radiograph."),
    ("pleural_effusion", EFFUSION, ("Pleural fluid forms a dependent opacity with a concave upper margin, the "
     "meniscus.")),
    ("pneumothorax", PNEUMOTHORAX, ("Pneumothorax is seen as a thin white pleural line with absent lung markings "
     "beyond it.")),
    ("nodule", NODULE_REPORT, "A 2 cm nodule lies in the right upper lobe."),
    ("emphysema", EMPHYSEMA, ("Emphysematous lungs are hyperlucent and overinflated, with flattened "
     "hemidiaphragms.")),
    ("elevated_hemidiaphragm", ELEVATION, "An elevated left hemidiaphragm with left lower lobe volume loss."),
]


@pytest.fixture(scope="module")
def checker():
    """One checker (and one load of the sentence encoder) for the module."""
    return GroundingChecker(load_vocabulary())


def test_contradicting_rewrites_are_rejected_for_the_right_reason(checker):
    verdicts = checker.check_all([(rewrite, source, entity) for entity, source, rewrite, _ in CONTRADICTING])
    for (entity, _, rewrite, reason), verdict in zip(CONTRADICTING, verdicts):
        assert not verdict.accepted, f"accepted for {entity}: {rewrite}"
        assert verdict.reason.startswith(reason), f"{rewrite}: {verdict.reason}"


def test_faithful_rewrites_are_accepted(checker):
    verdicts = checker.check_all([(rewrite, source, entity) for entity, source, rewrite in FAITHFUL])
    for (entity, _, rewrite), verdict in zip(FAITHFUL, verdicts):
        assert verdict.accepted, f"rejected for {entity}: {rewrite} ({verdict.reason})"
        assert verdict.semantic is not None and verdict.semantic >= 0.5 and verdict.lexical >= 0.6


def test_the_source_itself_is_always_grounded(checker):
    sources = {(source, entity) for entity, source, _ in FAITHFUL}
    verdicts = checker.check_all([(source, source, entity) for source, entity in sorted(sources)])
    assert all(v.accepted and v.semantic == pytest.approx(1.0, abs=1e-3) for v in verdicts)


def test_rule_helpers_by_hand():
    assert numbers(["a", "3.0", "cm", "and", "two", "half"]) == {"3", "2", "0.5"}
    assert directions(["increased", "lung", "volume", "with", "volume", "loss"]) == {
        ("lung", 1), ("volum", 1), ("volum", -1)}
    assert directions(["volume", "is", "decreased"]) == {("volum", -1)}
    assert qualifier_problem(["left", "base"], ["right", "base"]) == "side: 'left' where the source says 'right'"
    assert qualifier_problem(["small", "effusion"], ["effusion"]) is None  # an added size is not a contradiction
    assert qualifier_problem(["upper", "lobe"], ["lobe"]) == "level: 'upper' is not in the source"


def test_semantic_threshold_can_be_switched_off():
    verdict = GroundingChecker(load_vocabulary(), min_semantic=None).check(
        "Pleural fluid blunts the costophrenic angle.", EFFUSION, "pleural_effusion")
    assert verdict.accepted and verdict.semantic is None
