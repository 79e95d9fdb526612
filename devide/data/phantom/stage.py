"""``devide phantom``: the phantom radiograph corpus in the real datasets' on-disk layouts.

Plan (main process, from the seed) -> render + encode in worker processes, chunk by chunk (each finished
chunk is recorded under ``.chunks/`` so an interrupted run resumes) -> tables, reports and ground truth.
Output bytes depend only on the config, never on the number of workers.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, field_validator

from devide.config import ConfigError, StageConfig
from devide.data.phantom import layouts
from devide.data.phantom.spec import load_spec
from devide.log import progress
from devide.stage import Stage, StageContext, write_json_atomic

EVAL_SETS = ("chestxray14", "chexpert", "rsna", "siim")


class PhantomConfig(StageConfig):
    """Config of ``devide phantom``."""

    n_studies: int = Field(3000, ge=1, description="pretraining studies in the MIMIC-CXR-JPG layout")
    n_eval: int = Field(500, ge=0, description="images per evaluation set (ChestX-ray14, CheXpert, RSNA, SIIM)")
    seed: int = Field(0, ge=0, description="random seed: the same seed gives byte-identical output")
    size: int = Field(512, ge=64, le=2048, description="image side in pixels (square images)")
    unseen: list[str] = Field(default_factory=lambda: ["emphysema", "fibrosis", "hernia"],
                              description="findings never named in pretraining reports but present in evaluation sets")
    unseen_in_pretraining: Literal["absent", "unreported"] = Field(
        "absent", description="unseen findings in pretraining images: never drawn, or drawn but never reported")
    eval_sets: list[Literal["chestxray14", "chexpert", "rsna", "siim"]] = Field(
        default_factory=lambda: list(EVAL_SETS), description="evaluation sets to write")
    test_fraction: float = Field(0.7, ge=0.0, le=1.0, description="ChestX-ray14 patients listed in test_list.txt")
    uncertain_rate: float = Field(0.1, ge=0.0, le=1.0, description="share of reported findings phrased as uncertain")
    chexpert_missing_fraction: float = Field(
        0.01, ge=0.0, le=0.5, description="studies left out of mimic-cxr-2.0.0-chexpert.csv.gz (as in the real file)")
    workers: int = Field(0, ge=0, description="worker processes (0 = one per CPU core)")
    chunk: int = Field(32, ge=1, le=4096, description="images per work unit (the resume granularity)")

    @field_validator("unseen")
    @classmethod
    def _known_unseen(cls, value: list[str]) -> list[str]:
        spec = load_spec()
        for entity in value:
            if entity not in spec.rendered:
                raise ValueError(f"'{entity}' is not a phantom finding (known: {', '.join(spec.rendered)})")
            if not any(spec.get(entity)["prevalence"][d] > 0 for d in EVAL_SETS):
                raise ValueError(f"'{entity}' occurs in no evaluation set, so it cannot be an unseen finding")
        return sorted(set(value), key=value.index)


@dataclass(frozen=True)
class Job:
    """One image to render: where it goes, in which format, from which case."""

    dataset: str
    index: int
    path: str  # relative to the artifact root
    fmt: str  # jpeg | png | dicom
    case: dict[str, Any]
    meta: dict[str, Any] = field(default_factory=dict)


def run(cfg: PhantomConfig, ctx: StageContext) -> dict[str, Any]:
    spec = load_spec()
    plan = layouts.plan(cfg, spec)
    chunks = [plan.jobs[i:i + cfg.chunk] for i in range(0, len(plan.jobs), cfg.chunk)]
    done_dir = ctx.work_dir / ".chunks"
    done_dir.mkdir(parents=True, exist_ok=True)
    results: dict[tuple[str, int], dict[str, Any]] = {}
    todo = []
    for number, chunk in enumerate(chunks):
        record = done_dir / f"{cfg.chunk}-{number:06d}.json"
        if record.is_file():  # finished by an interrupted earlier run of the same config
            for item in json.loads(record.read_text()):
                results[(item["dataset"], item["index"])] = item
        else:
            todo.append((number, chunk))
    if len(todo) < len(chunks):
        ctx.logger.info("resuming: %d of %d chunks already rendered", len(chunks) - len(todo), len(chunks))
    workers = cfg.workers or os.cpu_count() or 1

    def rendered():
        for number, items in _render_chunks(todo, ctx.work_dir, cfg.size, workers):
            write_json_atomic(done_dir / f"{cfg.chunk}-{number:06d}.json", items)
            yield from items

    remaining = sum(len(chunk) for _, chunk in todo)
    for item in progress(rendered(), total=remaining, desc="phantom images", unit="img"):
        results[(item["dataset"], item["index"])] = item
    counts = layouts.write_tables(cfg, spec, plan, results, ctx.work_dir)
    for record in done_dir.glob("*.json"):
        record.unlink()
    done_dir.rmdir()
    ctx.logger.info("phantom: %s", counts)
    return counts


def _render_chunks(todo: list[tuple[int, list[Job]]], root: Path, size: int, workers: int):
    """Yield ``(chunk number, results)`` in order, rendering in ``workers`` processes."""
    if workers <= 1 or len(todo) <= 1:
        for number, chunk in todo:
            yield number, render_chunk(chunk, str(root), size)
        return
    import multiprocessing

    context = multiprocessing.get_context("spawn" if os.name != "posix" else "fork")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        futures = [(number, pool.submit(render_chunk, chunk, str(root), size)) for number, chunk in todo]
        for number, future in futures:
            yield number, future.result()


def render_chunk(jobs: list[Job], root: str, size: int) -> list[dict[str, Any]]:
    """Render, encode and write a list of jobs; return their ground truth (boxes, masks)."""
    return [layouts.render_job(job, Path(root), size) for job in jobs]


def _check(cfg: PhantomConfig) -> None:
    if cfg.n_eval == 0 and cfg.eval_sets:
        raise ConfigError("n_eval is 0: set eval_sets to [] or give the evaluation sets a size")


def run_checked(cfg: PhantomConfig, ctx: StageContext) -> dict[str, Any]:
    _check(cfg)
    return run(cfg, ctx)


STAGE = Stage(
    name="phantom",
    config_cls=PhantomConfig,
    run=run_checked,
    help="Generate phantom chest radiographs with findings, MIMIC-style reports and labels, written in the "
         "MIMIC-CXR-JPG, ChestX-ray14, CheXpert, RSNA Pneumonia and SIIM-ACR layouts (see docs/phantom.md).",
    volatile_fields=("workers", "chunk"),
    preflight="devide.preflight:check_phantom",
)
