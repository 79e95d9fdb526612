"""DevideModel training-step throughput: forward + backward + AdamW, images/s and peak memory.

    .venv/bin/python benchmarks/model.py                      # CPU: tiny (full grid) + ViT-B/16 (few steps)
    .venv/bin/python benchmarks/model.py --device cuda        # GPU: same grid, adds model FLOPs utilisation

Grid, measured side by side in one process: vision tower {tiny, vit-b16} (from-scratch configs, no download)
x text tower {frozen with the sentence cache, unfrozen} x precision {fp32, bf16 autocast}. The text tower is the
shipped all-MiniLM-L6-v2; every step carries all four losses, E entities with S knowledge sentences each, and
one report per image. "frozen" is the steady state: knowledge and the report pool are already in the cache
(a second epoch); "frozen_cold" (tiny, fp32 only) draws unseen report texts every step (a first epoch: only the
knowledge is cached). Peak memory: CPU = the process's peak RSS during the run (VmHWM, reset before each run),
CUDA = torch.cuda.max_memory_allocated. FLOPs per step come from torch.utils.flop_counter (matmuls,
convolutions, attention) on the first, untimed step; MFU = achieved FLOP/s / the device's peak (dense bf16 for
bf16 runs, TF32 for fp32 runs on CUDA; --peak-tflops overrides). Writes benchmarks/results/model.json
(model_cuda.json for --device cuda), rewritten after every run so a cut-short benchmark keeps its rows; the
CPU load average is recorded because shared machines distort absolute figures (compare ratios).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from devide.modeling import DEFAULT_ENTITIES, DevideConfig, DevideModel

RESULTS = Path(__file__).parent / "results"
# Dense peak throughput (TFLOP/s) by device-name fragment: (bf16 tensor core, TF32 tensor core).
PEAK_TFLOPS = {"H200": (989.0, 494.0), "H100": (989.0, 494.0), "A100": (312.0, 156.0), "L4": (121.0, 60.0)}
WORDS = ("opacity", "lower", "zone", "right", "left", "basal", "apical", "diffuse", "patchy", "well",
         "defined", "ill", "margin", "round", "linear", "pleural", "fluid", "air", "lucency", "nodular",
         "reticular", "interstitial", "density", "heart", "border", "contour")


def sentence(rng: random.Random, length: int = 16) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(length)) + "."


def make_model(vision: str, frozen: bool, entities: int, sentences: int) -> DevideModel:
    torch.manual_seed(0)
    ids = list(DEFAULT_ENTITIES)[:entities]
    model = DevideModel(DevideConfig(entities=ids, vision_preset=vision, freeze_text=frozen))
    rng = random.Random(0)
    model.set_knowledge({e: [sentence(rng) for _ in range(sentences)] for e in ids})
    return model


def make_batch(batch_size: int, entities: int, model: DevideModel, rng: random.Random, reports: list[str],
               cold: bool, device: torch.device) -> dict:
    size, channels = model.config.image_size, model.config.num_channels
    pixels = torch.randn(batch_size, channels, size, size, device=device)
    labels = torch.tensor([[rng.choice((1, 0, 0, -1, -100, -100)) for _ in range(entities)]
                           for _ in range(batch_size)], device=device)
    texts = [sentence(rng, 40) if cold else rng.choice(reports) for _ in range(batch_size)]
    return {"pixel_values": pixels, "labels": labels, "report_texts": texts}


def peak_memory_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM (Linux >= 4.0)
    except OSError:
        pass


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def train_step(model, optimizer, batch, precision: str, device: torch.device) -> None:
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        loss = model(**batch).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def step_flops(model, optimizer, batch, precision: str, device: torch.device) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        train_step(model, optimizer, batch, precision, device)
    return counter.get_total_flops()


def measure(model: DevideModel, precision: str, batch_size: int, steps: int, warmup: int, cold: bool,
            device: torch.device, entities: int) -> dict:
    rng = random.Random(1)
    reports = [sentence(rng, 40) for _ in range(256)]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    model.train()
    with torch.no_grad():  # knowledge in the cache (frozen: encoded once, before training); no effect unfrozen
        packed = model._training_knowledge()
        model.encode_text(packed.names + packed.sentences)
        if not cold:  # steady state: every report already seen (a second epoch)
            model.encode_text(reports)
    warmup = max(1, warmup)
    batches = [make_batch(batch_size, entities, model, rng, reports, cold, device) for _ in range(warmup + steps)]
    flops = step_flops(model, optimizer, batches[0], precision, device)  # the first warmup step, counted
    for batch in batches[1:warmup]:
        train_step(model, optimizer, batch, precision, device)
    peak_memory_reset(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for batch in batches[warmup:]:
        train_step(model, optimizer, batch, precision, device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    return {"images_per_s": steps * batch_size / seconds, "step_s": seconds / steps,
                "peak_memory_mb": round(peak_memory_mb(device), 1), "gflops_per_step": flops / 1e9,
                "achieved_tflops": flops * steps / seconds / 1e12}


def device_peak_tflops(device: torch.device, precision: str, override: float | None) -> float | None:
    if override:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for fragment, (bf16, tf32) in PEAK_TFLOPS.items():
        if fragment in name:
            return bf16 if precision == "bf16" else tf32
    return None


def run_grid(args: argparse.Namespace, device: torch.device, save) -> list[dict]:
    """Every (vision, text, precision) run; ``save(rows)`` after each, so a cut-short run keeps its rows."""
    rows = []
    plan = [("tiny", args.batch_size, args.steps, args.warmup)]
    if not args.skip_vit_b:
        plan.append(("vit-b16", args.vit_b_batch_size, args.vit_b_steps, 1))
    for vision, batch_size, steps, warmup in plan:
        for text_mode in ("frozen", "unfrozen", "frozen_cold"):
            if vision != "tiny" and text_mode not in args.vit_b_text:
                continue
            model = make_model(vision, text_mode != "unfrozen", args.entities, args.sentences).to(device)
            for precision in ("fp32", "bf16"):
                if text_mode == "frozen_cold" and precision == "bf16":
                    continue
                result = measure(model, precision, batch_size, steps, warmup, text_mode == "frozen_cold", device,
                                 args.entities)
                peak = device_peak_tflops(device, precision, args.peak_tflops)
                result["mfu"] = result["achieved_tflops"] / peak if peak else None
                row = dict(vision=vision, text=text_mode, precision=precision, batch_size=batch_size, steps=steps,
                           **result)
                print(f"{vision:8s} {text_mode:12s} {precision:5s} B={batch_size:<3d} "
                      f"{row['images_per_s']:8.2f} img/s  {row['step_s']:7.3f} s/step  "
                      f"{row['peak_memory_mb']:8.0f} MB  {row['gflops_per_step']:9.1f} GFLOP/step"
                      + (f"  MFU {row['mfu']:.3f}" if row["mfu"] is not None else ""), flush=True)
                rows.append(row)
                save(rows)
            del model
    return rows


def ratios(rows: list[dict]) -> dict:
    def speed(vision: str, text: str, precision: str) -> float | None:
        found = [r["images_per_s"] for r in rows if (r["vision"], r["text"], r["precision"]) == (vision, text, precision)]
        return found[0] if found else None

    comparisons = [(f"frozen_over_unfrozen_{p}", ("frozen", p), ("unfrozen", p)) for p in ("fp32", "bf16")]
    comparisons += [(f"bf16_over_fp32_{t}", (t, "bf16"), (t, "fp32")) for t in ("frozen", "unfrozen")]
    comparisons.append(("frozen_warm_over_cold_fp32", ("frozen", "fp32"), ("frozen_cold", "fp32")))
    out = {}
    for vision in sorted({r["vision"] for r in rows}):
        entry = {}
        for key, numerator, denominator in comparisons:
            fast, slow = speed(vision, *numerator), speed(vision, *denominator)
            if fast and slow:
                entry[key] = round(fast / slow, 2)
        out[vision] = entry
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--batch-size", type=int, default=16, help="tiny-tower batch size (default 16)")
    parser.add_argument("--steps", type=int, default=4, help="timed steps per tiny run (default 4)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps before timing (default 2)")
    parser.add_argument("--vit-b-batch-size", type=int, default=None, help="ViT-B batch (default 4 CPU, 64 CUDA)")
    parser.add_argument("--vit-b-steps", type=int, default=None, help="ViT-B timed steps (default 2 CPU, 10 CUDA)")
    parser.add_argument("--skip-vit-b", action="store_true", help="only the tiny tower")
    parser.add_argument("--vit-b-text", default="frozen,unfrozen",
                        help="text modes for ViT-B, comma-separated (default frozen,unfrozen)")
    parser.add_argument("--entities", type=int, default=21, help="entities per step (default 21)")
    parser.add_argument("--sentences", type=int, default=8, help="knowledge sentences per entity (default 8)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (default 2)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="device peak for MFU (default: by name)")
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default benchmarks/results/model*.json)")
    args = parser.parse_args()
    args.vit_b_text = [mode.strip() for mode in args.vit_b_text.split(",") if mode.strip()]
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device visible")
    cuda = device.type == "cuda"
    args.vit_b_batch_size = args.vit_b_batch_size or (64 if cuda else 4)
    args.vit_b_steps = args.vit_b_steps or (10 if cuda else 2)
    if cuda:
        args.batch_size, args.steps = max(args.batch_size, 64), max(args.steps, 10)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    torch.set_num_threads(args.threads)
    out = args.out or RESULTS / ("model_cuda.json" if cuda else "model.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    device_name = torch.cuda.get_device_name(device) if cuda else platform.processor() or platform.machine()

    def save(rows: list[dict]) -> dict:
        report = {"benchmark": "model", "device": device_name, "torch": torch.__version__, "threads": args.threads,
                      "cpu_load_average": list(os.getloadavg()), "entities": args.entities,
                      "sentences_per_entity": args.sentences, "results": rows, "ratios": ratios(rows)}
        out.write_text(json.dumps(report, indent=2) + "\n")
        return report

    report = save(run_grid(args, device, save))
    print(json.dumps(report["ratios"], indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
