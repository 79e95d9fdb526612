"""The findings' aspect specification (``findings.json``): load, validate, and look up.

The JSON is the single source of truth for what each finding looks like (aspects: location, size, shape,
density, border, texture, distribution, associated signs), how often it occurs in each dataset, which
dataset label it carries, and how reports phrase it. The renderers read their parameter ranges from it;
the artifact gets a copy with the run's unseen findings recorded.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from devide.config import ConfigError

SPEC_PATH = Path(__file__).with_name("findings.json")
ASPECTS = ("location", "size", "shape", "density", "border", "texture", "distribution", "associated_signs")
DATASETS = ("mimic", "chestxray14", "chexpert", "rsna", "siim")
# The 14 CheXpert labeler columns, in the physical (alphabetical) order of mimic-cxr-2.0.0-chexpert.csv.
CHEXPERT_COLUMNS = (
    "Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Enlarged Cardiomediastinum", "Fracture", "Lung Lesion",
    "Lung Opacity", "No Finding", "Pleural Effusion", "Pleural Other", "Pneumonia", "Pneumothorax", "Support Devices",
)
CHESTXRAY14_LABELS = (
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia", "Pneumothorax",
    "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia",
)


class FindingsSpec:
    """Validated view of ``findings.json``."""

    def __init__(self, data: dict[str, Any], source: str = "findings.json") -> None:
        self.data = data
        self.source = source
        self.findings: dict[str, dict[str, Any]] = data["findings"]
        self.lobes: dict[str, str] = data["lobes"]
        self.normal_fraction: dict[str, float] = data["normal_fraction"]

    @property
    def rendered(self) -> list[str]:
        return [e for e, f in self.findings.items() if f["kind"] == "rendered"]

    @property
    def derived(self) -> list[str]:
        return [e for e, f in self.findings.items() if f["kind"] == "derived"]

    def get(self, entity: str) -> dict[str, Any]:
        try:
            return self.findings[entity]
        except KeyError:
            raise ConfigError(f"unknown finding '{entity}' (known: {', '.join(self.findings)})") from None

    def chexpert_column(self, entity: str) -> str | None:
        return self.findings.get(entity, {}).get("labels", {}).get("chexpert")

    def label(self, entity: str, dataset: str) -> str | None:
        return self.findings[entity]["labels"].get(dataset)

    def parents(self, entity: str) -> list[str]:
        return [e for e in self.derived if entity in self.findings[e].get("children", [])]

    def export(self, unseen: list[str]) -> dict[str, Any]:
        """The spec as written into an artifact, with the run's unseen findings recorded."""
        return {**self.data, "unseen": list(unseen)}


def validate(data: Any, source: str) -> FindingsSpec:
    from devide.data.phantom.lesions import DEVICES, RENDERERS

    if not isinstance(data, dict) or not isinstance(data.get("findings"), dict):
        raise ConfigError(f"{source}: expected an object with 'findings'")
    for entity, f in data["findings"].items():
        where = f"{source}: finding '{entity}'"
        if f.get("kind") == "derived":
            unknown = set(f.get("children", [])) - set(data["findings"])
            if unknown:
                raise ConfigError(f"{where}: unknown children {sorted(unknown)}")
            continue
        if entity not in RENDERERS:
            raise ConfigError(f"{where}: no renderer for it")
        missing = [a for a in ASPECTS if not f.get("aspects", {}).get(a, {}).get("text")]
        if missing:
            raise ConfigError(f"{where}: aspects without text: {missing}")
        missing_ds = [d for d in DATASETS if d not in f.get("prevalence", {})]
        if missing_ds:
            raise ConfigError(f"{where}: prevalence missing for {missing_ds}")
        for device in f.get("sample", {}).get("devices", {}):
            if device not in DEVICES:
                raise ConfigError(f"{where}: unknown device '{device}'")
        for column in [f["labels"].get("chexpert")]:
            if column is not None and column not in CHEXPERT_COLUMNS:
                raise ConfigError(f"{where}: '{column}' is not a CheXpert column")
    unrendered = set(RENDERERS) - set(data["findings"])
    if unrendered:
        raise ConfigError(f"{source}: renderers without a specification: {sorted(unrendered)}")
    return FindingsSpec(data, source)


@lru_cache(maxsize=4)
def load_spec(path: str | None = None) -> FindingsSpec:
    """Load and validate the packaged ``findings.json`` (or ``path``)."""
    file = Path(path) if path else SPEC_PATH
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read findings specification {file}: {exc}") from None
    return validate(data, str(file))
