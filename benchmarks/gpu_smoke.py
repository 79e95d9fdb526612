"""GPU smoke test of the scale-out path: a few training steps of DeViDe with a ViT-B/16 image tower in bf16 under
DDP and under FSDP2, with throughput and model FLOPs utilisation (MFU), then the sharding-safe save
(``accelerator.get_state_dict``) and a wrapped-model evaluation forward, as the trainer does them.

    python benchmarks/gpu_smoke.py                       # all visible GPUs, DDP then FSDP2, ViT-B/16 224 px bf16
    python benchmarks/gpu_smoke.py --image-size 512 --gradient-checkpointing
    python benchmarks/gpu_smoke.py --cpu                 # 2 CPU processes (gloo), tiny tower, fp32: checks the
                                                         # script itself; FSDP is skipped (Accelerate never
                                                         # selects FSDP for CPU processes)

Not part of CI. Inputs are random pixels and fixed report texts (no data, no download: the ViT-B/16 tower is
built from its config, the text tower is the shipped MiniLM, frozen). MFU = model FLOPs per second (counted
with ``torch.utils.flop_counter`` on one forward+backward) / (peak dense bf16 FLOP/s x processes); the peak
comes from ``--peak-tflops`` or a table of known GPUs. Results: ``benchmarks/results/gpu_smoke.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "gpu_smoke.json"
# dense bf16 tensor-core peak, TFLOP/s (vendor data sheets, SXM parts)
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0}
REPORTS = ["Small left pleural effusion.", "Heart size is enlarged.", "No acute cardiopulmonary process.",
           "Right upper lobe pneumothorax."]


# ---------------------------------------------------------------------------------------------- worker


def build_model(args: argparse.Namespace):
    from devide.modeling import DevideConfig, DevideModel
    from devide.modeling.configuration_devide import VISION_PRESETS

    vision = dict(VISION_PRESETS["tiny" if args.cpu else "vit-b16"], image_size=args.image_size)
    config = DevideConfig(entities=["pleural_effusion", "cardiomegaly", "pneumothorax", "atelectasis"],
                          vision_config=vision, freeze_text=True)
    model = DevideModel(config)
    model.set_knowledge({e: [f"{e.replace('_', ' ')} seen on a chest radiograph"] for e in config.entities})
    return model


def accelerator_for(args: argparse.Namespace):
    from accelerate import Accelerator, DistributedDataParallelKwargs
    from accelerate.utils import FullyShardedDataParallelPlugin

    mixed = "no" if args.cpu else "bf16"
    if args.strategy == "fsdp":
        plugin = FullyShardedDataParallelPlugin(
            fsdp_version=2, auto_wrap_policy="transformer_based_wrap",
            transformer_cls_names_to_wrap=["ViTLayer", "BertLayer"], state_dict_type="SHARDED_STATE_DICT",
            reshard_after_forward=True)
        return Accelerator(mixed_precision=mixed, fsdp_plugin=plugin, cpu=args.cpu)
    return Accelerator(mixed_precision=mixed, cpu=args.cpu,
                       kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=False)])


def batch(args: argparse.Namespace, device, generator):
    import torch

    pixels = torch.randn(args.batch_size, 1, args.image_size, args.image_size, generator=generator).to(device)
    labels = torch.randint(0, 2, (args.batch_size, 4), generator=generator).to(device)
    texts = [REPORTS[i % len(REPORTS)] for i in range(args.batch_size)]
    return pixels, labels, texts


def count_flops(model, args: argparse.Namespace, device) -> float:
    """Model FLOPs of one forward+backward of one micro-batch (after a warm call fills the text cache)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    generator = torch.Generator().manual_seed(0)
    model.to(device).train()
    pixels, labels, texts = batch(args, device, generator)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=not args.cpu):
        model(pixel_values=pixels, labels=labels, report_texts=texts).loss.backward()
        model.zero_grad(set_to_none=True)
        with FlopCounterMode(display=False) as counter:
            model(pixel_values=pixels, labels=labels, report_texts=texts).loss.backward()
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def worker(args: argparse.Namespace) -> None:
    import torch

    from devide.training.trainer import enable_gradient_checkpointing

    torch.manual_seed(0)
    model = build_model(args)
    if args.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    accelerator = accelerator_for(args)
    flops = count_flops(model, args, accelerator.device)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model, optimizer = accelerator.prepare(model, optimizer)
    generator = torch.Generator().manual_seed(1 + accelerator.process_index)
    model.train()
    timings = []
    for step in range(args.warmup + args.steps):
        pixels, labels, texts = batch(args, accelerator.device, generator)
        if accelerator.device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        loss = model(pixel_values=pixels, labels=labels, report_texts=texts).loss
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if accelerator.device.type == "cuda":
            torch.cuda.synchronize()
        if step >= args.warmup:
            timings.append(time.perf_counter() - started)
    seconds = torch.tensor([sum(timings)], device=accelerator.device)
    seconds = float(accelerator.reduce(seconds, reduction="mean"))  # ranks run in lock step; mean is fair

    # what the trainer does at the end: wrapped-model evaluation forward and a gathered save
    model.eval()
    with torch.no_grad():
        probs = model(pixel_values=batch(args, accelerator.device, generator)[0], return_loss=False).logits.sigmoid()
    state = accelerator.get_state_dict(model)  # collective: every process takes part
    unwrapped = accelerator.unwrap_model(model)
    expected = {k: tuple(v.shape) for k, v in build_model(args).state_dict().items()} if accelerator.is_main_process \
        else {}
    if accelerator.is_main_process:
        world = accelerator.num_processes
        images = args.steps * args.batch_size * world
        name = torch.cuda.get_device_name() if accelerator.device.type == "cuda" else "cpu"
        peak = args.peak_tflops or next((v for k, v in PEAK_TFLOPS.items() if k in name), None)
        achieved = flops * args.steps * world / seconds
        result = {
            "strategy": args.strategy, "distributed_type": str(accelerator.distributed_type).rsplit(".", 1)[-1],
            "device": name, "processes": world, "image_size": args.image_size, "batch_per_process": args.batch_size,
            "mixed_precision": str(accelerator.mixed_precision), "gradient_checkpointing": args.gradient_checkpointing,
            "timed_steps": args.steps, "seconds": round(seconds, 4), "images_per_second": round(images / seconds, 2),
            "model_tflops_per_step_per_process": round(flops / 1e12, 4),
            "achieved_tflops": round(achieved / 1e12, 2),
            "mfu": round(achieved / (peak * 1e12 * world), 4) if peak else None, "peak_tflops_assumed": peak,
            "final_loss": round(float(loss), 4), "eval_probs_finite": bool(torch.isfinite(probs).all()),
            "saved_keys_match": sorted(state) == sorted(expected)
            and all(tuple(state[k].shape) == expected[k] for k in expected),
            "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)
            if accelerator.device.type == "cuda" else None,
        }
        Path(args.out).write_text(json.dumps(result) + "\n", encoding="utf-8")
        unwrapped.config.save_pretrained(Path(args.out).parent / f"{args.strategy}-config")
    accelerator.wait_for_everyone()
    accelerator.end_training()


