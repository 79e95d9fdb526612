"""Report labeler: sections, sentences, negation / uncertainty scopes, per-study labels, RadGraph import."""

import pytest

from knowledge.labeler import ReportLabeler, labels_from_radgraph, parse_sections, split_sentences

REPORT = """                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)
 
 INDICATION:  ___ year old woman with ?pleural effusion  // ?pneumothorax
 
 FINDINGS: 
 
 Heart size is mildly enlarged. There is a small left pleural effusion, not
 significantly changed. No pneumothorax.
 
 IMPRESSION: 
 
 1. Small left effusion. 2. No pneumothorax.
"""


@pytest.fixture(scope="module")
def labeler():
    return ReportLabeler()


def test_sections_of_a_mimic_report():
    sections = parse_sections(REPORT)
    assert sections["findings"].startswith("Heart size is mildly enlarged. There is a small left pleural effusion, not")
    assert sections["impression"] == "1. Small left effusion. 2. No pneumothorax."
    assert sections["indication"].endswith("?pneumothorax")
    assert "FINAL REPORT" not in " ".join(sections.values())


def test_missing_sections_are_absent_and_last_paragraph_used(labeler):
    text = " WET READ: xx\n \n There is a large right pneumothorax.\n"
    sections = parse_sections(text)
    assert "findings" not in sections and "impression" not in sections
    assert sections["last_paragraph"] == "There is a large right pneumothorax."
    assert labeler.label(text)["pneumothorax"] == 1
    only_impression = " IMPRESSION:  No acute cardiopulmonary process.\n"
    assert set(parse_sections(only_impression)) == {"impression"}


def test_indication_is_not_labelled(labeler):
    assert labeler.label(REPORT) == {"cardiomegaly": 1, "pleural_effusion": 1, "pneumothorax": 0, "no_finding": 0}


def test_sentence_splitting_keeps_decimals_and_list_markers():
    text = "1. Small effusion measuring 1.5 cm. 2. Dr. Smith was notified at 10 a.m. No pneumothorax!"
    assert split_sentences(text) == ["Small effusion measuring 1.5 cm.", "Dr. Smith was notified at 10 a.m.",
                                     "No pneumothorax!"]


@pytest.mark.parametrize("sentence, expected", [
    ("No change in the small left effusion.", {"pleural_effusion": 1}),
    ("No pleural effusion, pneumothorax or focal consolidation.",
     {"pleural_effusion": 0, "pneumothorax": 0, "consolidation": 0}),
    ("No pneumothorax, but there is a small right pleural effusion.", {"pneumothorax": 0, "pleural_effusion": 1}),
    ("There is no evidence of pneumothorax; bibasilar atelectasis is present.", {"pneumothorax": 0, "atelectasis": 1}),
    ("Pneumonia cannot be excluded.", {"pneumonia": -1}),
    ("Cannot rule out a small pneumothorax.", {"pneumothorax": -1}),
    ("A small pneumothorax is not excluded.", {"pneumothorax": -1}),
    ("Opacity may represent atelectasis or pneumonia.", {"lung_opacity": 1, "atelectasis": -1, "pneumonia": -1}),
    ("No findings to suggest pneumonia.", {"pneumonia": 0}),
    ("Heart size is normal.", {"cardiomegaly": 0}),
    ("The previously seen pneumothorax has resolved.", {"pneumothorax": 0}),
    ("Mild pulmonary edema versus atypical infection.", {"edema": -1}),
    ("Subcutaneous emphysema in the left chest wall.", {"subcutaneous_emphysema": 1}),
    ("Small bilateral pleural effusions.", {"pleural_effusion": 1}),
    ("Nasogastric tube has been removed.", {"nasogastric_tube": 0}),
])
def test_tricky_sentences(labeler, sentence, expected):
    labels = labeler.label(sentence)
    labels.pop("no_finding", None)
    labels.pop("support_devices", None)
    assert labels == expected


def test_present_beats_uncertain_beats_absent(labeler):
    text = "No effusion on the left. Possible effusion on the right. Small effusion at the right base."
    assert labeler.label(text)["pleural_effusion"] == 1
    assert labeler.label("No effusion on the left. Possible right effusion.")["pleural_effusion"] == -1


def test_no_finding_rule_and_device_roll_up(labeler):
    assert labeler.label("No acute cardiopulmonary process.") == {"no_finding": 1}
    assert labeler.label("No effusion. No pneumothorax.")["no_finding"] == 1
    assert labeler.label("Possible pneumonia.")["no_finding"] == 0
    labels = labeler.label("Endotracheal tube in place. Lungs are clear.")
    assert labels == {"endotracheal_tube": 1, "support_devices": 1, "lung_opacity": 0, "no_finding": 1}
    assert labeler.label("The report is unremarkable for this patient.") == {}


def test_positive_sentences(labeler):
    pairs = labeler.positive_sentences(REPORT)
    assert ("pleural_effusion", "Small left effusion.") in pairs
    assert all(entity != "pneumothorax" for entity, _ in pairs)


def test_radgraph_import(labeler):
    entry = {"text": "no evidence of acute pleural effusion small left pneumothorax possible atelectasis",
             "entities": {
                 "1": {"tokens": "pleural", "label": "ANAT-DP", "start_ix": 5, "end_ix": 5, "relations": []},
                 "2": {"tokens": "effusion", "label": "OBS-DA", "start_ix": 6, "end_ix": 6, "relations": []},
                 "3": {"tokens": "pneumothorax", "label": "OBS-DP", "start_ix": 9, "end_ix": 9, "relations": []},
                 "4": {"tokens": "atelectasis", "label": "OBS-U", "start_ix": 11, "end_ix": 11, "relations": []},
             }}
    assert labels_from_radgraph(entry, labeler) == {"pleural_effusion": 0, "pneumothorax": 1, "atelectasis": -1,
                                                    "no_finding": 0}
    nested = {"text": "x", "labeler_1": {"entities": {"1": {"tokens": "edema", "label": "OBS-DP", "relations": []}}}}
    assert labels_from_radgraph(nested, labeler) == {"edema": 1, "no_finding": 0}
    with pytest.raises(ValueError):
        labels_from_radgraph({"text": "x"}, labeler)


def test_children_roll_up_to_chexpert_style_parents(labeler):
    assert labeler.label("A 1.2 cm nodule in the right upper zone.") == {"nodule": 1, "lung_lesion": 1, "no_finding": 0}
    assert labeler.label("No pulmonary nodule.") == {"nodule": 0, "lung_lesion": 0, "no_finding": 1}
    labels = labeler.label("No nodule. Large left lung mass.")
    assert labels["lung_lesion"] == 1 and labels["nodule"] == 0
    assert labeler.label("Left chest tube in place.")["support_devices"] == 1
