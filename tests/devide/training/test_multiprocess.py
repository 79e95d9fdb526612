"""A real 2-process CPU run (gloo) against one process with the same global batch."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from .tiny_data import build, train_config

pytestmark = pytest.mark.slow
ACCELERATE = str(Path(sys.executable).with_name("accelerate"))
# Per-rank means of L_bce (every label certain: equal counts per rank) and L_itc (negatives gathered with
# gradient) average to the global loss, so the two runs follow the same trajectory up to float summation
# order. L_tnc / L_pta average over each rank's own anchors (counts differ per rank) and dropout draws differ
# per rank, so they are off here.
EQUIVALENT = {"use_tnc": False, "use_pta": False, "fusion_dropout": 0.0}
# max |difference| of any weight after 6 AdamW steps (measured: 2.5e-08, float summation order)
TOLERANCE = 1e-6


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_config(folder: Path, name: str, batch_size: int) -> Path:
    cfg = train_config(folder, folder / name, batch_size=batch_size, max_steps=6, checkpoint_every=100,
                       tensorboard=False)
    cfg["model"] = {**cfg["model"], **EQUIVALENT}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path):
    build(tmp_path, n_train=48)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "DEVIDE_QUIET": "1"}
    single = write_config(tmp_path, "single", batch_size=8)
    subprocess.run([sys.executable, "-m", "devide", "train", "--config", str(single)], check=True, env=env,
                   timeout=600)
    double = write_config(tmp_path, "double", batch_size=4)
    launch = [ACCELERATE, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
              "-m", "devide", "train", "--config", str(double)]
    proc = subprocess.run(launch, env={**env, "ACCELERATE_USE_CPU": "1"}, timeout=600, capture_output=True,
                          check=False, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]

    summary = json.loads((tmp_path / "double" / "train_summary.json").read_text())
    assert summary["world_size"] == 2 and summary["global_batch"] == 8
    assert summary["process_seeds"] == [42, 43]  # identical init, then each rank draws its own dropout masks
    assert summary["itc_candidates"] == 8  # each rank's 4 anchors were contrasted with both ranks' reports
    assert json.loads((tmp_path / "single" / "train_summary.json").read_text())["itc_candidates"] == 8
    manifest = json.loads((tmp_path / "double" / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["counts"]["world_size"] == 2
    assert not (tmp_path / "double.partial").exists()

    one = load_file(tmp_path / "single" / "model" / "model.safetensors")
    two = load_file(tmp_path / "double" / "model" / "model.safetensors")
    worst = max(float((one[k] - two[k]).abs().max()) for k in one)
    print(f"max |w_1proc - w_2proc| = {worst:.3g}")
    assert worst <= TOLERANCE, f"weights differ by up to {worst}"
    # the tolerance is meaningful: training moved the weights far more than that from their seeded init
    initial = initial_weights(yaml.safe_load(single.read_text()))
    moved = max(float((one[k] - initial[k]).abs().max()) for k in one if k in initial)
    assert moved > 100 * TOLERANCE


def initial_weights(cfg: dict) -> dict:
    """The weights the trainer starts from (it seeds before building the model)."""
    from accelerate.utils import set_seed

    from devide.modeling import DevideConfig, DevideModel

    set_seed(cfg.get("seed", 42))
    model = DevideModel(DevideConfig(entities=cfg["entities"], **cfg["model"]))
    return {k: v.detach().clone() for k, v in model.state_dict().items()}



def test_fsdp2_shards_train_gather_and_validate_on_two_cpu_processes(tmp_path):
    """FSDP2 on 2 gloo CPU processes (torchrun): the model shards (every 0-dim parameter would be refused),
    trains a step, its gathered full state dict loads into a plain model, and the wrapped forward that
    validation uses equals predict() of the gathered model.

    Not through `accelerate launch`: Accelerate 1.16 never selects FSDP for CPU processes. With
    ACCELERATE_USE_CPU=1 it silently runs MULTI_CPU (DDP) (AcceleratorState picks FSDP only when the process
    group is a multi-accelerator type), and without it a GPU-less host starts 2 unconnected processes that
    each believe they are rank 0. benchmarks/gpu_smoke.py runs the trainer's FSDP path on a GPU."""
    out = tmp_path / "fsdp.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": str(Path(__file__).parents[3])}
    launch = [str(Path(sys.executable).with_name("torchrun")), "--nproc_per_node", "2", "--master_port",
              str(free_port()), str(Path(__file__).with_name("fsdp_worker.py")), str(out)]
    proc = subprocess.run(launch, env=env, timeout=300, capture_output=True, check=False, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert figures["world_size"] == 2
    assert figures["shard_units"] == 1 + 6  # the tiny ViT's layer + the MiniLM text tower's 6 BertLayers
    assert figures["keys_equal"] and figures["shapes_equal"] and not figures["missing"]
    assert figures["max_weight_change"] > 1e-4  # the gathered weights are the trained ones
    assert figures["max_prob_difference"] <= 1e-6
