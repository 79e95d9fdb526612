"""The ablation table: every DeViDe component switched off in turn, on one shared budget and 3 seeds.

    .venv/bin/python benchmarks/ablations.py [--seeds 0 1 2] [--steps 150] [--variants full no_tnc ...]

1. Builds the shared inputs with ``pipelines/ablations.yaml`` (phantom at 128 px, fixture crawl, harmonize,
   prepare-data; skipped when up to date).
2. Writes one knowledge file per knowledge variant: harmonised (the harmonize artifact), entity names only,
   vocabulary definitions only, raw crawled sentences (no harmonisation).
3. Trains every variant with the real ``train`` stage (same model size, steps, batch, learning rate and data
   for all; the seed drives init, data order and augmentation), then scores it zero-shot on the phantom
   ChestX-ray14 test split: macro AUC of the seen findings, of the unseen findings (emphysema, fibrosis, hernia:
   never named in training, queried through their descriptions), and the pointing game of every grounding
   source the variant has (cross-attention, patch-description similarity, their product) over the boxed
   positives.
4. Writes ``benchmarks/results/ablations.json`` (rows + per-variant means with 95 % t-intervals over seeds),
   the table between the markers of ``docs/results.md`` and ``docs/images/ablations.png``.

Rows already in the results file for the same setting are reused, so an interrupted run continues.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "benchmarks" / "results"
DOC = ROOT / "docs" / "results.md"
PLOT_DIR = ROOT / "docs" / "images"
PIPELINE = ROOT / "pipelines" / "ablations.yaml"
UNSEEN = ("emphysema", "fibrosis", "hernia")


def outputs(tag: str) -> tuple[Path, Path, str, str]:
    """(results JSON, plot, begin marker, end marker) of one budget: ``ablations`` or ``ablations-TAG``."""
    name = f"ablations-{tag}" if tag else "ablations"
    return RESULTS_DIR / f"{name}.json", PLOT_DIR / f"{name}.png", f"<!-- {name}:begin -->", f"<!-- {name}:end -->"

# A smaller model than the demo's (64 px ViT, 8 px patches: the same 8 x 8 grid as the demo's 128 px / 16 px),
# so that 33 runs fit on a shared 2-core machine; everything else as pipelines/demo.yaml.
BASE_MODEL = {"vision_config": {"model_type": "vit", "image_size": 64, "patch_size": 8, "num_channels": 1,
                                "hidden_size": 96, "num_hidden_layers": 3, "num_attention_heads": 3,
                                "intermediate_size": 384},
              "embed_dim": 64, "fusion_layers": 1, "fusion_heads": 4, "fusion_ffn_dim": 256,
              "freeze_text": True, "unmentioned_weight": 0.1}
OFF = {"use_bce": False, "use_itc": False, "use_tnc": False, "use_pta": False}
# name -> (what it tests, knowledge variant, model overrides)
VARIANTS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "full": ("all four losses, harmonised knowledge, retrieval, projection", "harmonised", {}),
    "names_only": ("entity names only, no descriptions", "names", {}),
    "definitions_only": ("vocabulary definitions only", "definitions", {}),
    "raw_crawl": ("raw crawled sentences, no harmonisation", "raw", {}),
    "no_tnc": ("without L_tnc", "harmonised", {"use_tnc": False}),
    "no_pta": ("without L_pta", "harmonised", {"use_pta": False}),
    "no_projection": ("without the multi-label projection (global image embedding for every entity)",
                      "harmonised", {"use_projection": False}),
    "mean_sentences": ("mean of sentences instead of knowledge retrieval", "harmonised", {"use_retrieval": False}),
    "entity_tnc": ("the first, image-blind L_tnc (contrast against other entities)", "harmonised",
                   {"tnc_objective": "entity"}),
    "medklip": ("MedKLIP-style: names + definitions, L_bce only", "definitions", {**OFF, "use_bce": True}),
    "clip": ("CLIP-style: L_itc only, zero-shot by global embedding vs descriptions", "harmonised",
             {**OFF, "use_itc": True, "use_projection": False}),
}
METRICS = ("seen_auc", "unseen_auc", "seen_auc_similarity", "unseen_auc_similarity", "pointing_game",
           "pointing_game_attention", "pointing_game_patch",
           "pointing_game_combined", "val_auroc")


# ---------------------------------------------------------------------------------------------- inputs


def shared_inputs(workdir: Path) -> dict[str, Path]:
    """Run pipelines/ablations.yaml (up-to-date stages are skipped) -> its artifact folders."""
    from pipelines.runner import load_pipeline, run_pipeline

    spec = load_pipeline(PIPELINE)
    if Path(spec.workdir).resolve() != workdir.resolve():
        raise SystemExit(f"--workdir must be the pipeline's workdir ({spec.workdir})")
    run_pipeline(PIPELINE, quiet=True)
    return {name: workdir / name for name in spec.stages}


def knowledge_files(inputs: dict[str, Path], folder: Path) -> dict[str, Path]:
    """One {entity: [sentences]} file per knowledge variant."""
    from devide.training.trainer import read_knowledge_file
    from knowledge.vocabulary import load_vocabulary

    vocabulary = load_vocabulary()
    raw: dict[str, list[str]] = {}
    for line in (inputs["crawl"] / "descriptions.jsonl").read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        raw.setdefault(row["entity"], []).append(row["sentence"])
    variants = {
        "harmonised": read_knowledge_file(inputs["harmonize"]),
        "names": {},
        "definitions": {e.id: [e.definition] for e in vocabulary.entities if e.definition},
        "raw": {k: list(dict.fromkeys(v)) for k, v in raw.items()},
    }
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, knowledge in variants.items():
        paths[name] = folder / f"{name}.json"
        paths[name].write_text(json.dumps(knowledge, indent=1, sort_keys=True), encoding="utf-8")
    return paths


# ---------------------------------------------------------------------------------------------- one run


class SharedTextCache:
    """Frozen-tower sentence embeddings shared by every run of this process (the same MiniLM for all variants):
    the train stage's up-front encoding of the reports and knowledge then costs one run, not 33."""

    def __init__(self) -> None:
        self.store: dict[str, Any] = {}

    def install(self) -> None:
        from devide.training import trainer

        original = trainer.warm_text_cache

        def warm(model: Any, texts: list[str]) -> int:
            model._text_cache_usable()  # stamps the cache with this model's tower version
            for key, value in self.store.items():
                model.text.cache.put(key, value)
            count = original(model, texts)
            self.store.update(model.text.cache._store)
            return count

        trainer.warm_text_cache = warm


