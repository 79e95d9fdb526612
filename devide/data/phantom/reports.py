"""MIMIC-CXR style reports for phantom studies, and the labels they imply.

Every sentence is built from a template of ``findings.json`` and carries the entities it mentions with a
status (1 present, 0 negated, -1 uncertain), so the CheXpert-style labels written to the csv.gz files are
exactly what the text says: positive wins over uncertain, uncertain over negative; unmentioned stays blank.
The file layout follows the real reports: a centred ``FINAL REPORT`` line, ``NAME:`` sections, lines
wrapped at 79 characters, every line starting with a space.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, field

import numpy as np

from devide.data.phantom.case import Case, Finding
from devide.data.phantom.spec import CHEXPERT_COLUMNS, FindingsSpec

Mentions = dict[str, int]
PARENCHYMAL = {"consolidation", "pneumonia", "infiltration", "edema", "atelectasis", "nodule", "mass", "emphysema",
               "fibrosis", "granuloma", "cavity"}
INDICATIONS = ["shortness of breath", "cough", "fever", "chest pain", "dyspnea", "evaluate for interval change",
               "preoperative evaluation", "hypoxia", "weakness", "follow-up"]
# How often real reports negate each finding (relative weights; pertinent negatives are drawn from the absent
# ones). Drawn at random rather than in a fixed order: with a fixed order "no pneumonia" was only ever written
# when the first few were present, i.e. for sick patients, and the model learned pneumonia = "not normal".
NEGATION_WEIGHTS = {"pneumothorax": 1.0, "pleural_effusion": 1.0, "consolidation": 0.8, "cardiomegaly": 0.6,
                    "edema": 0.5, "pneumonia": 0.5, "enlarged_cardiomediastinum": 0.4, "fracture": 0.2,
                    "nodule": 0.2, "atelectasis": 0.2, "infiltration": 0.15, "mass": 0.15,
                    "pleural_thickening": 0.1}


@dataclass
class Sentence:
    text: str
    mentions: Mentions = field(default_factory=dict)


@dataclass
class Report:
    findings: list[Sentence]
    impression: list[Sentence]
    text: str

    def mentions(self) -> Mentions:
        """entity -> status over the whole report: 1 beats -1 beats 0."""
        rank = {1: 3, -1: 2, 0: 1}
        out: Mentions = {}
        for sentence in [*self.findings, *self.impression]:
            for entity, status in sentence.mentions.items():
                if entity not in out or rank[status] > rank[out[entity]]:
                    out[entity] = status
        return out


def _fill(template: str, f: Finding, spec: FindingsSpec, rng: np.random.Generator) -> str:
    side = f.side or ""
    values = {
        "side": side, "zone": f.zone or "", "severity": f.severity or "", "variant": f.variant or "",
        "s": "s" if side == "bilateral" else "",
        "lobe_name": spec.lobes.get(f.lobe or "", ""),
        "size_cm": f"{f.size:.1f}" if f.size is not None else "", "size_mm": f"{(f.size or 0) * 10:.0f}",
        "tip": f"{rng.uniform(3, 6):.1f}",
    }
    values.update({k[0].upper() + k[1:]: (v[:1].upper() + v[1:]) for k, v in list(values.items()) if k not in ("s",)})
    text = template.format(**values)
    text = " ".join(text.split())
    return text[:1].upper() + text[1:]


def _sentence(text: str, entity: str, status: int, spec: FindingsSpec) -> Sentence:
    mentions = {entity: status}
    for phrase, others in spec.get(entity)["report"].get("mentions_with", {}).items():
        if phrase in text.lower():
            mentions.update({o: status for o in others})
    return Sentence(text, mentions)


def _templates(report: dict, kind: str, f: Finding) -> list[str]:
    return report.get(f"{kind}_{f.variant}") or report.get(kind) or []


def describe(f: Finding, spec: FindingsSpec, rng: np.random.Generator, uncertain: bool) -> tuple[list[Sentence], list[Sentence]]:
    """(findings sentences, impression sentences) for one finding."""
    report = spec.get(f.entity)["report"]
    if f.entity == "support_devices":
        phrases = report["device_phrases"]
        sents = [Sentence(_fill(phrases[d], f, spec, rng), {"support_devices": 1, d: 1}) for d in f.devices]
        return sents, [Sentence(report["impression"][0], {"support_devices": 1})]
    status = -1 if uncertain and report.get("uncertain") else 1
    kind = "uncertain" if status == -1 else "present"
    text = _fill(str(rng.choice(_templates(report, kind, f))), f, spec, rng)
    body = [_sentence(text, f.entity, status, spec)]
    if status == -1:
        return body, [_sentence(text, f.entity, status, spec)]
    impression = _fill(str(rng.choice(_templates(report, "impression", f))), f, spec, rng)
    return body, [_sentence(impression, f.entity, 1, spec)]


def _negations(rng: np.random.Generator, spec: FindingsSpec, absent: list[str]) -> list[Sentence]:
    out: list[Sentence] = []
    candidates = [e for e in NEGATION_WEIGHTS if e in absent]
    if not candidates:
        return out
    weights = np.array([NEGATION_WEIGHTS[e] for e in candidates])
    count = min(len(candidates), int(rng.integers(2, 6)))
    drawn = set(rng.choice(candidates, size=count, replace=False, p=weights / weights.sum()).tolist())
    pool = [e for e in candidates if e in drawn]  # the usual reading order
    if "pneumothorax" in pool and "pleural_effusion" in pool and rng.random() < 0.6:
        out.append(Sentence("No pleural effusion or pneumothorax.", {"pleural_effusion": 0, "pneumothorax": 0}))
        pool = [e for e in pool if e not in ("pneumothorax", "pleural_effusion")]
    for entity in pool:
        negative = spec.get(entity)["report"].get("negative") or []
        if negative:
            out.append(_sentence(str(rng.choice(negative)), entity, 0, spec))
    return out


def write_report(case: Case, spec: FindingsSpec, rng: np.random.Generator, unmentionable: set[str],
                 prior: Case | None = None, uncertain_rate: float = 0.1) -> Report:
    """The report of ``case``; findings in ``unmentionable`` (the unseen ones) are never named."""
    shown = [f for f in case.findings if f.entity not in unmentionable]
    findings: list[Sentence] = []
    impression: list[Sentence] = []
    if prior is not None:
        findings.append(Sentence(str(rng.choice(["Comparison is made to the prior radiograph.",
                                                 "Compared to the previous study, there are interval changes.",
                                                 "The prior study was reviewed."]))))
    devices = [f for f in shown if f.entity == "support_devices"]
    for f in devices + [f for f in shown if f.entity != "support_devices"]:
        body, summary = describe(f, spec, rng, uncertain=rng.random() < uncertain_rate)
        findings += body
        impression += summary
    present = {f.entity for f in case.findings}
    absent = [e for e in spec.rendered if e not in present and e not in unmentionable]
    if not present & PARENCHYMAL and "lung_opacity" not in unmentionable:
        findings.append(Sentence(str(rng.choice(["The lungs are clear.", "Lungs are clear."])), {"lung_opacity": 0}))
    findings += _negations(rng, spec, absent)
    if not [f for f in shown if f.entity != "support_devices"]:
        impression.append(Sentence(str(rng.choice(["No acute cardiopulmonary process.",
                                                   "No acute cardiopulmonary abnormality."])), {"no_finding": 1}))
    order = list(rng.permutation(len(findings))) if rng.random() < 0.3 else list(range(len(findings)))
    findings = [findings[i] for i in order]
    layout = rng.random()
    keep_findings = layout < 0.93  # ~7 % impression only
    keep_impression = layout < 0.8 or not keep_findings  # ~13 % findings only
    if not keep_findings:
        findings = []
    if not keep_impression:
        impression = []
    text = format_report(case, findings, impression, prior is not None, rng)
    return Report(findings, impression, text)


def _wrap(sentences: list[Sentence]) -> list[str]:
    paragraph = " ".join(s.text for s in sentences)
    return [" " + line for line in textwrap.wrap(paragraph, width=78)]


def format_report(case: Case, findings: list[Sentence], impression: list[Sentence], has_prior: bool,
                  rng: np.random.Generator) -> str:
    exam = "CHEST (PORTABLE AP)" if case.view == "AP" else "CHEST (PA AND LAT)"
    who = "woman" if case.sex == "F" else "man"
    lines = [" " * 33 + "FINAL REPORT", f" EXAMINATION:  {exam}", " ",
             f" INDICATION:  ___ year old {who} with {rng.choice(INDICATIONS)}.", " ",
             f" TECHNIQUE:  Chest {'portable AP' if case.view == 'AP' else 'PA and lateral'}", " ",
             f" COMPARISON:  {'___' if has_prior else 'None.'}", " "]
    if findings:
        lines += [" FINDINGS: ", " ", *_wrap(findings), " "]
    if impression:
        lines += [" IMPRESSION: ", " ", *_wrap(impression), " "]
    return "\n".join(lines) + "\n"


def chexpert_row(mentions: Mentions, spec: FindingsSpec) -> dict[str, float | None]:
    """The 14 CheXpert columns for a report's mentions (None = blank, not mentioned)."""
    rank = {1: 3, -1: 2, 0: 1}
    row: dict[str, float | None] = {c: None for c in CHEXPERT_COLUMNS}
    for entity, status in mentions.items():
        column = spec.chexpert_column(entity)
        if column is None or column == "No Finding":
            continue
        current = row[column]
        if current is None or rank[status] > rank[int(current)]:
            row[column] = float(status)
    abnormal = any(v in (1.0, -1.0) for c, v in row.items() if c not in ("Support Devices", "No Finding"))
    abnormal |= any(s in (1, -1) for e, s in mentions.items() if e not in ("support_devices", "no_finding")
                    and spec.chexpert_column(e) is None and e in spec.findings)
    row["No Finding"] = None if abnormal else 1.0
    return row


def image_labels(case: Case, spec: FindingsSpec) -> set[str]:
    """Entities present in the image, with derived parents (lung opacity, lung lesion, pleural other)."""
    present = {f.entity for f in case.findings}
    for entity in list(present):
        present.update(spec.parents(entity))
    if not present - {"support_devices"}:
        present.add("no_finding")
    return present
