"""``devide prepare-data``: a MIMIC-CXR-JPG root (real or phantom) -> image/report/label Arrow dataset + rejects.

Reads the real layout (data_formats.md §1): ``mimic-cxr-2.0.0-{metadata,split,chexpert,negbio}.csv[.gz]``,
images ``files/pXX/p<subject>/s<study>/<dicom_id>.jpg`` and study reports ``files/pXX/p<subject>/s<study>.txt``
(optionally under a separate ``reports_root``: the reports ship in MIMIC-CXR, not in MIMIC-CXR-JPG).

* Labels are per study and propagated to each of its images; blank = not mentioned (-100), never 0. They come
  from the CheXpert or NegBio CSV (columns selected by name, mapped to entity ids through the vocabulary) or
  from the knowledge report labeler (every vocabulary entity).
* Every image is decoded once (:func:`devide.data.image_io.inspect_image`); a bad file is written to
  ``rejects.csv`` with its reason and counted in the manifest, and never stops the stage. Images on disk that
  the metadata does not list, metadata rows without a split, studies without a report, report files that are
  empty, binary or undecodable, and subjects found in two splits are recorded the same way. A report that is
  not UTF-8 is decoded with the declared ``report_encoding_fallback`` (cp1252 by default) and counted.
* Output: ``dataset/`` (``datasets.DatasetDict`` by split: train / validate / test, image paths relative to
  the root), ``rejects.csv``, ``entities.json`` (label order) and ``summary.json``.

Validation results are checkpointed in the stage's work folder, so an interrupted run over the 377k real
images resumes where it stopped.
"""

from __future__ import annotations

import codecs
import csv
import json
import logging
import os
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import Field, field_validator

from devide.config import ConfigError, StageConfig
from devide.data.image_io import MISSING, ImageCheck, inspect_image, reason_code
from devide.log import progress
from devide.stage import Stage, StageContext, StageError, write_json_atomic

logger = logging.getLogger("devide.prepare-data")

SPLITS = ("train", "validate", "test")
NOT_MENTIONED = -100
LABEL_FILES = {"chexpert": "chexpert", "negbio": "negbio"}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".dcm")
REJECT_COLUMNS = ("image_path", "dicom_id", "study_id", "subject_id", "split", "reason_code", "reason")
VALIDATION_CACHE = "validation-cache.jsonl"
STUDY_DIR = re.compile(r"^s\d+$")

# Rejection codes beyond the image-file ones of devide.data.image_io.REASONS
UNLISTED = "unlisted"
NO_SPLIT = "no-split"
MISSING_REPORT = "missing-report"
SPLIT_LEAK = "split-leak"
EMPTY_REPORT = "empty-report"
BINARY_REPORT = "binary-report"
UNDECODABLE_REPORT = "undecodable-report"
# Bytes that never occur in a text report (C0 controls but tab, newlines, form feed; DEL). One NUL, or more
# than this share of them, makes a file binary.
CONTROL_BYTES = bytes(b for b in range(32) if b not in (9, 10, 11, 12, 13)) + b"\x7f"
MAX_CONTROL_SHARE = 0.01