def train(variant: str, seed: int, args: argparse.Namespace, inputs: dict[str, Path],
          knowledge: dict[str, Path]) -> tuple[Path, float, float | None]:
    """Train one variant with the train stage -> (model folder, seconds, in-training validation AUROC)."""
    from devide.stage import execute_stage
    from devide.training.config import TrainConfig
    from devide.training.stage import STAGE

    _, knowledge_kind, overrides = VARIANTS[variant]
    out = args.workdir / "runs" / f"{variant}-s{seed}"
    cfg = TrainConfig(dataset=inputs["prepare-data"], knowledge=knowledge[knowledge_kind], out=out,
                      exclude_entities=list(UNSEEN), model={**BASE_MODEL, **overrides}, seed=seed,
                      batch_size=args.batch_size, max_steps=args.steps, learning_rate=args.lr, warmup_ratio=0.05,
                      workers=args.workers, checkpoint_every=10_000, keep_checkpoints=1, tensorboard=False,
                      mixed_precision="no")
    started = time.perf_counter()
    result = execute_stage(STAGE, cfg, force=True, quiet=True)
    return out / "model", time.perf_counter() - started, result.manifest["counts"].get("val_auroc_mean")


def recording_scorer():
    from devide.evaluation.zero_shot import ZeroShotScorer

    class RecordingScorer(ZeroShotScorer):
        """The evaluate stage's scorer, also keeping each batch's ``similarity`` (the multi-label projection vs
        the descriptions: what L_tnc alone scores) from the same forward pass."""

        similarity: list

        def predict_batch(self, pixel_values):
            out = self.model.predict(pixel_values.to(self.device), entities=self.entities or None,
                                     descriptions=self.descriptions or None)
            order = [out.names.index(q.name) for q in self.queries]
            self.similarity.append(out.similarity.float().cpu().numpy()[:, order])
            return out.probs.float().cpu().numpy()[:, order], out.grounding.float().cpu().numpy()[:, order]

    return RecordingScorer


