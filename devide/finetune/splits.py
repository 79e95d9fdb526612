"""Train / val / test records for fine-tuning, read through the evaluation adapters.

Two protocols (``split_protocol``):

* **official** - the dataset's own training labels and its official test split: CheXpert ``train.csv`` (val =
  ``valid.csv``, test = the adapter's test labels) and ChestX-ray14 ``train_val_list.txt`` minus the adapter's
  val patients (test = ``test_list.txt``). Only these two datasets publish labelled training and test splits.
* **partition** - every image any split of the adapter can read (SIIM-ACR and RSNA withhold their Kaggle test
  labels; the phantom CheXpert ships ``valid.csv`` only), split by patient with a sha1 bucket of the patient key
  into train / val / test percentages. Deterministic and independent of the fine-tuning seed.

``auto`` takes official when the dataset has it on disk, else partition. Patients never straddle splits: a
training image whose patient is also in the test split is rejected (recorded), never silently kept.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import pandas as pd

from devide.data.adapters import AdapterError, get_adapter
from devide.data.adapters.base import EvalRecord, EvalSet, Rejection, stable_bucket
from devide.data.adapters.chestxray14 import ChestXray14
from devide.data.adapters.chexpert import RELEASES, CheXpert

logger = logging.getLogger("devide.finetune")
SPLITS = ("train", "val", "test")


@dataclass
class FinetuneSplits:
    """Records per split, the protocol that made them, and everything that was left out (with reasons)."""

    dataset: str
    classes: list[str]
    train: list[EvalRecord]
    val: list[EvalRecord]
    test: list[EvalRecord]
    protocol: str
    notes: list[str] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    label_sets: dict[str, list[str]] = field(default_factory=dict)

    def split(self, name: str) -> list[EvalRecord]:
        return getattr(self, name)


# ---------------------------------------------------------------------------------------------- patients


def patient_key(record: EvalRecord) -> str:
    """The patient a record belongs to: the adapter's patient id, the DICOM PatientID, else the image id.

    SIIM-ACR records carry no patient id (the CSV has none) but its DICOM headers do; reading the header
    costs no pixel decoding.
    """
    if record.patient_id:
        return str(record.patient_id)
    if record.path.suffix.lower() in (".dcm", ".dicom"):
        import pydicom

        try:
            header = pydicom.dcmread(record.path, stop_before_pixels=True, specific_tags=["PatientID"])
            value = str(header.get("PatientID", "") or "").strip()
        except Exception:  # noqa: BLE001 - an unreadable header falls back to the image id (logged by count)
            value = ""
        if value:
            record.patient_id = value
            return value
    return record.image_id


# ---------------------------------------------------------------------------------------------- official


class _CheXpertTrain(CheXpert):
    """CheXpert with its ``train.csv`` (1/0/-1/blank labels) as a ``train`` split."""

    splits = ("train", "val", "test")

    def read(self, split: str, eval_set: EvalSet) -> None:
        if split != "train":
            super().read(split, eval_set)
            return
        label_file = self.require(*(str(PurePosixPath(r) / "train.csv") for r in RELEASES))
        eval_set.notes.append(f"train: {self.rel(label_file)}")
        table = pd.read_csv(label_file, dtype=str, keep_default_na=False).rename(columns={"Airspace Opacity":
                                                                                         "Lung Opacity"})
        eval_set.classes = [c for c in self.classes if c in table.columns]
        if "Frontal/Lateral" in table.columns:  # the test and valid evaluation use frontal views
            table = table[table["Frontal/Lateral"].str.strip().str.lower() != "lateral"]
        self._read_images(table, label_file, eval_set)


class _ChestXray14Train(ChestXray14):
    """ChestX-ray14 with ``train_val_list.txt`` minus the adapter's val patients as a ``train`` split."""

    splits = ("train", "val", "test")

    def _split_names(self, split: str, entries: pd.DataFrame) -> set[str]:
        if split != "train":
            return super()._split_names(split, entries)
        listed = set(self.root.joinpath("train_val_list.txt").read_text(encoding="utf-8").split())
        return listed - super()._split_names("val", entries) - super()._split_names("test", entries)