class PrepareDataConfig(StageConfig):
    """Config of ``devide prepare-data``."""

    root: Path = Field(description="MIMIC-CXR-JPG root (holds files/ and mimic-cxr-2.0.0-*.csv[.gz])")
    reports_root: Path | None = Field(
        default=None, description="root of the MIMIC-CXR reports (files/pXX/pN/sM.txt); default: root")
    label_source: Literal["chexpert", "negbio", "labeler"] = Field(
        default="chexpert", description="study labels: the CheXpert or NegBio CSV, or the knowledge report labeler")
    vocabulary: Path | None = Field(default=None, description="entity vocabulary YAML (default: the packaged one)")
    views: list[str] = Field(
        default_factory=lambda: ["PA", "AP"],
        description="ViewPosition values to keep ([] keeps all; '' keeps images with a blank view)")
    splits: list[Literal["train", "validate", "test"]] = Field(
        default_factory=lambda: list(SPLITS), description="official splits to write")
    require_report: bool = Field(default=True, description="reject images whose study has no report")
    image_modes: list[str] = Field(
        default_factory=lambda: ["L"], description="accepted Pillow modes (MIMIC-CXR-JPG is 8-bit greyscale)")
    allow_16bit: bool = Field(default=False, description="accept 16-bit images (rejected by default)")
    validate_images: bool = Field(default=True, description="decode every image to catch bad files")
    find_unlisted: bool = Field(default=True, description="walk files/ and record images the metadata omits")
    max_studies: int | None = Field(
        default=None, ge=1, description="keep at most this many studies per split (lowest study ids first)")
    on_split_leak: Literal["error", "reject"] = Field(
        default="error", description="a subject in two splits: fail, or reject all of its images")
    workers: int = Field(default=4, ge=1, description="threads decoding images")
    report_encoding_fallback: str | None = Field(
        default="cp1252", description="encoding tried for a report that is not UTF-8 (counted in summary.json); "
                                      "null rejects such reports")

    @field_validator("report_encoding_fallback")
    @classmethod
    def _known_encoding(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                codecs.lookup(value)
            except LookupError:
                raise ValueError(f"unknown encoding {value!r}") from None
        return value


# ---------------------------------------------------------------------------------------------- reading CSVs


def find_csv(root: Path, kind: str, required: bool = True) -> Path | None:
    """``mimic-cxr-2.0.0-<kind>.csv.gz`` or ``.csv`` (any release prefix) under ``root``."""
    matches = sorted(root.glob(f"mimic-cxr-*-{kind}.csv.gz")) + sorted(root.glob(f"mimic-cxr-*-{kind}.csv"))
    if not matches:
        if required:
            raise StageError(f"{root}: no mimic-cxr-*-{kind}.csv[.gz] (is this a MIMIC-CXR-JPG root?)")
        return None
    return matches[0]


def read_csv(path: Path, required_columns: Iterable[str]) -> pd.DataFrame:
    try:
        frame = pd.read_csv(path, dtype={"dicom_id": str, "ViewPosition": str}, keep_default_na=True)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise StageError(f"{path.name}: unreadable CSV ({exc})") from None
    missing = [c for c in required_columns if c not in frame.columns]
    if missing:
        raise StageError(f"{path.name}: missing column(s) {', '.join(missing)}")
    return frame


def read_metadata(root: Path) -> pd.DataFrame:
    """Metadata joined with the split file: one row per image (split NaN where the split file lacks it)."""
    meta = read_csv(find_csv(root, "metadata"), ("dicom_id", "subject_id", "study_id", "ViewPosition"))
    split = read_csv(find_csv(root, "split"), ("dicom_id", "study_id", "subject_id", "split"))
    unknown = sorted(set(split["split"].dropna()) - set(SPLITS))
    if unknown:
        raise StageError(f"split file: unknown split value(s) {unknown} (expected {', '.join(SPLITS)})")
    duplicated = meta["dicom_id"].duplicated()
    if duplicated.any():
        raise StageError(f"metadata: {int(duplicated.sum())} duplicated dicom_id(s), e.g. "
                         f"{meta.loc[duplicated, 'dicom_id'].iloc[0]}")
    merged = meta.merge(split[["dicom_id", "split"]].drop_duplicates("dicom_id"), on="dicom_id", how="left")
    merged["ViewPosition"] = merged["ViewPosition"].fillna("").astype(str).str.strip()
    return merged


def image_relpath(subject_id: int, study_id: int, dicom_id: str, suffix: str = ".jpg") -> str:
    """``files/p10/p10000032/s50414267/<dicom_id>.jpg`` (the MIMIC-CXR-JPG layout)."""
    subject = str(int(subject_id))
    return f"files/p{subject[:2]}/p{subject}/s{int(study_id)}/{dicom_id}{suffix}"


def report_relpath(subject_id: int, study_id: int) -> str:
    """``files/p10/p10000032/s50414267.txt``: the study's report sits beside the study folder."""
    subject = str(int(subject_id))
    return f"files/p{subject[:2]}/p{subject}/s{int(study_id)}.txt"


# ---------------------------------------------------------------------------------------------- labels


def label_columns_to_entities(columns: Iterable[str], vocabulary: Any, dataset: str) -> dict[str, str]:
    """CheXpert-style label columns -> entity ids (``mimic``, then ``chexpert`` mappings of the vocabulary)."""
    mapping: dict[str, str] = {}
    for column in columns:
        if column in ("subject_id", "study_id"):
            continue
        entity = vocabulary.from_label("mimic", column) or vocabulary.from_label(dataset, column)
        if entity is None:
            raise ConfigError(f"label column '{column}' maps to no vocabulary entity (add it to the mappings)")
        mapping[column] = entity
    return mapping


def csv_study_labels(root: Path, kind: str, vocabulary: Any) -> tuple[list[str], dict[int, np.ndarray]]:
    """Study labels from the CheXpert/NegBio CSV: (entity order, {study_id: int8 array}); blank -> -100."""
    path = find_csv(root, kind)
    frame = read_csv(path, ("study_id",))
    mapping = label_columns_to_entities(frame.columns, vocabulary, "chexpert")
    entities = list(dict.fromkeys(mapping.values()))
    values = np.full((len(frame), len(entities)), NOT_MENTIONED, dtype=np.int16)
    for column, entity in mapping.items():
        column_values = pd.to_numeric(frame[column], errors="coerce").to_numpy()
        bad = ~np.isnan(column_values) & ~np.isin(column_values, (-1.0, 0.0, 1.0))
        if bad.any():
            raise StageError(f"{path.name}: column '{column}' has values outside 1/0/-1/blank")
        index = entities.index(entity)
        known = ~np.isnan(column_values)
        values[known, index] = column_values[known].astype(np.int16)
    studies = frame["study_id"].astype(int).to_numpy()
    return entities, {int(s): values[i] for i, s in enumerate(studies)}


class LabelerLabels:
    """Study labels from the knowledge report labeler over every vocabulary entity."""

    def __init__(self, vocabulary: Any):
        from knowledge.labeler import ReportLabeler

        self.entities = list(vocabulary.ids)
        self._index = {e: i for i, e in enumerate(self.entities)}
        self._labeler = ReportLabeler(vocabulary)

    def __call__(self, text: str) -> np.ndarray:
        labels = np.full(len(self.entities), NOT_MENTIONED, dtype=np.int16)
        for entity, value in self._labeler.label(text).items():
            if entity in self._index:
                labels[self._index[entity]] = int(value)
        return labels


def load_vocab(path: Path | None) -> Any:
    from knowledge.vocabulary import load_vocabulary

    return load_vocabulary(path)


# ---------------------------------------------------------------------------------------------- reports


def decode_report(data: bytes, fallback: str | None) -> tuple[str, str] | str:
    """(text, encoding) of a report file's bytes, or the rejection reason (``code: detail``) of a file that
    is empty, binary, or neither UTF-8 nor ``fallback``."""
    if not data.strip():
        return f"{EMPTY_REPORT}: the report file is empty"
    controls = sum(data.count(bytes([b])) for b in CONTROL_BYTES)
    if b"\0" in data or controls > MAX_CONTROL_SHARE * len(data):
        return f"{BINARY_REPORT}: {controls} control byte(s) in {len(data)}, not a text report"
    try:
        return data.decode("utf-8-sig"), "utf-8"
    except UnicodeDecodeError as exc:
        if fallback is None:
            return f"{UNDECODABLE_REPORT}: not UTF-8 (byte {exc.start}) and no report_encoding_fallback"
    try:
        return data.decode(fallback), fallback
    except UnicodeDecodeError as exc:
        return f"{UNDECODABLE_REPORT}: neither UTF-8 nor {fallback} (byte {exc.start})"


def read_report(path: Path, fallback: str | None = "cp1252") -> dict[str, str] | str | None:
    """The report's findings, impression, the text the model reads and the encoding it was read with; a
    rejection reason for an empty, binary or undecodable file; None when the file does not exist."""
    from knowledge.labeler import parse_sections

    try:
        decoded = decode_report(path.read_bytes(), fallback)
    except FileNotFoundError:
        return None
    if isinstance(decoded, str):
        return decoded
    text, encoding = decoded
    sections = parse_sections(text)
    findings = " ".join(str(sections.get("findings", "")).split())
    impression = " ".join(str(sections.get("impression", "")).split())
    body = " ".join(part for part in (findings, impression) if part)
    if not body:  # ~5% of MIMIC reports have neither section: fall back to the whole report
        body = " ".join(text.replace("FINAL REPORT", " ").split())
    if not body:
        return f"{EMPTY_REPORT}: no text besides the FINAL REPORT header"
    return {"findings": findings, "impression": impression, "report_text": body, "encoding": encoding}


# ---------------------------------------------------------------------------------------------- images


class ValidationCache:
    """Image checks already done by an interrupted run (keyed by path, size and mtime), appended as JSON lines."""

    def __init__(self, path: Path):
        self.path = path
        self.known: dict[str, dict[str, Any]] = {}
        if path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut by the interruption
                self.known[row["key"]] = row
        self._handle = path.open("a", encoding="utf-8")

    @staticmethod
    def key(path: Path) -> str:
        try:
            stat = path.stat()
        except OSError:
            return f"{path}\0absent"
        return f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}"

    def get(self, key: str) -> ImageCheck | None:
        row = self.known.get(key)
        return None if row is None else ImageCheck(row["reason"], row["width"], row["height"], row["mode"], row["format"])

    def add(self, key: str, check: ImageCheck) -> None:
        row = {"key": key, "reason": check.reason, "width": check.width, "height": check.height,
               "mode": check.mode, "format": check.format}
        self._handle.write(json.dumps(row) + "\n")

    def flush(self) -> None:
        self._handle.flush()

    def close(self) -> None:
        self._handle.close()


