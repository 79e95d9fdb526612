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


@pytest.fixture(scope="module")
def cautious():
    """The CheXpert reading of alternatives: "A versus B" is uncertain for both."""
    return ReportLabeler(alternatives="uncertain")


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
    ("Mild pulmonary edema versus pneumonia.", {"edema": 1, "pneumonia": 1}),  # alternatives="present"
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


# ---- the error classes found on real reports (sentences written for these tests, in the style of real reports)


def _findings(labels: dict[str, int]) -> dict[str, int]:
    return {k: v for k, v in labels.items() if k not in ("no_finding", "support_devices", "lung_lesion")}


@pytest.mark.parametrize("sentence, expected", [
    # a normal phrase ("lungs are clear") must not consume the "clear of" that negates the list after it
    ("The lungs are clear of focal airspace disease, pneumothorax, or pleural effusion.",
     {"lung_opacity": 0, "pneumothorax": 0, "pleural_effusion": 0}),
    ("Lungs are clear of infiltrate or effusion.", {"lung_opacity": 0, "infiltration": 0, "pleural_effusion": 0}),
])
def test_clear_of_negates_the_list(labeler, cautious, sentence, expected):
    assert _findings(labeler.label(sentence)) == expected
    assert _findings(cautious.label(sentence)) == expected  # "or" inside a negated list stays negated


@pytest.mark.parametrize("sentence, expected", [
    # negation written after the finding
    ("Mediastinal contours and vascular engorgement are unremarkable.", {"vascular_congestion": 0}),
    ("Heart size and pulmonary vascular congestion appear within normal limits.", {"vascular_congestion": 0}),
    ("The small right apical pneumothorax has resolved.", {"pneumothorax": 0}),
    ("Left basilar consolidation has cleared in the interval.", {"consolidation": 0}),
    # a negation reaching further than 12 words
    (("Negative for focal consolidation within the right or left lower lobes, large pleural effusion, or "
      "pneumothorax."), {"consolidation": 0, "pleural_effusion": 0, "pneumothorax": 0}),
    # a forward scope stops at a comma that opens a new clause, not at the commas of a list
    ("There is no pleural effusion or pneumothorax, and the heart is mildly enlarged.",
     {"pleural_effusion": 0, "pneumothorax": 0, "cardiomegaly": 1}),
    # a backward negation stops at a comma that starts a new clause
    ("Moderate cardiomegaly, the pulmonary vasculature is within normal limits.", {"cardiomegaly": 1}),
])
def test_negation_after_the_finding_and_long_scopes(labeler, sentence, expected):
    assert _findings(labeler.label(sentence)) == expected


def test_numbered_items_without_full_stop_are_sentences(labeler):
    assert split_sentences("1. Bilateral pleural effusions 2. Possible right basilar pneumonia") == [
        "Bilateral pleural effusions", "Possible right basilar pneumonia"]
    assert split_sentences("1.Healing left rib fracture. 2.Clear lungs") == ["Healing left rib fracture.",
                                                                            "Clear lungs"]
    labels = labeler.label(" FINDINGS: \n IMPRESSION: 1. Stable cardiomegaly 2. No pulmonary edema 3. Probable "
                           "small left effusion\n")
    assert _findings(labels) == {"cardiomegaly": 1, "edema": 0, "pleural_effusion": 1}


@pytest.mark.parametrize("sentence, expected", [
    ("Calcified granulomas/lymph nodes in the right hilum.", {"granuloma": 1}),
    ("Bibasilar atelectasis/scarring.", {"atelectasis": 1, "scarring": 1}),
    ("No acute findings/opacities/infiltrates.", {"lung_opacity": 0, "infiltration": 0}),
])
def test_slashes_separate_words(labeler, sentence, expected):
    assert _findings(labeler.label(sentence)) == expected


@pytest.mark.parametrize("sentence, expected", [
    ("A superimposed pneumonia would be difficult to exclude.", {"pneumonia": -1}),
    ("Pneumonia is in the differential.", {"pneumonia": -1}),
    ("Right basilar opacity may be secondary to atelectasis.", {"lung_opacity": 1, "atelectasis": -1}),
    ("Small left effusion cannot be excluded.", {"pleural_effusion": -1}),
    ("No findings to suggest pneumonia.", {"pneumonia": 0}),
    ("Pneumothorax is unlikely.", {"pneumothorax": 0}),
])
def test_hedges(labeler, sentence, expected):
    assert _findings(labeler.label(sentence)) == expected


