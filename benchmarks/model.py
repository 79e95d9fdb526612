"""DevideModel training-step throughput: forward + backward + AdamW, images/s and peak memory.

    .venv/bin/python benchmarks/model.py                      # CPU: tiny (full grid) + ViT-B/16 (few steps)
    .venv/bin/python benchmarks/model.py --device cuda        # GPU: same grid, adds model FLOPs utilisation

Grid: vision tower {tiny, vit-b16} (from-scratch configs, no download) x text tower {frozen with the sentence
cache, unfrozen} x precision {fp32, bf16 autocast}. The text tower is the shipped all-MiniLM-L6-v2; every step
carries all four losses, E entities with S knowledge sentences each, and one report per image. "frozen" is the
steady state: knowledge and the report pool are already cached (a second epoch); "frozen_cold" (tiny, fp32)
draws unseen report texts every step (a first epoch: only the knowledge is cached). The runs of one vision
tower are measured side by side, interleaved step by step (round robin), so load changes on a shared machine
hit every run alike; compare ratios, not absolute figures. Memory: step_memory_mb = peak during a step minus
what was in use before it (CPU: VmHWM - VmRSS; CUDA: max_memory_allocated - memory_allocated);
peak_memory_mb includes every model of the group, which stay resident. FLOPs per step come from
torch.utils.flop_counter (matmuls, convolutions, attention) on the first, untimed step; MFU = achieved FLOP/s /
the device's peak (dense bf16 for bf16 runs, TF32 for fp32 runs on CUDA; --peak-tflops overrides). Writes
benchmarks/results/model.json (model_cuda.json for --device cuda) after each vision tower, with the CPU load
average at that moment.

    .venv/bin/python benchmarks/model.py --text-encoding [--texts 2760] [--text-rounds 3]

Text encoding instead (the frozen tower's cache warm-up): the unique report texts (findings + impression, as
prepare-data builds them) of the phantom's training studies, encoded by the shipped MiniLM three ways,
interleaved round by round in rotating order: ``chunks_256`` (the former way: chunks of 256 in input order,
each padded to its longest), ``sentence_transformers`` (``DevideModel._tokenize_and_encode``: length-sorted
batches of 64 by ``SentenceTransformer.encode``) and ``bucketed`` (the same sorting without the library).
Reports medians over rounds, the speed-ups over ``chunks_256`` and the largest embedding difference, into the
``text_encoding`` entry of the results file (the grid's entries are kept, and vice versa).
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


def _proc_status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def memory_mark(device: torch.device) -> float:
    """Reset the peak counter and return the memory in use now (MB)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device) / 2**20
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
    except OSError:
        pass
    return _proc_status_mb("VmRSS")