def check_images(paths: list[Path], cfg: PrepareDataConfig, cache: ValidationCache) -> list[ImageCheck]:
    """Decode every image (threads: Pillow releases the GIL while decoding); results in input order."""
    keys = [cache.key(p) for p in paths]
    results: list[ImageCheck | None] = [cache.get(k) for k in keys]
    todo = [i for i, r in enumerate(results) if r is None]
    if len(todo) < len(paths):
        logger.info("reusing %d image checks from an interrupted run", len(paths) - len(todo))

    def check(index: int) -> tuple[int, ImageCheck]:
        path = paths[index]
        if not cfg.validate_images:
            return index, ImageCheck(None) if path.is_file() else ImageCheck(MISSING)
        return index, inspect_image(path, modes=cfg.image_modes, allow_16bit=cfg.allow_16bit)

    with ThreadPoolExecutor(max_workers=cfg.workers) as pool:
        for done, (index, result) in enumerate(progress(pool.map(check, todo), total=len(todo),
                                                        desc="checking images", unit="img")):
            results[index] = result
            cache.add(keys[index], result)
            if done % 2000 == 0:
                cache.flush()
    return [r for r in results if r is not None]


def unlisted_images(root: Path, listed: set[str]) -> Iterator[str]:
    """Relative paths of image files under ``root/files`` that the metadata does not list."""
    files = root / "files"
    for directory, _subdirs, names in os.walk(files):
        for name in names:
            if name.lower().endswith(IMAGE_SUFFIXES):
                rel = Path(directory, name).relative_to(root).as_posix()
                if rel not in listed:
                    yield rel