def macro_aucs(queries: list, labels: np.ndarray, scores: np.ndarray) -> tuple[dict, dict]:
    """Per-finding AUC {label: auc} and {seen: macro, unseen: macro} of scores [N, K] against labels [N, K]."""
    from devide.evaluation.metrics import roc_auc

    aucs = {}
    for k, query in enumerate(queries):
        certain = (labels[:, k] == 0) | (labels[:, k] == 1)
        if len(set(labels[certain, k].tolist())) == 2:
            aucs[query.label] = round(roc_auc(labels[certain, k], scores[certain, k]), 4)
    groups = {}
    for group in ("seen", "unseen"):
        values = [aucs[q.label] for q in queries if q.group == group and q.label in aucs]
        groups[group] = round(float(np.mean(values)), 4) if values else None
    return aucs, groups


def score(model_dir: Path, inputs: dict[str, Path], knowledge_path: Path) -> dict[str, Any]:
    """Zero-shot on phantom ChestX-ray14 test: seen / unseen macro AUC, pointing game per grounding source."""
    from devide.data.adapters import get_adapter
    from devide.evaluation.stage import load_model, score_grounding
    from devide.evaluation.zero_shot import (
        ZeroShotScorer,
        load_vocabulary_optional,
        plan_queries,
        read_knowledge,
    )

    adapter_cls = get_adapter("chestxray14")
    eval_set = adapter_cls(inputs["phantom"] / "chestxray14").load("test")
    model, processor = load_model(model_dir)
    queries = plan_queries(eval_set, adapter_cls.vocab_key, model, load_vocabulary_optional(),
                           read_knowledge(knowledge_path), {}, set(UNSEEN))
    crop = getattr(processor, "center_crop", False)
    sources = ["attention"] + (["patch", "combined"] if model.config.use_pta else [])
    out: dict[str, Any] = {"pointing_game_by_finding": {}}
    annotated = replace(eval_set, records=[r for r in eval_set.records if r.has_annotations])
    scorer = recording_scorer()(model, processor, queries, batch_size=64, num_workers=1, examples_per_class=0,
                                device="cpu")
    scorer.similarity = []
    model.config.grounding_source = "attention"
    predictions = scorer.run(eval_set, desc="zero-shot")
    if not all(status == "ok" for status in predictions.status):
        raise SystemExit(f"{model_dir}: some phantom images could not be read")
    labels = eval_set.label_matrix()
    for suffix, scores in (("", predictions.probs), ("_similarity", np.concatenate(scorer.similarity))):
        out[f"auc_by_finding{suffix}"], groups = macro_aucs(queries, labels, scores)
        out[f"seen_auc{suffix}"], out[f"unseen_auc{suffix}"] = groups["seen"], groups["unseen"]
    for source in sources:
        if source != "attention":
            model.config.grounding_source = source
            predictions = ZeroShotScorer(model, processor, queries, batch_size=64, num_workers=1,
                                         examples_per_class=0, device="cpu").run(annotated, desc=source)
        grounding = score_grounding(annotated if source != "attention" else eval_set, predictions, queries,
                                    crop) or {}
        out[f"pointing_game_{source}"] = (grounding.get("overall") or {}).get("pointing_game")
        out["pointing_game_by_finding"][source] = {
            name: row.get("pointing_game") for name, row in (grounding.get("classes") or {}).items()}
    # the variant's own maps: the source its config ships with (attention unless changed)
    out["pointing_game"] = out["pointing_game_attention"]
    return out


