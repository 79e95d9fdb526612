"""Phantom generation throughput: images/s (render + encode + write, the stage's real work unit) at 512² and
1024², in one and in two processes. Target: >= 50 images/s per core at 512².

    .venv/bin/python benchmarks/phantom.py [--images 60]

Prints a table and writes benchmarks/results/phantom.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from devide.config import load_config
from devide.data.phantom import PhantomConfig, load_spec
from devide.data.phantom.layouts import plan
from devide.data.phantom.stage import render_chunk

RESULTS = Path(__file__).parent / "results" / "phantom.json"


def jobs_for(n: int, size: int) -> list:
    cfg = load_config(PhantomConfig, overrides={"n_studies": n, "eval_sets": [], "size": size, "seed": 11})
    return plan(cfg, load_spec()).jobs[:n]


def measure(jobs: list, size: int, processes: int) -> float:
    """Images per second for rendering + JPEG encoding + writing ``jobs`` with ``processes`` workers."""
    with tempfile.TemporaryDirectory() as root:
        render_chunk(jobs[:1], root, size)  # warm caches (grids, noise texture) outside the timing
        start = time.perf_counter()
        if processes == 1:
            render_chunk(jobs, root, size)
        else:
            chunks = [jobs[i::processes] for i in range(processes)]
            with ProcessPoolExecutor(processes) as pool:
                list(pool.map(render_chunk, chunks, [root] * processes, [size] * processes))
        return len(jobs) / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=60, help="images per measurement at 512² (1024²: a third)")
    args = parser.parse_args()
    rows = []
    for size, n in ((512, args.images), (1024, max(4, args.images // 3))):
        jobs = jobs_for(n, size)
        for processes in (1, 2):
            rate = measure(jobs, size, processes)
            rows.append({"size": size, "processes": processes, "images": len(jobs), "images_per_s": round(rate, 2),
                         "images_per_s_per_process": round(rate / processes, 2)})
            print(f"{size:>5}²  {processes} process(es)  {rate:7.1f} img/s  ({rate / processes:6.1f} per process)")
    result = {"benchmark": "phantom", "target_images_per_s_per_core_512": 50, "cpu_count": os.cpu_count(),
              "machine": platform.platform(), "python": sys.version.split()[0],
              "load_average": os.getloadavg(), "results": rows}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
