"""`report`: one page that gathers a pipeline's results — the zero-shot table over every evaluated dataset
(seen and unseen findings, AUC with 95% CIs), the fine-tuning tables, and links to each stage's plots.

It reads only the artifacts of earlier stages (their results.json / summary.txt) and writes ``report.md``
and ``summary.txt`` (what ``devide run`` prints last).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pydantic import Field

from devide.config import StageConfig
from devide.stage import Stage, StageContext, StageError


class ReportConfig(StageConfig):
    title: str = "devide pipeline report"
    evaluations: list[Path] = Field(default_factory=list, description="`devide evaluate` artifact folders")
    finetune: list[Path] = Field(default_factory=list, description="`devide finetune` artifact folders")
    push: Path | None = Field(None, description="`devide push` artifact folder (dry run or real)")


def _read_results(folder: Path) -> dict[str, Any]:
    path = folder / "results.json"
    if not path.is_file():
        raise StageError(f"{folder} has no results.json")
    return json.loads(path.read_text(encoding="utf-8"))


def _fmt_auc(entry: dict[str, Any] | None) -> str:
    if not entry or entry.get("auc") is None:
        return "–"
    low, high = entry.get("auc_ci") or (None, None)
    ci = f" [{low:.2f}, {high:.2f}]" if low is not None and high is not None else ""
    return f"{entry['auc']:.3f}{ci}"


def zero_shot_rows(results: list[dict[str, Any]]) -> list[list[str]]:
    """One row per (dataset, class group) with the macro AUC, and one per unseen class."""
    rows = []
    for result in results:
        macro = result["metrics"]["macro"]
        images = str(result.get("counts", {}).get("evaluated", "?"))
        for group in ("seen", "unseen", "all"):
            if group in macro and macro[group].get("classes"):
                rows.append([result["dataset"], images, f"macro {group} ({len(macro[group]['classes'])})",
                             _fmt_auc(macro[group])])
    return rows


def per_class_rows(results: list[dict[str, Any]]) -> list[list[str]]:
    rows = []
    for result in results:
        groups = {q["label"]: q.get("group", "seen") for q in result.get("queries", [])}
        for entry in result["metrics"]["classes"]:
            rows.append([result["dataset"], entry["class"], groups.get(entry["class"], "?"),
                         str(entry.get("n_pos", "?")), _fmt_auc(entry)])
    return rows


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def text_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows, strict=True)]

    def render(row: list[str]) -> str:
        return "  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True))

    return "\n".join([render(header), render(["-" * w for w in widths]), *map(render, rows)])


def _link(target: Path, base: Path) -> str:
    return os.path.relpath(target, base)


def render_report(cfg: ReportConfig, final_dir: Path) -> tuple[str, str]:
    results = [_read_results(folder) for folder in cfg.evaluations]
    header = ["dataset", "images", "classes", "AUC [95% CI]"]
    zero_shot = zero_shot_rows(results)
    parts = [f"# {cfg.title}", "", "## Zero-shot detection", "",
             "AUC is threshold-free; thresholded metrics and their protocols are in each dataset's report.", "",
             markdown_table(header, zero_shot), "", "### Per class", "",
             markdown_table(["dataset", "class", "group", "positives", "AUC [95% CI]"], per_class_rows(results)),
             "", "### Per-dataset reports (ROC curves, AUC bars, heatmap overlays)", ""]
    parts += [f"- {r['dataset']}: [{_link(f / 'report.md', final_dir)}]({_link(f / 'report.md', final_dir)})"
              for r, f in zip(results, cfg.evaluations, strict=True)]
    for folder in cfg.finetune:
        results_md = folder / "results.md"
        if not results_md.is_file():
            raise StageError(f"{folder} has no results.md")
        body = results_md.read_text(encoding="utf-8").replace("\n# ", "\n### ").lstrip("# ")
        parts += ["", f"## Fine-tuning: {folder.name}", "", "### " + body]
    if cfg.push is not None:
        parts += ["", "## Hub", "", (f"Upload folder (model card, weights, configs): `{cfg.push / 'upload'}` — "
                                     "load it with `AutoModel.from_pretrained(path, trust_remote_code=True)`.")]
    report_path = final_dir / "report.md"
    summary = "\n".join([
        "zero-shot detection (AUC [95% CI]; unseen = never named in pretraining reports)",
        text_table(header, zero_shot),
        *[(f / "summary.txt").read_text(encoding="utf-8").rstrip() for f in cfg.finetune
          if (f / "summary.txt").is_file()],
        f"report: {report_path}",
    ])
    return "\n".join(parts) + "\n", summary + "\n"


def run_report(cfg: ReportConfig, ctx: StageContext) -> dict[str, Any]:
    if not cfg.evaluations and not cfg.finetune:
        raise StageError("nothing to report: give evaluations and/or finetune artifact folders")
    markdown, summary = render_report(cfg, ctx.out)
    (ctx.work_dir / "report.md").write_text(markdown, encoding="utf-8")
    (ctx.work_dir / "summary.txt").write_text(summary, encoding="utf-8")
    return {"evaluations": len(cfg.evaluations), "finetune": len(cfg.finetune)}


STAGE = Stage(
    name="report",
    config_cls=ReportConfig,
    run=run_report,
    help="gather a pipeline's zero-shot and fine-tuning results into one report",
    input_fields=("evaluations", "finetune", "push"),
    code=("pipelines.report", "devide.evaluation.report"),
)
