"""PadChest: PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv(.gz), images ``<ImageDir>/<ImageID>`` (16-bit PNG).

Traps handled: ``Labels`` is a stringified Python list whose items carry stray spaces (``' pleural effusion'``),
can be empty, or be NaN; special values ``exclude`` / ``suboptimal study`` mark unusable studies (rejected with
that reason); the first column is an unnamed row index; images are 16-bit (windowed by ``load_image``).

Split rule (the KAD/MAVL convention): ``test`` = the physician-labelled rows (``MethodLabel == Physician``);
``val`` = 5 % of the patients of the RNN-labelled rows. Lateral views are rejected unless ``frontal_only=False``.
The classes are every finding label that occurs in the split's rows of the *label table* (PadChest has ~190),
whether or not the image is on disk, so a missing file never removes a class; most classes are *unseen* by the
model and are scored from their knowledge text.

Image layouts accepted: ``<ImageDir>/<ImageID>`` (the release's zip parts extracted side by side), or one flat
folder: ``<ImageID>`` in the root or in ``images/``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pandas as pd

from devide.data.adapters import register
from devide.data.adapters.base import (
    DatasetAdapter,
    EvalRecord,
    EvalSet,
    Rejection,
    parse_age,
    parse_sex,
    stable_bucket,
)

LABEL_FILES = ("PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv",
               "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz")
UNUSABLE = {"exclude", "suboptimal study"}
NOT_FINDINGS = {"", "unchanged"}
SEEN_MAVL = ["normal", "pleural effusion", "pacemaker", "atelectasis", "pneumonia", "consolidation", "cardiomegaly",
             "emphysema", "nodule", "edema", "pneumothorax", "fracture", "mass", "catheter"]
FRONTAL = {"PA", "AP", "AP_HORIZONTAL"}
# The split (MethodLabel, PatientID), the labels, the frontal filter and the demographics depend on these.
REQUIRED = ("ImageID", "ImageDir", "PatientID", "MethodLabel", "Labels", "Projection", "PatientSex_DICOM",
            "StudyDate_DICOM", "PatientBirth")
LAYOUTS = "<ImageDir>/<ImageID> (zip parts side by side), <ImageID> in the root, or images/<ImageID>"


def parse_label_list(text: object) -> list[str] | None:
    """``"['pleural effusion', ' cardiomegaly']"`` -> stripped, lower-cased, de-duplicated items; None if bad."""
    if text is None or (isinstance(text, float)) or str(text).strip() in ("", "nan"):
        return None
    try:
        items = ast.literal_eval(str(text))
    except (ValueError, SyntaxError):
        return None
    if not isinstance(items, (list, tuple)):
        return None
    return list(dict.fromkeys(str(item).strip().lower() for item in items))


@register("pc")
class PadChest(DatasetAdapter):
    name = "padchest"
    title = "PadChest"
    vocab_key = "padchest"
    classes: list[str] = []

    def read(self, split: str, eval_set: EvalSet) -> None:
        label_file = self.require(*LABEL_FILES)
        source = self.rel(label_file)
        table = pd.read_csv(label_file, dtype=str, keep_default_na=False, index_col=0, low_memory=False)
        self.require_columns(table, REQUIRED, label_file)
        frontal_only = bool(self.options.get("frontal_only", True))
        eval_set.notes.append("split: physician-labelled rows" if split == "test"
                              else "split: 5 % of patients (sha1) of the RNN-labelled rows")
        found: list[tuple[dict, list[str], Path]] = []
        table_classes: set[str] = set()  # from the label table, not from the images that happen to exist
        for row_no, fields in enumerate(table.to_dict("records"), start=2):
            if not self._in_split(fields, split):
                continue
            image_id = fields["ImageID"].strip()
            item = f"line {row_no} ({image_id})"
            labels = parse_label_list(fields["Labels"])
            if labels is not None and not UNUSABLE & set(labels):
                table_classes.update(x for x in labels if x not in NOT_FINDINGS)
            reason = self._problem(labels, fields, frontal_only)
            if reason:
                eval_set.rejections.append(Rejection(source, item, reason))
                continue
            path = self.image_path(fields["ImageDir"], image_id)
            if path is None:
                eval_set.rejections.append(Rejection(source, item, f"image not found (looked for {LAYOUTS})"))
                continue
            found.append((fields, [x for x in labels if x not in NOT_FINDINGS], path))
        classes = sorted(table_classes)
        eval_set.classes = classes
        eval_set.label_sets = {"seen-mavl": [c for c in SEEN_MAVL if c in classes]}
        for fields, names, path in found:
            eval_set.records.append(EvalRecord(
                image_id=fields["ImageID"].strip(), path=path, labels={c: int(c in names) for c in classes},
                patient_id=fields["PatientID"].strip() or None, sex=parse_sex(fields["PatientSex_DICOM"]),
                age=_age(fields)))

    def image_path(self, image_dir: str, image_id: str) -> Path | None:
        """The image in the release layout (``<ImageDir>/<ImageID>``) or a flat folder, else None."""
        for candidate in (self.root / image_dir.strip().split(".")[0] / image_id, self.root / image_id,
                          self.root / "images" / image_id):
            if candidate.is_file():
                return candidate
        return None

    @staticmethod
    def _in_split(fields: dict, split: str) -> bool:
        method = fields["MethodLabel"].strip()
        if split == "test":
            return method == "Physician"
        return method != "Physician" and stable_bucket(fields["PatientID"]) < 5

    @staticmethod
    def _problem(labels: list[str] | None, fields: dict, frontal_only: bool) -> str | None:
        if labels is None:
            return f"unparseable Labels cell {str(fields.get('Labels'))[:40]!r}"
        bad = sorted(UNUSABLE & set(labels))
        if bad:
            return f"study marked {' / '.join(bad)} by the annotators"
        if not [x for x in labels if x not in NOT_FINDINGS]:
            return "no finding label in the Labels list"
        projection = fields["Projection"].strip().upper()
        if frontal_only and projection and projection not in FRONTAL:
            return f"non-frontal projection {projection} (frontal_only)"
        return None


def _age(fields: dict) -> float | None:
    """Age at the study: StudyDate_DICOM (yyyymmdd) year minus PatientBirth (float year)."""
    date = str(fields.get("StudyDate_DICOM", "")).strip()
    if not date[:4].isdigit():
        return None
    try:
        birth_year = float(fields.get("PatientBirth", ""))
    except ValueError:
        return None
    return parse_age(int(date[:4]) - birth_year)
