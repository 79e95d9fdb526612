"""CheXpert: valid.csv (val) and the test labels (test), 14 observations with the 5 competition classes.

Layouts accepted for the test split, first found wins:
``test_labels.csv`` / ``CheXpert/test_labels.csv`` (CheXlocalize, image-level ``Path``), MAVL's
``filter_test_labels.csv`` (image-level), ``groundtruth.csv`` (cheXpert-test-set-labels, *study-level*
``Study``: the labels apply to every frontal image found in that study folder).

Traps handled: ``Path`` carries the release folder (``CheXpert-v1.0-small/…`` or ``CheXpert-v1.0/…``) or not;
label files order columns differently (selected by name); the opacity column may be ``Airspace Opacity``;
train/labeler files use 1/0/-1/blank while the test ground truth is 0/1.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import pandas as pd

from devide.data.adapters import register
from devide.data.adapters.base import (
    DatasetAdapter,
    EvalRecord,
    EvalSet,
    Rejection,
    parse_age,
    parse_binary,
    parse_sex,
)

CLASSES = ["No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
           "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other",
           "Fracture", "Support Devices"]
COMPETITION = ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion"]
RENAMES = {"Airspace Opacity": "Lung Opacity"}
RELEASES = ("", "CheXpert-v1.0-small", "CheXpert-v1.0", "CheXpert")
TEST_FILES = ("test_labels.csv", "CheXpert/test_labels.csv", "filter_test_labels.csv", "groundtruth.csv",
              "chexpert-test/groundtruth.csv", "CheXpert-v1.0/groundtruth.csv")


@register("chexpert-5", "chexpert14")
class CheXpert(DatasetAdapter):
    name = "chexpert"
    title = "CheXpert"
    vocab_key = "chexpert"
    classes = CLASSES
    label_sets = {"competition": COMPETITION}

    def read(self, split: str, eval_set: EvalSet) -> None:
        if split == "val":
            label_file = self.require(*(str(PurePosixPath(r) / "valid.csv") for r in RELEASES))
            eval_set.notes.append("split: valid.csv (radiologist consensus, 0/1)")
        else:
            label_file = self.require(*TEST_FILES)
            eval_set.notes.append(f"split: {self.rel(label_file)}")
        table = pd.read_csv(label_file, dtype=str, keep_default_na=False).rename(columns=RENAMES)
        key = "Study" if "Study" in table.columns and "Path" not in table.columns else "Path"
        # every class column (a missing one would silently drop a class), and the demographics of the
        # CheXpert release's own files (valid.csv); derived test files may have none (noted)
        demographics = ("Sex", "Age") if split == "val" else ()
        self.require_columns(table, (key, *CLASSES, *demographics), label_file)
        if split != "val" and "Sex" not in table.columns:
            eval_set.notes.append(f"{label_file.name} has no Sex/Age columns: no subgroup analysis")
        if key == "Study":
            self._read_studies(table, label_file, eval_set)
        else:
            self._read_images(table, label_file, eval_set)

    def _labels(self, fields: dict, classes: list[str]) -> dict[str, int]:
        labels = {}
        for name in classes:
            value = parse_binary(fields[name])
            if value is not None:
                labels[name] = value
        return labels

    def _read_images(self, table: pd.DataFrame, label_file: Path, eval_set: EvalSet) -> None:
        source = self.rel(label_file)
        for row_no, fields in enumerate(table.to_dict("records"), start=2):
            rel = fields["Path"].strip()
            try:
                labels = self._labels(fields, eval_set.classes)
            except ValueError as exc:
                eval_set.rejections.append(Rejection(source, f"line {row_no} ({rel})", str(exc)))
                continue
            path = self.resolve(rel, label_file.parent)
            if path is None:
                eval_set.rejections.append(Rejection(source, f"line {row_no} ({rel})", "image file not found"))
                continue
            eval_set.records.append(EvalRecord(
                image_id=rel, path=path, labels=labels, patient_id=_patient(rel),
                sex=parse_sex(fields.get("Sex")), age=parse_age(fields.get("Age"))))

    def _read_studies(self, table: pd.DataFrame, label_file: Path, eval_set: EvalSet) -> None:
        """Study-level ground truth: every frontal view in the study folder gets the study's labels."""
        source = self.rel(label_file)
        eval_set.notes.append("labels are study-level (groundtruth.csv): applied to each frontal image")
        for row_no, fields in enumerate(table.to_dict("records"), start=2):
            study = fields["Study"].strip().rstrip("/")
            try:
                labels = self._labels(fields, eval_set.classes)
            except ValueError as exc:
                eval_set.rejections.append(Rejection(source, f"line {row_no} ({study})", str(exc)))
                continue
            folder = self.resolve(study, label_file.parent)
            frontals = sorted(folder.glob("*frontal*.jpg")) if folder is not None else []
            if not frontals:
                eval_set.rejections.append(Rejection(source, f"line {row_no} ({study})",
                                                     "no frontal image found for the study"))
                continue
            for image in frontals:
                eval_set.records.append(EvalRecord(image_id=f"{study}/{image.name}", path=image,
                                                   labels=dict(labels), patient_id=_patient(study)))

    def resolve(self, rel: str, label_dir: Path) -> Path | None:
        """Find ``rel`` relative to the root, the label file's folder or their parents, with or without the
        release prefix (``CheXpert-v1.0-small/…``)."""
        parts = PurePosixPath(rel).parts
        variants = [PurePosixPath(rel)]
        if parts and parts[0] in RELEASES:
            variants.append(PurePosixPath(*parts[1:]))
        for base in dict.fromkeys((self.root, label_dir, label_dir.parent, self.root.parent)):
            for variant in variants:
                for release in RELEASES:
                    candidate = base / release / variant
                    if candidate.exists():
                        return candidate
        return None


def _patient(rel: str) -> str | None:
    return next((p for p in PurePosixPath(rel).parts if p.startswith("patient")), None)
