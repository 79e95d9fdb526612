"""``devide evaluate``: zero-shot evaluation of a trained model on an external dataset in its real layout.

    devide evaluate --model artifacts/demo/train/model --dataset chestxray14 --root /data/nih --out eval/nih

Writes into the artifact folder: results.json, results.csv, report.md, rejections.csv, split_manifest.csv
(every record of the split: evaluated or rejected with the reason), plots/ (ROC per class, AUC bars with CIs,
grounding overlays), predictions/<key>.npz (cached per model revision x dataset x split x knowledge hash; an
unchanged rerun reads them back instead of running the model), summary.txt (the zero-shot table).
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from devide.data.adapters import AdapterError, get_adapter
from devide.data.adapters.base import EvalSet
from devide.evaluation import report as rep
from devide.evaluation.config import STAGE, EvaluateConfig  # noqa: F401  (re-exported)
from devide.evaluation.grounding import GroundingAccumulator
from devide.evaluation.metrics import PROTOCOLS, align_columns, classification_report
from devide.evaluation.subgroups import subgroup_report
from devide.evaluation.zero_shot import (
    Predictions,
    ZeroShotScorer,
    cap_records,
    crop_window,
    image_rejections,
    knowledge_hash,
    load_vocabulary_optional,
    model_revision,
    plan_queries,
    query_table,
    read_knowledge,
    seen_positives,
)
from devide.stage import StageContext, StageError

logger = logging.getLogger("devide.evaluate")


def find_model_dir(path: Path) -> Path:
    """``path`` itself when it holds config.json, else its only sub-folder that does."""
    if (path / "config.json").is_file():
        return path
    candidates = sorted(p.parent for p in path.glob("*/config.json"))
    if len(candidates) == 1:
        return candidates[0]
    found = ", ".join(str(c) for c in candidates) or "none"
    raise StageError(f"no model folder (config.json) at {path} (sub-folders with one: {found})")


def declared_unseen(cfg: EvaluateConfig, model) -> set[str]:
    """Unseen entity ids: the config, the model config (``unseen_entities``), and a phantom findings.json."""
    unseen = set(cfg.unseen) | set(getattr(model.config, "unseen_entities", None) or [])
    for folder in (cfg.root, cfg.root.parent):
        findings = folder / "findings.json"
        if findings.is_file():
            unseen |= _unseen_from_findings(json.loads(findings.read_text(encoding="utf-8")))
    return unseen


def _unseen_from_findings(data: Any) -> set[str]:
    if isinstance(data, dict) and isinstance(data.get("unseen"), list):
        return {str(x) for x in data["unseen"]}
    items = data.get("findings", data) if isinstance(data, dict) else {}
    if isinstance(items, dict):
        return {k for k, v in items.items() if isinstance(v, dict) and (v.get("unseen") or v.get("seen") is False)}
    return set()


def seen_note(model) -> str:
    """How "seen" was decided, for the report's notes."""
    if seen_positives(model.config) is None:
        return ("seen = one of the model's training entities: this model records no per-entity training "
                "positives (saved before devide recorded them), so an entity that never had a positive label "
                "may be counted as seen")
    return "seen = the entity had at least one positive label in training (model config training_positives)"


def load_model(model_dir: Path):
    from devide.modeling import DevideImageProcessor, DevideModel

    model = DevideModel.from_pretrained(model_dir)
    if (model_dir / "preprocessor_config.json").is_file():
        processor = DevideImageProcessor.from_pretrained(model_dir)
    else:
        processor = model.image_processor()
    return model, processor


# ---------------------------------------------------------------------------------------------- predictions


