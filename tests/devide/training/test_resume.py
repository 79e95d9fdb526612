"""kill -9 after a checkpoint, rerun, and the final weights are bit-identical to an uninterrupted run (CPU)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from .tiny_data import build, train_config

pytestmark = pytest.mark.slow
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "DEVIDE_QUIET": "1"}


def command(config: Path) -> list[str]:
    return [sys.executable, "-m", "devide", "--quiet", "train", "--config", str(config)]


def write_config(folder: Path, name: str) -> Path:
    # 2 epochs of 8 batches: the checkpoint at step 4 is mid-epoch, so resume must skip into the epoch
    cfg = train_config(folder, folder / name, max_steps=14, checkpoint_every=4, keep_checkpoints=2, workers=1,
                       eval_every=5)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_kill_after_checkpoint_then_resume_is_bit_identical(tmp_path):
    build(tmp_path)
    reference = write_config(tmp_path, "reference")
    subprocess.run(command(reference), check=True, env=ENV, timeout=600)

    interrupted = write_config(tmp_path, "interrupted")
    checkpoint = tmp_path / "interrupted.partial" / "checkpoints" / "step-000004"
    proc = subprocess.Popen(command(interrupted), env=ENV, start_new_session=True)
    deadline = time.monotonic() + 300
    while not checkpoint.is_dir() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # the trainer and its data-loader worker
    proc.wait()
    assert checkpoint.is_dir(), "no checkpoint appeared before the deadline"
    assert not (tmp_path / "interrupted").exists(), "the run finished before it could be killed"
    manifest = json.loads((tmp_path / "interrupted.partial" / "manifest.json").read_text())
    assert manifest["status"] == "running"

    subprocess.run(command(interrupted), check=True, env=ENV, timeout=600)
    summary = json.loads((tmp_path / "interrupted" / "train_summary.json").read_text())
    assert summary["resumed_from_step"] >= 4 and summary["steps"] == 14
    reference_summary = json.loads((tmp_path / "reference" / "train_summary.json").read_text())
    assert reference_summary["resumed_from_step"] == 0

    expected = load_file(tmp_path / "reference" / "model" / "model.safetensors")
    resumed = load_file(tmp_path / "interrupted" / "model" / "model.safetensors")
    assert expected.keys() == resumed.keys()
    different = [k for k in expected if not (expected[k] == resumed[k]).all()]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"
    assert not (tmp_path / "interrupted" / "checkpoints").exists()  # checkpoints are not part of the artifact
