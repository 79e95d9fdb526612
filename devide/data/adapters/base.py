"""Evaluation dataset adapters: common records, rejections and the adapter base class.

An adapter reads one external dataset *in its real on-disk layout* (see docs/evaluation.md and
data_formats.md §2) and returns an :class:`EvalSet`: one :class:`EvalRecord` per image of the requested split,
with labels per dataset class, optional boxes/masks for grounding, demographics for subgroup analysis, and a
list of :class:`Rejection` for every row it could not use (never a silent skip).

Label values follow the project-wide convention: 1 present, 0 absent, -1 uncertain, and a class missing from
``record.labels`` means "not labelled" (excluded from that class's metrics).
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

Box = tuple[float, float, float, float]
"""(x1, y1, x2, y2) in pixels of the record's annotation frame."""


class AdapterError(ValueError):
    """The dataset root cannot be read at all (missing label file, unknown split): a one-line message."""


@dataclass
class Rejection:
    """A row or image that was not evaluated, with the reason (written to rejections.csv)."""

    source: str
    """File (relative to the root) or image path the problem was found in."""
    item: str
    """Row number / image id."""
    reason: str


@dataclass
class EvalRecord:
    """One image to evaluate."""

    image_id: str
    path: Path
    labels: dict[str, int]
    """dataset class -> 1 / 0 / -1; classes not labelled for this image are absent."""
    boxes: dict[str, list[Box]] = field(default_factory=dict)
    """dataset class -> boxes (x1, y1, x2, y2) in pixels of ``frame_size``."""
    mask_fn: Callable[[tuple[int, int]], dict[str, np.ndarray]] | None = None
    """Lazily decoded masks: ``mask_fn((width, height))`` -> dataset class -> bool array [H, W] in that frame
    (the frame is ``frame_size`` or the image's own size; decoded only when grounding is scored)."""
    frame_size: tuple[int, int] | None = None
    """(width, height) of the frame the boxes/masks refer to; None = the image's own size."""
    patient_id: str | None = None
    sex: str | None = None
    """'F' / 'M' / None."""
    age: float | None = None
    """Age in years at the study, or None."""
    phrases: list[tuple[str, str, list[Box]]] = field(default_factory=list)
    """MS-CXR style phrase grounding: (dataset class, phrase text, boxes)."""

    @property
    def has_annotations(self) -> bool:
        return bool(self.boxes) or self.mask_fn is not None


@dataclass
class EvalSet:
    """A split of a dataset: its classes, records and rejections."""

    dataset: str
    split: str
    root: Path
    classes: list[str]
    records: list[EvalRecord]
    rejections: list[Rejection] = field(default_factory=list)
    label_sets: dict[str, list[str]] = field(default_factory=dict)
    """Named class subsets reported as extra macro averages (e.g. CheXpert 'competition')."""
    notes: list[str] = field(default_factory=list)
    """Protocol notes shown in the report (split rule, label policy)."""

    def __len__(self) -> int:
        return len(self.records)

    def label_matrix(self) -> np.ndarray:
        """Labels as int8 [N, K] in ``classes`` order: 1, 0, -1, and -100 for not labelled."""
        out = np.full((len(self.records), len(self.classes)), -100, dtype=np.int8)
        index = {name: k for k, name in enumerate(self.classes)}
        for i, record in enumerate(self.records):
            for name, value in record.labels.items():
                out[i, index[name]] = value
        return out


