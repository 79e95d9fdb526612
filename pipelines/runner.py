"""Run a pipeline YAML: stages in order, each skipped when its inputs and config are unchanged.

Pipeline file format::

    workdir: artifacts/demo          # artifact folders go to WORKDIR/STAGE_NAME (relative to the cwd)
    stages:
      phantom:                       # stage name (unique in the pipeline)
        uses: phantom                # registered stage (a `devide.commands` entry point); defaults to the name
        config: {n_studies: 3000}    # the stage's config (validated by its pydantic class)
      prepare-data:
        inputs: {root: phantom/mimic}   # config key -> an earlier stage's artifact (optionally a subpath)
        config: {...}

Stages only talk through artifacts on disk, so any of them can be run alone with ``devide STAGE``.
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from devide.cli import NotBuiltError, load_command
from devide.config import ConfigError, build_config, format_validation_error, read_yaml
from devide.locking import exclusive
from devide.preflight import PreflightReport, check_plan
from devide.stage import Stage, StageError, StageResult, execute_stage, is_up_to_date, read_manifest

logger = logging.getLogger("devide.pipeline")


class StageSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    uses: str | None = None
    config: dict[str, Any] = Field(default_factory=dict)
    inputs: dict[str, str | list[str]] = Field(default_factory=dict)
    out: str | None = None
    launch: list[str] | None = None
    """Run the stage in a child process through this launcher, e.g. ``[accelerate, launch, --config_file,
    accelerate_config.yaml]`` for multi-GPU training; the child runs ``-m devide STAGE --config FILE``."""


class PipelineSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = None
    description: str | None = None
    workdir: str = "artifacts"
    stages: dict[str, StageSpec]


@dataclass
class PlannedStage:
    name: str
    stage: Stage
    cfg: Any
    data: dict[str, Any] = field(default_factory=dict)
    """The config as written (``${env:...}`` unresolved), handed to a launched child process."""
    launch: list[str] | None = None


@dataclass
class PipelineReport:
    results: dict[str, StageResult] = field(default_factory=dict)
    seconds: float = 0.0


def load_pipeline(path: Path) -> PipelineSpec:
    data = read_yaml(path)
    try:
        return PipelineSpec.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {format_validation_error(exc, PipelineSpec)}") from None


def _resolve_stage(name: str, spec: StageSpec, registry: Mapping[str, Stage] | None) -> Stage:
    uses = spec.uses or name
    if registry is not None:
        if uses not in registry:
            raise ConfigError(f"stage '{name}': unknown stage type '{uses}'")
        return registry[uses]
    try:
        plugin = load_command(uses)
    except NotBuiltError:
        raise ConfigError(f"stage '{name}': stage type '{uses}' is not built yet") from None
    if not isinstance(plugin, Stage):
        raise ConfigError(f"stage '{name}': '{uses}' is a command, not a stage")
    return plugin


def _artifact_path(stage: str, key: str, ref: str, outs: dict[str, Path]) -> str:
    """``"phantom/mimic-cxr-jpg"`` -> the phantom stage's artifact folder / mimic-cxr-jpg."""
    source, _, subpath = ref.partition("/")
    if source not in outs:
        raise ConfigError(f"stage '{stage}': input '{key}' refers to '{source}', which is not an earlier stage")
    return str(outs[source] / subpath) if subpath else str(outs[source])


def plan(spec: PipelineSpec, registry: Mapping[str, Stage] | None = None) -> list[PlannedStage]:
    """Validate every stage's config up front, so a typo in the last stage fails before the first runs."""
    workdir = Path(spec.workdir)
    outs: dict[str, Path] = {}
    planned = []
    for name, stage_spec in spec.stages.items():
        stage = _resolve_stage(name, stage_spec, registry)
        data = dict(stage_spec.config)
        for key, ref in stage_spec.inputs.items():
            refs = [ref] if isinstance(ref, str) else ref
            paths = [_artifact_path(name, key, r, outs) for r in refs]
            data[key] = paths[0] if isinstance(ref, str) else paths
        data["out"] = stage_spec.out or str(workdir / name)
        try:
            cfg = build_config(stage.config_cls, data)
        except ConfigError as exc:
            raise ConfigError(f"stage '{name}': {exc}") from None
        outs[name] = Path(data["out"])
        planned.append(PlannedStage(name, stage, cfg, data, stage_spec.launch))
    return planned


def select(planned: list[PlannedStage], start: str | None, until: str | None) -> list[PlannedStage]:
    names = [p.name for p in planned]
    for bound in (start, until):
        if bound is not None and bound not in names:
            raise ConfigError(f"unknown stage '{bound}' (stages: {', '.join(names)})")
    first = names.index(start) if start else 0
    last = names.index(until) if until else len(names) - 1
    return planned[first : last + 1]


def will_run(item: PlannedStage, force: tuple[str, ...]) -> bool:
    """Whether ``item`` is forced or out of date (an input not built yet counts as out of date)."""
    if "all" in force or item.name in force:
        return True
    try:
        return not is_up_to_date(item.stage, item.cfg)
    except StageError:
        return True


def preflight(spec: PipelineSpec, items: list[PlannedStage], force: tuple[str, ...] = ()) -> PreflightReport:
    """Check that every stage that will run can start (devide.preflight); raises PreflightError in one line."""
    to_run = [(item.name, item.stage, item.cfg) for item in items if will_run(item, force)]
    report = check_plan(to_run, Path(spec.workdir))
    for warning in report.warnings:
        logger.warning("pre-flight: %s", warning)
    return report