def memory_peak(device: torch.device) -> float:
    """Peak memory (MB) since the last ``memory_mark``."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return _proc_status_mb("VmHWM")


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


class Run:
    """One (vision, text, precision) configuration: its model, optimizer, batches and step measurements."""

    def __init__(self, vision: str, text: str, precision: str, model: DevideModel, optimizer, batch_size: int,
                 steps: tuple[int, int], entities: int, device: torch.device) -> None:
        self.vision, self.text, self.precision = vision, text, precision
        self.model, self.optimizer, self.batch_size, self.device = model, optimizer, batch_size, device
        rng = random.Random(hash((text, precision)) % 1000)
        cold = text == "frozen_cold"
        self.warmup, timed = max(1, steps[0]), steps[1]
        self.batches = [make_batch(batch_size, entities, model, rng, model.benchmark_reports, cold, device)
                        for _ in range(self.warmup + timed)]
        self.seconds: list[float] = []
        self.peak_mb, self.step_mb = 0.0, 0.0
        self.flops = 0

    def warm_up(self) -> None:
        """Untimed steps; the first one is FLOP-counted."""
        self.model.train()
        self.flops = step_flops(self.model, self.optimizer, self.batches[0], self.precision, self.device)
        for batch in self.batches[1:self.warmup]:
            train_step(self.model, self.optimizer, batch, self.precision, self.device)

    def timed_step(self, index: int) -> None:
        self.model.train()
        before = memory_mark(self.device)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        start = time.perf_counter()
        train_step(self.model, self.optimizer, self.batches[self.warmup + index], self.precision, self.device)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.seconds.append(time.perf_counter() - start)
        peak = memory_peak(self.device)
        self.peak_mb, self.step_mb = max(self.peak_mb, peak), max(self.step_mb, peak - before)

    def row(self, peak_tflops: float | None) -> dict:
        seconds = sum(self.seconds)
        achieved = self.flops * len(self.seconds) / seconds / 1e12
        return {"vision": self.vision, "text": self.text, "precision": self.precision,
                "batch_size": self.batch_size, "steps": len(self.seconds),
                "images_per_s": len(self.seconds) * self.batch_size / seconds, "step_s": seconds / len(self.seconds),
                "peak_memory_mb": round(self.peak_mb, 1), "step_memory_mb": round(self.step_mb, 1),
                "gflops_per_step": self.flops / 1e9, "achieved_tflops": achieved,
                "mfu": achieved / peak_tflops if peak_tflops else None}


def build_runs(vision: str, text_modes: list[str], batch_size: int, steps: tuple[int, int],
               args: argparse.Namespace, device: torch.device) -> list[Run]:
    """A model per text mode (fp32 and bf16 runs share it and its optimizer), with the cache pre-filled:
    knowledge always (encoded once before training), the report pool except for ``frozen_cold``."""
    runs = []
    for text in text_modes:
        model = make_model(vision, text != "unfrozen", args.entities, args.sentences).to(device)
        model.benchmark_reports = [sentence(random.Random(i), 40) for i in range(256)]
        with torch.no_grad():
            packed = model._training_knowledge()
            model.encode_text(packed.names + packed.sentences)
            if text != "frozen_cold":
                model.encode_text(model.benchmark_reports)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
        precisions = ("fp32",) if text == "frozen_cold" else ("fp32", "bf16")
        runs += [Run(vision, text, precision, model, optimizer, batch_size, steps, args.entities, device)
                 for precision in precisions]
    return runs


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
    """Per vision tower, every (text, precision) run, interleaved step by step (round robin) so that load
    changes on a shared machine hit every run alike; ``save(rows)`` after each tower."""
    rows: list[dict] = []
    plan = [("tiny", args.batch_size, ["frozen", "unfrozen", "frozen_cold"], (args.warmup, args.steps))]
    if not args.skip_vit_b:
        plan.append(("vit-b16", args.vit_b_batch_size, args.vit_b_text, (1, args.vit_b_steps)))
    for vision, batch_size, text_modes, steps in plan:
        runs = build_runs(vision, text_modes, batch_size, steps, args, device)
        for run in runs:
            run.warm_up()
        for index in range(steps[1]):
            for run in runs:
                run.timed_step(index)
        for run in runs:
            row = run.row(device_peak_tflops(device, run.precision, args.peak_tflops))
            print(f"{vision:8s} {run.text:12s} {run.precision:5s} B={batch_size:<3d} "
                  f"{row['images_per_s']:8.2f} img/s  {row['step_s']:7.3f} s/step  "
                  f"{row['step_memory_mb']:7.0f} MB/step  {row['gflops_per_step']:8.1f} GFLOP/step"
                  + (f"  MFU {row['mfu']:.3f}" if row["mfu"] is not None else ""), flush=True)
            rows.append(row)
        save(rows)
        del runs
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


def report_texts(count: int) -> list[str]:
    """Up to ``count`` unique report texts of the phantom's training studies (findings + impression, as
    prepare-data's ``report_text``), in study order."""
    from devide.config import load_config
    from devide.data.phantom import PhantomConfig, load_spec
    from devide.data.phantom.layouts import plan

    cfg = load_config(PhantomConfig, overrides={"n_studies": int(count * 1.15) + 50, "eval_sets": [], "seed": 0})
    planned = plan(cfg, load_spec())
    texts = (" ".join(" ".join(s.text for s in planned.reports[study.study_id].findings
                                + planned.reports[study.study_id].impression).split())
             for study in planned.studies if study.split == "train")
    return list(dict.fromkeys(t for t in texts if t))[:count]


def encode_chunks_256(model: DevideModel, texts: list[str]) -> torch.Tensor:
    """The former encoding: chunks of 256 in input order, each padded to its longest -> [n, d_t]."""
    outputs = []
    for start in range(0, len(texts), 256):
        batch = model.tokenizer(texts[start:start + 256], padding=True, truncation=True,
                                max_length=model.config.text_max_length, return_tensors="pt").to(model.device)
        outputs.append(model.text(batch["input_ids"], batch["attention_mask"]))
    return torch.cat(outputs)