# ---------------------------------------------------------------------------------------------- summary


def pointing_chance(inputs: dict[str, Path]) -> float:
    """The pointing game of a map whose peak falls anywhere at random: the mean box area share on the grid."""
    from devide.data.adapters import get_adapter
    from devide.evaluation.grounding import grid_for, region_from_boxes

    eval_set = get_adapter("chestxray14")(inputs["phantom"] / "chestxray14").load("test")
    shares = []
    for record in eval_set.records:
        for boxes in record.boxes.values():
            frame = record.frame_size or (128, 128)
            shares.append(float(region_from_boxes(boxes, frame, grid_for(frame)).mean()))
    return round(float(np.mean(shares)), 4)



def t_interval(values: list[float]) -> tuple[float, float, float]:
    """(mean, low, high) of the 95 % Student-t interval of the mean (a single value: the value itself)."""
    from scipy import stats

    mean = float(np.mean(values))
    if len(values) < 2:
        return mean, mean, mean
    half = float(stats.t.ppf(0.975, len(values) - 1) * np.std(values, ddof=1) / math.sqrt(len(values)))
    return mean, mean - half, mean + half


def summarise(rows: list[dict]) -> dict[str, dict]:
    summary = {}
    for variant in VARIANTS:
        mine = [r for r in rows if r["variant"] == variant]
        if not mine:
            continue
        entry: dict[str, Any] = {"n": len(mine), "what": VARIANTS[variant][0]}
        for metric in METRICS:
            values = [r[metric] for r in mine if r.get(metric) is not None]
            if values:
                mean, low, high = t_interval(values)
                entry[metric] = {"mean": round(mean, 4), "ci95": [round(low, 4), round(high, 4)]}
        summary[variant] = entry
    return summary


def _cell(entry: dict, metric: str) -> str:
    value = entry.get(metric)
    if not value:
        return "—"
    return f"{value['mean']:.3f} [{value['ci95'][0]:.3f}, {value['ci95'][1]:.3f}]"


def markdown_table(summary: dict[str, dict], setting: dict, plot_path: Path) -> str:
    lines = [f"Setting: {setting['description']}", "",
             ("| variant | what | seen AUC | unseen AUC | seen AUC (similarity) | unseen AUC (similarity) "
             "| pointing game (attention) | pointing game (patch) | pointing game (combined) "
             "| in-training val AUROC |"),
             "|---|---|---|---|---|---|---|---|---|---|"]
    for variant, entry in summary.items():
        lines.append(f"| {variant} | {entry['what']} | " + " | ".join(_cell(entry, m) for m in (
            "seen_auc", "unseen_auc", "seen_auc_similarity", "unseen_auc_similarity", "pointing_game_attention",
            "pointing_game_patch", "pointing_game_combined", "val_auroc")) + " |")
    chance = (f"Chance: AUC 0.5; pointing game {setting.get('pointing_game_chance')} (a random peak: the mean "
              "share of the grid the boxes cover).")
    legend = ("Mean over seeds [95 % Student-t interval of the mean]; — = not applicable (no L_pta patch "
              "embeddings) or not computable. AUC = the model's presence probability (the presence head; "
              "s·similarity + β without it); AUC (similarity) = the multi-label projection's `similarity` alone.")
    lines += ["", chance, "", legend, "", f"![ablations](images/{plot_path.name})"]
    return "\n".join(lines)


def write_doc(table: str, begin: str, end: str) -> None:
    """Replace the text between the markers of docs/results.md (appended when missing)."""
    text = DOC.read_text(encoding="utf-8") if DOC.is_file() else "# Results\n"
    if begin not in text or end not in text:
        text += f"\n{begin}\n{end}\n"
    head, rest = text.split(begin, 1)
    tail = rest.split(end, 1)[1]
    DOC.write_text(f"{head}{begin}\n{table}\n{end}{tail}", encoding="utf-8")


