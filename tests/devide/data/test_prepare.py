"""prepare-data on a fixture tree in the real MIMIC-CXR-JPG layout with every kind of bad file."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import datasets
import pytest

from devide.config import load_config
from devide.data.image_io import ImageCheck
from devide.data.prepare import (
    NOT_MENTIONED,
    STAGE,
    PrepareDataConfig,
    ValidationCache,
    check_images,
    image_relpath,
    report_relpath,
)
from devide.stage import StageError, execute_stage

from .mimic_fixture import add_split_leak, build

pytest.importorskip("knowledge.labeler", reason="the report section parser comes with the knowledge labeler")


def run_prepare(tmp_path, fx, **overrides):
    cfg = load_config(PrepareDataConfig, overrides={"root": str(fx.root), "out": str(tmp_path / "out"),
                                                    "workers": 2, **overrides})
    result = execute_stage(STAGE, cfg, quiet=True)
    return cfg, result


def read_rejects(out):
    with (out / "rejects.csv").open() as handle:
        return {row["image_path"]: row for row in csv.DictReader(handle)}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("prepare")
    fx = build(tmp / "mimic-cxr-jpg")
    _, result = run_prepare(tmp, fx)
    return fx, result


def test_layout_paths():
    assert image_relpath(10000032, 50414267, "abc") == "files/p10/p10000032/s50414267/abc.jpg"
    assert report_relpath(10000032, 50414267) == "files/p10/p10000032/s50414267.txt"


def test_every_bad_file_is_rejected_with_its_reason_and_counted(prepared):
    fx, result = prepared
    rejects = read_rejects(result.out)
    assert {path: row["reason_code"] for path, row in rejects.items()} == fx.bad
    expected_counts = {}
    for code in fx.bad.values():
        expected_counts[code] = expected_counts.get(code, 0) + 1
    assert result.manifest["counts"]["rejected"] == expected_counts
    assert result.manifest["counts"]["rejected_total"] == len(fx.bad)
    assert all(row["reason"].startswith(row["reason_code"]) for row in rejects.values())


def test_dataset_holds_good_frontal_images_by_split(prepared):
    fx, result = prepared
    ds = datasets.load_from_disk(str(result.out / "dataset"))
    assert set(ds) == {"train", "validate", "test"}
    paths = [p for split in ds for p in ds[split]["image_path"]]
    assert sorted(paths) == sorted(fx.good)
    assert not set(paths) & set(fx.filtered)  # the lateral view is filtered, not rejected
    assert result.manifest["counts"]["images"] == {"train": 3, "validate": 1, "test": 1}
    assert all((fx.root / p).is_file() for p in paths)  # relative to the root
    row = ds["train"][0]
    assert row["width"] == 64 and row["height"] == 48 and row["view_position"] in ("PA", "AP")


def test_study_labels_propagate_to_images_blank_is_not_mentioned(prepared):
    _, result = prepared
    entities = json.loads((result.out / "entities.json").read_text())
    assert len(entities) == 14 and "pleural_effusion" in entities and "no_finding" in entities
    train = datasets.load_from_disk(str(result.out / "dataset"))["train"]
    by_study = {}
    for row in train:
        by_study.setdefault(row["study_id"], []).append(row["labels"])
    first = by_study[50000001]
    assert len(first) == 2 and first[0] == first[1]  # both images of the study carry the study's labels
    labels = dict(zip(entities, first[0]))
    assert labels["pleural_effusion"] == 1 and labels["cardiomegaly"] == 0 and labels["atelectasis"] == -1
    assert labels["edema"] == NOT_MENTIONED  # blank in the CSV: not mentioned, never "absent"
    assert set(by_study[50000030][0]) == {NOT_MENTIONED}  # study without a CheXpert row
    assert result.manifest["counts"]["studies_without_label_row"] == 1


def test_report_sections_are_kept(prepared):
    _, result = prepared
    row = next(r for r in datasets.load_from_disk(str(result.out / "dataset"))["train"] if r["study_id"] == 50000001)
    assert "pleural effusion" in row["findings"].lower()
    assert row["impression"].lower().startswith("small left pleural effusion")
    assert row["findings"] in row["report_text"] and row["impression"] in row["report_text"]


def test_plain_csv_and_all_views(tmp_path):
    fx = build(tmp_path / "root", gz=False)
    _, result = run_prepare(tmp_path, fx, views=[], splits=["train"])
    paths = datasets.load_from_disk(str(result.out / "dataset"))["train"]["image_path"]
    assert fx.filtered[0] in paths and len(paths) == 4


def test_split_leak_fails_or_rejects(tmp_path):
    fx = build(tmp_path / "root")
    add_split_leak(fx)
    with pytest.raises(StageError, match="more than one split"):
        run_prepare(tmp_path, fx)
    _, result = run_prepare(tmp_path, fx, on_split_leak="reject")
    leaked = [r for r in read_rejects(result.out).values() if r["reason_code"] == "split-leak"]
    assert {r["subject_id"] for r in leaked} == {"10000001"} and len(leaked) == 3


def test_interrupted_validation_is_reused(tmp_path):
    fx = build(tmp_path / "root")
    good = fx.root / fx.good[0]
    cache = ValidationCache(tmp_path / "cache.jsonl")
    cache.add(ValidationCache.key(good), ImageCheck("truncated: remembered", 1, 2, "L", "JPEG"))
    cache.close()
    cfg = PrepareDataConfig(root=fx.root)
    reopened = ValidationCache(tmp_path / "cache.jsonl")
    checks = check_images([good, fx.root / fx.good[1]], cfg, reopened)
    reopened.close()
    assert checks[0].reason == "truncated: remembered"  # from the cache, not decoded again
    assert checks[1].reason is None and checks[1].width == 64
    assert len((tmp_path / "cache.jsonl").read_text().splitlines()) == 2  # the new check was appended


def test_labels_from_the_report_labeler(tmp_path):
    fx = build(tmp_path / "root")
    _, result = run_prepare(tmp_path, fx, label_source="labeler", splits=["train"])
    entities = json.loads((result.out / "entities.json").read_text())
    assert len(entities) >= 40
    train = datasets.load_from_disk(str(result.out / "dataset"))["train"]
    row = next(r for r in train if r["study_id"] == 50000030)  # "Large right pneumothorax", no CSV row
    assert dict(zip(entities, row["labels"]))["pneumothorax"] == 1


def test_cli_bad_root_is_one_line_exit_2(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "devide", "prepare-data", "--root", str(tmp_path / "nope"),
                           "--out", str(tmp_path / "o")], check=False, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "prepare-data: error:" in proc.stderr


def test_images_without_report_can_be_kept(tmp_path):
    fx = build(tmp_path / "root")
    _, result = run_prepare(tmp_path, fx, require_report=False, splits=["train"])
    train = datasets.load_from_disk(str(result.out / "dataset"))["train"]
    row = next(r for r in train if r["study_id"] == 50000020)
    assert row["report_text"] == "" and row["findings"] == ""
    assert "missing-report" not in result.manifest["counts"]["rejected"]


def test_empty_binary_and_undecodable_reports_are_rejected_and_fallback_decoding_is_counted(tmp_path):
    """Issue 19.6: empty, non-UTF-8 and binary report files were kept with report_text '', mojibake or NULs."""
    fx = build(tmp_path / "root")
    files = {
        50000040: b"   \n\n  ",  # validate study: empty
        50000050: b"\x00\x01\x02\x03PK\x03\x04" * 20,  # test study: binary
        50000030: b" FINDINGS: Large right pneumothorax. Caf\xe9 au lait spot.\n IMPRESSION: Pneumothorax.\n",
    }
    subjects = {50000040: 10000004, 50000050: 10000005, 50000030: 10000003}
    for study, data in files.items():
        (fx.root / report_relpath(subjects[study], study)).write_bytes(data)
    _, result = run_prepare(tmp_path, fx)
    rejects = read_rejects(result.out)
    by_study = {int(r["study_id"]): r for r in rejects.values() if r["study_id"]}
    assert by_study[50000040]["reason_code"] == "empty-report"
    assert by_study[50000050]["reason_code"] == "binary-report"
    assert by_study[50000050]["reason"].endswith("(files/p10/p10000005/s50000050.txt)")
    counts = result.manifest["counts"]
    assert counts["rejected"]["empty-report"] == 1 and counts["rejected"]["binary-report"] == 1
    assert counts["reports_decoded_with_fallback"] == 1
    data = datasets.load_from_disk(str(result.out / "dataset"))
    assert set(data) == {"train"}  # the validate and test studies lost their only images
    row = next(r for r in data["train"] if r["study_id"] == 50000030)
    assert "Café au lait spot." in row["findings"] and "\ufffd" not in row["report_text"]
    assert all(r["report_text"].strip() for r in data["train"])

    # Without a fallback the latin-1 report is rejected too, with its reason.
    _, strict = run_prepare(tmp_path / "strict", fx, report_encoding_fallback=None)
    reasons = {int(r["study_id"]): r["reason"] for r in read_rejects(strict.out).values() if r["study_id"]}
    assert reasons[50000030].startswith("undecodable-report: not UTF-8 (byte ")


def test_unknown_report_encoding_is_a_config_error(tmp_path):
    from devide.config import ConfigError

    with pytest.raises(ConfigError, match="report_encoding_fallback.*unknown encoding 'klingon'"):
        load_config(PrepareDataConfig, overrides={"root": str(tmp_path), "report_encoding_fallback": "klingon"})
