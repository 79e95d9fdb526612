"""The entity vocabulary: contract ids, dataset label mappings, validation errors."""

import pytest

from knowledge.vocabulary import DATASETS, VocabularyError, load_vocabulary, parse_vocabulary

CONTRACT_IDS = [
    "atelectasis", "cardiomegaly", "pleural_effusion", "infiltration", "mass", "nodule", "pneumonia",
    "pneumothorax", "consolidation", "edema", "emphysema", "fibrosis", "pleural_thickening", "hernia",
    "fracture", "support_devices", "lung_opacity", "enlarged_cardiomediastinum", "lung_lesion",
    "pleural_other", "no_finding",
]
CHESTXRAY14 = [
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia", "Pneumothorax",
    "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia",
]
CHEXPERT = ["No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
            "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other",
            "Fracture", "Support Devices"]


def test_contract_entities_present_with_definitions():
    vocab = load_vocabulary()
    assert len(vocab) >= 40
    assert set(CONTRACT_IDS) <= set(vocab.ids)
    for entity in vocab:
        assert len(entity.definition) > 40 and entity.synonyms
    assert len(set(vocab.ids)) == len(vocab.ids)


def test_every_benchmark_label_maps():
    vocab = load_vocabulary()
    assert all(vocab.from_label("chestxray14", name) for name in CHESTXRAY14)
    assert all(vocab.from_label("chexpert", name) for name in CHEXPERT)
    assert all(vocab.from_label("mimic", name) for name in CHEXPERT)
    assert vocab.from_label("chestxray14", "Pleural_Thickening") == "pleural_thickening"
    assert vocab.from_label("chestxray14", "Infiltrate") == "infiltration"  # BBox_List spelling
    assert vocab.from_label("chestxray14", "Effusion") == "pleural_effusion"
    assert vocab.from_label("chexpert", " airspace opacity ") == "lung_opacity"
    assert vocab.from_label("siim", "Pneumothorax") == "pneumothorax"
    assert vocab.from_label("rsna", "Lung Opacity") == "pneumonia"
    assert vocab.from_label("vindr", "Nodule/Mass") == "nodule"
    assert vocab.from_label("covidx", "COVID-19") == "covid19"
    assert vocab.from_label("padchest", "pleural effusion") == "pleural_effusion"
    assert vocab.from_label("chestxray14", "Unicorn") is None
    with pytest.raises(KeyError):
        vocab.from_label("nope", "Mass")
    assert set(DATASETS) == {d for e in vocab for d in e.mappings} | set(DATASETS)


def _entity(**over):
    base = {"id": "a_b", "name": "A", "category": "finding", "definition": "defined", "synonyms": ["a"]}
    return {**base, **over}


@pytest.mark.parametrize("entities, message", [
    ([_entity(id="Bad-Id")], "snake_case"),
    ([_entity(category="weird")], "category"),
    ([_entity(), _entity()], "duplicate entity ids"),
    ([_entity(mappings={"nih": ["A"]})], "unknown datasets"),
    ([_entity(id="x", mappings={"vindr": ["L"]}), _entity(id="y", name="B", synonyms=["b"], mappings={"vindr": ["l"]})],
     "maps to both"),
    ([_entity(id="x"), _entity(id="y", name="B", synonyms=["a"])], "synonym of both"),
    ([_entity(definition="")], "definition"),
    ([_entity(parents=["nowhere"])], "unknown or self parent"),
])
def test_malformed_vocabulary_is_rejected_in_one_line(entities, message):
    with pytest.raises(VocabularyError, match=message) as info:
        parse_vocabulary({"entities": entities})
    assert "\n" not in str(info.value)


def test_missing_file_is_one_line_error(tmp_path):
    with pytest.raises(VocabularyError, match="not found"):
        load_vocabulary(tmp_path / "none.yaml")
