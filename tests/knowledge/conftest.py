"""Shared fixtures: the fixture descriptions, a small MIMIC-style report root, a harmonize runner."""

from __future__ import annotations

from pathlib import Path

import pytest

from devide.stage import execute_stage
from knowledge.stage import STAGE, HarmonizeConfig

FIXTURES = Path(__file__).parent / "fixtures"
REPORTS = {
    "p10/p10000001/s50000001.txt": "FINDINGS: Small left pleural effusion. No pneumothorax.\n IMPRESSION: Small left "
                                   "pleural effusion.",
    "p10/p10000002/s50000002.txt": "FINDINGS: Small left pleural effusion. Mild cardiomegaly.\n IMPRESSION: "
                                   "Cardiomegaly.",
    "p11/p11000003/s50000003.txt": "FINDINGS: Large right pneumothorax. Moderate right pleural effusion.\n "
                                   "IMPRESSION: Large right pneumothorax.",
}


@pytest.fixture
def descriptions() -> Path:
    return FIXTURES / "descriptions.jsonl"


@pytest.fixture
def report_root(tmp_path: Path) -> Path:
    root = tmp_path / "mimic-cxr-jpg"
    for rel, text in REPORTS.items():
        path = root / "files" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("                                 FINAL REPORT\n " + text.replace("\n", "\n \n") + "\n")
    return root


def harmonize(out: Path, force: bool = False, **config):
    """Run the stage into ``out`` and return (result, config)."""
    cfg = HarmonizeConfig(out=out, **config)
    return execute_stage(STAGE, cfg, force=force), cfg
