"""The pre-flight check of ``devide run``: a later stage that cannot start is reported, in one line naming the
stage and the cause, before the first stage runs; a healthy plan passes; disk space is checked."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from devide import preflight as preflight_module
from devide.cli import main as cli_main
from devide.config import StageConfig
from devide.modeling import DevideImageProcessor
from devide.preflight import PreflightError, ProbeResult, check_plan, model_round_trip
from devide.stage import Stage, StageContext
from pipelines.runner import run_pipeline

RAN: list[str] = []


class NoteConfig(StageConfig):
    value: int = 1


class ModelUserConfig(StageConfig):
    source: Path


def note(cfg: NoteConfig, ctx: StageContext) -> dict:
    RAN.append("first")
    (ctx.work_dir / "value.txt").write_text(str(cfg.value))
    return {}


def use_model(cfg: ModelUserConfig, ctx: StageContext) -> dict:
    RAN.append("eval")
    return {}


def huge(cfg: NoteConfig) -> ProbeResult:
    return ProbeResult(bytes=1 << 60)  # an exbibyte: no test machine has that free


REGISTRY = {
    "note": Stage("note", NoteConfig, note),
    # evaluate's real probe: a tiny model and processor saved, then loaded back as evaluate/push load them
    "evaluate-like": Stage("evaluate-like", ModelUserConfig, use_model, input_fields=("source",),
                           preflight="devide.preflight:check_model_loading"),
    "huge": Stage("huge", NoteConfig, note, preflight=f"{__name__}:huge"),
}


@pytest.fixture(autouse=True)
def _fresh_probe_cache():
    RAN.clear()
    model_round_trip.cache_clear()
    yield
    model_round_trip.cache_clear()


def write_pipeline(tmp_path: Path, last: str = "evaluate-like") -> Path:
    stages = {"first": {"uses": "note"}, "eval": {"uses": last, "inputs": {"source": "first"}}}
    if last == "huge":
        stages["eval"] = {"uses": "huge"}
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump({"workdir": str(tmp_path / "artifacts"), "stages": stages}, sort_keys=False))
    return path


def break_processor_loading(monkeypatch) -> None:
    """What transformers 5.25 did to the processor of main at 99886f4: loading a saved one raised."""
    def broken(cls, *args, **kwargs):
        raise AttributeError("type object 'DevideImageProcessor' has no attribute 'valid_kwargs'")
    monkeypatch.setattr(DevideImageProcessor, "from_dict", classmethod(broken))


def test_a_model_that_cannot_load_is_reported_before_the_first_stage_runs(tmp_path, monkeypatch):
    break_processor_loading(monkeypatch)
    with pytest.raises(PreflightError) as raised:
        run_pipeline(write_pipeline(tmp_path), registry=REGISTRY)
    message = str(raised.value)
    assert "stage 'eval'" in message and "valid_kwargs" in message and "\n" not in message
    assert RAN == [] and not (tmp_path / "artifacts" / "first").exists()


def test_the_same_plan_runs_when_models_load(tmp_path):
    run_pipeline(write_pipeline(tmp_path), registry=REGISTRY)
    assert RAN == ["first", "eval"]


def test_only_stages_that_will_run_are_checked(tmp_path, monkeypatch):
    path = write_pipeline(tmp_path)
    run_pipeline(path, registry=REGISTRY)
    break_processor_loading(monkeypatch)
    RAN.clear()
    run_pipeline(path, registry=REGISTRY)  # both up to date: nothing to check, nothing runs
    assert RAN == []
    model_round_trip.cache_clear()  # the probe's result is cached per process
    with pytest.raises(PreflightError, match="stage 'eval'"):
        run_pipeline(path, registry=REGISTRY, force=("eval",))


def test_reloaded_model_must_give_the_same_outputs(monkeypatch):
    """The round trip compares logits: a loader that silently drops weights is caught too."""
    from devide.modeling import DevideModel

    original = DevideModel.from_pretrained.__func__

    def reinitialised(cls, *args, **kwargs):
        model = original(cls, *args, **kwargs)
        for parameter in model.parameters():
            parameter.data.add_(1.0)
        return model
    monkeypatch.setattr(DevideModel, "from_pretrained", classmethod(reinitialised))
    with pytest.raises(PreflightError, match="different outputs"):
        model_round_trip(None)


def test_not_enough_disk_is_refused_before_any_stage(tmp_path):
    with pytest.raises(PreflightError, match="not enough disk space"):
        run_pipeline(write_pipeline(tmp_path, last="huge"), registry=REGISTRY)
    assert RAN == []


def test_import_failure_names_the_stage(tmp_path):
    broken = Stage("broken", NoteConfig, "devide.no_such_module:run")
    with pytest.raises(PreflightError, match=r"stage 'x' \(broken\) cannot start: cannot import its code"):
        check_plan([("x", broken, NoteConfig(out=tmp_path / "x"))], tmp_path)


def test_cli_check_exits_2_with_one_line_naming_the_stage(tmp_path, monkeypatch, capsys):
    """``devide run demo.yaml --check`` with the processor broken: exit 2, one line, before any stage."""
    break_processor_loading(monkeypatch)
    demo = yaml.safe_load(Path("pipelines/demo.yaml").read_text())
    demo["workdir"] = str(tmp_path / "artifacts")
    pipeline = tmp_path / "demo.yaml"
    pipeline.write_text(yaml.safe_dump(demo, sort_keys=False))
    assert cli_main(["run", str(pipeline), "--check"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len([line for line in err if "error:" in line]) == 1
    assert "pre-flight: stage 'train' (train) cannot start" in err[-1] and "valid_kwargs" in err[-1]
    assert not (tmp_path / "artifacts").exists()


def test_harmonize_without_the_local_llm_fails_or_warns(monkeypatch):
    from knowledge import preflight as knowledge_preflight
    from knowledge.config import HarmonizeConfig

    monkeypatch.setattr(knowledge_preflight, "local_backend_problem", lambda: "llama-cpp-python is not installed")
    strict = HarmonizeConfig(out="x", backend="local", fallback_to_rules=False)
    with pytest.raises(PreflightError, match="local LLM backend unavailable"):
        knowledge_preflight.check_harmonize(strict)
    lenient = HarmonizeConfig(out="x", backend="local", fallback_to_rules=True)
    assert "fall back to RULES" in knowledge_preflight.check_harmonize(lenient).warning


def test_training_estimate_grows_with_kept_checkpoints():
    from devide.training.config import TrainConfig

    small = TrainConfig(dataset="d", out="o", model={"vision_preset": "tiny"}, keep_checkpoints=1)
    more = TrainConfig(dataset="d", out="o", model={"vision_preset": "tiny"}, keep_checkpoints=3)
    first, second = preflight_module.check_training(small), preflight_module.check_training(more)
    assert second.bytes > first.bytes > preflight_module.DEFAULT_STAGE_BYTES
