"""The labelled fraction: deterministic, stratified, patient-level; the manifest round trip; split protocols."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from devide.data.adapters.base import EvalRecord
from devide.finetune.selection import (
    NEGATIVE,
    load_selection,
    patient_strata,
    save_selection,
    select_fraction,
    stratum_quotas,
)
from devide.finetune.splits import drop_shared_patients, load_splits, patient_key
from devide.stage import StageError
from tests.devide.evaluation import fixtures
from tests.devide.finetune import datasets

CLASSES = ["Rare", "Common"]


def pool(n_rare: int = 10, n_common: int = 40, n_negative: int = 150, images_per_patient: int = 2) -> list[EvalRecord]:
    """Patients p000..: the first ``n_rare`` positive for Rare (and Common), then Common, then negatives."""
    records = []
    for p in range(n_rare + n_common + n_negative):
        labels = {"Rare": int(p < n_rare), "Common": int(p < n_rare + n_common)}
        for i in range(images_per_patient):
            records.append(EvalRecord(f"p{p:03d}-{i}", Path(f"p{p:03d}-{i}.png"), dict(labels), patient_id=f"p{p:03d}"))
    return records


def test_strata_use_the_rarest_positive_class():
    groups = {"a": pool(1, 0, 0)[:1], "b": pool(0, 1, 0)[:1], "c": pool(0, 0, 1)[:1]}
    assert patient_strata(groups, CLASSES) == {"a": "Rare", "b": "Common", "c": NEGATIVE}


def test_selection_is_deterministic_and_seeded():
    records = pool()
    first, again = select_fraction(records, CLASSES, 0.1, seed=3), select_fraction(records, CLASSES, 0.1, seed=3)
    assert first.image_ids == again.image_ids
    assert first.summary["images_sha256"] == again.summary["images_sha256"]
    assert select_fraction(records, CLASSES, 0.1, seed=4).image_ids != first.image_ids
    assert select_fraction(list(reversed(records)), CLASSES, 0.1, seed=3).summary["images_sha256"] == \
        first.summary["images_sha256"]  # the input order does not matter


@pytest.mark.parametrize("fraction, expected", [(0.1, {"Rare": 1, "Common": 4, NEGATIVE: 15}),
                                                (0.5, {"Rare": 5, "Common": 20, NEGATIVE: 75}),
                                                (0.01, {"Rare": 1, "Common": 0, NEGATIVE: 1})])
def test_selection_is_stratified(fraction, expected):
    selection = select_fraction(pool(), CLASSES, fraction, seed=0)
    chosen = {p: info for p, info in selection.patients.items() if info["selected"]}
    counts = {s: sum(info["stratum"] == s for info in chosen.values()) for s in expected}
    assert counts == expected
    # 1 %: 2 of 200 patients, yet the rarest class still gets a positive patient
    assert selection.summary["selected_patients"] == sum(expected.values())
    assert selection.summary["positives"]["Rare"]["selected"] >= 2


def test_selection_is_patient_level():
    records = pool(images_per_patient=3)
    selection = select_fraction(records, CLASSES, 0.1, seed=1)
    chosen = set(selection.image_ids)
    for patient, info in selection.patients.items():
        images = {r.image_id for r in records if r.patient_id == patient}
        assert set(info["images"]) == images
        assert images <= chosen if info["selected"] else not images & chosen
    assert len(selection.image_ids) == 3 * selection.summary["selected_patients"]


def test_full_fraction_takes_everything():
    records = pool(2, 3, 5)
    assert sorted(select_fraction(records, CLASSES, 1.0, seed=0).image_ids) == sorted(r.image_id for r in records)


def test_quotas_hit_the_budget_by_largest_remainder():
    quotas = stratum_quotas({"a": 7, "b": 7, "c": 6}, 0.5)  # 3.5 + 3.5 + 3 = 10
    assert sum(quotas.values()) == 10 and quotas["c"] == 3 and sorted(quotas.values()) == [3, 3, 4]
    assert stratum_quotas({"a": 1, "b": 1, "c": 1, "d": 50}, 0.05) == {"a": 1, "b": 0, "c": 0, "d": 2}


def test_manifest_round_trip_and_mismatch(tmp_path):
    records = pool()
    selection = select_fraction(records, CLASSES, 0.1, seed=0)
    save_selection(tmp_path / "selection.json", selection, {"dataset": "toy"})
    data = json.loads((tmp_path / "selection.json").read_text())
    assert data["dataset"] == "toy" and data["fraction"] == 0.1 and data["strata"]["Rare"] == {"patients": 10,
                                                                                                "selected": 1}
    again = load_selection(tmp_path, records)
    assert again.image_ids == selection.image_ids
    with pytest.raises(StageError, match="not in this training pool"):
        load_selection(tmp_path / "selection.json", records[: len(records) // 2])
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(StageError, match="not a finetune selection"):
        load_selection(tmp_path / "bad.json", records)


# ---------------------------------------------------------------------------------------------- splits


def test_partition_is_patient_level_with_dicom_patient_ids(tmp_path):
    datasets.siim(tmp_path, n=40)
    splits = load_splits("siim", tmp_path, "auto", (60, 20, 20))
    assert splits.protocol == "partition"
    where = {}
    for name in ("train", "val", "test"):
        for record in splits.split(name):
            patient = patient_key(record)
            assert patient.startswith("P")  # read from the DICOM header, not the image id
            assert where.setdefault(patient, name) == name  # both images of a patient in one split
    assert sum(len(splits.split(n)) for n in ("train", "val", "test")) == 40
    again = load_splits("siim", tmp_path, "partition", (60, 20, 20))
    assert [r.image_id for r in again.test] == [r.image_id for r in splits.test]


def test_official_chexpert_reads_train_csv_and_rejects_shared_patients(tmp_path):
    fixtures.chexpert(tmp_path)
    classes = "No Finding,Cardiomegaly,Edema,Pleural Effusion"
    rows = ["Path,Sex,Age,Frontal/Lateral,AP/PA," + classes]
    for i, (view, values) in enumerate([("Frontal", "1.0,0.0,,"), ("Frontal", ",1.0,-1.0,0.0"),
                                        ("Lateral", ",1.0,0.0,0.0"), ("Frontal", ",0.0,1.0,")]):
        patient = "patient64740" if i == 3 else f"patient0000{i}"  # the last one is a test patient
        rel = f"CheXpert-v1.0-small/train/{patient}/study1/view1_{view.lower()}.jpg"
        fixtures.write_jpg(tmp_path / rel)
        rows.append(f"{rel},Male,50,{view},PA,{values}")
    fixtures.write_text(tmp_path / "CheXpert-v1.0-small" / "train.csv", "\n".join(rows) + "\n")
    splits = load_splits("chexpert", tmp_path, "auto", (70, 10, 20))
    assert splits.protocol == "official"
    assert [r.labels for r in splits.train] == [{"No Finding": 1, "Cardiomegaly": 0},
                                                {"Cardiomegaly": 1, "Edema": -1, "Pleural Effusion": 0}]
    assert any("also in a held-out split" in r.reason for r in splits.rejections)
    assert len(splits.val) == 3 and len(splits.test) == 3


def test_official_chestxray14_train_excludes_val_and_test(tmp_path):
    fixtures.chestxray14(tmp_path)
    splits = load_splits("chestxray14", tmp_path, "official", (70, 10, 20))
    train, val, test = ({r.image_id for r in splits.split(n)} for n in ("train", "val", "test"))
    assert not train & val and not train & test and len(train) + len(val) == 31


def test_official_protocol_needs_an_official_split(tmp_path):
    datasets.siim(tmp_path, n=4)
    from devide.data.adapters import AdapterError

    with pytest.raises(AdapterError, match="no official"):
        load_splits("siim", tmp_path, "official", (70, 10, 20))


def test_shared_patients_are_rejected_not_dropped_silently():
    records = pool(0, 0, 3, images_per_patient=1)
    from devide.finetune.splits import FinetuneSplits

    splits = FinetuneSplits("toy", CLASSES, records[:2], [], records[1:], "partition")
    drop_shared_patients(splits)
    assert [r.image_id for r in splits.train] == ["p000-0"]
    assert [(r.source, r.item) for r in splits.rejections] == [("train", "p001-0")]
