"""MS-CXR phrase grounding: ``MS_CXR_Local_Alignment_v1.1.0.csv`` (or v1.0.0) over MIMIC-CXR-JPG images.

Traps handled: one row per *box* (rows sharing dicom_id and label_text form one multi-box phrase); ``path`` is
relative to a MIMIC-CXR-JPG root (``files/pXX/…``; looked up under the root, ``root/mimic-cxr-jpg`` or the
``image_root`` option, with or without the leading ``files/``); x, y, w, h are pixels of the *original* image
(``image_width`` × ``image_height``), which becomes the record's annotation frame so resized copies still work;
v1.0.0 has no ``split`` column (every row is then ``test``).

MS-CXR is a grounding set: each image is labelled positive for its phrase categories and *unlabelled* for the
others (not absent), so classification AUC is undefined; grounding metrics are the point.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from devide.data.adapters import register
from devide.data.adapters.base import (
    Box,
    DatasetAdapter,
    EvalRecord,
    EvalSet,
    Rejection,
    valid_box,
    xywh_to_box,
)

CLASSES = ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Lung Opacity", "Pleural Effusion", "Pneumonia",
           "Pneumothorax"]
SPLITS = {"test": "test", "val": "val"}


@register("mscxr", "ms-cxr-v1.1")
class MSCXR(DatasetAdapter):
    name = "ms-cxr"
    title = "MS-CXR phrase grounding"
    vocab_key = "chexpert"
    classes = CLASSES
    grounding = True

    def read(self, split: str, eval_set: EvalSet) -> None:
        label_file = self.require("MS_CXR_Local_Alignment_v1.1.0.csv", "MS_CXR_Local_Alignment_v1.0.0.csv")
        source = self.rel(label_file)
        table = pd.read_csv(label_file, dtype=str, keep_default_na=False)
        self.require_columns(table, ("dicom_id", "category_name", "label_text", "path", "x", "y", "w", "h",
                                     "image_width", "image_height"), label_file)
        if "split" in table.columns:
            table = table[table["split"].str.strip().str.lower().isin({SPLITS[split], "valid", "validation"}
                                                                      if split == "val" else {"test"})]
            eval_set.notes.append(f"split: rows with split == {SPLITS[split]}")
        elif split == "val":
            table = table.iloc[0:0]
            eval_set.notes.append("v1.0.0 has no split column: no val rows")
        eval_set.notes.append("grounding set: categories not annotated on an image are unlabelled, not absent")
        records: dict[str, EvalRecord] = {}
        for row_no, row in enumerate(table.to_dict("records"), start=2):
            dicom_id, category = row["dicom_id"].strip(), row["category_name"].strip()
            where = f"line {row_no} ({dicom_id})"
            parsed = self._parse_box(row)
            if isinstance(parsed, str) or category not in CLASSES:
                eval_set.rejections.append(Rejection(source, where, parsed if isinstance(parsed, str)
                                                     else f"unknown category {category!r}"))
                continue
            box, frame = parsed
            record = records.get(dicom_id)
            if record is None:
                path = self.find_image(row["path"].strip())
                if path is None:
                    eval_set.rejections.append(Rejection(source, where, f"image not found: {row['path']}"))
                    continue
                record = records[dicom_id] = EvalRecord(image_id=dicom_id, path=path, labels={}, frame_size=frame)
            record.labels[category] = 1
            record.boxes.setdefault(category, []).append(box)
            self._add_phrase(record, category, row["label_text"].strip(), box)
        eval_set.records.extend(records.values())

    @staticmethod
    def _add_phrase(record: EvalRecord, category: str, text: str, box: Box) -> None:
        for name, phrase, boxes in record.phrases:
            if name == category and phrase == text:
                boxes.append(box)
                return
        record.phrases.append((category, text, [box]))

    @staticmethod
    def _parse_box(row: dict) -> tuple[Box, tuple[int, int]] | str:
        try:
            box = xywh_to_box(float(row["x"]), float(row["y"]), float(row["w"]), float(row["h"]))
            frame = (int(float(row["image_width"])), int(float(row["image_height"])))
        except (ValueError, KeyError):
            return "non-numeric box or image size"
        if not valid_box(box) or box[2] > frame[0] + 1 or box[3] > frame[1] + 1:
            return f"box {box} outside the {frame[0]}x{frame[1]} image"
        return box, frame

    def find_image(self, rel: str) -> Path | None:
        image_root = self.options.get("image_root")
        bases = [Path(image_root)] if image_root else []
        bases += [self.root, self.root / "mimic-cxr-jpg"]
        variants = [rel, rel.removeprefix("files/")]
        for base in bases:
            for variant in variants:
                if (base / variant).is_file():
                    return base / variant
        return None