# ---------------------------------------------------------------------------------------------- the stage


class Rejects:
    """The reject manifest: one CSV row per rejected image, with counts by reason code."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self.counts: Counter[str] = Counter()

    def add(self, reason: str, image_path: str, row: dict[str, Any] | None = None) -> None:
        row = row or {}
        code = reason_code(reason)
        self.rows.append({
            "image_path": image_path, "dicom_id": row.get("dicom_id", ""), "study_id": row.get("study_id", ""),
            "subject_id": row.get("subject_id", ""), "split": row.get("split", ""), "reason_code": code,
            "reason": reason,
        })
        self.counts[code] += 1

    def write(self, path: Path) -> None:
        tmp = path.with_name(path.name + ".tmp")
        with tmp.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=REJECT_COLUMNS)
            writer.writeheader()
            writer.writerows(self.rows)
        os.replace(tmp, path)


def check_split_integrity(frame: pd.DataFrame, cfg: PrepareDataConfig, rejects: Rejects) -> pd.DataFrame:
    """No subject may appear in two splits: fail (default) or reject every image of such subjects."""
    splits_per_subject = frame.groupby("subject_id")["split"].nunique()
    leaking = splits_per_subject[splits_per_subject > 1].index
    if len(leaking) == 0:
        return frame
    if cfg.on_split_leak == "error":
        raise StageError(f"{len(leaking)} subject(s) appear in more than one split (e.g. p{leaking[0]}); "
                         "fix the split file or set on_split_leak=reject")
    leak_rows = frame["subject_id"].isin(leaking)
    for row in frame[leak_rows].to_dict("records"):
        rejects.add(f"{SPLIT_LEAK}: subject in several splits", row["image_path"], row)
    return frame[~leak_rows]


def select_rows(frame: pd.DataFrame, cfg: PrepareDataConfig, rejects: Rejects) -> tuple[pd.DataFrame, int]:
    """Rows without a split are rejected; views and splits filtered; ``max_studies`` per split applied."""
    no_split = frame["split"].isna()
    for row in frame[no_split].to_dict("records"):
        rejects.add(f"{NO_SPLIT}: not in the split file", row["image_path"], row)
    frame = frame[~no_split]
    frame = check_split_integrity(frame, cfg, rejects)
    keep = frame["split"].isin(cfg.splits)
    if cfg.views:
        keep &= frame["ViewPosition"].isin(cfg.views)
    filtered = int((~keep).sum())
    frame = frame[keep]
    if cfg.max_studies is not None:
        parts = []
        for _, part in frame.groupby("split", sort=False):
            studies = sorted(part["study_id"].unique())[: cfg.max_studies]
            parts.append(part[part["study_id"].isin(studies)])
        frame = pd.concat(parts) if parts else frame
    return frame.sort_values(["split", "subject_id", "study_id", "dicom_id"]).reset_index(drop=True), filtered


def attach_reports(frame: pd.DataFrame, reports_root: Path, workers: int,
                   fallback: str | None = "cp1252") -> pd.DataFrame:
    """Column ``report`` per image: the study's report (a dict), a rejection reason (str) for a bad report
    file, or None where the study has no report file."""
    studies = frame[["subject_id", "study_id"]].drop_duplicates()
    paths = [reports_root / report_relpath(s, t) for s, t in zip(studies["subject_id"], studies["study_id"])]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        reports = list(progress(pool.map(lambda p: read_report(p, fallback), paths), total=len(paths),
                                desc="reading reports", unit="report"))
    by_study = dict(zip(studies["study_id"], reports))
    frame = frame.copy()
    frame["report"] = frame["study_id"].map(by_study)
    return frame


def study_labels(frame: pd.DataFrame, cfg: PrepareDataConfig, counts: dict[str, Any]) -> tuple[list[str], list]:
    """(entity order, per-row int16 label arrays) from the configured source."""
    vocabulary = load_vocab(cfg.vocabulary)
    if cfg.label_source == "labeler":
        labeler = LabelerLabels(vocabulary)
        cache: dict[int, np.ndarray] = {}
        labels = []
        for study, report in zip(frame["study_id"], frame["report"]):
            if study not in cache:
                cache[study] = labeler(report["report_text"] if isinstance(report, dict) else "")
            labels.append(cache[study])
        return labeler.entities, labels
    entities, by_study = csv_study_labels(cfg.root, LABEL_FILES[cfg.label_source], vocabulary)
    unlabelled = np.full(len(entities), NOT_MENTIONED, dtype=np.int16)
    missing = set(frame["study_id"]) - set(by_study)
    counts["studies_without_label_row"] = len(missing)  # left join: such a study is "all not mentioned"
    return entities, [by_study.get(int(s), unlabelled) for s in frame["study_id"]]


def report_field(reports: Iterable[Any], key: str) -> list[str]:
    """One section of each image's report ("" where the study has none: None or NaN after pandas)."""
    return [r[key] if isinstance(r, dict) else "" for r in reports]


