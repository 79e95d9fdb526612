"""Pre-flight checks: can every stage of a plan start? Run by ``devide run`` before the first stage that costs
minutes (and alone with ``devide run PIPELINE --check``), so that a broken install or a missing model fails in
the first minute with one line, not half an hour in, after training.

Each stage is checked for what it will need when its turn comes:

* its code imports (the run function and every module behind the stage), which catches a missing or broken
  dependency;
* its own probe, named by ``Stage.preflight`` (``"module:function"``, called with the stage's config): e.g. a
  save -> load round trip of a tiny DeViDe model and image processor through the very loaders that train,
  evaluate, finetune and push use (``from_pretrained`` and the ``trust_remote_code`` Auto classes), or the
  local LLM server for harmonize. A probe raises :class:`PreflightError` with one line, may return a warning
  string, and returns an estimate of the bytes its artifact will take;
* free disk space on the artifacts' file system against the sum of those estimates.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import logging
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devide.stage import Stage, StageError

logger = logging.getLogger("devide.preflight")
# What a stage without an estimate is assumed to write (configs, manifests, logs, small tables).
DEFAULT_STAGE_BYTES = 50 * 1024 * 1024
# Free space kept on top of the estimates: a file system filled to the last byte breaks more than devide.
DISK_MARGIN_BYTES = 1024 * 1024 * 1024


class PreflightError(StageError):
    """A stage of the plan cannot start; the message is one line naming the stage and the cause."""


@dataclass
class ProbeResult:
    """What a stage's probe returns: the estimated artifact size and an optional warning (one line)."""

    bytes: int = DEFAULT_STAGE_BYTES
    warning: str | None = None


@dataclass
class PreflightReport:
    checked: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    planned_bytes: int = 0
    free_bytes: int = 0


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or "(no message)"
    return f"{type(exc).__name__}: {text}"[:400]


def check_imports(stage: Stage) -> None:
    """Import the stage's run function and the modules whose code decides its result."""
    try:
        stage.run_function()
        for module in stage.code_modules():
            importlib.import_module(module)
    except Exception as exc:  # any import failure is the finding, reported in one line
        raise PreflightError(f"cannot import its code: {_one_line(exc)}") from exc


def run_probe(stage: Stage, cfg: Any) -> ProbeResult:
    if not stage.preflight:
        return ProbeResult()
    module_name, _, attr = stage.preflight.partition(":")
    probe = getattr(importlib.import_module(module_name), attr)
    try:
        result = probe(cfg)
    except PreflightError:
        raise
    except Exception as exc:  # a probe's unexpected failure is still a stage that cannot start
        raise PreflightError(_one_line(exc)) from exc
    return result if isinstance(result, ProbeResult) else ProbeResult()


def free_bytes(path: Path) -> int:
    """Free bytes on the file system that will hold ``path`` (its nearest existing parent)."""
    probe = Path(path).resolve()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return shutil.disk_usage(probe).free


def check_plan(items: Sequence[tuple[str, Stage, Any]], workdir: Path) -> PreflightReport:
    """Check every ``(name, stage, cfg)`` of a plan; raise :class:`PreflightError` naming the first failing stage."""
    report = PreflightReport()
    for name, stage, cfg in items:
        try:
            check_imports(stage)
            result = run_probe(stage, cfg)
        except PreflightError as exc:
            raise PreflightError(f"pre-flight: stage '{name}' ({stage.name}) cannot start: {exc}") from None
        report.checked.append(name)
        report.planned_bytes += result.bytes
        if result.warning:
            report.warnings.append(f"stage '{name}': {result.warning}")
    report.free_bytes = free_bytes(workdir)
    if report.planned_bytes + DISK_MARGIN_BYTES > report.free_bytes:
        raise PreflightError(
            f"pre-flight: not enough disk space under {workdir}: the planned stages need about "
            f"{_gib(report.planned_bytes)} (+{_gib(DISK_MARGIN_BYTES)} margin), {_gib(report.free_bytes)} free")
    return report


def _gib(n: int) -> str:
    return f"{n / 1024 ** 3:.1f} GiB"


# ---------------------------------------------------------------------------------------------- model probes