class DatasetAdapter(ABC):
    """Base class: subclasses set the class attributes and implement :meth:`read`."""

    name: ClassVar[str]
    """Registry name (``devide evaluate --dataset NAME``)."""
    title: ClassVar[str]
    vocab_key: ClassVar[str | None] = None
    """Dataset key of ``knowledge.vocabulary`` mappings (``vocab.from_label(vocab_key, label)``)."""
    classes: ClassVar[list[str]]
    splits: ClassVar[tuple[str, ...]] = ("test", "val")
    label_sets: ClassVar[dict[str, list[str]]] = {}
    grounding: ClassVar[bool] = False
    """True when the dataset carries boxes or masks."""

    def __init__(self, root: str | Path, **options: Any) -> None:
        self.root = Path(root)
        self.options = options
        if not self.root.is_dir():
            raise AdapterError(f"{self.name}: dataset root not found: {self.root}")

    def load(self, split: str = "test") -> EvalSet:
        if split not in self.splits:
            raise AdapterError(f"{self.name}: unknown split '{split}' (choose from {', '.join(self.splits)})")
        eval_set = EvalSet(self.name, split, self.root, list(self.classes), [], label_sets=dict(self.label_sets))
        self.read(split, eval_set)
        return eval_set

    @abstractmethod
    def read(self, split: str, eval_set: EvalSet) -> None:
        """Fill ``eval_set`` with the split's records and rejections (each adapter reads its own layout)."""

    # helpers shared by adapters -----------------------------------------------------------------------

    def require(self, *candidates: str) -> Path:
        """The first existing file among ``candidates`` (relative to the root), else a one-line error."""
        for rel in candidates:
            path = self.root / rel
            if path.is_file():
                return path
        raise AdapterError(f"{self.name}: none of {', '.join(candidates)} found under {self.root}")

    def require_columns(self, table: Any, columns: Iterable[str], label_file: Path, what: str = "") -> None:
        """One-line error naming every missing column (and the columns the file has) before any row is read:
        a renamed or missing column must never surface as a KeyError or silently change results."""
        present = [str(c) for c in table.columns]
        missing = [c for c in columns if c not in present]
        if missing:
            shown = ", ".join(present[:12]) + (", ..." if len(present) > 12 else "")
            raise AdapterError(f"{self.name}: {label_file.name} lacks column(s) {', '.join(missing)}"
                               f"{' ' + what if what else ''} (it has: {shown or 'no columns'})")

    def rel(self, path: Path) -> str:
        try:
            return path.relative_to(self.root).as_posix()
        except ValueError:
            return str(path)


def stable_bucket(key: str, buckets: int = 100) -> int:
    """A platform-independent bucket for deterministic hash splits (Python's ``hash`` is salted per process)."""
    return int(hashlib.sha1(key.encode("utf-8")).hexdigest()[:8], 16) % buckets


def hash_split(key: str, val_percent: int = 10) -> str:
    """'val' for ``val_percent`` % of keys (by patient), else 'test': used where no labelled test split exists."""
    return "val" if stable_bucket(key) < val_percent else "test"


def parse_binary(value: Any) -> int | None:
    """CSV cell -> 1 / 0 / -1, None for blank/NaN; raises ValueError for anything else."""
    if value is None:
        return None
    if isinstance(value, float) and np.isnan(value):
        return None
    text = str(value).strip()
    if text == "" or text.lower() == "nan":
        return None
    number = float(text)
    if number not in (1.0, 0.0, -1.0):
        raise ValueError(f"label value {text!r} is not 1, 0, -1 or blank")
    return int(number)


def parse_sex(value: Any) -> str | None:
    text = str(value).strip().upper() if value is not None else ""
    if text in ("M", "MALE"):
        return "M"
    if text in ("F", "FEMALE"):
        return "F"
    return None


def parse_age(value: Any) -> float | None:
    """Ages as numbers (``61``, ``61.0``) or DICOM AS strings (``061Y``, ``006M``); None when unknown."""
    if value is None:
        return None
    text = str(value).strip().upper()
    if not text or text == "NAN":
        return None
    units = {"Y": 1.0, "M": 1 / 12, "W": 1 / 52, "D": 1 / 365}
    scale = 1.0
    if text[-1] in units:
        scale, text = units[text[-1]], text[:-1]
    try:
        age = float(text) * scale
    except ValueError:
        return None
    return age if 0 <= age < 130 else None


def dicom_demographics(path: Path) -> tuple[str | None, float | None]:
    """(sex, age) from a DICOM header (PatientSex, PatientAge), reading no pixel data."""
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception:  # noqa: BLE001 - demographics are optional; the image itself is validated elsewhere
        return None, None
    return parse_sex(ds.get("PatientSex")), parse_age(ds.get("PatientAge"))


def xywh_to_box(x: float, y: float, w: float, h: float) -> Box:
    return (float(x), float(y), float(x) + float(w), float(y) + float(h))


def valid_box(box: Box) -> bool:
    x1, y1, x2, y2 = box
    return all(np.isfinite(box)) and x2 > x1 and y2 > y1 and x1 >= 0 and y1 >= 0


def read_lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))
