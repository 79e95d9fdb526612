"""A tiny MIMIC-CXR-JPG root in the real layout, with one image of every bad kind (data_formats.md §1.9)."""

from __future__ import annotations

import gzip
import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from .bad_files import gradient, write_html, write_jpeg, write_png16, write_truncated_jpeg

CHEXPERT_COLUMNS = [  # the file's physical (alphabetical) order
    "Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Enlarged Cardiomediastinum", "Fracture",
    "Lung Lesion", "Lung Opacity", "No Finding", "Pleural Effusion", "Pleural Other", "Pneumonia",
    "Pneumothorax", "Support Devices",
]

REPORT = """                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)
 
 INDICATION:  ___ year old woman with ?pleural effusion  // ?pleural effusion
 
 FINDINGS: 
 
 {findings}
 
 IMPRESSION: 
 
 {impression}
"""


@dataclass
class Fixture:
    root: Path
    good: list[str] = field(default_factory=list)  # image paths expected in the dataset
    bad: dict[str, str] = field(default_factory=dict)  # image path -> expected reason code
    filtered: list[str] = field(default_factory=list)  # lateral views (not rejected, filtered out)


def dicom_id(n: int) -> str:
    return "-".join(f"{n:08x}" for _ in range(5))


def _rel(subject: int, study: int, dicom: str) -> str:
    return f"files/p{str(subject)[:2]}/p{subject}/s{study}/{dicom}.jpg"


def _gz_csv(frame: pd.DataFrame, path: Path, gz: bool) -> None:
    text = frame.to_csv(index=False)
    if gz:
        path.with_name(path.name + ".gz").write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)


def build(root: Path, gz: bool = True) -> Fixture:
    """Subjects 10000001..10000006 over train/validate/test; bad files in the train split."""
    fx = Fixture(root)
    meta, split, chexpert = [], [], []
    counter = iter(range(1, 1000))

    def image(subject: int, study: int, split_name: str | None, view: str = "PA", kind: str = "good",
              seed: int = 0) -> str:
        dicom = dicom_id(next(counter))
        rel = _rel(subject, study, dicom)
        path = root / rel
        meta.append({"dicom_id": dicom, "subject_id": subject, "study_id": study,
                     "PerformedProcedureStepDescription": "CHEST (PA AND LAT)", "ViewPosition": view,
                     "Rows": 48, "Columns": 64, "StudyDate": 21800101 + seed, "StudyTime": 101010.5,
                     "ProcedureCodeSequence_CodeMeaning": "CHEST (PA AND LAT)",
                     "ViewCodeSequence_CodeMeaning": "postero-anterior",
                     "PatientOrientationCodeSequence_CodeMeaning": "Erect"})
        if split_name is not None:
            split.append({"dicom_id": dicom, "study_id": study, "subject_id": subject, "split": split_name})
        if kind == "good":
            write_jpeg(path, np.roll(gradient(), seed * 7, axis=1))
        elif kind == "zero-byte":
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"")
        elif kind == "truncated":
            write_truncated_jpeg(path)
        elif kind == "html":
            write_html(path)
        elif kind == "unexpected-mode":
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(gradient(), mode="L").convert("CMYK").save(path, format="JPEG")
        elif kind == "16-bit":  # a 16-bit PNG that someone saved under the .jpg name
            write_png16(path, gradient().astype(np.uint16) * 200)
        # kind == "missing": listed in the metadata, no file
        return rel

    def report(subject: int, study: int, findings: str, impression: str) -> None:
        path = root / f"files/p{str(subject)[:2]}/p{subject}/s{study}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(REPORT.format(findings=findings, impression=impression))

    def labels(study: int, subject: int, **values: float) -> None:
        row = {"subject_id": subject, "study_id": study}
        row.update({c: values.get(c.replace(" ", "_"), np.nan) for c in CHEXPERT_COLUMNS})
        chexpert.append(row)

    # train: subject 1, study 50000001 (two frontal + one lateral), labels 1 / 0 / -1 / blank
    fx.good += [image(10000001, 50000001, "train", "PA", seed=1), image(10000001, 50000001, "train", "AP", seed=2)]
    fx.filtered.append(image(10000001, 50000001, "train", "LATERAL", seed=3))
    report(10000001, 50000001, "There is a small left pleural effusion. Heart size is normal.",
           "Small left pleural effusion. Possible atelectasis.")
    labels(50000001, 10000001, Pleural_Effusion=1.0, Cardiomegaly=0.0, Atelectasis=-1.0)
    # train: subject 2 holds every bad kind, one study per kind
    for offset, kind in enumerate(["missing", "zero-byte", "truncated", "html", "unexpected-mode", "16-bit"]):
        study = 50000010 + offset
        fx.bad[image(10000002, study, "train", "PA", kind=kind)] = kind
        report(10000002, study, "Lungs are clear.", "No acute process.")
        labels(study, 10000002, No_Finding=1.0)
    # train: a good image whose study has no report, and one that is missing from the split file
    fx.bad[image(10000002, 50000020, "train", "PA", seed=4)] = "missing-report"
    labels(50000020, 10000002, No_Finding=1.0)
    fx.bad[image(10000002, 50000021, None, "PA", seed=5)] = "no-split"
    report(10000002, 50000021, "Lungs are clear.", "No acute process.")
    # train: a study the CheXpert labeler could not label (no row) -> all not mentioned
    fx.good.append(image(10000003, 50000030, "train", "PA", seed=6))
    report(10000003, 50000030, "Cardiomegaly. Right pneumothorax.", "Large right pneumothorax.")
    # validate and test
    fx.good.append(image(10000004, 50000040, "validate", "PA", seed=7))
    report(10000004, 50000040, "Enlarged heart.", "Cardiomegaly.")
    labels(50000040, 10000004, Cardiomegaly=1.0)
    fx.good.append(image(10000005, 50000050, "test", "AP", seed=8))
    report(10000005, 50000050, "Lungs are clear.", "No acute cardiopulmonary process.")
    labels(50000050, 10000005, No_Finding=1.0)
    # an image on disk that the metadata does not list
    unlisted = _rel(10000005, 50000050, dicom_id(999))
    write_jpeg(root / unlisted)
    fx.bad[unlisted] = "unlisted"

    _gz_csv(pd.DataFrame(meta), root / "mimic-cxr-2.0.0-metadata.csv", gz)
    _gz_csv(pd.DataFrame(split), root / "mimic-cxr-2.0.0-split.csv", gz)
    frame = pd.DataFrame(chexpert, columns=["subject_id", "study_id", *CHEXPERT_COLUMNS])
    _gz_csv(frame, root / "mimic-cxr-2.0.0-chexpert.csv", gz)
    _gz_csv(frame, root / "mimic-cxr-2.0.0-negbio.csv", gz)
    return fx


def add_split_leak(fx: Fixture) -> None:
    """Move one of subject 10000001's images to the test split (the subject then sits in two splits)."""
    path = fx.root / "mimic-cxr-2.0.0-split.csv.gz"
    frame = pd.read_csv(path)
    first = frame.index[frame["subject_id"] == 10000001][0]
    frame.loc[first, "split"] = "test"
    path.write_bytes(gzip.compress(frame.to_csv(index=False).encode()))


def read_gz(path: Path) -> pd.DataFrame:
    return pd.read_csv(io.BytesIO(gzip.decompress(path.read_bytes())))
