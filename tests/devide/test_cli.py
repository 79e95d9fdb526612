"""The CLI: flags generated from a stage's config, one-line errors with exit 2, not-built stages."""

import argparse
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from pydantic import Field

from devide import cli
from devide.config import StageConfig
from devide.stage import Stage, read_manifest


class EchoConfig(StageConfig):
    count: int = 1
    label: str = "x"
    shout: bool = False


def echo(cfg: EchoConfig, ctx) -> dict:
    text = cfg.label.upper() if cfg.shout else cfg.label
    (ctx.work_dir / "echo.txt").write_text(text * cfg.count)
    return {"count": cfg.count}


ECHO = Stage("echo", EchoConfig, echo, help="test stage")


@pytest.fixture
def echo_registered(monkeypatch):
    real_names, real_load = cli.command_names, cli.load_command
    monkeypatch.setattr(cli, "command_names", lambda: sorted({*real_names(), "echo"}))
    monkeypatch.setattr(cli, "load_command", lambda name: ECHO if name == "echo" else real_load(name))


def test_flags_and_set_overrides_reach_the_stage(echo_registered, tmp_path, capsys):
    config = tmp_path / "echo.yaml"
    config.write_text("count: 2\nlabel: ab\n")
    rc = cli.main(["echo", "--config", str(config), "--count", "3", "--shout", "--out", str(tmp_path / "o")])
    assert rc == 0
    assert (tmp_path / "o" / "echo.txt").read_text() == "ABABAB"
    assert read_manifest(tmp_path / "o")["counts"] == {"count": 3}
    rc = cli.main(["echo", "--config", str(config), "--set", "count=1", "--out", str(tmp_path / "p")])
    assert rc == 0 and (tmp_path / "p" / "echo.txt").read_text() == "ab"


@pytest.mark.parametrize("argv, fragment", [
    (["--count", "lots"], "'count'"),
    (["--set", "colour=red"], "unknown config key 'colour'"),
    (["--config", "/nonexistent/echo.yaml"], "not found"),
])
def test_bad_config_exits_2_with_one_line(echo_registered, tmp_path, capsys, argv, fragment):
    rc = cli.main(["echo", "--out", str(tmp_path / "o"), *argv])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert fragment in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_declared_but_missing_module_is_not_built(monkeypatch, capsys):
    ghost = metadata.EntryPoint(name="ghost", value="devide.no_such_stage:STAGE", group=cli.ENTRY_POINT_GROUP)
    monkeypatch.setattr(cli, "_entry_points", lambda: {"ghost": ghost})
    rc = cli.main(["ghost", "--anything"])
    err = capsys.readouterr().err
    assert rc == 2 and "not built yet" in err and len(err.strip().splitlines()) == 1


def test_installed_console_script_answers_help():
    """The real `devide` entry point (pip install -e .) lists every subcommand."""
    out = subprocess.run([sys.executable, "-m", "devide", "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    for name in ("phantom", "crawl", "harmonize", "prepare-data", "train", "evaluate", "push", "run"):
        assert name in out.stdout


def test_run_command_on_a_bad_pipeline_is_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("workdir: x\nstages:\n  one:\n    uses: phantom\n    confg: {}\n")
    out = subprocess.run([sys.executable, "-m", "devide", "run", str(bad)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 2
    assert "confg" in out.stderr and len(out.stderr.strip().splitlines()) == 1


class DefaultsConfig(StageConfig):
    items: list[str] = Field(default_factory=list, description="a list")
    sizes: list[int] = Field(default_factory=lambda: [224, 512], description="sizes")
    endpoint: str | None = Field(None, description="endpoint (default: the public one)")
    optional: str | None = Field(None, description="nothing by default")
    rate: float = Field(0.5, description="50% of it")
    folder: Path = Field(Path("runs"), description="where")


def help_entries(stage: Stage) -> dict[str, str]:
    """{--flag: its help text on one line} of a stage's generated CLI."""
    parser = argparse.ArgumentParser(prog=f"devide {stage.name}")
    cli.add_stage_arguments(parser, stage)
    return {a.option_strings[0]: " ".join((a.help or "").split()) for a in parser._actions if a.option_strings}


def test_help_shows_real_defaults_once():
    """Issue 19.11: `--help` showed "(default: PydanticUndefined)" for default factories and "(default: None)"
    after descriptions that already named the default."""
    entries = help_entries(Stage("defaults", DefaultsConfig, echo))
    assert entries["--items"] == "a list (default: [])"
    assert entries["--sizes"] == "sizes (default: [224, 512])"
    assert entries["--endpoint"] == "endpoint (default: the public one)"
    assert entries["--optional"] == "nothing by default"
    assert entries["--rate"] == "50%% of it (default: 0.5)"  # argparse renders %% as %
    assert entries["--folder"] == "where (default: runs)"
    assert entries["--out"].startswith("artifact folder of the stage")


def test_no_installed_stage_help_shows_placeholders_or_repeated_defaults():
    stages = []
    for name in cli.command_names():
        try:
            plugin = cli.load_command(name)
        except cli.NotBuiltError:
            continue
        if isinstance(plugin, Stage):
            stages.append(plugin)
    assert {"push", "train", "harmonize", "evaluate"} <= {s.name for s in stages}
    for stage in stages:
        parser = argparse.ArgumentParser(prog=f"devide {stage.name}")
        cli.add_stage_arguments(parser, stage)
        text = parser.format_help()
        assert "PydanticUndefined" not in text and "(default: None)" not in text, stage.name
        for flag, help_text in help_entries(stage).items():
            assert help_text.count("(default:") <= 1 and help_text.lower().count("default") <= 2, (stage.name, flag)
