"""Trainer overhead, loader headroom and loader memory, measured side by side in one run.

* ``trainer_vs_bare``: images/s of ``devide train`` (data loading, augmentation, accumulation, clipping,
  scheduler, logging, all included) against a bare forward + backward + AdamW loop of the same model on
  tensors already in memory, same batch and threads (target ratio >= 0.9).
* ``loader_vs_training``: images/s the training DataLoader delivers alone (decode with draft, augmentation,
  processor, same workers) against what training consumes (target >= 3x).
* ``rss``: peak RSS of a child process iterating the loader over a 1x and a 10x dataset (same images, rows
  repeated; target ratio <= 1.1: rows stay in the memory-mapped Arrow files).

    .venv/bin/python benchmarks/train.py            # ~3-5 min on 2 cores; writes benchmarks/results/train.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch
from torch.profiler import ProfilerActivity, profile, record_function

RESULTS = REPO / "benchmarks" / "results" / "train.json"
# The demo's model (tiny ViT, small heads, frozen MiniLM) on 128 px images.
MODEL = {"vision_preset": "tiny", "embed_dim": 128, "fusion_layers": 2, "fusion_ffn_dim": 512}
ENTITIES = ["pleural_effusion", "cardiomegaly", "pneumothorax"]
# STEPS per measured window: the trainer runs 2 * STEPS and reports the second window (past worker start-up);
# ROUNDS interleaved (bare, trainer) pairs, medians: the machine's load drifts.
BATCH, STEPS, WORKERS, THREADS, ROUNDS = 16, 32, 2, 2, 3
RSS_ROWS = 2000


def build_dataset(folder: Path, rows: int, distinct_images: int = 64) -> Path:
    """A prepare-data artifact with ``rows`` rows over ``distinct_images`` phantom radiographs (256 px JPEGs, as
    the demo's corpus: a radiograph decodes faster than random noise, which JPEG barely compresses)."""
    sys.path.insert(0, str(REPO))
    import datasets
    import numpy as np
    import yaml
    from PIL import Image

    from devide.data.phantom import load_spec, render_case
    from devide.data.phantom.cases import sample_case

    rng = np.random.default_rng(0)
    spec = load_spec()
    root = folder / "root"
    for i in range(distinct_images):
        path = root / f"files/p10/p1000{i:04d}/s5000{i:04d}/img.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        case = sample_case(rng, spec, "mimic", set(spec.rendered))
        Image.fromarray(render_case(case, 256).image).save(path, quality=95)
    labels = rng.integers(0, 2, (rows, len(ENTITIES))).tolist()
    texts = [f"Report {i % 500}: " + ("effusion" if lab[0] else "no effusion") for i, lab in enumerate(labels)]
    table = {"image_path": [f"files/p10/p1000{i % distinct_images:04d}/s5000{i % distinct_images:04d}/img.jpg"
                            for i in range(rows)],
             "report_text": texts, "labels": labels}
    prepared = folder / "prepared"
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(table)}).save_to_disk(str(prepared / "dataset"))
    (prepared / "entities.json").write_text(json.dumps(ENTITIES))
    (prepared / "config.resolved.yaml").write_text(yaml.safe_dump({"root": str(root)}))
    (folder / "knowledge.json").write_text(json.dumps({e: {"definition": [f"{e} definition."]} for e in ENTITIES}))
    return prepared


def bare_images_per_second(texts: list[str]) -> float:
    """Forward + backward + AdamW of the same model on in-memory tensors (no data pipeline)."""
    from accelerate.utils import set_seed

    from devide.modeling import DevideConfig, DevideModel

    set_seed(0)
    model = DevideModel(DevideConfig(entities=ENTITIES, **MODEL))
    model.set_knowledge({e: [f"{e} definition."] for e in ENTITIES})
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    pixels = torch.randn(BATCH, 1, model.config.image_size, model.config.image_size)
    labels = torch.randint(0, 2, (BATCH, len(ENTITIES)))
    batch_texts = texts[:BATCH]
    model.encode_text(batch_texts)

    def step() -> None:
        # the same phase names as the trainer's record_function ranges (compared in --profile)
        with record_function("train/forward"):
            out = model(pixel_values=pixels, labels=labels, report_texts=batch_texts)
        with record_function("train/backward"):
            out.loss.backward()
        with record_function("train/clip"):
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        with record_function("train/optimizer"):
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    step()
    started = time.perf_counter()
    for _ in range(STEPS):
        step()
    return STEPS * BATCH / (time.perf_counter() - started)


