"""ChestX-Det10: ``test.json`` / ``train.json`` (a JSON *list* of ``{file_name, syms, boxes}``), images in
``test_data/`` / ``train_data/``.

Traps handled: ``syms[i]`` pairs with ``boxes[i]`` and boxes are corners (x1, y1, x2, y2), not x, y, w, h; empty
lists mean a normal image (all 10 classes absent); the GitHub JSON names images with NIH names
(``00000071_008.png``) while the image zips use numeric names (``36302.png``): a file missing from
``test_data/`` is looked up among NIH images (``images*/images/`` under the root) before being rejected.

Splits: ``test`` = test.json; ``val`` = 10 % of train.json images by sha1.
"""

from __future__ import annotations

import json

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
from devide.data.adapters.chestxray14 import image_index

CLASSES = ["Atelectasis", "Calcification", "Consolidation", "Effusion", "Emphysema", "Fibrosis", "Fracture", "Mass",
           "Nodule", "Pneumothorax"]


@register("chestxdet10", "chestx-det")
class ChestXDet10(DatasetAdapter):
    name = "chestx-det10"
    title = "ChestX-Det10"
    vocab_key = "chestxray14"
    classes = CLASSES
    grounding = True

    def read(self, split: str, eval_set: EvalSet) -> None:
        part = "test" if split == "test" else "train"
        label_file = self.require(f"{part}.json", f"ChestX_Det_{part}.json")
        source = self.rel(label_file)
        try:
            items = json.loads(label_file.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise AdapterError(f"{self.name}: {label_file.name} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
        if not isinstance(items, list):
            raise AdapterError(f"{self.name}: {label_file.name} must hold a JSON list of images")
        eval_set.notes.append(f"split: {label_file.name}" + ("" if part == "test" else " (10 % by sha1)"))
        nih = None
        for number, item in enumerate(items):
            name = str(item.get("file_name", "")).strip() if isinstance(item, dict) else ""
            where = f"item {number} ({name})"
            if part == "train" and hash_split(name) != "val":
                continue
            parsed = self._parse(item)
            if isinstance(parsed, str):
                eval_set.rejections.append(Rejection(source, where, parsed))
                continue
            path = self.root / f"{part}_data" / name
            if not path.is_file():
                nih = image_index(self.root) if nih is None else nih
                path = nih.get(name, path)
            if not path.is_file():
                eval_set.rejections.append(Rejection(source, where, f"image not found in {part}_data/ or NIH images"))
                continue
            eval_set.records.append(EvalRecord(image_id=name, path=path, labels={c: int(c in parsed) for c in CLASSES},
                                               boxes=parsed))

    @staticmethod
    def _parse(item: object) -> dict[str, list[Box]] | str:
        if not isinstance(item, dict) or not item.get("file_name"):
            return "entry without file_name"
        syms, boxes = item.get("syms", []), item.get("boxes", [])
        if not isinstance(syms, list) or not isinstance(boxes, list) or len(syms) != len(boxes):
            return f"syms ({len(syms)}) and boxes ({len(boxes)}) do not pair up"
        out: dict[str, list[Box]] = {}
        for sym, box in zip(syms, boxes, strict=True):
            if sym not in CLASSES:
                return f"unknown class {sym!r}"
            try:
                corners = tuple(float(v) for v in box)
            except (TypeError, ValueError):
                return f"box {box!r} is not 4 numbers"
            if len(corners) != 4 or not valid_box(corners):  # type: ignore[arg-type]
                return f"box {box!r} is not x1,y1,x2,y2 with x2>x1, y2>y1"
            out.setdefault(sym, []).append(corners)  # type: ignore[arg-type]
        return out
