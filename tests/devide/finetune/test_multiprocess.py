"""A real 2-process CPU fine-tune (gloo) against one process with the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml
from safetensors.torch import load_file

from tests.devide.finetune import datasets
from tests.devide.training.test_multiprocess import ACCELERATE, free_port

pytestmark = pytest.mark.slow
TOLERANCE = 1e-5  # float summation order only: same batches, same per-rank-mean BCE (every label certain)


def test_two_processes_match_one_and_gather_test_predictions_in_order(tmp_path):
    datasets.siim(tmp_path / "siim", n=40)
    model = datasets.tiny_model(tmp_path / "model")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "DEVIDE_QUIET": "1"}

    def config(name: str, batch_size: int):
        cfg = {"model": str(model), "dataset": "siim", "root": str(tmp_path / "siim"), "out": str(tmp_path / name),
               "init": ["pretrained"], "max_steps": 4, "batch_size": batch_size, "augment": False, "workers": 0,
               "bootstrap": 10, "tensorboard": False, "eval_batch_size": 3}
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        return path

    subprocess.run([sys.executable, "-m", "devide", "finetune", "--config", str(config("single", 8))], check=True,
                   env=env, timeout=600)
    launch = [ACCELERATE, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
              "-m", "devide", "finetune", "--config", str(config("double", 4))]
    proc = subprocess.run(launch, env={**env, "ACCELERATE_USE_CPU": "1"}, timeout=600, capture_output=True,
                          check=False, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = "runs/pretrained-full"
    one_metrics = json.loads((tmp_path / "single" / run / "metrics.json").read_text())
    two_metrics = json.loads((tmp_path / "double" / run / "metrics.json").read_text())
    assert two_metrics["train"]["world_size"] == 2 and two_metrics["train"]["global_batch"] == 8
    assert one_metrics["train"]["world_size"] == 1
    one = load_file(tmp_path / "single" / run / "model" / "model.safetensors")
    two = load_file(tmp_path / "double" / run / "model" / "model.safetensors")
    worst = max(float((one[k] - two[k]).abs().max()) for k in one)
    assert worst <= TOLERANCE, f"weights differ by up to {worst}"
    # test predictions gathered from both ranks (uneven last batch included) in record order: same AUC, same n
    a, b = (m["classification"]["classes"][0] for m in (one_metrics, two_metrics))
    assert a["n"] == b["n"] == one_metrics["n_test"] and a["auc"] == pytest.approx(b["auc"], abs=1e-4)
    assert json.loads((tmp_path / "double" / "manifest.json").read_text())["status"] == "complete"
