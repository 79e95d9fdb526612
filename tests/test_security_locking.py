"""Issue 19.5: two runs on one artifact. Before the lock, the second died with FileNotFoundError in
``.partial`` or an ``rmtree`` traceback, and an artifact could be marked complete without its resolved config.
Both runs here are real processes; the stage waits on a file so the overlap is certain, not a timing guess."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# The stage both child scripts run: it marks that it started, then waits for the test's "go" file.
GATED_STAGE = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from devide.config import ConfigError, StageConfig
    from devide.stage import Stage, StageError, execute_stage

    class Cfg(StageConfig):
        gate: str

    def run(cfg, ctx):
        (ctx.work_dir / "started").write_text("yes")
        while not Path(cfg.gate).exists():
            time.sleep(0.02)
        (ctx.work_dir / "result.txt").write_text("done")
        return {"n": 1}
""")
# A child process: that stage run the way the CLI runs it (a StageError/ConfigError is one line, exit 2).
CHILD = GATED_STAGE + textwrap.dedent("""
    out, gate = sys.argv[1], sys.argv[2]
    try:
        result = execute_stage(Stage("slow", Cfg, run), Cfg(out=out, gate=gate))
    except (StageError, ConfigError) as exc:
        print(f"devide slow: error: {exc}", file=sys.stderr)
        sys.exit(2)
    print(result.status)
""")


def start(out: Path, gate: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", CHILD, str(out), str(gate)], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wait_for(path: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def test_second_run_exits_2_naming_the_holder_and_the_first_completes(tmp_path):
    out, gate = tmp_path / "artifact", tmp_path / "go"
    first = start(out, gate)
    wait_for(tmp_path / "artifact.partial" / "started")
    second = start(out, gate)
    _, err = second.communicate(timeout=60)
    assert second.returncode == 2
    assert err.strip().splitlines() == [err.strip()]  # one line, no traceback
    assert f"is locked by another run (pid {first.pid} on " in err
    gate.write_text("go")
    stdout, _ = first.communicate(timeout=60)
    assert first.returncode == 0 and stdout.strip() == "complete"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete" and (out / "config.resolved.yaml").is_file()
    assert (out / "result.txt").read_text() == "done" and not (tmp_path / "artifact.partial").exists()
    # The lock is free again (flock dies with its holder): a third run sees the artifact up to date.
    third = start(out, gate)
    stdout, _ = third.communicate(timeout=60)
    assert third.returncode == 0 and stdout.strip() == "skipped"


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    out, gate = tmp_path / "artifact", tmp_path / "go"
    first = start(out, gate)
    wait_for(tmp_path / "artifact.partial" / "started")
    first.kill()
    first.communicate(timeout=30)
    gate.write_text("go")
    second = start(out, gate)
    stdout, err = second.communicate(timeout=60)
    assert second.returncode == 0, err
    assert stdout.strip() == "complete" and (out / "result.txt").read_text() == "done"


def test_lock_wait_lets_the_second_run_wait_for_the_first(tmp_path, monkeypatch):
    out, gate = tmp_path / "artifact", tmp_path / "go"
    first = start(out, gate)
    wait_for(tmp_path / "artifact.partial" / "started")
    monkeypatch.setenv("DEVIDE_LOCK_WAIT", "60")
    second = start(out, gate)  # inherits DEVIDE_LOCK_WAIT: waits instead of failing
    time.sleep(0.5)
    assert second.poll() is None
    gate.write_text("go")
    assert first.wait(timeout=60) == 0
    stdout, err = second.communicate(timeout=60)
    assert second.returncode == 0, err
    assert stdout.strip() == "skipped"


# A child process: `devide run` of a one-stage pipeline (the slow stage above), errors handled as the CLI does.
PIPELINE_CHILD = GATED_STAGE + textwrap.dedent("""
    from devide import cli
    from pipelines import runner

    registry = {"slow": Stage("slow", Cfg, run)}
    real = runner.run_pipeline
    runner.run_pipeline = lambda path, **kw: real(path, **{**kw, "registry": registry, "check": False})
    cli.load_command = lambda name: runner.COMMAND
    cli.command_names = lambda: ["run"]
    sys.exit(cli.main(["run", sys.argv[1]]))
""")


def test_a_second_devide_run_of_one_pipeline_exits_2_naming_the_first(tmp_path):
    gate = tmp_path / "go"
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(f"workdir: {tmp_path / 'work'}\nstages:\n  slow:\n    config: {{gate: {gate}}}\n")
    first = subprocess.Popen([sys.executable, "-c", PIPELINE_CHILD, str(pipeline)], cwd=REPO, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for(tmp_path / "work" / "slow.partial" / "started")
    except AssertionError:
        first.kill()
        raise AssertionError(first.communicate()[1][-3000:]) from None
    second = subprocess.run([sys.executable, "-c", PIPELINE_CHILD, str(pipeline)], cwd=REPO, text=True,
                            capture_output=True, timeout=60, check=False)
    assert second.returncode == 2
    holder = second.stderr.split("(", 1)[1].split(")")[0]
    expected = (f"devide run: error: pipeline folder {tmp_path / 'work'} is locked by another run ({holder}); "
                "wait for it to finish, or set DEVIDE_LOCK_WAIT=SECONDS to wait")
    assert second.stderr.strip().splitlines() == [expected]
    assert f"(pid {first.pid} on " in second.stderr
    gate.write_text("go")
    stdout, err = first.communicate(timeout=60)
    assert first.returncode == 0, err
    assert "slow             complete" in stdout
