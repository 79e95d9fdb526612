"""``devide phantom`` end to end: layouts read back with pandas, labels agree with reports, unseen findings
never named in pretraining reports, byte-identical output for a seed whatever the worker count."""

from __future__ import annotations

import gzip
import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from PIL import Image

from devide.config import ConfigError, load_config
from devide.data.phantom import STAGE, PhantomConfig, load_spec, rle_to_mask
from devide.data.phantom.spec import CHESTXRAY14_LABELS, CHEXPERT_COLUMNS
from devide.stage import execute_stage

SIZE = 96
CONFIG = {"n_studies": 30, "n_eval": 14, "seed": 7, "size": SIZE, "chunk": 8}


def _run(out: Path, **extra) -> Path:
    cfg = load_config(PhantomConfig, overrides={**CONFIG, **extra, "out": str(out)})
    execute_stage(STAGE, cfg, quiet=True)
    return out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return _run(tmp_path_factory.mktemp("phantom") / "out", workers=2)


def _hashes(root: Path) -> dict[str, str]:
    skip = {"manifest.json", "stage.log", "config.resolved.yaml"}  # the config names the worker count
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name not in skip}


def test_same_seed_gives_identical_bytes_with_any_worker_count(corpus, tmp_path):
    again = _run(tmp_path / "again", workers=1)
    assert _hashes(again) == _hashes(corpus)
    other = _run(tmp_path / "other", workers=1, seed=8, eval_sets=[], n_studies=5)
    assert _hashes(other) != _hashes(corpus)


def test_mimic_layout(corpus):
    root = corpus / "mimic-cxr-jpg"
    meta = pd.read_csv(root / "mimic-cxr-2.0.0-metadata.csv.gz")
    assert list(meta.columns) == [
        "dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition", "Rows", "Columns",
        "StudyDate", "StudyTime", "ProcedureCodeSequence_CodeMeaning", "ViewCodeSequence_CodeMeaning",
        "PatientOrientationCodeSequence_CodeMeaning"]
    split = pd.read_csv(root / "mimic-cxr-2.0.0-split.csv.gz")
    assert list(split.columns) == ["dicom_id", "study_id", "subject_id", "split"]
    assert set(split["split"]) <= {"train", "validate", "test"}
    assert split.groupby("subject_id")["split"].nunique().max() == 1
    negbio = pd.read_csv(root / "mimic-cxr-2.0.0-negbio.csv.gz")
    chexpert = pd.read_csv(root / "mimic-cxr-2.0.0-chexpert.csv.gz")
    assert list(chexpert.columns) == ["subject_id", "study_id", *CHEXPERT_COLUMNS]
    assert negbio["study_id"].nunique() == 30 and set(chexpert["study_id"]) <= set(negbio["study_id"])
    assert set(np.unique(chexpert[list(CHEXPERT_COLUMNS)].stack().dropna())) == {1.0, 0.0, -1.0}
    assert chexpert[list(CHEXPERT_COLUMNS)].isna().any().any(), "blank = not mentioned must occur"
    for row in meta.itertuples():
        study = root / "files" / f"p{str(row.subject_id)[:2]}" / f"p{row.subject_id}" / f"s{row.study_id}"
        with Image.open(study / f"{row.dicom_id}.jpg") as img:
            assert img.mode == "L" and img.size == (SIZE, SIZE) and img.format == "JPEG"
        assert study.with_suffix(".txt").is_file()
        assert re.fullmatch(r"[0-9a-f]{8}(-[0-9a-f]{8}){4}", row.dicom_id)
        assert str(row.subject_id).startswith("1") and str(row.study_id).startswith("5")
    names = (root / "IMAGE_FILENAMES").read_text().split()
    assert len(names) == len(meta) and all(n.startswith("files/p1") for n in names)


def _reports(corpus: Path) -> dict[int, str]:
    return {int(p.stem[1:]): p.read_text() for p in (corpus / "mimic-cxr-jpg" / "files").rglob("s*.txt")}


def test_report_format(corpus):
    for text in _reports(corpus).values():
        lines = text.splitlines()
        assert lines[0].strip() == "FINAL REPORT"
        assert all(line.startswith(" ") and len(line) <= 79 for line in lines)
        assert re.search(r"\n (FINDINGS|IMPRESSION):\s", text)


NEGATION = re.compile(r"^(no|there is no|there are no)\b|\bnot\b|\bwithout\b")
UNCERTAIN = re.compile(r"\b(possible|cannot exclude|may)\b")


