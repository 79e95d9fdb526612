"""The datasets' on-disk layouts: planning every image, rendering one, and writing the tables.

Layouts (see ``/shared/reference/data_formats.md`` and ``docs/phantom.md``):

* ``mimic-cxr-jpg/`` MIMIC-CXR-JPG 2.x: ``files/pXX/p<subject>/s<study>/<dicom_id>.jpg``, reports beside the
  study folders (``s<study>.txt``), ``mimic-cxr-2.0.0-{metadata,split,chexpert,negbio}.csv.gz``,
  ``IMAGE_FILENAMES``;
* ``chestxray14/`` ``images_001/images/<patient>_<follow-up>.png``, ``Data_Entry_2017.csv``,
  ``BBox_List_2017.csv``, ``train_val_list.txt``, ``test_list.txt``;
* ``chexpert/CheXpert-v1.0-small/`` ``valid.csv`` and ``valid/patientNNNNN/study1/view1_frontal.jpg``;
* ``rsna/`` ``stage_2_train_images/<patientId>.dcm``, ``stage_2_train_labels.csv`` (one row per box),
  ``stage_2_detailed_class_info.csv``;
* ``siim/`` ``dicom-images-train/<study>/<series>/<sop>.dcm`` and ``train-rle.csv`` (``ImageId, EncodedPixels``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from devide.data.phantom import formats
from devide.data.phantom.case import Case
from devide.data.phantom.cases import Study, sample_case, sample_mimic_studies
from devide.data.phantom.render import VISIBLE_DENSITY, Rendered, render_case
from devide.data.phantom.reports import Report, chexpert_row, image_labels, write_report
from devide.data.phantom.spec import CHESTXRAY14_LABELS, CHEXPERT_COLUMNS, FindingsSpec

MIMIC = "mimic-cxr-jpg"
CHEXPERT_RELEASE = "CheXpert-v1.0-small"
CHEXPERT_VALID_COLUMNS = (
    "Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly",
    "Lung Opacity", "Lung Lesion", "Edema", "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax",
    "Pleural Effusion", "Pleural Other", "Fracture", "Support Devices",
)
RSNA_TARGETS = ("pneumonia", "consolidation")  # RSNA "Lung Opacity": opacities suspicious for pneumonia
PIXEL_SPACING_1024 = 0.143  # mm, ChestX-ray14 at 1024 x 1024


@dataclass
class Plan:
    jobs: list = field(default_factory=list)
    studies: list[Study] = field(default_factory=list)
    reports: dict[int, Report] = field(default_factory=dict)


def mimic_study_dir(subject: int, study: int) -> str:
    return f"files/p{str(subject)[:2]}/p{subject}/s{study}"


def plan(cfg, spec: FindingsSpec) -> Plan:
    """Every image of the corpus, decided from the seed alone (cheap: no rendering)."""
    from devide.data.phantom.stage import Job

    out = Plan()
    unseen = set(cfg.unseen)
    pretrain_allowed = set(spec.rendered) - (unseen if cfg.unseen_in_pretraining == "absent" else set())
    out.studies = sample_mimic_studies(np.random.default_rng([cfg.seed, 1]), spec, cfg.n_studies, pretrain_allowed)
    for study in out.studies:
        rng = np.random.default_rng([cfg.seed, 2, study.study_id])
        out.reports[study.study_id] = write_report(study.case, spec, rng, unseen, study.prior, cfg.uncertain_rate)
        for i, dicom_id in enumerate(study.dicom_ids):
            case = study.case if i == 0 else Case(study.case.seed + 7919 * i, study.case.view, study.case.sex,
                                                  study.case.age, study.case.findings, study.case.patient_seed)
            path = f"{MIMIC}/{mimic_study_dir(study.subject_id, study.study_id)}/{dicom_id}.jpg"
            out.jobs.append(Job("mimic", len(out.jobs), path, "jpeg", case.to_json(),
                                {"dicom_id": dicom_id, "study_id": study.study_id}))
    for number, dataset in enumerate(cfg.eval_sets):
        rng = np.random.default_rng([cfg.seed, 10 + number])
        out.jobs += EVAL_PLANNERS[dataset](rng, spec, cfg.n_eval, len(out.jobs))
    return out


def _eval_cases(rng: np.random.Generator, spec: FindingsSpec, dataset: str, n: int, max_followups: int
                ) -> list[tuple[int, int, Case]]:
    """``(patient number, follow-up number, case)`` for ``n`` images of an evaluation set."""
    out: list[tuple[int, int, Case]] = []
    patient = 0
    while len(out) < n:
        patient += 1
        seed = int(rng.integers(0, 2**31 - 1))
        sex, age = ("F" if rng.random() < 0.45 else "M"), int(np.clip(rng.normal(55, 17), 18, 94))
        for follow_up in range(min(int(rng.integers(1, max_followups + 1)), n - len(out))):
            case = sample_case(rng, spec, dataset, set(spec.rendered), patient=seed, sex=sex, age=age)
            out.append((patient, follow_up, case))
    return out


def _plan_chestxray14(rng, spec, n, offset):
    from devide.data.phantom.stage import Job

    jobs = []
    for i, (patient, follow_up, case) in enumerate(_eval_cases(rng, spec, "chestxray14", n, 3)):
        name = f"{patient:08d}_{follow_up:03d}.png"
        path = f"chestxray14/images_{i // 10000 + 1:03d}/images/{name}"
        jobs.append(Job("chestxray14", offset + i, path, "png", case.to_json(),
                        {"image_index": name, "patient": patient, "follow_up": follow_up}))
    return jobs


def _plan_chexpert(rng, spec, n, offset):
    from devide.data.phantom.stage import Job

    jobs = []
    for i, (_, _, case) in enumerate(_eval_cases(rng, spec, "chexpert", n, 1)):
        path = f"chexpert/{CHEXPERT_RELEASE}/valid/patient{64541 + i}/study1/view1_frontal.jpg"
        jobs.append(Job("chexpert", offset + i, path, "jpeg", case.to_json(), {}))
    return jobs


def _uuid(rng: np.random.Generator) -> str:
    digits = "".join(f"{int(x):08x}" for x in rng.integers(0, 2**32, size=4, dtype=np.uint64))
    return f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:32]}"


def _plan_rsna(rng, spec, n, offset):
    from devide.data.phantom.stage import Job

    jobs = []
    for i, (_, _, case) in enumerate(_eval_cases(rng, spec, "rsna", n, 1)):
        patient_id = _uuid(rng)
        uids = {k: formats.make_uid("rsna", patient_id, k) for k in ("study", "series", "sop")}
        jobs.append(Job("rsna", offset + i, f"rsna/stage_2_train_images/{patient_id}.dcm", "dicom", case.to_json(),
                        {"patient_id": patient_id, **uids}))
    return jobs


def _plan_siim(rng, spec, n, offset):
    from devide.data.phantom.stage import Job

    jobs = []
    for i, (_, _, case) in enumerate(_eval_cases(rng, spec, "siim", n, 1)):
        key = int(rng.integers(0, 2**62))
        uids = {k: formats.make_uid("siim", key, k) for k in ("study", "series", "sop")}
        path = f"siim/dicom-images-train/{uids['study']}/{uids['series']}/{uids['sop']}.dcm"
        jobs.append(Job("siim", offset + i, path, "dicom", case.to_json(), {"patient_id": uids["sop"], **uids}))
    return jobs


EVAL_PLANNERS = {"chestxray14": _plan_chestxray14, "chexpert": _plan_chexpert, "rsna": _plan_rsna,
                 "siim": _plan_siim}


# ---------------------------------------------------------------------------------------------- rendering


def boxes_of(rendered: Rendered, case: Case, entity: str) -> list[list[float]]:
    """Boxes ``[x, y, w, h]`` (output pixels) around a finding; bilateral findings get one box per lung."""
    support = rendered.supports.get(entity)
    if support is None:
        return []
    finding = next(f for f in case.findings if f.entity == entity)
    res = support.shape[0]
    visible = support > VISIBLE_DENSITY
    parts = [visible]
    if finding.side == "bilateral":
        left = np.zeros_like(visible)
        left[:, : res // 2] = visible[:, : res // 2]
        parts = [left, visible & ~left]
    scale = rendered.size / res
    out = []
    for part in parts:
        rows, cols = np.flatnonzero(part.any(axis=1)), np.flatnonzero(part.any(axis=0))
        if rows.size:
            x0, y0, x1, y1 = cols[0], rows[0], cols[-1] + 1, rows[-1] + 1
            out.append([round(float(x0 * scale), 2), round(float(y0 * scale), 2),
                        round(float((x1 - x0) * scale), 2), round(float((y1 - y0) * scale), 2)])
    return out


def encode(job, pixels: np.ndarray, size: int) -> bytes:
    case = job.case
    if job.fmt == "jpeg":
        return formats.encode_jpeg(pixels)
    if job.fmt == "png":
        return formats.encode_png(pixels)
    return formats.encode_dicom(pixels, patient_id=job.meta["patient_id"], sex=case["sex"], age=case["age"],
                                view=case["view"], study_uid=job.meta["study"], series_uid=job.meta["series"],
                                sop_uid=job.meta["sop"], pixel_spacing=PIXEL_SPACING_1024 * 1024 / size)


def render_job(job, root: Path, size: int) -> dict[str, Any]:
    """Render one image, write it, and return its ground truth."""
    case = Case.from_json(job.case)
    rendered = render_case(case, size)
    formats.atomic_write(root / job.path, encode(job, rendered.image, size))
    return {
        "dataset": job.dataset,
        "index": job.index,
        "boxes": {e: boxes_of(rendered, case, e) for e in case.entities},
        "masks": {e: rendered.rle(e) for e in case.entities},
    }


# ---------------------------------------------------------------------------------------------- tables


def write_tables(cfg, spec: FindingsSpec, plan: Plan, results: dict, root: Path) -> dict[str, Any]:
    by_dataset: dict[str, list] = {}
    for job in plan.jobs:
        by_dataset.setdefault(job.dataset, []).append(job)
    counts: dict[str, Any] = {"images": {d: len(j) for d, j in by_dataset.items()}, "studies": len(plan.studies),
                              "unseen": list(cfg.unseen), "positives": {}}
    write_mimic(cfg, spec, plan, by_dataset.get("mimic", []), root)
    writers = {"chestxray14": write_chestxray14, "chexpert": write_chexpert, "rsna": write_rsna, "siim": write_siim}
    for dataset, jobs in by_dataset.items():
        if dataset in writers:
            writers[dataset](cfg, spec, jobs, results, root)
        write_ground_truth(spec, dataset, jobs, results, root)
        positives: dict[str, int] = {}
        for job in jobs:
            for entity in image_labels(Case.from_json(job.case), spec):
                positives[entity] = positives.get(entity, 0) + 1
        counts["positives"][dataset] = dict(sorted(positives.items()))
    formats.atomic_write(root / "findings.json", (json.dumps(spec.export(cfg.unseen), indent=1) + "\n").encode())
    return counts


def write_ground_truth(spec: FindingsSpec, dataset: str, jobs: list, results: dict, root: Path) -> None:
    lines = []
    for job in jobs:
        result = results[(job.dataset, job.index)]
        case = Case.from_json(job.case)
        lines.append(json.dumps({"image": job.path, "dataset": dataset, "labels": sorted(image_labels(case, spec)),
                                 "case": job.case, "boxes": result["boxes"], "masks": result["masks"]},
                                sort_keys=True))
    formats.atomic_write(root / "ground_truth" / f"{dataset}.jsonl", ("\n".join(lines) + "\n").encode())


def write_mimic(cfg, spec: FindingsSpec, plan: Plan, jobs: list, root: Path) -> None:
    base = root / MIMIC
    study_of = {s.study_id: s for s in plan.studies}
    for study in plan.studies:
        path = base / f"{mimic_study_dir(study.subject_id, study.study_id)}.txt"
        formats.atomic_write(path, plan.reports[study.study_id].text.encode())
    meta, split = [], []
    for job in jobs:
        study = study_of[job.meta["study_id"]]
        ap = study.case.view == "AP"
        procedure = "CHEST (PORTABLE AP)" if ap else "CHEST (PA AND LAT)"
        view_blank = (study.study_id % 97) == 0  # the real file leaves ViewPosition blank for some images
        meta.append({
            "dicom_id": job.meta["dicom_id"], "subject_id": study.subject_id, "study_id": study.study_id,
            "PerformedProcedureStepDescription": procedure, "ViewPosition": "" if view_blank else study.case.view,
            "Rows": cfg.size, "Columns": cfg.size, "StudyDate": study.study_date, "StudyTime": study.study_time,
            "ProcedureCodeSequence_CodeMeaning": procedure,
            "ViewCodeSequence_CodeMeaning": "antero-posterior" if ap else "postero-anterior",
            "PatientOrientationCodeSequence_CodeMeaning": "Recumbent" if ap and study.study_id % 3 else "Erect",
        })
        split.append({"dicom_id": job.meta["dicom_id"], "study_id": study.study_id,
                      "subject_id": study.subject_id, "split": study.split})
    labels = []
    for study in plan.studies:
        row = chexpert_row(plan.reports[study.study_id].mentions(), spec)
        labels.append({"subject_id": study.subject_id, "study_id": study.study_id, **row})
    label_frame = pd.DataFrame(labels, columns=["subject_id", "study_id", *CHEXPERT_COLUMNS])
    rng = np.random.default_rng([cfg.seed, 3])
    unlabelled = rng.random(len(label_frame)) < cfg.chexpert_missing_fraction
    tables = {
        "mimic-cxr-2.0.0-metadata.csv.gz": pd.DataFrame(meta),
        "mimic-cxr-2.0.0-split.csv.gz": pd.DataFrame(split),
        "mimic-cxr-2.0.0-chexpert.csv.gz": label_frame[~unlabelled],
        "mimic-cxr-2.0.0-negbio.csv.gz": label_frame,
    }
    for name, frame in tables.items():
        formats.atomic_write(base / name, formats.gzip_bytes(formats.csv_bytes(frame)))
    names = "".join(f"{job.path[len(MIMIC) + 1:]}\n" for job in jobs)
    formats.atomic_write(base / "IMAGE_FILENAMES", names.encode())


def write_chestxray14(cfg, spec: FindingsSpec, jobs: list, results: dict, root: Path) -> None:
    base = root / "chestxray14"
    spacing = PIXEL_SPACING_1024 * 1024 / cfg.size
    entries = ["Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
               "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],"]
    boxes = ["Image Index,Finding Label,Bbox [x,y,w,h],,,"]
    test, train = [], []
    for job in jobs:
        case = Case.from_json(job.case)
        names = sorted({spec.label(e, "chestxray14") for e in case.entities} - {None})
        assert set(names) <= set(CHESTXRAY14_LABELS)
        name = job.meta["image_index"]
        entries.append(f"{name},{'|'.join(names) or 'No Finding'},{job.meta['follow_up']},{job.meta['patient']},"
                       f"{case.age},{case.sex},{case.view},{cfg.size},{cfg.size},{spacing:.3f},{spacing:.3f},")
        result = results[(job.dataset, job.index)]
        for entity in case.entities:
            label = spec.label(entity, "chestxray14_bbox")
            for x, y, w, h in result["boxes"].get(entity, []) if label else []:
                boxes.append(f"{name},{label},{x},{y},{w},{h}")
        in_test = (job.meta["patient"] * 2654435761 % 1000) / 1000 < cfg.test_fraction
        (test if in_test else train).append(name)
    formats.atomic_write(base / "Data_Entry_2017.csv", ("\n".join(entries) + "\n").encode())
    formats.atomic_write(base / "BBox_List_2017.csv", ("\n".join(boxes) + "\n").encode())
    formats.atomic_write(base / "test_list.txt", "".join(f"{n}\n" for n in test).encode())
    formats.atomic_write(base / "train_val_list.txt", "".join(f"{n}\n" for n in train).encode())


def chexpert_image_row(case: Case, spec: FindingsSpec) -> dict[str, float]:
    """Image-level 0/1 labels in CheXpert columns (radiologist-style: parents follow their children)."""
    present = image_labels(case, spec)
    row = {c: 0.0 for c in CHEXPERT_VALID_COLUMNS[5:]}
    for entity in present:
        column = spec.chexpert_column(entity)
        if column in row:
            row[column] = 1.0
    return row


def write_chexpert(cfg, spec: FindingsSpec, jobs: list, results: dict, root: Path) -> None:
    rows = []
    for job in jobs:
        case = Case.from_json(job.case)
        rows.append({"Path": job.path[len("chexpert/"):], "Sex": "Female" if case.sex == "F" else "Male",
                     "Age": case.age, "Frontal/Lateral": "Frontal", "AP/PA": case.view,
                     **chexpert_image_row(case, spec)})
    frame = pd.DataFrame(rows, columns=list(CHEXPERT_VALID_COLUMNS))
    formats.atomic_write(root / "chexpert" / CHEXPERT_RELEASE / "valid.csv", formats.csv_bytes(frame))


def write_rsna(cfg, spec: FindingsSpec, jobs: list, results: dict, root: Path) -> None:
    labels, classes = ["patientId,x,y,width,height,Target"], ["patientId,class"]
    for job in jobs:
        case = Case.from_json(job.case)
        pid = job.meta["patient_id"]
        result = results[(job.dataset, job.index)]
        found = [b for e in RSNA_TARGETS for b in result["boxes"].get(e, [])]
        for x, y, w, h in found:
            labels.append(f"{pid},{x:.1f},{y:.1f},{w:.1f},{h:.1f},1")
            classes.append(f"{pid},Lung Opacity")
        if not found:
            labels.append(f"{pid},,,,,0")
            normal = not set(case.entities) - {"support_devices"}
            classes.append(f"{pid},{'Normal' if normal else 'No Lung Opacity / Not Normal'}")
    formats.atomic_write(root / "rsna" / "stage_2_train_labels.csv", ("\n".join(labels) + "\n").encode())
    formats.atomic_write(root / "rsna" / "stage_2_detailed_class_info.csv", ("\n".join(classes) + "\n").encode())


def write_siim(cfg, spec: FindingsSpec, jobs: list, results: dict, root: Path) -> None:
    lines = ["ImageId, EncodedPixels"]
    for job in jobs:
        result = results[(job.dataset, job.index)]
        rle = result["masks"].get("pneumothorax")
        lines.append(f"{job.meta['sop']}, {rle if rle else '-1'}")
    formats.atomic_write(root / "siim" / "train-rle.csv", ("\n".join(lines) + "\n").encode())
