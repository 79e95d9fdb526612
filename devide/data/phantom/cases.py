"""Sampling studies: which findings a study has (prevalence, co-occurrence, chronic findings that persist
across a subject's studies) and each finding's aspects (side, zone, lobe, size, variant)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

import numpy as np

from devide.data.phantom.case import Case, Finding
from devide.data.phantom.spec import FindingsSpec


def _choice(rng: np.random.Generator, weights: dict[str, float]) -> str:
    keys = list(weights)
    p = np.asarray([weights[k] for k in keys], dtype=float)
    return str(keys[int(rng.choice(len(keys), p=p / p.sum()))])


def sample_finding(rng: np.random.Generator, spec: FindingsSpec, entity: str) -> Finding:
    """Draw one finding's aspects from its ``sample`` block in the specification."""
    s = spec.get(entity)["sample"]
    size = float(np.round(rng.uniform(*s["size"]), 2)) if "size" in s else None
    severity = None
    if "severity_by_size" in s and size is not None:
        severity = next(word for limit, word in s["severity_by_size"] if size <= limit)
    elif "severity" in s:
        severity = _choice(rng, s["severity"])
    devices: tuple[str, ...] = ()
    if "devices" in s:
        devices = tuple(d for d, p in s["devices"].items() if rng.random() < p) or (_choice(rng, s["devices"]),)
    return Finding(
        entity=entity,
        side=_choice(rng, s["side"]) if "side" in s else None,
        zone=_choice(rng, s["zone"]) if "zone" in s else None,
        lobe=_choice(rng, s["lobe"]) if "lobe" in s else None,
        size=size,
        severity=severity,
        variant=_choice(rng, s["variant"]) if "variant" in s else None,
        devices=devices,
        seed=int(rng.integers(0, 2**31 - 1)),
    )


def sample_entities(rng: np.random.Generator, spec: FindingsSpec, dataset: str, allowed: set[str]) -> list[str]:
    """Which findings a study has: none (normal) or a few, by prevalence, plus co-occurring ones."""
    normal = spec.normal_fraction[dataset]
    candidates = [e for e in spec.rendered if e in allowed and spec.get(e)["prevalence"][dataset] > 0]
    if not candidates or rng.random() < normal:
        return ["support_devices"] if "support_devices" in allowed and rng.random() < 0.05 else []
    chosen = [e for e in candidates if rng.random() < spec.get(e)["prevalence"][dataset] / (1.0 - normal)]
    if not chosen:
        chosen = [_choice(rng, {e: spec.get(e)["prevalence"][dataset] for e in candidates})]
    for entity in list(chosen):
        for other, p in spec.get(entity)["cooccurs"].items():
            if other in allowed and other not in chosen and rng.random() < p:
                chosen.append(other)
    order = {e: i for i, e in enumerate(spec.rendered)}
    return sorted(chosen, key=order.__getitem__)


def sample_case(rng: np.random.Generator, spec: FindingsSpec, dataset: str, allowed: set[str],
                patient: int | None = None, sex: str | None = None, age: int | None = None,
                keep: tuple[Finding, ...] = ()) -> Case:
    """A study: view, demographics and findings (``keep``: findings carried over from a prior study)."""
    entities = sample_entities(rng, spec, dataset, allowed)
    kept = {f.entity: f for f in keep if f.entity in allowed}
    findings = [kept.get(e) or sample_finding(rng, spec, e) for e in entities]
    findings += [f for e, f in kept.items() if e not in entities]
    order = {e: i for i, e in enumerate(spec.rendered)}
    findings.sort(key=lambda f: order[f.entity])
    ill = any(f.entity in ("support_devices", "edema", "pneumothorax") for f in findings)
    view = "AP" if rng.random() < (0.75 if ill else 0.3) else "PA"
    return Case(
        seed=int(rng.integers(0, 2**31 - 1)),
        view=view,
        sex=sex or ("F" if rng.random() < 0.48 else "M"),
        age=age if age is not None else int(np.clip(rng.normal(62, 16), 18, 95)),
        findings=tuple(findings),
        patient=patient,
    )


@dataclass
class Study:
    """A pretraining study: ids, case, date and the prior study of the same subject (for comparisons)."""

    subject_id: int
    study_id: int
    dicom_ids: list[str]
    case: Case
    split: str
    study_date: int
    study_time: float
    prior: Case | None = None


def dicom_id(rng: np.random.Generator) -> str:
    """MIMIC-CXR style: five groups of eight lowercase hex digits."""
    return "-".join(f"{int(x):08x}" for x in rng.integers(0, 2**32, size=5, dtype=np.uint64))


def sample_mimic_studies(rng: np.random.Generator, spec: FindingsSpec, n_studies: int, allowed: set[str],
                         split_fractions: tuple[float, float] = (0.02, 0.02)) -> list[Study]:
    """``n_studies`` studies grouped into subjects (1-4 studies each); chronic findings persist."""
    studies: list[Study] = []
    used_subjects: set[int] = set()
    used_studies: set[int] = set()
    while len(studies) < n_studies:
        subject = _unique(rng, 10_000_000, 19_999_999, used_subjects)
        n = min(int(rng.geometric(0.55)), 4, n_studies - len(studies))
        sex = "F" if rng.random() < 0.48 else "M"
        age = int(np.clip(rng.normal(60, 16), 18, 90))
        patient = int(rng.integers(0, 2**31 - 1))
        draw = rng.random()
        split = "validate" if draw < split_fractions[0] else "test" if draw < sum(split_fractions) else "train"
        first = date(int(rng.integers(2110, 2190)), int(rng.integers(1, 13)), int(rng.integers(1, 29)))
        prior: Case | None = None
        for i in range(n):
            chronic = tuple(f for f in (prior.findings if prior else ()) if spec.get(f.entity).get("chronic"))
            case = sample_case(rng, spec, "mimic", allowed, patient=patient, sex=sex, age=age + i, keep=chronic)
            n_images = 2 if rng.random() < 0.1 else 1
            ids = [dicom_id(rng) for _ in range(n_images)]
            hh, mm, ss = int(rng.integers(0, 24)), int(rng.integers(0, 60)), float(rng.uniform(0, 59.999))
            study_time = round(hh * 10000 + mm * 100 + ss, 3)
            day = first + timedelta(days=int(45 * i + rng.integers(0, 30)))
            studies.append(Study(subject, _unique(rng, 50_000_000, 59_999_999, used_studies), ids, case, split,
                                 int(day.strftime("%Y%m%d")), study_time, prior))
            prior = case
    return studies


def _unique(rng: np.random.Generator, low: int, high: int, used: set[int]) -> int:
    while True:
        value = int(rng.integers(low, high + 1))
        if value not in used:
            used.add(value)
            return value
