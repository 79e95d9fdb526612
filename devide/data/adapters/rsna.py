"""RSNA Pneumonia Detection: Kaggle ``stage_2_train_labels.csv`` + ``stage_2_train_images/<patientId>.dcm``.

Traps handled: one row per *box* (positives repeat the patientId; rows are grouped, boxes kept, the label
deduplicated and checked for consistency); negatives have empty coordinates; coordinates are floats (x, y top
left, width, height); images are DICOM (read through pydicom by ``load_image``). The MedKLIP/MAVL split files
(``{split}.csv`` with ``ID,img_path,boxes,classes`` and ``x;y;w;h|…`` boxes on the MD.ai UID-nested layout) are
used instead when present in the root.

Split rule for the Kaggle layout (its test images have no labels): ``val`` = 10 % of patients by sha1, ``test``
= the rest.
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
    hash_split,
    valid_box,
    xywh_to_box,
)

CLASS = "Pneumonia"
KAGGLE_COLUMNS = ("patientId", "x", "y", "width", "height", "Target")
MEDKLIP_COLUMNS = ("img_path", "boxes", "classes")


@register("rsna-pneumonia")
class RSNAPneumonia(DatasetAdapter):
    name = "rsna"
    title = "RSNA Pneumonia Detection"
    vocab_key = "rsna"
    classes = [CLASS]
    grounding = True

    def read(self, split: str, eval_set: EvalSet) -> None:
        medklip = self.root / f"{split}.csv"
        if medklip.is_file() and "img_path" in pd.read_csv(medklip, nrows=0).columns:
            eval_set.notes.append(f"split: MedKLIP/MAVL {split}.csv")
            self._read_medklip(medklip, eval_set)
            return
        labels = self.require("stage_2_train_labels.csv", "stage_1_train_labels.csv")
        eval_set.notes.append("split: 10 % of patients (sha1 of patientId) = val, the rest = test "
                              "(the Kaggle test images have no labels)")
        self._read_kaggle(labels, split, eval_set)

    def _read_kaggle(self, label_file: Path, split: str, eval_set: EvalSet) -> None:
        source = self.rel(label_file)
        table = pd.read_csv(label_file, dtype=str, keep_default_na=False)
        self.require_columns(table, KAGGLE_COLUMNS, label_file)
        image_dir = self.root / label_file.name.replace("_labels.csv", "_images")
        patients: dict[str, tuple[set[int], list[Box]]] = {}
        for row_no, row in enumerate(table.to_dict("records"), start=2):
            pid = row["patientId"].strip()
            if hash_split(pid) != split:
                continue
            targets, boxes = patients.setdefault(pid, (set(), []))
            try:
                target = int(float(row["Target"]))
            except ValueError:
                eval_set.rejections.append(Rejection(source, f"line {row_no} ({pid})", f"bad Target {row['Target']!r}"))
                continue
            targets.add(target)
            if target == 1:
                box = _box(row["x"], row["y"], row["width"], row["height"])
                if box is None:
                    eval_set.rejections.append(Rejection(source, f"line {row_no} ({pid})",
                                                         "positive row without a valid box (label kept)"))
                else:
                    boxes.append(box)
        for pid, (targets, boxes) in patients.items():
            if len(targets) != 1:
                eval_set.rejections.append(Rejection(source, pid, f"inconsistent Target values {sorted(targets)}"))
                continue
            self._add(eval_set, source, pid, image_dir / f"{pid}.dcm", targets.pop(), boxes)

    def _read_medklip(self, split_file: Path, eval_set: EvalSet) -> None:
        source = self.rel(split_file)
        table = pd.read_csv(split_file, dtype=str, keep_default_na=False)
        self.require_columns(table, MEDKLIP_COLUMNS, split_file)
        for row_no, row in enumerate(table.to_dict("records"), start=2):
            boxes: list[Box] = []
            text = row["boxes"].strip()
            bad = False
            for part in [p for p in text.split("|") if p and p.lower() != "nan"]:
                box = _box(*(part.split(";") + ["", "", "", ""])[:4])
                bad |= box is None
                if box is not None:
                    boxes.append(box)
            if bad:
                eval_set.rejections.append(Rejection(source, f"line {row_no}", f"unparseable boxes {text[:40]!r}"))
            try:
                target = int(float(row["classes"]))
            except ValueError:
                eval_set.rejections.append(Rejection(source, f"line {row_no}", f"bad classes {row['classes']!r}"))
                continue
            path = Path(row["img_path"].strip())
            path = path if path.is_absolute() else self.root / path
            self._add(eval_set, source, row.get("ID") or path.stem, path, target, boxes)

    def _add(self, eval_set: EvalSet, source: str, pid: str, path: Path, target: int, boxes: list[Box]) -> None:
        if not path.is_file():
            eval_set.rejections.append(Rejection(source, pid, f"image not found: {self.rel(path)}"))
            return
        eval_set.records.append(EvalRecord(image_id=pid, path=path, labels={CLASS: target},
                                           boxes={CLASS: boxes} if boxes else {}, patient_id=pid))


def _box(x: str, y: str, w: str, h: str) -> Box | None:
    try:
        box = xywh_to_box(float(x), float(y), float(w), float(h))
    except ValueError:
        return None
    return box if valid_box(box) else None
