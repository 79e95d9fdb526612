"""Atomic, pruned Accelerate checkpoints: ``checkpoints/step-000500/`` is either complete or absent.

Every process writes its part of ``accelerator.save_state`` into ``checkpoints/.tmp-step-000500/``; once all
have finished, the main process writes ``trainer_state.json`` (the completion marker) and renames the folder
into place, then deletes all but the newest ``keep`` checkpoints. A crash at any moment leaves either the
previous checkpoints or the new one, never a half-written folder that ``--resume latest`` would pick.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.json"
_NAME = re.compile(r"^step-(\d+)$")


@dataclass
class TrainingProgress:
    """Where training stands; registered with Accelerate so ``save_state``/``load_state`` carry it.

    step: optimizer steps done. epoch: current epoch. batches_in_epoch: micro-batches of ``epoch`` consumed
    (the data loader position to skip to on resume). images_seen: global images trained on.
    """

    step: int = 0
    epoch: int = 0
    batches_in_epoch: int = 0
    images_seen: int = 0

    def state_dict(self) -> dict[str, int]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            setattr(self, key, int(value))


def checkpoint_name(step: int) -> str:
    return f"step-{step:06d}"


def list_checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints under ``folder/checkpoints`` as (step, path), oldest first."""
    root = Path(folder) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = _NAME.match(child.name)
        if match and (child / STATE_FILE).is_file():
            found.append((int(match.group(1)), child))
    return sorted(found)


def latest_checkpoint(folder: Path) -> Path | None:
    found = list_checkpoints(folder)
    return found[-1][1] if found else None


def temporary_dir(folder: Path, step: int) -> Path:
    """Where every process writes the checkpoint of ``step`` before it is promoted."""
    return Path(folder) / CHECKPOINTS / f".tmp-{checkpoint_name(step)}"


def promote(folder: Path, step: int, state: dict[str, Any], keep: int) -> Path:
    """Main process only, after every process saved into :func:`temporary_dir`: mark complete, rename, prune."""
    tmp = temporary_dir(folder, step)
    (tmp / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")
    final = Path(folder) / CHECKPOINTS / checkpoint_name(step)
    if final.exists():  # the same step saved again after a resume: replace it
        shutil.rmtree(final)
    tmp.rename(final)
    for _, old in list_checkpoints(folder)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def clear_temporary(folder: Path) -> None:
    """Remove checkpoint folders a killed run left half-written."""
    root = Path(folder) / CHECKPOINTS
    if root.is_dir():
        for child in root.glob(".tmp-*"):
            shutil.rmtree(child, ignore_errors=True)


def read_state(checkpoint: Path) -> dict[str, Any]:
    return json.loads((Path(checkpoint) / STATE_FILE).read_text(encoding="utf-8"))