def trainer_images_per_second(folder: Path, name: str) -> tuple[float, float]:
    """(steady-state images/s of the last logging window, images/s over the whole run incl. start-up)."""
    from devide.config import load_config
    from devide.stage import execute_stage
    from devide.training.config import TrainConfig
    from devide.training.stage import STAGE

    cfg = load_config(TrainConfig, overrides={
        "dataset": str(folder / "prepared"), "knowledge": str(folder / "knowledge.json"),
        "out": str(folder / name), "entities": ENTITIES, "model": MODEL, "batch_size": BATCH,
        "max_steps": 2 * STEPS, "checkpoint_every": 1000, "workers": WORKERS, "eval_split": None,
        "tensorboard": False, "mixed_precision": "no", "log_every": STEPS,
    })
    execute_stage(STAGE, cfg, quiet=True)
    summary = json.loads((folder / name / "train_summary.json").read_text())
    # steady state: the last logging window (steps STEPS+1 .. 2*STEPS), past worker start-up and first batch
    return float(summary["final_train"]["train/images_per_second"]), float(summary["images_per_second"])


def loader_images_per_second(folder: Path, batches: int) -> float:
    """The training DataLoader alone (same dataset class, augmentation, processor and workers)."""
    import datasets

    from devide.data.loading import CxrAugment, CxrDataset, make_dataloader, processor_to_pixels
    from devide.modeling import DevideImageProcessor

    rows = datasets.load_from_disk(str(folder / "prepared" / "dataset"))["train"]
    processor = DevideImageProcessor(size=128, num_channels=1)
    dataset = CxrDataset(rows, folder / "root", processor_to_pixels(processor), ENTITIES, ENTITIES,
                         draft_size=128, augment=CxrAugment(), augment_size=128)
    loader = make_dataloader(dataset, BATCH, shuffle=True, workers=WORKERS)
    iterator = iter(loader)
    next(iterator)  # worker start-up is not throughput
    started = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batches * BATCH / (time.perf_counter() - started)


RSS_CHILD = """
import json, sys, datasets, torch
sys.path.insert(0, {repo!r})
from devide.data.loading import CxrAugment, CxrDataset, make_dataloader, processor_to_pixels
from devide.modeling import DevideImageProcessor
torch.set_num_threads(1)
rows = datasets.load_from_disk({dataset!r})["train"]
dataset = CxrDataset(rows, {root!r}, processor_to_pixels(DevideImageProcessor(size=128, num_channels=1)),
                     {entities!r}, {entities!r}, draft_size=128, augment=CxrAugment(), augment_size=128)
for i, batch in enumerate(make_dataloader(dataset, 16, shuffle=True, workers=0)):
    if i == 40:
        break
# VmHWM is this process's own high-water mark (ru_maxrss would carry the parent's across fork + exec)
hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({{"rows": len(rows), "peak_rss_mib": int(hwm.split()[1]) / 1024}}))
"""


def loader_peak_rss(folder: Path) -> dict:
    code = RSS_CHILD.format(repo=str(REPO), dataset=str(folder / "prepared" / "dataset"), root=str(folder / "root"),
                            entities=ENTITIES)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=600)
    return json.loads(out.stdout.strip().splitlines()[-1])


PHASES = ("train/forward", "train/backward", "train/clip", "train/optimizer", "train/loss_bookkeeping",
          "train/scheduler_progress", "train/log")
DATA_WAIT = "enumerate(DataLoader)"  # torch's own range around DataLoader.__next__: the step's wait for a batch


