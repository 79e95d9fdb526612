"""VinDr-CXR in either distributed layout: PhysioNet 1.0.0 or the Kaggle "VinBigData" competition.

* PhysioNet VinDr-CXR 1.0.0: ``annotations/image_labels_{train,test}.csv`` (28 binary label columns, one row per
  reader in train), ``annotations/annotations_{train,test}.csv`` (boxes), images ``{train,test}/<image_id>.dicom``.
* Kaggle VinBigData: ``train.csv`` (``image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max``: one row per
  reader and box, 14 local classes + ``No finding``), images ``train/<image_id>.dicom``. Its test images have no
  labels, so ``test`` = 90 % and ``val`` = 10 % of its training images by sha1 of image_id.

Traps handled: the extension is ``.dicom`` (``.dcm`` accepted too); images may be MONOCHROME1 (inverted by
``load_image``); the training files have one row per *reader* (3 per image; the reader column is ``rad_ID`` or
``rad_id``): labels are aggregated by majority vote and the boxes of every reader are kept; "No finding" box rows
have empty coordinates; the PhysioNet test split is the readers' consensus.

Splits (PhysioNet): ``test`` = the official test set; ``val`` = 10 % of training images by sha1 of image_id.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pandas as pd

from devide.data.adapters import register
from devide.data.adapters.base import (
    AdapterError,
    Box,
    DatasetAdapter,
    EvalRecord,
    EvalSet,
    Rejection,
    hash_split,
    valid_box,
)

LOCAL = ["Aortic enlargement", "Atelectasis", "Calcification", "Cardiomegaly", "Clavicle fracture", "Consolidation",
         "Edema", "Emphysema", "Enlarged PA", "ILD", "Infiltration", "Lung Opacity", "Lung cavity", "Lung cyst",
         "Mediastinal shift", "Nodule/Mass", "Pleural effusion", "Pleural thickening", "Pneumothorax",
         "Pulmonary fibrosis", "Rib fracture", "Other lesion"]
GLOBAL = ["COPD", "Lung tumor", "Pneumonia", "Tuberculosis", "Other diseases", "No finding"]
# Kaggle VinBigData class_id 0..13, then "No finding" (14)
KAGGLE = ["Aortic enlargement", "Atelectasis", "Calcification", "Cardiomegaly", "Consolidation", "ILD",
          "Infiltration", "Lung Opacity", "Nodule/Mass", "Other lesion", "Pleural effusion", "Pleural thickening",
          "Pneumothorax", "Pulmonary fibrosis", "No finding"]
BOX_COLUMNS = ("image_id", "class_name", "x_min", "y_min", "x_max", "y_max")
LAYOUTS = ("PhysioNet VinDr-CXR 1.0.0 (annotations/image_labels_{train,test}.csv + {train,test}/<image_id>.dicom) "
           "or Kaggle VinBigData (train.csv + train/<image_id>.dicom)")


@register("vindr-cxr", "vinbigdata")
class VinDrCXR(DatasetAdapter):
    name = "vindr"
    title = "VinDr-CXR"
    vocab_key = "vindr"
    classes = LOCAL + GLOBAL
    grounding = True

    def read(self, split: str, eval_set: EvalSet) -> None:
        part = "test" if split == "test" else "train"
        for rel in (f"annotations/image_labels_{part}.csv", f"image_labels_{part}.csv"):
            if (self.root / rel).is_file():
                self._read_physionet(self.root / rel, part, eval_set)
                return
        if (self.root / "train.csv").is_file():
            self._read_kaggle(self.root / "train.csv", split, eval_set)
            return
        raise AdapterError(f"{self.name}: no label file under {self.root}; accepted layouts: {LAYOUTS}")

    # ------------------------------------------------------------------ PhysioNet
    def _read_physionet(self, label_file: Path, part: str, eval_set: EvalSet) -> None:
        table = _read(label_file)
        # every label column: a missing one would silently remove a class from the evaluation
        self.require_columns(table, ["image_id", *self.classes], label_file)
        classes = list(self.classes)
        eval_set.notes.append("split: official test (consensus)" if part == "test"
                              else "split: 10 % of training images (sha1); labels = majority of the 3 readers")
        source = self.rel(label_file)
        votes: dict[str, list[dict[str, int]]] = defaultdict(list)
        for row_no, row in enumerate(table.to_dict("records"), start=2):
            image_id = row["image_id"].strip()
            if part == "train" and hash_split(image_id) != "val":
                continue
            try:
                votes[image_id].append({c: int(float(row[c])) for c in classes})
            except ValueError:
                eval_set.rejections.append(Rejection(source, f"line {row_no} ({image_id})", "non-numeric label"))
        boxes = self._boxes(self.root / "annotations" / f"annotations_{part}.csv", set(votes), eval_set)
        for image_id, readers in votes.items():
            labels = {c: int(2 * sum(r[c] > 0 for r in readers) > len(readers)) for c in classes}
            self._add(eval_set, source, part, image_id, labels, boxes.get(image_id, {}))

    # ------------------------------------------------------------------ Kaggle
    def _read_kaggle(self, label_file: Path, split: str, eval_set: EvalSet) -> None:
        """One row per (reader, box); image label = named by a majority of the image's readers."""
        table = _read(label_file)
        reader = "rad_id" if "rad_id" in table.columns else "rad_ID"
        self.require_columns(table, (*BOX_COLUMNS, reader), label_file)
        eval_set.classes = list(KAGGLE)
        eval_set.notes.append("layout: Kaggle VinBigData train.csv; split: 10 % of its images (sha1) = val, the "
                              "rest = test (its test images have no labels); labels = majority of the readers")
        source = self.rel(label_file)
        named: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))  # image -> reader -> classes
        for row_no, row in enumerate(table.to_dict("records"), start=2):
            image_id, name = row["image_id"].strip(), row["class_name"].strip()
            if hash_split(image_id) != split:
                continue
            if name not in KAGGLE:
                eval_set.rejections.append(Rejection(source, f"line {row_no} ({image_id})",
                                                     f"unknown class_name {name!r}"))
                continue
            named[image_id][row[reader].strip()].add(name)
        boxes = self._boxes(label_file, set(named), eval_set)
        for image_id, readers in named.items():
            labels = {c: int(2 * sum(c in found for found in readers.values()) > len(readers)) for c in KAGGLE}
            self._add(eval_set, source, "train", image_id, labels, boxes.get(image_id, {}))

    # ------------------------------------------------------------------ shared
    def _add(self, eval_set: EvalSet, source: str, part: str, image_id: str, labels: dict[str, int],
             boxes: dict[str, list[Box]]) -> None:
        path = next((p for p in (self.root / part / f"{image_id}.dicom", self.root / part / f"{image_id}.dcm")
                     if p.is_file()), None)
        if path is None:
            eval_set.rejections.append(Rejection(source, image_id, f"image not found: {part}/{image_id}.dicom"))
            return
        eval_set.records.append(EvalRecord(image_id=image_id, path=path, labels=labels, boxes=boxes))

    def _boxes(self, path: Path, wanted: set[str], eval_set: EvalSet) -> dict[str, dict[str, list[Box]]]:
        if not path.is_file():
            return {}
        table = _read(path)
        self.require_columns(table, BOX_COLUMNS, path)
        out: dict[str, dict[str, list[Box]]] = defaultdict(lambda: defaultdict(list))
        for row_no, row in enumerate(table.to_dict("records"), start=2):
            image_id, name = row["image_id"].strip(), row["class_name"].strip()
            if image_id not in wanted or name == "No finding":
                continue
            try:
                box = tuple(float(row[k]) for k in ("x_min", "y_min", "x_max", "y_max"))
            except ValueError:
                box = None
            if box is None or not valid_box(box) or name not in eval_set.classes:
                eval_set.rejections.append(Rejection(self.rel(path), f"line {row_no} ({image_id})",
                                                     f"bad box row for {name!r}"))
                continue
            out[image_id][name].append(box)  # type: ignore[arg-type]
        return {k: dict(v) for k, v in out.items()}


def _read(path: Path) -> pd.DataFrame:
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    table.columns = [c.strip() for c in table.columns]
    return table