def run_text_encoding(args: argparse.Namespace, device: torch.device) -> dict:
    """Seconds per way of encoding, interleaved round by round (rotating order); medians and ratios."""
    import statistics

    from devide.modeling.text_encoding import encode_bucketed

    texts = report_texts(args.texts)
    model = DevideModel(DevideConfig(entities=list(DEFAULT_ENTITIES)[:2], vision_preset="tiny")).to(device).eval()
    max_length = model.config.text_max_length
    ways = {"chunks_256": lambda: encode_chunks_256(model, texts),
            "sentence_transformers": lambda: model._tokenize_and_encode(texts),
            "bucketed": lambda: encode_bucketed(model.text, model.tokenizer, texts, max_length)}
    names = list(ways)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    cpu_seconds: dict[str, list[float]] = {name: [] for name in names}  # this process's CPU time: the work done,
    # less sensitive than wall time to what else runs on a shared machine
    outputs: dict[str, torch.Tensor] = {}
    lengths = [len(ids) for ids in model.tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]]
    print(f"{len(texts)} texts, mean {statistics.mean(map(len, texts)):.0f} characters, "
          f"mean {statistics.mean(lengths):.1f} tokens (max {max(lengths)})", flush=True)
    with torch.no_grad():
        model._tokenize_and_encode(texts[:8])  # builds the sentence-transformers route outside the timing
        for number in range(args.text_rounds):
            for name in names[number % len(names):] + names[:number % len(names)]:
                start, cpu_start = time.perf_counter(), time.process_time()
                outputs[name] = ways[name]()
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                seconds[name].append(time.perf_counter() - start)
                cpu_seconds[name].append(time.process_time() - cpu_start)
                print(f"round {number + 1}: {name:22s} {seconds[name][-1]:7.1f} s wall {cpu_seconds[name][-1]:7.1f} s CPU "
                      f"(load average {os.getloadavg()[0]:.1f})", flush=True)
    median = {name: statistics.median(seconds[name]) for name in names}
    median_cpu = {name: statistics.median(cpu_seconds[name]) for name in names}
    reference = outputs["chunks_256"]
    return {"texts": len(texts), "mean_characters": round(statistics.mean(map(len, texts)), 1),
            "mean_tokens": round(statistics.mean(lengths), 1), "max_length": max_length, "batch_size": 64,
            "rounds": args.text_rounds, "threads": args.threads, "seconds": seconds, "cpu_seconds": cpu_seconds,
            "median_seconds": {name: round(value, 2) for name, value in median.items()},
            "median_cpu_seconds": {name: round(value, 2) for name, value in median_cpu.items()},
            "texts_per_s": {name: round(len(texts) / value, 1) for name, value in median.items()},
            "speedup_over_chunks_256": {name: round(median["chunks_256"] / median[name], 2) for name in names[1:]},
            "cpu_speedup_over_chunks_256": {name: round(median_cpu["chunks_256"] / median_cpu[name], 2)
                                            for name in names[1:]},
            "max_abs_difference": {name: float((outputs[name] - reference).abs().max()) for name in names[1:]}}


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
    parser.add_argument("--vit-b-text", default=None,
                        help="text modes for ViT-B, comma-separated (default frozen on CPU, frozen,unfrozen on CUDA)")
    parser.add_argument("--entities", type=int, default=21, help="entities per step (default 21)")
    parser.add_argument("--sentences", type=int, default=8, help="knowledge sentences per entity (default 8)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (default 2)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="device peak for MFU (default: by name)")
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default benchmarks/results/model*.json)")
    parser.add_argument("--text-encoding", action="store_true",
                        help="benchmark the text tower's cache warm-up encoding instead of training steps")
    parser.add_argument("--texts", type=int, default=2760, help="report texts for --text-encoding (default 2760)")
    parser.add_argument("--text-rounds", type=int, default=3, help="interleaved rounds for --text-encoding")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device visible")
    cuda = device.type == "cuda"
    args.vit_b_batch_size = args.vit_b_batch_size or (64 if cuda else 4)
    args.vit_b_steps = args.vit_b_steps or (10 if cuda else 2)
    text_modes = args.vit_b_text or ("frozen,unfrozen" if cuda else "frozen")
    args.vit_b_text = [mode.strip() for mode in text_modes.split(",") if mode.strip()]
    if cuda:
        args.batch_size, args.steps = max(args.batch_size, 64), max(args.steps, 10)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    torch.set_num_threads(args.threads)
    out = args.out or RESULTS / ("model_cuda.json" if cuda else "model.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    device_name = torch.cuda.get_device_name(device) if cuda else platform.processor() or platform.machine()

    previous = json.loads(out.read_text()) if out.is_file() else {}

    def save(rows: list[dict]) -> dict:
        report = {"benchmark": "model", "device": device_name, "torch": torch.__version__, "threads": args.threads,
                  "cpu_load_average": list(os.getloadavg()), "entities": args.entities,
                  "sentences_per_entity": args.sentences, "results": rows, "ratios": ratios(rows)}
        if "text_encoding" in previous:
            report["text_encoding"] = previous["text_encoding"]
        out.write_text(json.dumps(report, indent=2) + "\n")
        return report

    if args.text_encoding:
        load_before = list(os.getloadavg())
        entry = {"device": device_name, "torch": torch.__version__, "cpu_load_average_before": load_before,
                 **run_text_encoding(args, device), "cpu_load_average_after": list(os.getloadavg())}
        out.write_text(json.dumps({**previous, "text_encoding": entry}, indent=2) + "\n")
        print(json.dumps({k: entry[k] for k in ("texts_per_s", "speedup_over_chunks_256",
                                                "cpu_speedup_over_chunks_256", "max_abs_difference")},
                         indent=2))
        print(f"wrote {out}")
        return
    report = save(run_grid(args, device, save))
    print(json.dumps(report["ratios"], indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