def cached_predictions(scorer: ZeroShotScorer, eval_set: EvalSet, key_parts: dict, ctx: StageContext,
                       cfg: EvaluateConfig) -> tuple[Predictions, bool]:
    """Predictions from a cache (this run's partial folder, the previous artifact, ``cache_dir``) or the model."""
    import hashlib

    ids = hashlib.sha256("\n".join(r.image_id for r in eval_set.records).encode()).hexdigest()
    key = hashlib.sha256(json.dumps({**key_parts, "split": eval_set.split, "ids": ids},
                                    sort_keys=True).encode()).hexdigest()[:24]
    name = f"{eval_set.dataset}-{eval_set.split}-{key}.npz"
    target = ctx.work_dir / "predictions" / name
    for folder in (ctx.work_dir / "predictions", ctx.out / "predictions", cfg.cache_dir):
        if folder is not None and (folder / name).is_file():
            try:
                predictions, _ = Predictions.load(folder / name)
            except (OSError, ValueError, KeyError) as exc:
                logger.warning("ignoring unreadable prediction cache %s (%s)", folder / name, exc)
                continue
            if len(predictions.status) == len(eval_set.records):
                logger.info("predictions for %s/%s read from cache %s", eval_set.dataset, eval_set.split,
                            folder / name)
                if folder / name != target:
                    predictions.save(target, key_parts)
                return predictions, True
    predictions = scorer.run(eval_set, desc=f"{eval_set.dataset}/{eval_set.split}")
    predictions.save(target, {**key_parts, "dataset": eval_set.dataset, "split": eval_set.split})
    if cfg.cache_dir is not None:
        predictions.save(Path(cfg.cache_dir) / name, key_parts)
    return predictions, False


def validation_predictions(adapter, scorer, key_parts, ctx, cfg) -> tuple[EvalSet | None, Predictions | None, str]:
    if "val" not in cfg.protocols or cfg.split == "val":
        return None, None, "no validation split used"
    try:
        val_set = cap_records(adapter.load("val"), cfg.val_max_images)
    except AdapterError as exc:
        return None, None, f"no validation split ({exc}): the val protocol falls back to threshold 0.5"
    if not val_set.records:
        return None, None, "empty validation split: the val protocol falls back to threshold 0.5"
    predictions, _ = cached_predictions(scorer, val_set, key_parts, ctx, cfg)
    return val_set, predictions, f"val thresholds from {int(predictions.ok.sum())} validation images"


# ---------------------------------------------------------------------------------------------- scoring


def score_grounding(eval_set: EvalSet, predictions: Predictions, queries, center_crop: bool) -> dict | None:
    """Class maps vs boxes/masks, and (MS-CXR) phrase maps vs their boxes."""
    classes, phrases = GroundingAccumulator(), GroundingAccumulator()
    index = {q.label: j for j, q in enumerate(queries)}
    for i, record in enumerate(eval_set.records):
        if predictions.status[i] != "ok" or i not in predictions.maps or not record.has_annotations:
            continue
        frame = record.frame_size or tuple(int(v) for v in predictions.sizes[i])
        window = crop_window(frame, center_crop)
        masks = record.mask_fn(frame) if record.mask_fn is not None else {}
        for label in set(record.boxes) | set(masks):
            if label in index:
                classes.add(label, record.image_id, predictions.maps[i][index[label]].astype(np.float32), frame,
                            boxes=record.boxes.get(label), mask=masks.get(label), window=window)
        texts = list(dict.fromkeys(t for _, t, _ in record.phrases))
        for category, text, boxes in record.phrases:
            heatmap = predictions.phrase_maps[i][texts.index(text)].astype(np.float32)
            phrases.add(category, record.image_id, heatmap, frame, boxes=boxes, kind="phrase", window=window)
    if not classes.items and not phrases.items:
        return None
    out = classes.summary()
    if phrases.items:
        out["phrases"] = phrases.summary()
    out["items"] = classes.items + phrases.items
    return out


def write_split_manifest(path: Path, eval_set: EvalSet, predictions: Predictions) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image_id", "path", "status"])
        for record, status in zip(eval_set.records, predictions.status, strict=True):
            writer.writerow([record.image_id, str(record.path), status])