@functools.cache
def model_round_trip(text_model: str | None) -> None:
    """Save a tiny DeViDe model (with the given text tower) and its image processor, then load both back the
    ways the later stages do: ``DevideModel``/``DevideImageProcessor.from_pretrained`` (train, evaluate,
    finetune) and the ``trust_remote_code`` Auto classes (what ``devide push`` promises Hub users), and compare
    the reloaded model's logits with the original's. Cached: a plan with several model stages pays once."""
    import torch
    from transformers import AutoImageProcessor, AutoModel

    from devide.modeling import DevideConfig, DevideImageProcessor, DevideModel

    config = DevideConfig(
        entities=["atelectasis", "pleural_effusion"], embed_dim=16, fusion_layers=1, fusion_heads=2,
        fusion_ffn_dim=32, text_model_name_or_path=text_model,
        vision_config={"model_type": "vit", "image_size": 32, "patch_size": 16, "num_channels": 1, "hidden_size": 32,
                       "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64})
    with tempfile.TemporaryDirectory(prefix="devide-preflight-") as folder, torch.no_grad(), _quiet_transformers():
        model = DevideModel(config).eval()
        model.set_knowledge({"atelectasis": ["Linear opacity with volume loss."],
                             "pleural_effusion": ["Blunting of the costophrenic angle."]})
        processor = DevideImageProcessor.from_model_config(config)
        image = torch.linspace(0, 1, 40 * 36).reshape(40, 36)
        loaders = ((DevideModel.from_pretrained, DevideImageProcessor.from_pretrained),
                   (functools.partial(AutoModel.from_pretrained, trust_remote_code=True),
                    functools.partial(AutoImageProcessor.from_pretrained, trust_remote_code=True)))
        model.save_pretrained(folder)
        processor.save_pretrained(folder)
        expected = model(processor(image)["pixel_values"]).logits
        for load_model, load_processor in loaders:
            got = load_model(folder).eval()(load_processor(folder)(image)["pixel_values"]).logits
            if got.shape != expected.shape or not torch.allclose(got, expected, atol=1e-5):
                raise PreflightError("a saved DeViDe model reloads with different outputs")


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """No progress bars or info lines from a probe's loads (they would read as if a stage had started)."""
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    level = hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def _model_probe(text_model: str | None) -> None:
    try:
        model_round_trip(text_model)
    except PreflightError:
        raise
    except Exception as exc:  # the library's own error, in one line
        raise PreflightError(f"a saved DeViDe model or image processor cannot be loaded: {_one_line(exc)}") from exc


def check_model_loading(cfg: Any) -> ProbeResult:
    """Probe of the stages that load a saved DeViDe model (evaluate, finetune, push)."""
    _model_probe(None)
    return ProbeResult()


def _tower_parameters(tower: Any) -> int:
    """Approximate parameter count of a transformer tower from its config (12·L·h² + embeddings)."""
    hidden = int(getattr(tower, "hidden_size", 0))
    layers = int(getattr(tower, "num_hidden_layers", 0))
    inner = int(getattr(tower, "intermediate_size", 4 * hidden))
    return layers * (4 * hidden * hidden + 2 * hidden * inner) + int(getattr(tower, "vocab_size", 0)) * hidden


def check_training(cfg: Any) -> ProbeResult:
    """Probe of ``train``: the model config resolves (towers found offline, keys valid), a tiny model with the
    configured text tower round-trips, and the checkpoints' size is estimated (weights + two AdamW moments per
    kept checkpoint, plus the final model)."""
    from devide.checks import validate_model_config
    from devide.config import ConfigError

    try:
        config = validate_model_config(cfg.model)
    except ConfigError as exc:  # one line naming the key (e.g. model.embed_dim)
        raise PreflightError(str(exc)) from exc
    _model_probe(config.text_model_name_or_path)
    parameters = _tower_parameters(config.vision_tower_config()) + _tower_parameters(config.text_tower_config())
    weights = 4 * parameters
    return ProbeResult(bytes=(3 * weights) * (cfg.keep_checkpoints + 1) + weights + DEFAULT_STAGE_BYTES)


def check_phantom(cfg: Any) -> ProbeResult:
    """Probe of ``phantom``: its size, generously (half a byte per pixel; masks and reports included)."""
    images = 2 * cfg.n_studies + cfg.n_eval * len(cfg.eval_sets)
    return ProbeResult(bytes=images * cfg.size * cfg.size // 2 + DEFAULT_STAGE_BYTES)