def plot(summary: dict[str, dict], chance: float | None, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = (("seen_auc", "seen AUC"), ("unseen_auc", "unseen AUC"), ("pointing_game", "pointing game"))
    names = list(summary)
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 0.42 * len(names) + 1.4), sharey=True)
    for ax, (metric, title) in zip(axes, metrics):
        for y, name in enumerate(names):
            value = summary[name].get(metric)
            if not value:
                continue
            low, high = value["ci95"]
            ax.errorbar(value["mean"], y, xerr=[[value["mean"] - low], [high - value["mean"]]], fmt="o",
                        color="C3" if name == "full" else "C0", capsize=3)
        ax.axvline(summary.get("full", {}).get(metric, {}).get("mean", np.nan), color="C3", lw=0.8, ls=":")
        ax.axvline(chance if metric == "pointing_game" else 0.5, color="grey", lw=1.0, ls="--")
        ax.set_title(title)
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(range(len(names)), names)
    axes[0].invert_yaxis()
    fig.suptitle("DeViDe ablations on the phantom (mean and 95 % CI over seeds; dashed: chance; pointing game: "
                 "cross-attention maps)", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("artifacts/ablations"))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=60, help="optimizer steps per run (the shared budget)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--workers", type=int, default=0, help="loader workers (0: in the training process, "
                        "which a busy machine starves less than niced workers)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--fresh", action="store_true", help="ignore rows already in the results file")
    parser.add_argument("--tag", default="", help="another budget: writes ablations-TAG.json/.png and its own "
                        "section of docs/results.md")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    inputs = shared_inputs(args.workdir)
    SharedTextCache().install()
    knowledge = knowledge_files(inputs, args.workdir / "knowledge")
    setting = {"pointing_game_chance": pointing_chance(inputs), "steps": args.steps, "batch_size": args.batch_size,
               "lr": args.lr, "model": BASE_MODEL,
               "pipeline": str(PIPELINE.relative_to(ROOT)), "unseen": list(UNSEEN),
               "description": (f"{args.steps} steps x batch {args.batch_size} (lr {args.lr}), 64 px ViT, on the "
                               "2,000-study 128 px phantom of pipelines/ablations.yaml, seeds "
                               f"{args.seeds}; zero-shot on its ChestX-ray14 test split")}
    results_path = outputs(args.tag)[0]
    previous = json.loads(results_path.read_text()) if results_path.is_file() and not args.fresh else {}
    same = {k: previous.get("setting", {}).get(k) for k in ("steps", "batch_size", "lr", "model")} == {
        "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr, "model": BASE_MODEL}
    # only variants still defined, run with the seeds asked for
    rows = [r for r in (previous.get("rows", []) if same else []) if r["variant"] in VARIANTS]
    done = {(r["variant"], r["seed"]) for r in rows}
    for seed in args.seeds:
        for variant in args.variants:
            if (variant, seed) in done:
                continue
            model_dir, seconds, val_auroc = train(variant, seed, args, inputs, knowledge)
            row = {"variant": variant, "seed": seed, **score(model_dir, inputs, knowledge[VARIANTS[variant][1]]),
                   "val_auroc": val_auroc, "train_seconds": round(seconds, 1)}
            rows.append(row)
            print(f"{variant} seed {seed}: seen {row['seen_auc']} unseen {row['unseen_auc']} "
                  f"pg {row['pointing_game_attention']}/{row.get('pointing_game_patch')}/"
                  f"{row.get('pointing_game_combined')} ({seconds:.0f} s)", flush=True)
            write(rows, setting, args.tag)
    write(rows, setting, args.tag)
    print(f"-> {results_path}, {DOC}")


def write(rows: list[dict], setting: dict, tag: str = "") -> None:
    results_path, plot_path, begin, end = outputs(tag)
    summary = summarise(rows)
    report = {"rows": rows, "summary": summary, "setting": setting,
              "machine": {"python": platform.python_version(), "platform": platform.platform()}}
    results_path.parent.mkdir(parents=True, exist_ok=True)
    results_path.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    write_doc(markdown_table(summary, setting, plot_path), begin, end)
    plot(summary, setting.get("pointing_game_chance"), plot_path)


if __name__ == "__main__":
    main()