def make_plots(work: Path, eval_set: EvalSet, predictions: Predictions, results: dict, queries,
               center_crop: bool) -> dict[str, list[str]]:
    from devide.data.image_io import load_image
    from devide.evaluation.grounding import grid_for, place_map

    plots: dict[str, list[str]] = {"roc": [], "bars": [], "overlays": []}
    for folder in ("plots/roc", "plots/overlays"):
        (work / folder).mkdir(parents=True, exist_ok=True)
    ok = predictions.ok
    labels, scores = eval_set.label_matrix()[ok], predictions.probs[ok]
    for j, row in enumerate(results["metrics"]["classes"]):
        rel = f"plots/roc/{rep.slug(row['class'])}.png"
        if rep.plot_roc(work / rel, row["class"], labels[:, j], scores[:, j], row):
            plots["roc"].append(rel)
    rep.plot_auc_bars(work / "plots/auc_bars.png", results["metrics"]["classes"], {q.label: q.group for q in queries})
    plots["bars"].append("plots/auc_bars.png")
    for j, examples in sorted(predictions.examples.items()):
        label = queries[j].label
        for n, (prob, i) in enumerate(examples):
            record = eval_set.records[i]
            if i not in predictions.maps or predictions.status[i] != "ok":
                continue
            frame = record.frame_size or tuple(int(v) for v in predictions.sizes[i])
            placed = place_map(predictions.maps[i][j].astype(np.float32), grid_for(frame), crop_window(frame, center_crop))
            rel = f"plots/overlays/{rep.slug(label)}_{n + 1}.png"
            rep.plot_overlay(work / rel, load_image(record.path, draft_size=512), placed, record.boxes.get(label, []),
                             frame, f"{label}: p={prob:.2f} ({record.image_id[-28:]})")
            plots["overlays"].append(rel)
    return plots


# ---------------------------------------------------------------------------------------------- run


def run(cfg: EvaluateConfig, ctx: StageContext) -> dict[str, Any]:
    try:
        adapter_cls = get_adapter(cfg.dataset)
        adapter = adapter_cls(cfg.root, **cfg.adapter_options)
        eval_set = adapter.load(cfg.split)
    except AdapterError as exc:
        raise StageError(str(exc)) from None
    if not eval_set.records:
        raise StageError(f"{cfg.dataset}/{cfg.split}: no images to evaluate ({len(eval_set.rejections)} rows "
                         f"rejected, first: {eval_set.rejections[0].reason if eval_set.rejections else 'none'})")
    model_dir = find_model_dir(cfg.model)
    model, processor = load_model(model_dir)
    vocab = load_vocabulary_optional(cfg.vocabulary)
    descriptions = json.loads(cfg.descriptions.read_text(encoding="utf-8")) if cfg.descriptions else {}
    queries = plan_queries(eval_set, adapter_cls.vocab_key, model, vocab, read_knowledge(cfg.knowledge),
                           descriptions, declared_unseen(cfg, model))
    key_parts = {"model_revision": model_revision(model_dir), "dataset": cfg.dataset,
                 "knowledge_hash": knowledge_hash(queries)}
    scorer = ZeroShotScorer(model, processor, queries, batch_size=cfg.batch_size, num_workers=cfg.num_workers,
                            examples_per_class=cfg.examples_per_class, device=cfg.device)
    predictions, from_cache = cached_predictions(scorer, eval_set, key_parts, ctx, cfg)
    val_set, val_predictions, val_note = validation_predictions(adapter, scorer, key_parts, ctx, cfg)
    eval_set.notes.append(val_note)
    eval_set.notes.append(seen_note(model))
    results = build_results(cfg, eval_set, predictions, val_set, val_predictions, queries, key_parts, model_dir,
                            getattr(processor, "center_crop", False))
    trained_on = getattr(model.config, "training_data", None) or None
    results["model_trained_on"] = trained_on
    if trained_on and trained_on.get("phantom"):  # a phantom-trained model is never compared with papers
        results["phantom"] = True
    write_outputs(ctx.work_dir, cfg, eval_set, predictions, results, queries, getattr(processor, "center_crop", False))
    summary = rep.console_table(results, ctx.out / "report.md")
    (ctx.work_dir / "summary.txt").write_text(summary + "\n", encoding="utf-8")
    print(summary, flush=True)
    return {**results["counts"], "predictions_from_cache": from_cache,
            "macro_auc": results["metrics"]["macro"]["all"]["auc"]}


