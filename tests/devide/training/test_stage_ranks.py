"""execute_stage under a distributed launch: non-zero ranks run the stage but never touch the artifact."""

from __future__ import annotations

from devide.config import StageConfig
from devide.stage import Stage, execute_stage


class RankConfig(StageConfig):
    value: int = 1


def test_secondary_rank_runs_the_stage_but_writes_nothing(tmp_path, monkeypatch):
    seen = []

    def run(cfg, ctx):
        seen.append(ctx.work_dir)
        return {"value": cfg.value}

    stage = Stage(name="ranked", config_cls=RankConfig, run=run)
    cfg = RankConfig(out=tmp_path / "out")
    monkeypatch.setenv("RANK", "1")
    result = execute_stage(stage, cfg)
    assert seen == [tmp_path / "out.partial"] and result.manifest["counts"] == {"value": 1}
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()
    monkeypatch.setenv("RANK", "0")
    assert execute_stage(stage, cfg).status == "complete"
    assert (tmp_path / "out" / "manifest.json").is_file()