def write_dataset(frame: pd.DataFrame, entities: list[str], out: Path) -> dict[str, int]:
    """Save a DatasetDict (one split per key) with the image/report/label columns; returns rows per split."""
    import datasets

    features = datasets.Features({
        "image_path": datasets.Value("string"), "dicom_id": datasets.Value("string"),
        "subject_id": datasets.Value("int64"), "study_id": datasets.Value("int64"),
        "split": datasets.Value("string"), "view_position": datasets.Value("string"),
        "width": datasets.Value("int32"), "height": datasets.Value("int32"),
        "study_date": datasets.Value("int64"),
        "findings": datasets.Value("string"), "impression": datasets.Value("string"),
        "report_text": datasets.Value("string"), "labels": datasets.Sequence(datasets.Value("int16")),
    })
    splits = {}
    for split, part in frame.groupby("split", sort=False):
        columns = {
            "image_path": part["image_path"].tolist(), "dicom_id": part["dicom_id"].tolist(),
            "subject_id": part["subject_id"].astype(int).tolist(), "study_id": part["study_id"].astype(int).tolist(),
            "split": part["split"].tolist(), "view_position": part["ViewPosition"].tolist(),
            "width": part["width"].astype(int).tolist(), "height": part["height"].astype(int).tolist(),
            "study_date": pd.to_numeric(part.get("StudyDate", pd.Series(0, index=part.index)),
                                        errors="coerce").fillna(0).astype(int).tolist(),
            "findings": report_field(part["report"], "findings"),
            "impression": report_field(part["report"], "impression"),
            "report_text": report_field(part["report"], "report_text"),
            "labels": [list(map(int, v)) for v in part["labels"]],
        }
        info = datasets.DatasetInfo(description=json.dumps({"entities": entities}), features=features)
        splits[split] = datasets.Dataset.from_dict(columns, features=features, info=info)
    datasets.DatasetDict(splits).save_to_disk(str(out))
    return {split: len(ds) for split, ds in splits.items()}