def build_results(cfg, eval_set, predictions, val_set, val_predictions, queries, key_parts, model_dir,
                  center_crop) -> dict:
    ok = predictions.ok
    rejected = image_rejections(eval_set, predictions)
    counts = {"manifest_rows": len(eval_set.records), "evaluated": int(ok.sum()), "rejected_images": len(rejected),
              "rejected_rows": len(eval_set.rejections), "classes": len(queries),
              "seen": sum(q.group == "seen" for q in queries), "unseen": sum(q.group == "unseen" for q in queries)}
    if counts["evaluated"] + counts["rejected_images"] != counts["manifest_rows"]:  # never drop silently
        raise StageError(f"internal error: {counts['evaluated']} evaluated + {counts['rejected_images']} rejected "
                         f"!= {counts['manifest_rows']} records")
    if not counts["evaluated"]:
        raise StageError(f"{cfg.dataset}/{cfg.split}: none of the {counts['manifest_rows']} images could be read "
                         f"(first reason: {rejected[0].reason})")
    labels = eval_set.label_matrix()[ok]
    groups = {"seen": [q.label for q in queries if q.group == "seen"],
              "unseen": [q.label for q in queries if q.group == "unseen"], **eval_set.label_sets}
    val_labels = val_scores = None
    if val_set is not None and val_predictions is not None:
        val_ok = val_predictions.ok
        # val scores are in query (= test class) order; val labels in the val split's own class order
        val_labels = align_columns(val_set.classes, val_set.label_matrix()[val_ok], eval_set.classes)
        val_scores = val_predictions.probs[val_ok]
    patients = [r.patient_id for r, good in zip(eval_set.records, ok, strict=True) if good]
    metrics = classification_report(eval_set.classes, labels, predictions.probs[ok], groups=groups,
                                     protocols=tuple(cfg.protocols), val_labels=val_labels, val_scores=val_scores,
                                     n_bootstrap=cfg.bootstrap, seed=cfg.seed, patient_ids=patients)
    sex = [s for s, good in zip(predictions.sex, ok, strict=True) if good]
    age = [a for a, good in zip(predictions.age, ok, strict=True) if good]
    subgroups = None
    if any(s is not None for s in sex) or any(a is not None for a in age):
        subgroups = subgroup_report(eval_set.classes, labels, predictions.probs[ok], sex, age, cfg.age_bands)
    headline = cfg.headline_protocol if cfg.headline_protocol in cfg.protocols else cfg.protocols[0]
    return {"dataset": cfg.dataset, "dataset_title": get_adapter(cfg.dataset).title, "split": cfg.split,
            "root": str(cfg.root), "model": str(model_dir), **key_parts, "headline_protocol": headline,
            "phantom": any((f / "findings.json").is_file() for f in (cfg.root, cfg.root.parent)),
            "counts": counts, "notes": eval_set.notes, "queries": query_table(queries), "metrics": metrics,
            "grounding": score_grounding(eval_set, predictions, queries, center_crop), "subgroups": subgroups,
            "rejections": [vars(r) for r in eval_set.rejections + rejected],
            "protocol_descriptions": {p: PROTOCOLS[p] for p in cfg.protocols}}


def write_outputs(work: Path, cfg, eval_set, predictions, results, queries, center_crop: bool) -> None:
    rep.write_json(work / "results.json", results)
    rep.write_csv(work / "results.csv", results)
    rep.write_rejections(work / "rejections.csv", [*eval_set.rejections, *image_rejections(eval_set, predictions)])
    write_split_manifest(work / "split_manifest.csv", eval_set, predictions)
    plots = make_plots(work, eval_set, predictions, results, queries, center_crop)
    (work / "report.md").write_text(rep.markdown_report(results, plots), encoding="utf-8")
