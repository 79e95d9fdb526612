"""NIH ChestX-ray14: Data_Entry_2017(_v2020).csv, official test_list.txt, BBox_List_2017.csv.

Traps handled: ``|``-joined labels with ``No Finding``; the spelling ``Pleural_Thickening``; the BBox file names
the class ``Infiltrate`` and its bracketed header splits into odd columns (read positionally); the images live
in ``images_NNN/images/`` or ``images/``; the 2017 file has a trailing empty column and ages like ``058Y``.
The official split has no validation list: ``val`` is a deterministic 10 % of *patients* of train_val_list.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from devide.data.adapters import register
from devide.data.adapters.base import (
    DatasetAdapter,
    EvalRecord,
    EvalSet,
    Rejection,
    hash_split,
    parse_age,
    parse_sex,
    read_lines,
    valid_box,
    xywh_to_box,
)

CLASSES = ["Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
           "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia"]
BBOX_NAMES = {"Infiltrate": "Infiltration"}
# Patient ID drives the val split and the patient bootstrap; gender and age the subgroup analysis.
REQUIRED = ("Image Index", "Finding Labels", "Patient ID", "Patient Age", "Patient Gender")


def image_index(root: Path) -> dict[str, Path]:
    """File name -> path for every PNG under ``images*/images/`` or ``images/`` (tar parts or merged)."""
    index: dict[str, Path] = {}
    for pattern in ("images_*/images/*.png", "images/*.png", "images_*/*.png"):
        for path in root.glob(pattern):
            index.setdefault(path.name, path)
    return index


@register("nih", "cxr14", "chestx-ray14")
class ChestXray14(DatasetAdapter):
    name = "chestxray14"
    title = "NIH ChestX-ray14"
    vocab_key = "chestxray14"
    classes = CLASSES
    grounding = True

    def read(self, split: str, eval_set: EvalSet) -> None:
        entry_path = self.require("Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv", "Data_Entry_2017_v2020.csv.gz",
                                  "Data_Entry_2017.csv.gz")
        entries = pd.read_csv(entry_path, dtype=str, keep_default_na=False)
        self.require_columns(entries, REQUIRED, entry_path)
        wanted = self._split_names(split, entries)
        boxes = self._boxes(eval_set)
        images = image_index(self.root)
        eval_set.notes.append(
            "split: official test_list.txt" if split == "test"
            else "split: 10 % of train_val_list.txt patients (sha1 of Patient ID), the official list has no val")
        entry_rel = self.rel(entry_path)
        for row_no, fields in enumerate(entries.to_dict("records"), start=2):
            name = fields["Image Index"].strip()
            if name not in wanted:
                continue
            wanted.discard(name)
            labels = self._labels(fields["Finding Labels"])
            if isinstance(labels, str):
                eval_set.rejections.append(Rejection(entry_rel, f"line {row_no} ({name})", labels))
                continue
            if name not in images:
                eval_set.rejections.append(Rejection(entry_rel, name, "image file not found under images*/"))
                continue
            eval_set.records.append(EvalRecord(
                image_id=name, path=images[name], labels=labels, boxes=boxes.get(name, {}),
                patient_id=fields["Patient ID"].strip() or None,
                sex=parse_sex(fields["Patient Gender"]), age=parse_age(fields["Patient Age"])))
        for name in sorted(wanted):
            eval_set.rejections.append(Rejection(entry_rel, name, "listed in the split file but not in Data_Entry"))

    def _split_names(self, split: str, entries: pd.DataFrame) -> set[str]:
        if split == "test":
            return set(read_lines(self.require("test_list.txt")))
        names = set(read_lines(self.require("train_val_list.txt")))
        patient = dict(zip(entries["Image Index"], entries["Patient ID"], strict=True))
        return {n for n in names if hash_split(str(patient.get(n, n)).strip()) == "val"}

    @staticmethod
    def _labels(text: str) -> dict[str, int] | str:
        names = [part.strip() for part in str(text).split("|") if part.strip()]
        if not names:
            return "empty Finding Labels"
        if names == ["No Finding"]:
            return {c: 0 for c in CLASSES}
        unknown = [n for n in names if n not in CLASSES]
        if unknown:
            return f"unknown finding label(s) {', '.join(unknown)}"
        return {c: int(c in names) for c in CLASSES}

    def _boxes(self, eval_set: EvalSet) -> dict[str, dict[str, list]]:
        path = self.root / "BBox_List_2017.csv"
        if not path.is_file():
            return {}
        # The header "Bbox [x,y,w,h]" splits into 4 columns and adds empty ones: read the first 6 positionally.
        table = pd.read_csv(path, usecols=range(6), header=0, dtype=str, keep_default_na=False)
        table.columns = ["image", "label", "x", "y", "w", "h"]
        out: dict[str, dict[str, list]] = {}
        for row_no, row in enumerate(table.itertuples(index=False), start=2):
            label = BBOX_NAMES.get(row.label.strip(), row.label.strip())
            try:
                box = xywh_to_box(float(row.x), float(row.y), float(row.w), float(row.h))
            except ValueError:
                box = None
            if label not in CLASSES or box is None or not valid_box(box):
                eval_set.rejections.append(Rejection(path.name, f"line {row_no} ({row.image})",
                                                     f"bad box row: label {row.label!r}, box {row.x},{row.y},{row.w},{row.h}"))
                continue
            out.setdefault(row.image.strip(), {}).setdefault(label, []).append(box)
        return out