@pytest.mark.parametrize("sentence, expected", [
    ("The heart is large.", {"cardiomegaly": 1}),
    ("Borderline heart size.", {"cardiomegaly": 1}),
    ("Heart size is slightly enlarged.", {"cardiomegaly": 1}),
    ("The heart is not enlarged.", {"cardiomegaly": 0}),
    ("The heart is not significantly enlarged.", {"cardiomegaly": 0}),
    ("Pulmonary vasculature is not engorged.", {"vascular_congestion": 0}),
    ("Several small calcified granulomata in the left upper lobe.", {"granuloma": 1}),
    ("Sequelae of prior granulomatous infection.", {"granuloma": 1}),
    ("Mild dextrocurvature of the thoracic spine.", {"scoliosis": 1}),
    ("Slight curvature of the thoracolumbar spine.", {"scoliosis": 1}),
    ("Mild central pulmonary vascular prominence.", {"vascular_congestion": 1}),
    ("Prominence of the central pulmonary vasculature.", {"vascular_congestion": 1}),
    ("Bibasilar atelectases.", {"atelectasis": 1}),
    ("Masslike opacity in the right apex.", {"mass": 1, "lung_opacity": 1}),
    ("Fracture-dislocation of the right shoulder.", {"fracture": 1}),
    ("Patchy left basilar opacity consistent with pneumonitis.", {"lung_opacity": 1, "pneumonia": 1}),
    ("Small pneumothorax on the right-hand side.", {"pneumothorax": 1}),
])
def test_synonyms_and_morphology(labeler, sentence, expected):
    assert _findings(labeler.label(sentence)) == expected


@pytest.mark.parametrize("sentence, expected", [
    # airspace disease and nodular opacities are opacities, not consolidation / a nodule
    ("Patchy airspace disease in the right lower lobe.", {"lung_opacity": 1}),
    ("A 6 mm nodular opacity projects over the left fifth rib.", {"lung_opacity": 1}),
    # an enlarged cardiac silhouette is cardiomegaly (CheXpert's reading and the phantom's)
    ("The cardiac silhouette is enlarged.", {"cardiomegaly": 1}),
    # clips and stents are not support devices (sternotomy wires are); volume loss alone is not atelectasis
    ("Surgical clips in the right upper quadrant.", {}),
    ("Stable coronary artery stent.", {}),
    ("Mild left-sided volume loss after thoracotomy.", {}),
    ("Cardiomegaly or pericardial effusion.", {"cardiomegaly": 1}),  # not a pleural effusion
    ("Increased kyphotic curvature of the thoracic spine.", {}),  # kyphosis, not scoliosis
])
def test_vocabulary_conventions(labeler, sentence, expected):
    labels = labeler.label(sentence)
    assert _findings(labels) == expected
    assert "support_devices" not in labels


def test_devices_found_without_their_name(labeler):
    assert labeler.label("Stable aortic valve prosthesis.")["support_devices"] == 1
    assert labeler.label("Two leads terminate in the right atrium and right ventricle.")["pacemaker"] == 1
    assert labeler.label("Right-sided catheter with tip at the cavoatrial junction.")["support_devices"] == 1
    assert labeler.label("Left chest wall AICD with leads in the right ventricle.")["pacemaker"] == 1


@pytest.mark.parametrize("sentence", [
    "Healing fracture of the left femoral neck.",  # another body part
    "The lateral fixation screw is fractured.",  # hardware, not bone
    "Recommend chest CT to evaluate for a pulmonary nodule.",  # hypothetical
    "Subtle nondisplaced fractures may not be demonstrated.",  # hypothetical
    "Please correlate clinically for pneumonia.",  # hypothetical
    "Follow-up films are suggested to exclude an underlying mass.",  # hypothetical
    "Right apical scarring, compatible with history of tuberculosis.",  # historical (scarring stays)
])
def test_mentions_that_are_not_chest_findings_are_dropped(labeler, sentence):
    assert _findings(labeler.label(sentence)) == ({"scarring": 1} if "scarring" in sentence else {})


def test_a_historical_clause_ends_at_its_comma(labeler):
    assert _findings(labeler.label("Given a history of heart failure, findings represent mild pulmonary edema.")) == {
        "edema": 1}


def test_probable_and_alternatives_conventions(labeler, cautious):
    assert labeler.label("Probable small left pleural effusion.")["pleural_effusion"] == 1
    assert labeler.label("Findings most consistent with pulmonary edema.")["edema"] == 1
    assert labeler.label("Possible small left pleural effusion.")["pleural_effusion"] == -1
    text = "Left basilar atelectasis versus infiltrate."
    # infiltration rolls up to its CheXpert parent, lung_opacity
    assert _findings(labeler.label(text)) == {"atelectasis": 1, "infiltration": 1, "lung_opacity": 1}
    assert _findings(cautious.label(text)) == {"atelectasis": -1, "infiltration": -1, "lung_opacity": -1}
    assert _findings(cautious.label("Streaky opacity, atelectasis or scarring.")) == {
        "lung_opacity": 1, "atelectasis": -1, "scarring": -1}
    with pytest.raises(ValueError, match="alternatives must be one of"):
        ReportLabeler(alternatives="maybe")
