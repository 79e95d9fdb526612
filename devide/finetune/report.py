"""The comparison of variants: headline numbers, pretrained-vs-random gaps, alignment effects, Markdown."""

from __future__ import annotations

from typing import Any

from devide.evaluation.report import fmt, fmt_ci


def headline(metrics: dict[str, Any]) -> dict[str, Any]:
    """The few numbers a table shows for one variant."""
    train = metrics.get("train", {})
    out: dict[str, Any] = {"images_per_second": train.get("images_per_second"), "steps": train.get("steps"),
                           "train_images": train.get("train_images")}
    if "classification" in metrics:
        groups = metrics["classification"]["macro"]
        out.update(auc=groups["all"]["auc"], auc_ci=groups["all"]["auc_ci"],
                   auc_groups={name: {"auc": g["auc"], "auc_ci": g["auc_ci"]} for name, g in groups.items()
                               if name != "all"})
        grounding = (metrics.get("grounding") or {}).get("overall") or {}
        out.update(pointing_game=grounding.get("pointing_game"), map_auroc=grounding.get("map_auroc"),
                   grounding_n=grounding.get("n"))
    if "segmentation" in metrics:
        out.update(metrics["segmentation"]["macro"])
    return out


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(a - b, 6)


def comparisons(rows: dict[str, dict[str, Any]], variants: list[Any]) -> dict[str, Any]:
    """Pretrained minus random (same mode and alignment), and aligned minus unaligned (same init and mode)."""
    keys = ("auc", "pointing_game", "map_auroc", "dice_positive", "dice_all", "iou_positive", "iou_all")
    by_recipe = {(v.init, v.mode, v.align_weight): v.name for v in variants}
    gaps, alignment = {}, {}
    for (init, mode, weight), name in by_recipe.items():
        random_name = by_recipe.get(("random", mode, weight))
        if init == "pretrained" and random_name:
            gaps[f"{name} vs {random_name}"] = {k: _diff(rows[name].get(k), rows[random_name].get(k)) for k in keys
                                                if rows[name].get(k) is not None}
        plain = by_recipe.get((init, mode, 0.0))
        if weight > 0 and plain:
            alignment[f"{name} vs {plain}"] = {k: _diff(rows[name].get(k), rows[plain].get(k)) for k in keys
                                               if rows[name].get(k) is not None}
    return {"pretrained_minus_random": gaps, "aligned_minus_unaligned": alignment}


def markdown(results: dict[str, Any]) -> str:
    """results.md: the setting, the variant table and the comparisons."""
    setting = results["setting"]
    intro = (f"Split protocol: {setting['split_protocol']}; labelled: {setting['selected_images']} images of "
             f"{setting['selected_patients']} patients (of {setting['pool_patients']}); test: "
             f"{setting['test_images']} images; seed {setting['seed']}.")
    lines = [f"# Fine-tuning: {setting['dataset']} {setting['task']} with {setting['fraction'] * 100:g} % of the labels",
             "", intro, ""]
    rows = results["variants"]
    if setting["task"] == "classification":
        lines += ["| variant | macro AUC [95 % CI] | class subsets | pointing game | map AUROC | images/s |",
                  "|---|---|---|---|---|---|"]
        for name, row in rows.items():
            subsets = "; ".join(f"{g} {fmt_ci(e)}" for g, e in row.get("auc_groups", {}).items()) or "-"
            lines.append(f"| {name} | {fmt_ci(row)} | {subsets} | {fmt(row.get('pointing_game'))} | "
                         f"{fmt(row.get('map_auroc'))} | {fmt(row.get('images_per_second'), 1)} |")
    else:
        lines += [("| variant | Dice (positive images) [95 % CI] | Dice (all images, MedKLIP) | IoU (positive) | IoU (all) "
                   "| images/s |"), "|---|---|---|---|---|---|"]
        for name, row in rows.items():
            ci = row.get("dice_positive_ci")
            dice = fmt(row.get("dice_positive")) + (f" [{fmt(ci[0])}, {fmt(ci[1])}]" if ci else "")
            lines.append(f"| {name} | {dice} | {fmt(row.get('dice_all'))} | "
                         f"{fmt(row.get('iou_positive'))} | {fmt(row.get('iou_all'))} | "
                         f"{fmt(row.get('images_per_second'), 1)} |")
    for title, key in (("Pretrained minus random init", "pretrained_minus_random"),
                       ("Attention alignment: aligned minus unaligned", "aligned_minus_unaligned")):
        if results["comparisons"][key]:
            lines += ["", f"## {title}", ""]
            for pair, diffs in results["comparisons"][key].items():
                shown = ", ".join(f"{k} {v:+.3f}" for k, v in diffs.items() if v is not None)
                lines.append(f"- {pair}: {shown or 'n/a'}")
    if setting["task"] == "classification":
        lines += ["", (f"AUC: macro over classes with both positives and negatives in the test split; 95 % CIs from "
                       f"{setting['bootstrap']} bootstrap resamples of the test images.")]
    else:
        lines += ["", ("Dice (positive images): mean over images with a non-empty ground-truth mask. Dice (all "
                       "images, MedKLIP): negatives included, an empty prediction on a negative image counts 1.")]
    return "\n".join(lines) + "\n"


def summary_text(results: dict[str, Any]) -> str:
    """The short console table (printed by `devide run` at the end)."""
    setting = results["setting"]
    key = "auc" if setting["task"] == "classification" else "dice_positive"
    parts = [f"finetune {setting['dataset']} {setting['task']} {setting['fraction'] * 100:g} %:"]
    for name, row in results["variants"].items():
        extra = f" (Dice all {fmt(row.get('dice_all'))})" if key == "dice_positive" else ""
        parts.append(f"  {name}: {key} {fmt(row.get(key))}{extra}")
    return "\n".join(parts) + "\n"
