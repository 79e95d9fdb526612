"""Runner semantics with stages defined here (not the product's): skip, rerun, --force, --from/--until,
atomic artifacts under a crash, secrets absent from everything written."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from devide.config import ConfigError, StageConfig
from devide.stage import MANIFEST, RESOLVED_CONFIG, STAGE_LOG, Stage, StageContext, execute_stage, read_manifest
from pipelines.runner import run_pipeline

CALLS: list[str] = []


class MakeConfig(StageConfig):
    value: int = 1
    api_key: str | None = None


class ScaleConfig(StageConfig):
    source: Path
    factor: int = 2
    extra: Path | None = None


def make_value(cfg: MakeConfig, ctx: StageContext) -> dict:
    CALLS.append("make")
    (ctx.work_dir / "value.txt").write_text(str(cfg.value))
    return {"values": 1}


def scale_value(cfg: ScaleConfig, ctx: StageContext) -> dict:
    CALLS.append("scale")
    value = int((cfg.source / "value.txt").read_text())
    if cfg.extra is not None:
        value += int(cfg.extra.read_text())
    (ctx.work_dir / "value.txt").write_text(str(value * cfg.factor))
    return {}


REGISTRY = {
    "make": Stage("make", MakeConfig, make_value),
    "scale": Stage("scale", ScaleConfig, scale_value, input_fields=("source", "extra")),
}


@pytest.fixture(autouse=True)
def _reset_calls():
    CALLS.clear()


def write_pipeline(tmp_path: Path, make_value_: int = 1, factor: int = 2, extra: Path | None = None) -> Path:
    scale_cfg: dict = {"factor": factor}
    if extra is not None:
        scale_cfg["extra"] = str(extra)
    spec = {
        "workdir": str(tmp_path / "artifacts"),
        "stages": {
            "first": {"uses": "make", "config": {"value": make_value_, "api_key": "sk-secret-value"}},
            "second": {"uses": "scale", "inputs": {"source": "first"}, "config": scale_cfg},
            "third": {"uses": "scale", "inputs": {"source": "second"}, "config": {"factor": 10}},
        },
    }
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def value_of(tmp_path: Path, stage: str) -> int:
    return int((tmp_path / "artifacts" / stage / "value.txt").read_text())


def statuses(report) -> dict[str, str]:
    return {name: result.status for name, result in report.results.items()}


def test_runs_in_order_then_skips_everything(tmp_path):
    path = write_pipeline(tmp_path)
    first = run_pipeline(path, registry=REGISTRY)
    assert statuses(first) == {"first": "complete", "second": "complete", "third": "complete"}
    assert CALLS == ["make", "scale", "scale"]
    assert value_of(tmp_path, "third") == 1 * 2 * 10
    second = run_pipeline(path, registry=REGISTRY)
    assert set(statuses(second).values()) == {"skipped"}
    assert CALLS == ["make", "scale", "scale"]
    manifest = read_manifest(tmp_path / "artifacts" / "second")
    assert manifest["status"] == "complete" and manifest["inputs"]["source"][0]["hash"].startswith("artifact:")
    assert {"torch", "pydantic", "python"} <= set(manifest["versions"])


def test_config_change_reruns_the_stage_and_what_depends_on_its_output(tmp_path):
    run_pipeline(write_pipeline(tmp_path), registry=REGISTRY)
    CALLS.clear()
    report = run_pipeline(write_pipeline(tmp_path, factor=3), registry=REGISTRY)
    assert statuses(report) == {"first": "skipped", "second": "complete", "third": "complete"}
    assert value_of(tmp_path, "third") == 30


def test_input_file_change_reruns(tmp_path):
    extra = tmp_path / "extra.txt"
    extra.write_text("4")
    run_pipeline(write_pipeline(tmp_path, extra=extra), registry=REGISTRY)
    assert value_of(tmp_path, "second") == (1 + 4) * 2
    extra.write_text("5")
    report = run_pipeline(write_pipeline(tmp_path, extra=extra), registry=REGISTRY)
    assert statuses(report)["second"] == "complete"
    assert value_of(tmp_path, "second") == (1 + 5) * 2


def test_same_output_does_not_cascade(tmp_path):
    """A forced rerun that writes identical bytes leaves downstream stages up to date."""
    path = write_pipeline(tmp_path)
    run_pipeline(path, registry=REGISTRY)
    CALLS.clear()
    report = run_pipeline(path, force=("first",), registry=REGISTRY)
    assert statuses(report) == {"first": "complete", "second": "skipped", "third": "skipped"}
    assert CALLS == ["make"]


def test_code_change_reruns_the_stage(tmp_path, monkeypatch):
    """Editing the code a stage declares reruns it; its unchanged output leaves the rest up to date."""
    package = tmp_path / "code" / "stagecode_pkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "helper.py").write_text("SCALE = 1\n")
    (package / "__pycache__").mkdir()
    (package / "__pycache__" / "helper.cpython.pyc").write_bytes(b"bytecode")
    monkeypatch.syspath_prepend(str(tmp_path / "code"))
    registry = {**REGISTRY, "make": Stage("make", MakeConfig, make_value, code=("stagecode_pkg",))}
    path = write_pipeline(tmp_path)
    run_pipeline(path, registry=registry)
    (package / "__pycache__" / "helper.cpython.pyc").write_bytes(b"other bytecode")  # not code: no rerun
    assert set(statuses(run_pipeline(path, registry=registry)).values()) == {"skipped"}
    (package / "helper.py").write_text("SCALE = 1  # edited\n")
    CALLS.clear()
    report = run_pipeline(path, registry=registry)
    assert statuses(report) == {"first": "complete", "second": "skipped", "third": "skipped"}
    assert CALLS == ["make"]


def test_code_fingerprint_covers_a_package_or_a_single_module():
    from devide.stage import code_fingerprint

    assert code_fingerprint(("devide.data.phantom",)) != code_fingerprint(("devide.data.phantom.render",))
    assert code_fingerprint(("devide.hub",)) == code_fingerprint(("devide.hub", "devide.hub"))
    default = Stage("make", MakeConfig, make_value)
    assert default.code_modules() == ("tests.pipelines",)


def test_force_from_until(tmp_path):
    path = write_pipeline(tmp_path)
    report = run_pipeline(path, until="second", registry=REGISTRY)
    assert list(report.results) == ["first", "second"]
    assert not (tmp_path / "artifacts" / "third").exists()
    report = run_pipeline(path, start="third", registry=REGISTRY)
    assert statuses(report) == {"third": "complete"}
    CALLS.clear()
    report = run_pipeline(path, force=("all",), registry=REGISTRY)
    assert CALLS == ["make", "scale", "scale"]
    with pytest.raises(ConfigError, match="unknown stage"):
        run_pipeline(path, start="fourth", registry=REGISTRY)
    with pytest.raises(ConfigError, match="--force"):
        run_pipeline(path, force=("fifth",), registry=REGISTRY)


def test_bad_stage_config_fails_before_anything_runs(tmp_path):
    spec = {"workdir": str(tmp_path / "a"), "stages": {
        "first": {"uses": "make", "config": {"value": 1}},
        "second": {"uses": "scale", "inputs": {"source": "first"}, "config": {"factr": 3}},
    }}
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(ConfigError, match=r"stage 'second'.*factr"):
        run_pipeline(path, registry=REGISTRY)
    assert CALLS == []
    spec["stages"]["second"] = {"uses": "scale", "inputs": {"source": "later"}}
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(ConfigError, match="not an earlier stage"):
        run_pipeline(path, registry=REGISTRY)


def test_exception_mid_stage_keeps_previous_artifact(tmp_path):
    def explode(cfg, ctx):
        (ctx.work_dir / "value.txt").write_text("half")
        raise RuntimeError("disk on fire")

    out = tmp_path / "art"
    cfg = MakeConfig(value=3, out=out)
    execute_stage(REGISTRY["make"], cfg)
    assert (out / "value.txt").read_text() == "3"
    with pytest.raises(RuntimeError):
        execute_stage(Stage("make", MakeConfig, explode), MakeConfig(value=4, out=out))
    assert (out / "value.txt").read_text() == "3"  # the old complete artifact is untouched
    partial = tmp_path / "art.partial"
    assert read_manifest(partial)["status"] == "failed"
    assert "disk on fire" in (partial / STAGE_LOG).read_text()
    result = execute_stage(REGISTRY["make"], MakeConfig(value=4, out=out))
    assert result.status == "complete" and (out / "value.txt").read_text() == "4"
    assert not partial.exists()


KILLED_STAGE = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from devide.config import StageConfig
    from devide.stage import Stage, execute_stage

    class Cfg(StageConfig):
        n: int = 3

    def slow(cfg, ctx):
        for i in range(cfg.n):
            (ctx.work_dir / f"part{i}.txt").write_text(str(i))
            if i == 1:
                Path(sys.argv[2]).write_text("ready")
                time.sleep(60)
        return {"parts": cfg.n}

    execute_stage(Stage("slow", Cfg, slow), Cfg(out=Path(sys.argv[1])))
""")