def launch_stage(item: PlannedStage, *, force: bool, quiet: bool) -> StageResult:
    """Run one stage in a child process through its launcher (e.g. ``accelerate launch``)."""
    out = Path(item.cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    config_file = out.parent / f".{item.name}.launch.yaml"
    config_file.write_text(yaml.safe_dump(item.data, sort_keys=False), encoding="utf-8")
    command = [*item.launch, "-m", "devide", *(["--quiet"] if quiet else []), item.stage.name,
               "--config", str(config_file), *(["--force"] if force else [])]
    logger.info("[%s] launching: %s", item.name, " ".join(command))
    try:
        completed = subprocess.run(command, check=False)
    finally:
        config_file.unlink(missing_ok=True)
    manifest = read_manifest(out)
    if completed.returncode != 0 or not manifest or manifest.get("status") != "complete":
        raise StageError(f"stage '{item.name}' failed under {item.launch[0]} (exit {completed.returncode}); "
                         f"see {out}.partial/stage.log")
    return StageResult("complete", out, manifest)


def run_pipeline(
    path: Path,
    *,
    force: tuple[str, ...] = (),
    start: str | None = None,
    until: str | None = None,
    quiet: bool = False,
    registry: Mapping[str, Stage] | None = None,
    check: bool = True,
) -> PipelineReport:
    """Run the pipeline at ``path``. ``registry`` replaces the installed stages (tests define their own).
    ``check``: run the pre-flight check of every stage that will run before the first one starts."""
    began = time.perf_counter()
    spec = load_pipeline(Path(path))
    planned = plan(spec, registry)
    unknown = set(force) - {p.name for p in planned} - {"all"}
    if unknown:
        raise ConfigError(f"--force: unknown stage(s) {', '.join(sorted(unknown))}")
    selected = select(planned, start, until)
    report = PipelineReport()
    # One `devide run` per pipeline folder (a second one exits 2 naming the holder); each stage also locks
    # its own artifact against `devide STAGE` on the same folder (devide.locking).
    with exclusive(Path(spec.workdir), f"pipeline folder {spec.workdir}"):
        if check:
            preflight(spec, selected, tuple(force))
        for item in selected:
            rerun = "all" in force or item.name in force
            # execute_stage fingerprints the inputs and decides to skip itself; only a launched stage is
            # checked here, to avoid starting a launcher for nothing.
            if item.launch and (rerun or not is_up_to_date(item.stage, item.cfg)):
                result = launch_stage(item, force=rerun, quiet=quiet)
            elif item.launch:
                result = StageResult("skipped", Path(item.cfg.out), read_manifest(Path(item.cfg.out)) or {})
            else:
                result = execute_stage(item.stage, item.cfg, force=rerun, quiet=quiet)
            logger.info("[%s] %s", item.name, result.status)
            report.results[item.name] = result
    report.seconds = time.perf_counter() - began
    return report


class RunCommand:
    """``devide run PIPELINE.yaml``."""

    name = "run"
    help = "run a pipeline YAML"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("pipeline", type=Path, help="pipeline YAML, e.g. pipelines/demo.yaml")
        parser.add_argument("--force", action="append", default=[], metavar="STAGE",
                            help="rerun STAGE even if up to date (repeatable; 'all' for every stage)")
        parser.add_argument("--from", dest="start", metavar="STAGE", help="start at STAGE")
        parser.add_argument("--until", metavar="STAGE", help="stop after STAGE")
        parser.add_argument("--list", action="store_true", help="list the stages and whether each is up to date")
        parser.add_argument("--check", action="store_true",
                            help="only run the pre-flight check (every stage that would run can start: imports, "
                                 "model/processor loading, local LLM, disk space) and exit (2 when one cannot)")
        parser.add_argument("--no-check", action="store_true",
                            help="skip the pre-flight check that `run` does before its first stage")

    def main(self, args: argparse.Namespace) -> int:
        if args.list:
            for item in plan(load_pipeline(args.pipeline)):
                state = "up to date" if is_up_to_date(item.stage, item.cfg) else "to run"
                print(f"{item.name:16s} {item.stage.name:14s} {state:11s} {item.cfg.out}")
            return 0
        if args.check:
            spec = load_pipeline(args.pipeline)
            checked = preflight(spec, select(plan(spec), args.start, args.until), tuple(args.force))
            print(f"pre-flight: {len(checked.checked)} stage(s) can start ({', '.join(checked.checked) or 'none to run'});"
                  f" about {checked.planned_bytes / 1024 ** 3:.1f} GiB planned, "
                  f"{checked.free_bytes / 1024 ** 3:.1f} GiB free")
            return 0
        report = run_pipeline(args.pipeline, force=tuple(args.force), start=args.start, until=args.until,
                              quiet=args.quiet, check=not args.no_check)
        for name, result in report.results.items():
            print(f"{name:16s} {result.status:9s} {result.out}")
        print(f"pipeline finished in {report.seconds:.1f} s")
        # A stage may leave a human summary (evaluate's zero-shot table, the demo report); end on the last one,
        # also when its stage was skipped as up to date.
        summaries = [Path(r.out) / "summary.txt" for r in report.results.values()]
        last = next((s for s in reversed(summaries) if s.is_file()), None)
        if last is not None:
            print(last.read_text(encoding="utf-8").rstrip())
        return 0


COMMAND = RunCommand()
