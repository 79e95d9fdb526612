"""VinDr-CXR (PhysioNet 1.0.0): ``annotations/image_labels_{train,test}.csv``, ``annotations/annotations_*.csv``,
images ``{train,test}/<image_id>.dicom``.

Traps handled: the extension is ``.dicom`` (not ``.dcm``); images may be MONOCHROME1 (inverted by
``load_image``); the training files have one row per *reader* (3 per image; the reader column is ``rad_ID`` or
``rad_id``): labels are aggregated by majority vote and the boxes of every reader are kept; "No finding" box rows
have empty coordinates; the test split is the readers' consensus.

Splits: ``test`` = the official test set; ``val`` = 10 % of training images by sha1 of image_id.
"""

from __future__ import annotations

from collections import defaultdict

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


@register("vindr-cxr", "vinbigdata")
class VinDrCXR(DatasetAdapter):
    name = "vindr"
    title = "VinDr-CXR"
    vocab_key = "vindr"
    classes = LOCAL + GLOBAL
    grounding = True

    def read(self, split: str, eval_set: EvalSet) -> None:
        part = "test" if split == "test" else "train"
        label_file = self.require(f"annotations/image_labels_{part}.csv", f"image_labels_{part}.csv")
        table = pd.read_csv(label_file, dtype=str, keep_default_na=False)
        table.columns = [c.strip() for c in table.columns]
        classes = [c for c in self.classes if c in table.columns]
        if not classes:
            raise AdapterError(f"{self.name}: {label_file.name} has none of the VinDr-CXR label columns")
        eval_set.classes = classes
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
        boxes = self._boxes(part, set(votes), eval_set)
        for image_id, readers in votes.items():
            path = self.root / part / f"{image_id}.dicom"
            if not path.is_file():
                eval_set.rejections.append(Rejection(source, image_id, f"image not found: {part}/{image_id}.dicom"))
                continue
            labels = {c: int(2 * sum(r[c] > 0 for r in readers) > len(readers)) for c in classes}
            eval_set.records.append(EvalRecord(image_id=image_id, path=path, labels=labels,
                                               boxes=boxes.get(image_id, {})))

    def _boxes(self, part: str, wanted: set[str], eval_set: EvalSet) -> dict[str, dict[str, list[Box]]]:
        path = self.root / "annotations" / f"annotations_{part}.csv"
        if not path.is_file():
            return {}
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
        table.columns = [c.strip() for c in table.columns]
        out: dict[str, dict[str, list[Box]]] = defaultdict(lambda: defaultdict(list))
        for row_no, row in enumerate(table.to_dict("records"), start=2):
            image_id, name = row["image_id"].strip(), row["class_name"].strip()
            if image_id not in wanted or name == "No finding":
                continue
            try:
                box = tuple(float(row[k]) for k in ("x_min", "y_min", "x_max", "y_max"))
            except ValueError:
                box = None
            if box is None or not valid_box(box) or name not in self.classes:
                eval_set.rejections.append(Rejection(self.rel(path), f"line {row_no} ({image_id})",
                                                     f"bad box row for {name!r}"))
                continue
            out[image_id][name].append(box)  # type: ignore[arg-type]
        return {k: dict(v) for k, v in out.items()}