# ---------------------------------------------------------------------------------------------- launcher


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(args: argparse.Namespace, strategy: str, folder: Path) -> dict:
    """Run the worker on every process with torchrun; its JSON result, or the failure's last lines."""
    import torch

    processes = 2 if args.cpu else (args.processes or max(1, torch.cuda.device_count()))
    out = folder / f"{strategy}.json"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
               "--master_port", str(free_port()), __file__, "--worker", "--strategy", strategy, "--out", str(out),
               "--image-size", str(args.image_size), "--batch-size", str(args.batch_size), "--steps",
               str(args.steps), "--warmup", str(args.warmup)]
    command += ["--cpu"] * args.cpu + ["--gradient-checkpointing"] * args.gradient_checkpointing
    if args.peak_tflops:
        command += ["--peak-tflops", str(args.peak_tflops)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           **({"ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"} if args.cpu else {})}
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=args.timeout, check=False)
    if proc.returncode != 0 or not out.is_file():
        return {"strategy": strategy, "failed": True, "returncode": proc.returncode,
                "stderr_tail": proc.stderr[-2000:]}
    return json.loads(out.read_text(encoding="utf-8"))


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu", action="store_true", help="2 gloo CPU processes, tiny tower, fp32 (no GPU)")
    parser.add_argument("--strategies", default="ddp,fsdp", help="comma-separated: ddp, fsdp")
    parser.add_argument("--processes", type=int, default=0, help="processes (default: every visible GPU)")
    parser.add_argument("--image-size", type=int, default=None, help="pixels (default 224; 64 with --cpu)")
    parser.add_argument("--batch-size", type=int, default=None, help="images per process (default 64; 4 with --cpu)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--peak-tflops", type=float, default=None, help="peak dense bf16 TFLOP/s per GPU")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per strategy")
    parser.add_argument("--results", default=str(RESULTS), help="JSON file for the results")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--strategy", default="ddp", help=argparse.SUPPRESS)
    parser.add_argument("--out", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.image_size = args.image_size or (64 if args.cpu else 224)
    args.batch_size = args.batch_size or (4 if args.cpu else 64)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.worker:
        worker(args)
        return 0
    import tempfile

    import torch

    if not args.cpu and not torch.cuda.is_available():
        print("no CUDA GPU visible: run with --cpu to check the script on CPU processes", file=sys.stderr)
        return 2
    results = []
    with tempfile.TemporaryDirectory() as folder:
        for strategy in [s.strip() for s in args.strategies.split(",") if s.strip()]:
            if strategy not in ("ddp", "fsdp"):
                print(f"unknown strategy {strategy!r} (ddp, fsdp)", file=sys.stderr)
                return 2
            if strategy == "fsdp" and args.cpu:
                results.append({"strategy": "fsdp", "skipped": "Accelerate selects FSDP only for GPU processes; "
                                "with ACCELERATE_USE_CPU=1 it would silently run DDP (MULTI_CPU)"})
                continue
            results.append(launch(args, strategy, Path(folder)))
            print(json.dumps(results[-1]), flush=True)
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(json.dumps({"cpu_check": args.cpu, "runs": results}, indent=2) + "\n",
                                  encoding="utf-8")
    return 1 if any(r.get("failed") for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