def run(cfg: PrepareDataConfig, ctx: StageContext) -> dict[str, Any]:
    root = Path(cfg.root)
    if not (root / "files").is_dir():
        raise StageError(f"{root}: no files/ folder (expected the MIMIC-CXR-JPG layout)")
    rejects = Rejects()
    counts: dict[str, Any] = {}
    frame = read_metadata(root)
    frame["image_path"] = [image_relpath(s, t, d) for s, t, d in
                           zip(frame["subject_id"], frame["study_id"], frame["dicom_id"])]
    counts["metadata_images"] = len(frame)
    if cfg.find_unlisted:
        for rel in unlisted_images(root, set(frame["image_path"])):
            rejects.add(f"{UNLISTED}: image on disk but not in the metadata", rel)
    frame, counts["filtered_by_view_or_split"] = select_rows(frame, cfg, rejects)

    cache = ValidationCache(ctx.work_dir / VALIDATION_CACHE)
    try:
        checks = check_images([root / p for p in frame["image_path"]], cfg, cache)
    finally:
        cache.close()
    frame["width"] = [c.width for c in checks]
    frame["height"] = [c.height for c in checks]
    bad = [c.reason is not None for c in checks]
    for row, check in zip(frame[bad].to_dict("records"), (c for c in checks if c.reason is not None)):
        rejects.add(check.reason, row["image_path"], row)
    frame = frame[[not b for b in bad]]

    frame = attach_reports(frame, Path(cfg.reports_root or root), cfg.workers, cfg.report_encoding_fallback)
    bad_report = frame["report"].map(lambda r: isinstance(r, str))
    for row in frame[bad_report].to_dict("records"):  # always rejected: an unreadable report is not "no report"
        rejects.add(f"{row['report']} ({report_relpath(row['subject_id'], row['study_id'])})", row["image_path"], row)
    frame = frame[~bad_report]
    fallback_studies = {s for s, r in zip(frame["study_id"], frame["report"])
                        if isinstance(r, dict) and r["encoding"] != "utf-8"}
    counts["reports_decoded_with_fallback"] = len(fallback_studies)
    if fallback_studies:
        ctx.logger.warning("%d report(s) were not UTF-8 and were read as %s", len(fallback_studies),
                           cfg.report_encoding_fallback)
    if cfg.require_report:
        no_report = ~frame["report"].map(lambda r: isinstance(r, dict))
        for row in frame[no_report].to_dict("records"):
            rejects.add(f"{MISSING_REPORT}: {report_relpath(row['subject_id'], row['study_id'])} not found",
                        row["image_path"], row)
        frame = frame[~no_report]
    entities, labels = study_labels(frame, cfg, counts)
    frame = frame.assign(labels=labels)

    rows = write_dataset(frame, entities, ctx.work_dir / "dataset")
    rejects.write(ctx.work_dir / "rejects.csv")
    write_json_atomic(ctx.work_dir / "entities.json", entities)
    (ctx.work_dir / VALIDATION_CACHE).unlink(missing_ok=True)
    positives = {e: int(sum(1 for v in frame["labels"] if v[i] == 1)) for i, e in enumerate(entities)}
    summary = {
        "images": rows, "studies": int(frame["study_id"].nunique()), "subjects": int(frame["subject_id"].nunique()),
        "rejected": dict(sorted(rejects.counts.items())), "rejected_total": len(rejects.rows),
        "label_source": cfg.label_source, "entities": len(entities), "positive_images": positives, **counts,
    }
    write_json_atomic(ctx.work_dir / "summary.json", summary)
    for code, n in sorted(rejects.counts.items()):
        ctx.logger.warning("rejected %d image(s): %s (see rejects.csv)", n, code)
    ctx.logger.info("dataset: %s images, %d studies, %d entities", rows, summary["studies"], len(entities))
    return {k: v for k, v in summary.items() if k != "positive_images"}


STAGE = Stage(
    name="prepare-data",
    config_cls=PrepareDataConfig,
    run=run,
    help="build the image-report-label dataset from a MIMIC-CXR-JPG style root, rejecting bad files",
    input_fields=("root", "reports_root", "vocabulary"),
    volatile_fields=("workers",),
    code=("devide.data.prepare", "devide.data.image_io", "knowledge"),
)