def _label_sentence(sentence: str, vocabulary) -> dict[str, int]:
    """An independent little labeler: vocabulary terms (longest first) with negation/uncertainty cues."""
    text = sentence.lower()
    status = -1 if UNCERTAIN.search(text) else 0 if NEGATION.search(text) else 1
    found: dict[str, int] = {}
    for entity in vocabulary:
        for phrase in entity.absent_phrases:
            if phrase in text:
                found[entity.id] = 0
                text = text.replace(phrase, " ")
    terms = sorted(((t, e) for e in vocabulary for t in e.terms), key=lambda te: -len(te[0]))
    for term, entity in terms:
        pattern = re.compile(rf"(?<![\w-]){re.escape(term)}(?![\w-])")
        if pattern.search(text):
            found[entity.id] = status
            text = pattern.sub(" ", text)
    return found


def test_labels_agree_with_report_text(corpus):
    vocabulary = pytest.importorskip("knowledge.vocabulary").load_vocabulary()
    spec = load_spec()
    labels = pd.read_csv(corpus / "mimic-cxr-jpg" / "mimic-cxr-2.0.0-negbio.csv.gz").set_index("study_id")
    rank = {1: 3, -1: 2, 0: 1}
    for study_id, text in _reports(corpus).items():
        body = text.split(" FINDINGS:", 1)[-1] if " FINDINGS:" in text else text.split(" IMPRESSION:", 1)[-1]
        sentences = re.split(r"(?<=\.)\s+", " ".join(body.replace("IMPRESSION:", " ").split()))
        columns: dict[str, int] = {}
        abnormal = False
        for sentence in sentences:
            for entity, status in _label_sentence(sentence, vocabulary).items():
                category = vocabulary.get(entity).category
                column = "Support Devices" if category == "device" else spec.chexpert_column(entity)
                if status != 0 and entity in spec.findings and column not in ("Support Devices", "No Finding"):
                    abnormal = True
                if column and column != "No Finding":
                    if column not in columns or rank[status] > rank[columns[column]]:
                        columns[column] = status
        row = labels.loc[study_id]
        for column in CHEXPERT_COLUMNS:
            if column == "No Finding":
                expected = np.nan if abnormal else 1.0
            else:
                expected = float(columns[column]) if column in columns else np.nan
            got = row[column]
            assert (np.isnan(expected) and np.isnan(got)) or expected == got, (study_id, column, expected, got, text)


def test_unseen_findings_absent_from_pretraining_reports_but_present_in_evaluation(corpus):
    vocabulary = pytest.importorskip("knowledge.vocabulary").load_vocabulary()
    findings = json.loads((corpus / "findings.json").read_text())
    unseen = findings["unseen"]
    assert len(unseen) >= 3
    terms = {t for e in unseen for t in [*vocabulary.get(e).terms, e.replace("_", " ")]}
    for text in _reports(corpus).values():
        assert not [t for t in terms if re.search(rf"\b{re.escape(t)}\b", text.lower())]
    mimic = [json.loads(line) for line in (corpus / "ground_truth" / "mimic.jsonl").read_text().splitlines()]
    assert not {e for row in mimic for e in row["labels"]} & set(unseen)
    entries = pd.read_csv(corpus / "chestxray14" / "Data_Entry_2017.csv")
    cxr14 = {vocabulary.from_label("chestxray14", label) for cell in entries["Finding Labels"] for label in cell.split("|")}
    assert set(unseen) <= cxr14, "each unseen finding must occur in ChestX-ray14"


def test_chestxray14_layout(corpus):
    root = corpus / "chestxray14"
    entries = pd.read_csv(root / "Data_Entry_2017.csv")
    assert list(entries.columns[:9]) == ["Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age",
                                         "Patient Gender", "View Position", "OriginalImage[Width", "Height]"]
    assert entries.shape[1] == 12  # ...PixelSpacing[x, y], trailing empty column
    labels = {label for cell in entries["Finding Labels"] for label in cell.split("|")}
    assert labels <= set(CHESTXRAY14_LABELS) | {"No Finding"}
    boxes = pd.read_csv(root / "BBox_List_2017.csv")
    assert list(boxes.columns[:6]) == ["Image Index", "Finding Label", "Bbox [x", "y", "w", "h]"]
    assert set(boxes["Finding Label"]) <= {"Atelectasis", "Cardiomegaly", "Effusion", "Infiltrate", "Mass", "Nodule",
                                           "Pneumonia", "Pneumothorax"}
    listed = (root / "test_list.txt").read_text().split() + (root / "train_val_list.txt").read_text().split()
    assert sorted(listed) == sorted(entries["Image Index"])
    for name in entries["Image Index"]:
        with Image.open(root / "images_001" / "images" / name) as img:
            assert img.format == "PNG" and img.mode == "L"
    for row in boxes.itertuples(index=False):
        x, y, w, h = row[2:6]
        assert 0 <= x and 0 <= y and x + w <= SIZE + 0.01 and y + h <= SIZE + 0.01 and w > 0 and h > 0