def test_sigkill_mid_stage_never_leaves_a_complete_looking_artifact(tmp_path):
    out, ready = tmp_path / "slow", tmp_path / "ready"
    script = tmp_path / "slow_stage.py"
    script.write_text(KILLED_STAGE)
    proc = subprocess.Popen([sys.executable, str(script), str(out), str(ready)])
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert proc.poll() is None and time.monotonic() < deadline, "stage did not start"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not out.exists()
    partial = tmp_path / "slow.partial"
    assert read_manifest(partial)["status"] == "running"
    assert (partial / "part1.txt").exists() and not (partial / "part2.txt").exists()


def test_secrets_never_written(tmp_path):
    run_pipeline(write_pipeline(tmp_path), registry=REGISTRY)
    folder = tmp_path / "artifacts" / "first"
    written = "".join(p.read_text() for p in (folder / RESOLVED_CONFIG, folder / MANIFEST, folder / STAGE_LOG))
    assert "sk-secret-value" not in written
    assert yaml.safe_load((folder / RESOLVED_CONFIG).read_text())["api_key"] == "***REDACTED***"
    assert json.loads((folder / MANIFEST).read_text())["counts"] == {"values": 1}


def test_list_inputs_and_a_launched_stage_in_a_child_process(tmp_path):
    """`launch:` runs the (real, light) push stage as `LAUNCHER -m devide push --config ...` in a child."""
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "devide"}')
    (model / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    evals = []
    for name in ("ev1", "ev2"):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "results.json").write_text(json.dumps({"dataset": name, "metrics": {
            "classes": [], "macro": {"all": {"auc": 0.75, "auc_ci": [0.7, 0.8]}}}}))
        evals.append(str(folder))
    spec = {"workdir": str(tmp_path / "art"), "stages": {"push": {
        "launch": [sys.executable], "config": {"model": str(model), "dry_run": True, "eval_results": evals}}}}
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(spec))
    report = run_pipeline(path, quiet=True)
    assert statuses(report) == {"push": "complete"}
    upload = tmp_path / "art" / "push" / "upload"
    assert sorted(p.name for p in (upload / "eval").iterdir()) == ["ev1.json", "ev2.json"]
    assert "| ev1 | test | ? | 0.750 (0.700–0.800)" in (upload / "README.md").read_text()
    assert not list((tmp_path / "art").glob(".*.launch.yaml"))
    assert statuses(run_pipeline(path, quiet=True)) == {"push": "skipped"}