def phase_table(prof: Any) -> dict:
    """Per-step milliseconds of each phase (median and mean over the calls), the step period (median interval
    between consecutive forward starts) and what the phases leave unaccounted (loop glue, Python, waits)."""
    by_phase: dict[str, list[float]] = {}
    forward_starts = []
    for event in prof.events():
        name = DATA_WAIT if event.name.startswith(DATA_WAIT) else event.name
        if name in PHASES or name == DATA_WAIT:
            by_phase.setdefault(name, []).append(event.cpu_time_total / 1000)
        if event.name == "train/forward":
            forward_starts.append(event.time_range.start / 1000)
    forward_starts.sort()
    period = statistics.median(b - a for a, b in zip(forward_starts, forward_starts[1:]))
    table = {name: {"calls": len(ms), "median_ms": round(statistics.median(ms), 3), "mean_ms": round(statistics.mean(ms), 3)}
             for name, ms in by_phase.items()}
    per_step = sum(v["median_ms"] * v["calls"] / len(forward_starts) for v in table.values())
    return {"phases": table, "step_period_median_ms": round(period, 3),
            "unaccounted_ms": round(period - per_step, 3)}


def profile_phases(folder: Path, texts: list[str]) -> dict:
    """torch.profiler traces of the bare loop and the trainer (CPU activity, ranges by phase)."""
    with profile(activities=[ProfilerActivity.CPU]) as bare:
        bare_images_per_second(texts)
    with profile(activities=[ProfilerActivity.CPU]) as trainer:
        trainer_images_per_second(folder, "profiled")
    return {"bare": phase_table(bare), "trainer": phase_table(trainer)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=ROUNDS, help="interleaved (bare, trainer) rounds (median)")
    parser.add_argument("--profile", action="store_true",
                        help="also trace one bare and one trainer run with torch.profiler (per-phase ms per step)")
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    results: dict = {"machine": {"cpus": torch.get_num_threads(), "platform": platform.platform(),
                                 "torch": torch.__version__}, "model": MODEL, "batch_size": BATCH,
                     "workers": WORKERS}
    with tempfile.TemporaryDirectory() as tmp:
        small, large = Path(tmp) / "x1", Path(tmp) / "x10"
        build_dataset(small, RSS_ROWS)
        build_dataset(large, RSS_ROWS * 10)
        texts = [f"Report {i}: effusion" for i in range(BATCH)]
        bares, trainers = [], []
        for run in range(args.rounds):
            bares.append(bare_images_per_second(texts))
            trainers.append(trainer_images_per_second(small, f"train{run}"))
        bare = statistics.median(bares)
        trainer = statistics.median(t[0] for t in trainers)
        trainer_whole_run = statistics.median(t[1] for t in trainers)
        loader = loader_images_per_second(small, batches=2 * STEPS)
        if args.profile:
            results["profile"] = profile_phases(small, texts)
        rss_small, rss_large = loader_peak_rss(small), loader_peak_rss(large)
    results["trainer_vs_bare"] = {"trainer_images_per_second": round(trainer, 2),
                                  "trainer_images_per_second_whole_run": round(trainer_whole_run, 2),
                                  "bare_images_per_second": round(bare, 2), "ratio": round(trainer / bare, 3),
                                  "runs": {"bare": [round(b, 2) for b in bares],
                                           "trainer": [[round(v, 2) for v in t] for t in trainers]},
                                  "rounds": args.rounds, "load_average": [round(x, 2) for x in os.getloadavg()],
                                  "target": ">= 0.9"}
    results["loader_vs_training"] = {"loader_images_per_second": round(loader, 2),
                                     "training_images_per_second": round(trainer, 2),
                                     "ratio": round(loader / trainer, 2), "target": ">= 3"}
    results["rss"] = {"x1": rss_small, "x10": rss_large,
                      "ratio": round(rss_large["peak_rss_mib"] / rss_small["peak_rss_mib"], 3), "target": "<= 1.1"}
    results["self_peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
