"""The shipped pipelines plan: every stage resolves and every config validates (nothing runs)."""

from pathlib import Path

import pytest

from devide.config import ConfigError
from pipelines.runner import load_pipeline, plan

ROOT = Path(__file__).resolve().parents[2]
MIMIC_ENV = {
    "MIMIC_CXR_JPG": "/data/mimic-cxr-jpg", "MIMIC_CXR_REPORTS": "/data/mimic-cxr", "CHESTXRAY14": "/data/nih",
    "CHEXPERT": "/data/chexpert", "RSNA": "/data/rsna", "SIIM": "/data/siim", "VIT_B16": "/models/vit",
    "MED_KEBERT": "/models/med-kebert", "KNOWLEDGE_SOURCE_URL": "https://wiki.example.org/wiki/Main",
    "KNOWLEDGE_SOURCE_DOMAIN": "wiki.example.org", "DEVIDE_CONTACT": "imaging-lab@example.org",
}


def test_demo_pipeline_plans_every_stage():
    names = [item.name for item in plan(load_pipeline(ROOT / "pipelines" / "demo.yaml"))]
    for stage in ("phantom", "crawl", "harmonize", "prepare-data", "train", "push", "report"):
        assert stage in names
    assert sum(name.startswith("eval-") for name in names) == 4


def test_mimic_pipeline_plans_with_its_environment(monkeypatch):
    for key, value in MIMIC_ENV.items():
        monkeypatch.setenv(key, value)
    planned = {item.name: item for item in plan(load_pipeline(ROOT / "pipelines" / "mimic.yaml"))}
    assert planned["train"].launch[:2] == ["accelerate", "launch"]
    assert str(planned["prepare-data"].cfg.root) == "/data/mimic-cxr-jpg"
    assert planned["train"].data["model"]["text_model_name_or_path"] == "${env:MED_KEBERT}"


def test_mimic_pipeline_names_the_missing_variable(monkeypatch):
    for key in MIMIC_ENV:
        monkeypatch.delenv(key, raising=False)
    with pytest.raises(ConfigError, match="KNOWLEDGE_SOURCE_URL|MIMIC_CXR"):
        plan(load_pipeline(ROOT / "pipelines" / "mimic.yaml"))