def test_chexpert_layout(corpus):
    frame = pd.read_csv(corpus / "chexpert" / "CheXpert-v1.0-small" / "valid.csv")
    assert list(frame.columns[:5]) == ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA"]
    assert set(CHEXPERT_COLUMNS) == set(frame.columns[5:])
    assert set(np.unique(frame[list(CHEXPERT_COLUMNS)])) <= {0.0, 1.0}
    for path in frame["Path"]:
        assert path.startswith("CheXpert-v1.0-small/valid/patient") and path.endswith("view1_frontal.jpg")
        assert (corpus / "chexpert" / path).is_file()


def test_rsna_layout_one_row_per_box(corpus):
    root = corpus / "rsna"
    labels = pd.read_csv(root / "stage_2_train_labels.csv")
    assert list(labels.columns) == ["patientId", "x", "y", "width", "height", "Target"]
    truth = {Path(r["image"]).stem: r for r in map(json.loads, (corpus / "ground_truth" / "rsna.jsonl").read_text().splitlines())}
    for patient, rows in labels.groupby("patientId"):
        boxes = [b for e in ("pneumonia", "consolidation") for b in truth[patient]["boxes"].get(e, [])]
        if rows["Target"].iloc[0] == 1:
            assert len(rows) == len(boxes) and rows[["x", "y", "width", "height"]].notna().all().all()
        else:
            assert len(rows) == 1 and not boxes and rows[["x", "y", "width", "height"]].isna().all().all()
        ds = pydicom.dcmread(root / "stage_2_train_images" / f"{patient}.dcm")
        assert ds.PatientID == patient and ds.pixel_array.shape == (SIZE, SIZE) and ds.pixel_array.dtype == np.uint8
    classes = pd.read_csv(root / "stage_2_detailed_class_info.csv")
    assert set(classes["class"]) <= {"Lung Opacity", "No Lung Opacity / Not Normal", "Normal"}
    assert len(classes) == len(labels)


def test_siim_layout_and_rle(corpus):
    root = corpus / "siim"
    frame = pd.read_csv(root / "train-rle.csv")
    assert list(frame.columns) == ["ImageId", " EncodedPixels"]
    truth = {Path(r["image"]).stem: r for r in map(json.loads, (corpus / "ground_truth" / "siim.jsonl").read_text().splitlines())}
    files = {p.stem: p for p in (root / "dicom-images-train").glob("*/*/*.dcm")}
    assert set(frame["ImageId"]) == set(files)
    for image_id, rle in zip(frame["ImageId"], frame[" EncodedPixels"]):
        mask = rle_to_mask(rle, SIZE, SIZE)
        assert mask.any() == ("pneumothorax" in truth[image_id]["labels"])
        if mask.any():
            x, y, w, h = truth[image_id]["boxes"]["pneumothorax"][0]
            rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
            assert x - 1 <= cols[0] and cols[-1] <= x + w + 1 and y - 1 <= rows[0] and rows[-1] <= y + h + 1
        ds = pydicom.dcmread(files[image_id])
        assert ds.SOPInstanceUID == image_id and ds.PhotometricInterpretation == "MONOCHROME2"


def test_csv_gz_has_no_timestamp(corpus):
    with gzip.open(corpus / "mimic-cxr-jpg" / "mimic-cxr-2.0.0-split.csv.gz") as handle:
        assert handle.read(8) == b"dicom_id"
    assert (corpus / "mimic-cxr-jpg" / "mimic-cxr-2.0.0-split.csv.gz").read_bytes()[4:8] == b"\0\0\0\0"


def test_bad_config_is_one_line_error(tmp_path):
    with pytest.raises(ConfigError, match="not a phantom finding"):
        load_config(PhantomConfig, overrides={"unseen": ["dragon"], "out": str(tmp_path)})
    with pytest.raises(ConfigError, match="size"):
        load_config(PhantomConfig, overrides={"size": 10})
    with pytest.raises(ConfigError, match="granuloma"):
        load_config(PhantomConfig, overrides={"unseen": ["granuloma"]})


def test_normal_studies_carry_pertinent_negatives_of_every_kind():
    """Negations are not reserved for sick patients: a normal study's report can say "no pneumonia" or "no
    mass" (with a fixed negation order it never did, and the model learned pneumonia = abnormal)."""
    from devide.data.phantom.case import Case
    from devide.data.phantom.reports import write_report

    spec = load_spec()
    rng = np.random.default_rng(0)
    negated: dict[str, int] = {}
    for seed in range(300):
        report = write_report(Case(seed), spec, rng, unmentionable=set())
        for entity, status in report.mentions().items():
            if status == 0:
                negated[entity] = negated.get(entity, 0) + 1
    for entity in ("pneumonia", "edema", "mass", "nodule", "atelectasis", "pneumothorax"):
        assert negated.get(entity, 0) >= 5, (entity, negated)
    assert negated["pneumothorax"] > negated["mass"]  # common negations stay the common ones