OFFICIAL = {"chexpert": (_CheXpertTrain, ("train.csv",)), "chestxray14": (_ChestXray14Train, ("train_val_list.txt",))}


def has_official(dataset: str, root: Path) -> bool:
    """True when the dataset has an official labelled train split and its files are under ``root``."""
    if dataset not in OFFICIAL:
        return False
    names = OFFICIAL[dataset][1]
    return any((root / release / name).is_file() for name in names for release in RELEASES)


def official_splits(dataset: str, root: Path) -> FinetuneSplits:
    adapter = OFFICIAL[dataset][0](root)
    sets = {name: adapter.load(name) for name in SPLITS}
    classes = [c for c in adapter.classes if all(c in s.classes for s in sets.values())]
    out = FinetuneSplits(dataset, classes, sets["train"].records, sets["val"].records, sets["test"].records,
                         "official", label_sets=dict(sets["test"].label_sets))
    for name, eval_set in sets.items():
        notes = eval_set.notes if (dataset, name) != ("chestxray14", "train") else [
            "train_val_list.txt minus the val patients"]
        out.notes += [f"{name}: {note}" for note in notes]
        out.rejections += eval_set.rejections
    return out


# ---------------------------------------------------------------------------------------------- partition


def partition_splits(dataset: str, root: Path, percent: tuple[int, int, int]) -> FinetuneSplits:
    """Pool every readable split of the adapter and split it by patient (sha1 bucket of the patient key)."""
    adapter = get_adapter(dataset)(root)
    pooled: dict[str, EvalRecord] = {}
    classes: list[str] | None = None
    out = FinetuneSplits(dataset, [], [], [], [], "partition")
    for split in adapter.splits:
        try:
            eval_set = adapter.load(split)
        except AdapterError as exc:
            out.notes.append(f"adapter split '{split}' not available: {exc}")
            continue
        out.rejections += eval_set.rejections
        out.label_sets = out.label_sets or dict(eval_set.label_sets)
        classes = eval_set.classes if classes is None else [c for c in classes if c in eval_set.classes]
        for record in eval_set.records:
            pooled.setdefault(record.image_id, record)
    if classes is None or not pooled:
        raise AdapterError(f"{dataset}: no labelled images found under {root}")
    out.classes = list(classes)
    train_cut, val_cut = percent[0], percent[0] + percent[1]
    for record in pooled.values():
        bucket = stable_bucket("finetune:" + patient_key(record))
        name = "train" if bucket < train_cut else "val" if bucket < val_cut else "test"
        out.split(name).append(record)
    out.notes.append(f"partition of {len(pooled)} labelled images by patient (sha1 bucket): "
                     f"{percent[0]} % train, {percent[1]} % val, {percent[2]} % test")
    return out


# ---------------------------------------------------------------------------------------------- entry


def load_splits(dataset: str, root: Path, protocol: str, percent: tuple[int, int, int]) -> FinetuneSplits:
    """The fine-tuning splits of ``dataset`` under ``protocol`` (auto | official | partition)."""
    if protocol == "official" and dataset not in OFFICIAL:
        raise AdapterError(f"{dataset}: no official labelled train/test split (use split_protocol partition)")
    if protocol == "official" or (protocol == "auto" and has_official(dataset, root)):
        splits = official_splits(dataset, root)
    else:
        splits = partition_splits(dataset, root, percent)
    drop_shared_patients(splits)
    return splits


def drop_shared_patients(splits: FinetuneSplits) -> None:
    """Reject train/val images of patients that also appear in the test split (and train images of val
    patients), so no patient is seen at training and at test time."""
    test_patients = {patient_key(r) for r in splits.test}
    val_patients = {patient_key(r) for r in splits.val}
    for name, forbidden in (("val", test_patients), ("train", test_patients | val_patients)):
        kept = []
        for record in splits.split(name):
            if patient_key(record) in forbidden:
                splits.rejections.append(Rejection(name, record.image_id,
                                                   f"patient {patient_key(record)} is also in a held-out split"))
            else:
                kept.append(record)
        setattr(splits, name, kept)
