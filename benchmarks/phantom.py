"""Phantom generation throughput: images/s (render + encode + write, the stage's real work unit) at 512² and
1024², in one and in two processes. Target: >= 50 images/s per core at 512².

    .venv/bin/python benchmarks/phantom.py [--images 60] [--rounds 3] [--baseline 659b177]
                                           [--sizes 512 1024] [--processes 1 2]

Two figures per setting: wall-clock images/s, and images per CPU-second (the CPU time the rendering
processes themselves used, i.e. images/s per fully available core). On a shared machine the first depends on
what else runs; the second much less. ``--baseline REF`` also measures the renderer as committed at the git
ref ``REF`` (exported with ``git archive`` and run in a subprocess on the same jobs, planned once by the current
code), alternating rounds
with the current code, so the speed-up is a ratio measured side by side. ``--sizes`` and ``--processes``
restrict the settings (e.g. ``--sizes 512 --processes 1`` on a machine that others share). Prints a table and
writes benchmarks/results/phantom.json (with the load average before and after).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "phantom.json"
REPO = Path(__file__).resolve().parent.parent
SETTINGS = ((512, 1), (512, 2), (1024, 1), (1024, 2))
CHUNK = 32  # the stage's default work unit: consecutive jobs (a subject's studies) stay together


def jobs_for(n: int, size: int) -> list:
    from devide.config import load_config
    from devide.data.phantom import PhantomConfig, load_spec
    from devide.data.phantom.layouts import plan

    cfg = load_config(PhantomConfig, overrides={"n_studies": n, "eval_sets": [], "size": size, "seed": 11})
    return plan(cfg, load_spec()).jobs[:n]


def count_for(n: int, size: int) -> int:
    return n if size == 512 else max(4, n // 3)


def write_jobs(n: int, sizes: list[int], into: Path) -> Path:
    """The jobs of every size, planned by the current code, as JSON (``<size>.json``): the baseline renders the
    same images, whatever its own planner (or an edited report generator upstream of it) would draw."""
    for size in sizes:
        jobs = jobs_for(count_for(n, size) + 1, size)  # the last one warms the workers
        (into / f"{size}.json").write_text(json.dumps([dataclasses.asdict(job) for job in jobs]))
    return into


def read_jobs(folder: Path, size: int) -> list:
    from devide.data.phantom.stage import Job

    return [Job(**job) for job in json.loads((folder / f"{size}.json").read_text())]


def timed_chunk(jobs: list, root: str, size: int) -> float:
    """Render, encode and write ``jobs`` as the stage does; return the CPU seconds this process spent."""
    from devide.data.phantom.stage import render_chunk

    start = time.process_time()
    render_chunk(jobs, root, size)
    return time.process_time() - start


def measure(jobs: list, warm: list, size: int, processes: int) -> dict[str, float]:
    """Wall-clock images/s and images per CPU-second for ``jobs`` in ``processes`` fresh processes."""
    chunks = [jobs[i:i + CHUNK] for i in range(0, len(jobs), CHUNK)]
    with tempfile.TemporaryDirectory() as root, ProcessPoolExecutor(processes) as pool:
        # warm each worker (imports, grids, noise texture) on a job outside the measured set
        list(pool.map(timed_chunk, [warm] * processes, [root] * processes, [size] * processes))
        start = time.perf_counter()
        cpu = sum(pool.map(timed_chunk, chunks, [root] * len(chunks), [size] * len(chunks)))
        wall = time.perf_counter() - start
    return {"images_per_s": len(jobs) / wall, "images_per_cpu_s": len(jobs) / cpu}


def run_round(n: int, settings: tuple[tuple[int, int], ...], jobs_dir: Path) -> list[dict]:
    rows = []
    for size, processes in settings:
        count = count_for(n, size)
        jobs = read_jobs(jobs_dir, size)
        rows.append({"size": size, "processes": processes, "images": count,
                     **measure(jobs[:count], jobs[count:], size, processes)})
    return rows


def export_baseline(ref: str, into: Path) -> Path:
    """The ``devide`` package as committed at ``ref``, unpacked under ``into``."""
    archive = into / "baseline.tar"
    subprocess.run(["git", "archive", "--format=tar", "-o", str(archive), ref, "devide"], cwd=REPO, check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    return into


def baseline_round(tree: Path, n: int, settings: tuple[tuple[int, int], ...], jobs_dir: Path) -> list[dict]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    sizes = sorted({size for size, _ in settings})
    processes = sorted({count for _, count in settings})
    command = [sys.executable, __file__, "--images", str(n), "--round-only", "--sizes", *map(str, sizes),
               "--processes", *map(str, processes), "--jobs", str(jobs_dir)]
    out = subprocess.run(command, env=env, cwd=tree, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def summarise(rounds: list[list[dict]], settings: tuple[tuple[int, int], ...]) -> list[dict]:
    """Median over rounds per setting."""
    out = []
    for i, (size, processes) in enumerate(settings):
        per = [r[i] for r in rounds]
        wall = statistics.median(r["images_per_s"] for r in per)
        cpu = statistics.median(r["images_per_cpu_s"] for r in per)
        out.append({"size": size, "processes": processes, "images": per[0]["images"], "rounds": len(per),
                    "images_per_s": round(wall, 2), "images_per_s_per_process": round(wall / processes, 2),
                    "images_per_cpu_s": round(cpu, 2)})
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=60, help="images per measurement at 512² (1024²: a third)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per code version (the median is reported)")
    parser.add_argument("--baseline", metavar="REF", help="also measure the renderer at this git ref, side by side")
    parser.add_argument("--sizes", type=int, nargs="+", choices=(512, 1024), default=[512, 1024],
                        help="image sizes to measure")
    parser.add_argument("--processes", type=int, nargs="+", choices=(1, 2), default=[1, 2],
                        help="process counts to measure (1 on a machine that others share)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where to write the JSON results")
    parser.add_argument("--round-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--jobs", type=Path, help=argparse.SUPPRESS)  # a baseline subprocess: the planned jobs
    args = parser.parse_args()
    settings = tuple((size, count) for size, count in SETTINGS if size in args.sizes and count in args.processes)
    if args.round_only:  # a baseline subprocess: one round, JSON on the last line
        print(json.dumps(run_round(args.images, settings, args.jobs)))
        return 0
    load_before = os.getloadavg()
    current, baseline = [], []
    with tempfile.TemporaryDirectory() as tmp:
        jobs_dir = Path(tmp) / "jobs"
        jobs_dir.mkdir()
        write_jobs(args.images, sorted({size for size, _ in settings}), jobs_dir)
        tree = export_baseline(args.baseline, Path(tmp)) if args.baseline else None
        for number in range(args.rounds):
            current.append(run_round(args.images, settings, jobs_dir))
            if tree is not None:
                baseline.append(baseline_round(tree, args.images, settings, jobs_dir))
            print(f"round {number + 1}/{args.rounds} done (load average {os.getloadavg()[0]:.1f})", flush=True)
    rows = summarise(current, settings)
    result = {"benchmark": "phantom", "target_images_per_s_per_core_512": 50, "cpu_count": os.cpu_count(),
              "machine": platform.platform(), "python": sys.version.split()[0],
              "load_average_before": load_before, "load_average_after": os.getloadavg(), "results": rows}
    print(f"{'':>6} {'procs':>5} {'img/s (wall)':>13} {'per process':>12} {'img per CPU-s':>14}")
    base_rows = summarise(baseline, settings) if baseline else []
    for i, row in enumerate(rows):
        line = (f"{row['size']:>5}² {row['processes']:>5} {row['images_per_s']:>13.1f} "
                f"{row['images_per_s_per_process']:>12.1f} {row['images_per_cpu_s']:>14.1f}")
        if base_rows:
            b = base_rows[i]
            row["baseline"] = {k: b[k] for k in ("images_per_s", "images_per_s_per_process", "images_per_cpu_s")}
            row["speedup_wall"] = round(row["images_per_s"] / b["images_per_s"], 2)
            row["speedup_cpu"] = round(row["images_per_cpu_s"] / b["images_per_cpu_s"], 2)
            line += f"   baseline {b['images_per_s']:6.1f} wall, {b['images_per_cpu_s']:6.1f} per CPU-s " \
                    f"(x{row['speedup_wall']:.2f} wall, x{row['speedup_cpu']:.2f} CPU)"
        print(line)
    if args.baseline:
        result["baseline_ref"] = args.baseline
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
