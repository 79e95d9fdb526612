"""``devide finetune``: transfer of the pretrained image tower to classification or segmentation.

    devide finetune --model artifacts/demo/train/model --dataset chexpert --root /data/chexpert \\
        --task classification --fraction 0.01 --out ft/chexpert-1pct
    accelerate launch -m devide finetune --config finetune.yaml      # several GPUs / processes

One run = one dataset, task and labelled fraction, and every variant of ``init`` (pretrained / random) x
``modes`` (probe / full) x ``align_weights``, all on the same labelled selection. Artifact:

* ``selection.json`` - the labelled subset (patients, strata, image ids, class counts); pass it back as
  ``selection`` to reproduce a run exactly;
* ``runs/<variant>/`` - ``metrics.json`` (AUC with CIs and grounding, or Dice/IoU), ``train_summary.json``,
  ``logs/`` (tensorboard), ``model/`` (fine-tuned weights), ``overlays/*.png`` (segmentation);
* ``results.json`` / ``results.md`` / ``summary.txt`` - the variant table, pretrained-minus-random gaps and
  alignment effects; ``rejections.csv`` - every image left out, with the reason.

An interrupted run resumes: finished variants are kept (their ``metrics.json``), the running one continues
from its newest checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from devide.config import ConfigError
from devide.data.adapters import AdapterError
from devide.data.adapters.base import EvalRecord, EvalSet, Rejection
from devide.evaluation.report import write_rejections
from devide.evaluation.stage import find_model_dir, load_model
from devide.evaluation.zero_shot import cap_records
from devide.finetune.config import STAGE, FinetuneConfig  # noqa: F401  (STAGE re-exported)
from devide.finetune.data import readable
from devide.finetune.evaluate import classification_metrics, segmentation_metrics
from devide.finetune.report import comparisons, headline, markdown, summary_text
from devide.finetune.selection import MANIFEST, Selection, load_selection, save_selection, select_fraction
from devide.finetune.splits import FinetuneSplits, load_splits
from devide.finetune.trainer import FinetuneTrainer, Prepared, Variant, variant_dir
from devide.stage import StageContext, StageError, is_main_process, write_json_atomic
from devide.training.trainer import flat_hparams

METRICS = "metrics.json"


# ---------------------------------------------------------------------------------------------- data


def choose_classes(cfg: FinetuneConfig, splits: FinetuneSplits) -> list[str]:
    """Classes to fine-tune on: the config's (checked), else every dataset class; segmentation keeps the
    classes annotated (box or mask) somewhere in the training pool."""
    if cfg.classes:
        unknown = [c for c in cfg.classes if c not in splits.classes]
        if unknown:
            raise ConfigError(f"unknown class(es) {', '.join(unknown)} for {cfg.dataset} "
                              f"(classes: {', '.join(splits.classes)})")
        classes = list(cfg.classes)
    else:
        classes = list(splits.classes)
    if cfg.task == "segmentation":
        annotated = {c for r in splits.train for c in (*r.boxes, *(r.labels if r.mask_fn else ()))}
        classes = [c for c in classes if c in annotated]
        if not classes:
            raise StageError(f"{cfg.dataset}: no class has boxes or masks in the training split: nothing to segment")
    return classes


def segmentable(records: list[EvalRecord], classes: list[str], split: str,
                rejections: list[Rejection]) -> list[EvalRecord]:
    """Segmentation keeps images with at least one known mask (annotated, or labelled absent)."""
    kept = []
    for record in records:
        if any(record.boxes.get(c) or record.labels.get(c) == 0 or (record.mask_fn and record.labels.get(c) == 1)
               for c in classes):
            kept.append(record)
        else:
            rejections.append(Rejection(split, record.image_id, "no known mask for any class (positive without "
                                                                "annotation, or unlabelled)"))
    return kept


def capped_test(records: list[EvalRecord], cfg: FinetuneConfig, classes: list[str]) -> tuple[list[EvalRecord], list]:
    capped = cap_records(EvalSet(cfg.dataset, "test", cfg.root, classes, records), cfg.max_test_images)
    return capped.records, capped.notes[-1:] if len(capped.records) < len(records) else []


def prepare(cfg: FinetuneConfig, ctx: StageContext) -> tuple[Prepared, Selection, FinetuneSplits, list[Rejection]]:
    """Splits, classes, the labelled selection, readable images and the pretrained tower."""
    model_dir = find_model_dir(Path(cfg.model))
    try:
        splits = load_splits(cfg.dataset, cfg.root, cfg.split_protocol, cfg.partition_percent)
    except AdapterError as exc:
        raise StageError(str(exc)) from None
    classes = choose_classes(cfg, splits)
    rejections = list(splits.rejections)
    selection = (load_selection(cfg.selection, splits.train) if cfg.selection is not None
                 else select_fraction(splits.train, classes, cfg.fraction, cfg.seed))
    train, val = selection.records(splits.train), splits.val
    test, cap_notes = capped_test(splits.test, cfg, classes)
    splits.notes += cap_notes
    if cfg.task == "segmentation":
        train, val, test = (segmentable(r, classes, n, rejections) for r, n in ((train, "train"), (val, "val"),
                                                                               (test, "test")))
    train, val, test = (readable(r, n, rejections, ctx.quiet) for r, n in ((train, "train"), (val, "val"),
                                                                          (test, "test")))
    if not test:
        raise StageError(f"{cfg.dataset}: the test split is empty after rejections (see rejections.csv)")
    model, processor = load_model(model_dir)
    tower, vision_config = model.vision, model.config.vision_tower_config()
    del model  # the text tower and the fusion heads are not needed
    ctx.logger.info("%s %s: %d classes; train %d (of %d, %g %%), val %d, test %d images; protocol %s",
                    cfg.dataset, cfg.task, len(classes), len(train), len(splits.train), cfg.fraction * 100,
                    len(val), len(test), splits.protocol)
    data = Prepared(classes, train, val, test, tower, vision_config, processor, dict(splits.label_sets))
    return data, selection, splits, rejections


# ---------------------------------------------------------------------------------------------- variants


def variants(cfg: FinetuneConfig) -> list[Variant]:
    return [Variant(i, m, w) for i in cfg.init for m in cfg.modes for w in cfg.align_weights]


def run_variant(cfg: FinetuneConfig, ctx: StageContext, variant: Variant, data: Prepared) -> dict[str, Any]:
    """Train, evaluate and save one variant; a variant finished by an interrupted run is read back."""
    folder = variant_dir(ctx.work_dir, variant)
    done = folder / METRICS
    if done.is_file():
        ctx.logger.info("variant %s: already finished, kept", variant.name)
        return json.loads(done.read_text(encoding="utf-8"))
    sub_ctx = StageContext(work_dir=folder, out=ctx.out / "runs" / variant.name, logger=ctx.logger, quiet=ctx.quiet)
    trainer = FinetuneTrainer(cfg, sub_ctx, variant, data)
    trainer.setup()
    if cfg.tensorboard:
        trainer.accelerator.init_trackers("devide-finetune", config=flat_hparams(cfg))
    trainer.resume()
    plan = trainer.plan
    ctx.logger.info("variant %s: %d steps (%d per epoch), global batch %d on %d process(es)", variant.name,
                    plan.total_steps, plan.steps_per_epoch, plan.global_batch, trainer.accelerator.num_processes)
    summary = trainer.fit()
    if cfg.task == "segmentation":
        metrics = segmentation_metrics(trainer, cfg, folder / "overlays")
    else:
        metrics = classification_metrics(trainer, cfg)
    trainer.save()
    metrics["variant"] = {"name": variant.name, "init": variant.init, "mode": variant.mode,
                          "align_weight": variant.align_weight}
    metrics["train"] = {key: summary.get(key) for key in ("steps", "images_seen", "seconds", "images_per_second",
                                                          "world_size", "global_batch", "resumed_from_step")}
    metrics["train"]["train_images"] = len(data.train)
    if is_main_process():
        write_json_atomic(done, metrics)
    return metrics


# ---------------------------------------------------------------------------------------------- run


def run(cfg: FinetuneConfig, ctx: StageContext) -> dict[str, Any]:
    data, selection, splits, rejections = prepare(cfg, ctx)
    context = {"dataset": cfg.dataset, "root": str(cfg.root), "split_protocol": splits.protocol,
               "task": cfg.task, "notes": splits.notes}
    if is_main_process():
        save_selection(ctx.work_dir / MANIFEST, selection, context)
    all_variants = variants(cfg)
    metrics = {v.name: run_variant(cfg, ctx, v, data) for v in all_variants}
    rows = {name: headline(m) for name, m in metrics.items()}
    results = {
        "setting": {**context, "fraction": cfg.fraction, "seed": cfg.seed, "classes": data.classes,
                    "head": cfg.head if cfg.task == "classification" else "progressive-upsampling",
                    "selected_images": len(data.train), "selected_patients": selection.summary.get("selected_patients"),
                    "pool_patients": selection.summary.get("pool_patients"), "val_images": len(data.val),
                    "test_images": len(data.test), "bootstrap": cfg.bootstrap},
        "variants": rows, "comparisons": comparisons(rows, all_variants),
        "rejections": len(rejections),
    }
    if is_main_process():
        write_json_atomic(ctx.work_dir / "results.json", results)
        (ctx.work_dir / "results.md").write_text(markdown(results), encoding="utf-8")
        (ctx.work_dir / "summary.txt").write_text(summary_text(results), encoding="utf-8")
        write_rejections(ctx.work_dir / "rejections.csv", rejections)
    return {"variants": len(all_variants), "train_images": len(data.train), "val_images": len(data.val),
            "test_images": len(data.test), "rejected": len(rejections), "classes": len(data.classes),
            **{f"{name}:{key}": value for name, row in rows.items() for key, value in row.items()
               if key in ("auc", "dice_positive", "dice_all") and value is not None}}
