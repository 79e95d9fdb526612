"""Stages: a typed config, a run function, and artifact folders that are complete or absent.

A :class:`Stage` is executed by :func:`execute_stage`:

* its output folder ``out`` is built in ``out.partial/`` (kept across interruptions so long stages can
  resume from it) and renamed into place only when the stage returns, so an interrupted stage never leaves
  a half-written artifact that looks complete;
* ``config.resolved.yaml`` (secrets redacted) and ``manifest.json`` (input content hashes, config hash,
  code hash, package versions, timings, counts, status) are written beside the outputs, with ``stage.log``;
* when the inputs, the config and the stage's code are unchanged and the manifest says ``complete``, the
  stage is skipped (editing the code behind a stage, or upgrading devide, reruns it: stale results are never
  reused silently);
* one run at a time per artifact: the up-to-date check, the partial folder and the promotion happen under an
  exclusive lock (:mod:`devide.locking`); a second run fails at once with one line naming the holder's PID.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import shutil
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import import_module, metadata
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from devide.config import ConfigError, StageConfig, config_hash, dump_resolved, redact_argv
from devide.locking import LockHeldError, exclusive
from devide.log import stage_log_file

MANIFEST = "manifest.json"
RESOLVED_CONFIG = "config.resolved.yaml"
STAGE_LOG = "stage.log"
PARTIAL_SUFFIX = ".partial"
# Files bigger than this (and any directory without a manifest) are fingerprinted by path, size and mtime
# rather than content: hashing a 500 GB MIMIC-CXR root on every run would defeat the point of skipping.
CONTENT_HASH_LIMIT = 64 * 1024 * 1024
REPORTED_PACKAGES = (
    "devide", "torch", "transformers", "sentence-transformers", "accelerate", "datasets", "scrapy",
    "openai", "huggingface_hub", "safetensors", "pillow", "numpy", "pydantic",
)

logger = logging.getLogger("devide.stage")


class StageError(RuntimeError):
    """A stage failed for a reason the user can act on; the message is one line."""


@dataclass
class StageContext:
    """What a running stage gets besides its config."""

    work_dir: Path
    """Where to write outputs (``<out>.partial``); renamed to ``out`` when the stage returns."""
    out: Path
    """The final artifact folder (may hold the previous complete run)."""
    logger: logging.Logger
    quiet: bool = False
    counts: dict[str, Any] = field(default_factory=dict)
    """Counts recorded in the manifest (the run function may also return a dict that is merged in)."""


RunFn = Callable[[Any, StageContext], dict[str, Any] | None]


@dataclass(frozen=True)
class Stage:
    """A pipeline stage: name, config class, run function and the config fields that name its inputs."""

    name: str
    config_cls: type[StageConfig]
    run: RunFn | str
    """The run function, or ``"module:function"`` imported only when the stage runs: planning and skipping a
    pipeline then imports configs only (torch, sklearn, matplotlib stay unloaded on an up-to-date rerun)."""
    help: str = ""
    input_fields: tuple[str, ...] = ()
    """Config fields holding input paths (files or folders); their content fingerprints enter the manifest."""
    volatile_fields: tuple[str, ...] = ()
    """Config fields that do not change the result (e.g. worker count): excluded from the config hash."""
    code: tuple[str, ...] = ()
    """Packages or modules (dotted names) whose files decide the result: their content enters the fingerprint.
    Empty: the package of the run function."""
    check: str | None = None
    """``"module:function"`` validating the config beyond its field types (paths that must be artifacts, nested
    model settings, geometry), called before any work, lock or work folder; raises ``ConfigError`` in one line
    (see :mod:`devide.checks`)."""
    preflight: str | None = None
    """``"module:function"`` checking, before a pipeline's first stage runs, that this stage will be able to start
    (called with its config; see :mod:`devide.preflight`). None: only its imports are checked."""

    def run_function(self) -> RunFn:
        if not isinstance(self.run, str):
            return self.run
        module_name, _, attr = self.run.partition(":")
        return getattr(import_module(module_name), attr)

    def run_check(self, cfg: StageConfig) -> None:
        if self.check:
            module_name, _, attr = self.check.partition(":")
            getattr(import_module(module_name), attr)(cfg)

    def code_modules(self) -> tuple[str, ...]:
        if self.code:
            return self.code
        module = self.run.partition(":")[0] if isinstance(self.run, str) else self.run.__module__
        return (module.rpartition(".")[0] or module,)

    def input_paths(self, cfg: StageConfig) -> dict[str, list[Path]]:
        paths: dict[str, list[Path]] = {}
        for name in self.input_fields:
            value = getattr(cfg, name)
            if value is None:
                continue
            items = value if isinstance(value, (list, tuple)) else [value]
            paths[name] = [Path(v) for v in items]
        return paths


@dataclass
class StageResult:
    status: str  # "complete" | "skipped"
    out: Path
    manifest: dict[str, Any]


# ---------------------------------------------------------------------------------------------- hashing


def _file_digest(path: Path) -> str:
    stat = path.stat()
    if stat.st_size > CONTENT_HASH_LIMIT:
        return f"stat:{stat.st_size}:{stat.st_mtime_ns}"
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fingerprint_path(path: Path) -> str:
    """A fingerprint of an input: an artifact's recorded output hash, a file's sha256, or a tree listing."""
    path = Path(path)
    if not path.exists():
        raise StageError(f"input not found: {path}")
    manifest = path / MANIFEST if path.is_dir() else None
    if manifest is not None and manifest.is_file():
        data = json.loads(manifest.read_text())
        if data.get("status") == "complete" and data.get("output_hash"):
            return "artifact:" + data["output_hash"]
    if path.is_file():
        return _file_digest(path)
    digest = hashlib.sha256()
    for child in sorted(p for p in path.rglob("*") if p.is_file()):
        stat = child.stat()
        digest.update(f"{child.relative_to(path)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return "tree:" + digest.hexdigest()


def _code_files(name: str) -> tuple[Path, list[Path]]:
    """(folder, files) of package ``name`` (every file below it but bytecode) or of module ``name``; found
    without importing it (only its parent packages are imported)."""
    try:
        spec = find_spec(name)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.origin or not Path(spec.origin).is_file():
        origin = getattr(sys.modules.get(name), "__file__", None)  # e.g. a script's __main__
        return (Path(origin).parent, [Path(origin)]) if origin else (Path(), [])
    origin = Path(spec.origin)
    if not spec.submodule_search_locations:
        return origin.parent, [origin]
    folder = origin.parent
    return folder, sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix not in (".pyc", ".pyo")
                          and not any(part == "__pycache__" or part.startswith(".")
                                      for part in p.relative_to(folder).parts))


def code_fingerprint(names: tuple[str, ...]) -> str:
    """sha256 over the relative paths and contents of the code behind a stage (a few hundred kB: ms)."""
    digest = hashlib.sha256()
    for name in sorted(set(names)):
        folder, files = _code_files(name)
        for path in files:
            digest.update(f"{name}:{path.relative_to(folder).as_posix()}\0".encode())
            digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def hash_outputs(folder: Path) -> str:
    """Content hash of every file the stage wrote (manifest and log excluded)."""
    digest = hashlib.sha256()
    for child in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = child.relative_to(folder).as_posix()
        if rel in (MANIFEST, STAGE_LOG):
            continue
        digest.update(rel.encode() + b"\0" + _file_digest(child).encode() + b"\n")
    return digest.hexdigest()


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in REPORTED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


# ---------------------------------------------------------------------------------------------- manifest


def read_manifest(folder: Path) -> dict[str, Any] | None:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON through a temp file + rename, so readers never see half a file."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def stage_fingerprint(stage: Stage, cfg: StageConfig) -> dict[str, Any]:
    inputs = {
        name: [{"path": str(p), "hash": fingerprint_path(p)} for p in paths]
        for name, paths in stage.input_paths(cfg).items()
    }
    return {
        "stage": stage.name,
        "config_hash": config_hash(cfg, exclude=("out", *stage.volatile_fields)),
        "inputs": inputs,
        "code_hash": code_fingerprint(stage.code_modules()),
    }


def _same_fingerprint(manifest: dict[str, Any] | None, fingerprint: dict[str, Any]) -> bool:
    if not manifest:
        return False
    return all(manifest.get(key) == value for key, value in fingerprint.items())


# ---------------------------------------------------------------------------------------------- execution


def is_up_to_date(stage: Stage, cfg: StageConfig) -> bool:
    """True when ``cfg.out`` holds a complete artifact made from the same config and inputs."""
    manifest = read_manifest(cfg.out) if cfg.out else None
    if not manifest or manifest.get("status") != "complete":
        return False
    return _same_fingerprint(manifest, stage_fingerprint(stage, cfg))


def _prepare_partial(partial: Path, fingerprint: dict[str, Any]) -> None:
    """Reuse a partial folder left by an interrupted run of the same stage+config+inputs; else start fresh."""
    if partial.exists() and not _same_fingerprint(read_manifest(partial), fingerprint):
        shutil.rmtree(partial)
    partial.mkdir(parents=True, exist_ok=True)


def _promote(partial: Path, out: Path) -> None:
    """Replace ``out`` by ``partial`` with renames only (the old artifact is removed last)."""
    old = out.with_name(f"{out.name}.old-{os.getpid()}")
    if out.exists():
        os.replace(out, old)
    os.replace(partial, out)
    if old.exists():
        shutil.rmtree(old, ignore_errors=True)


def is_main_process() -> bool:
    """False on the non-zero ranks of a distributed launch (``accelerate launch`` / ``torchrun`` set RANK)."""
    return os.environ.get("RANK", "0") == "0"


def _run_as_secondary_rank(stage: Stage, cfg: StageConfig, partial: Path, out: Path, quiet: bool) -> StageResult:
    """Non-zero ranks run the stage function in rank 0's work folder but never create, clear, log into,
    write the manifest of, or promote it: rank 0 alone owns the artifact (the stage synchronises the ranks)."""
    ctx = StageContext(work_dir=partial, out=out, logger=logging.getLogger(f"devide.{stage.name}"), quiet=quiet)
    counts = stage.run_function()(cfg, ctx) or {}
    return StageResult("complete", out, {"status": "complete", "counts": {**ctx.counts, **counts}})


def execute_stage(stage: Stage, cfg: StageConfig, *, force: bool = False, quiet: bool = False) -> StageResult:
    """Run ``stage`` with ``cfg`` into ``cfg.out`` unless an identical complete artifact is already there."""
    if cfg.out is None:
        raise StageError(f"stage '{stage.name}' needs an output folder: set 'out' (or --out)")
    out = Path(cfg.out)
    stage.run_check(cfg)
    if not is_main_process():  # rank 0 holds the lock for the whole launch
        return _execute_locked(stage, cfg, out, force=force, quiet=quiet)
    try:
        with exclusive(out, f"artifact {out}"):
            return _execute_locked(stage, cfg, out, force=force, quiet=quiet)
    except LockHeldError as exc:
        raise StageError(str(exc)) from None


def _execute_locked(stage: Stage, cfg: StageConfig, out: Path, *, force: bool, quiet: bool) -> StageResult:
    """:func:`execute_stage` once the artifact's lock is held (or on a non-zero rank)."""
    fingerprint = stage_fingerprint(stage, cfg)
    previous = read_manifest(out)
    if not force and previous and previous.get("status") == "complete" and _same_fingerprint(previous, fingerprint):
        logger.info("%s: up to date, skipped (%s)", stage.name, out)
        return StageResult("skipped", out, previous)

    partial = out.with_name(out.name + PARTIAL_SUFFIX)
    if not is_main_process():
        return _run_as_secondary_rank(stage, cfg, partial, out, quiet)
    _prepare_partial(partial, fingerprint)
    dump_resolved(cfg, partial / RESOLVED_CONFIG)
    manifest: dict[str, Any] = {
        **fingerprint,
        "status": "running",
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "versions": package_versions(),
        "argv": redact_argv([os.path.basename(sys.argv[0]), *sys.argv[1:]]),
    }
    write_json_atomic(partial / MANIFEST, manifest)
    ctx = StageContext(work_dir=partial, out=out, logger=logging.getLogger(f"devide.{stage.name}"), quiet=quiet)
    started = time.perf_counter()
    with stage_log_file(partial / STAGE_LOG):
        ctx.logger.info("stage %s started -> %s", stage.name, out)
        try:
            counts = stage.run_function()(cfg, ctx) or {}
        except BaseException as exc:
            manifest.update(status="failed", error=f"{type(exc).__name__}: {exc}",
                            seconds=round(time.perf_counter() - started, 3))
            # A user error (bad input) is reported in one line by the CLI; its traceback goes to the log file
            # only. Anything else is a bug and keeps its traceback on the console too.
            user_error = isinstance(exc, (StageError, ConfigError, FileNotFoundError))
            ctx.logger.log(logging.DEBUG if user_error else logging.ERROR, "stage %s failed: %s\n%s",
                           stage.name, exc, traceback.format_exc())
            write_json_atomic(partial / MANIFEST, manifest)
            raise
        ctx.logger.info("stage %s finished in %.1f s", stage.name, time.perf_counter() - started)
    manifest.update(
        status="complete",
        finished=datetime.now(UTC).isoformat(timespec="seconds"),
        seconds=round(time.perf_counter() - started, 3),
        counts={**ctx.counts, **counts},
        output_hash=hash_outputs(partial),
    )
    write_json_atomic(partial / MANIFEST, manifest)
    _promote(partial, out)
    return StageResult("complete", out, manifest)
