"""Evaluation outputs: results.json, results.csv, report.md and PNG plots (matplotlib, Agg backend).

Plots: ``plots/roc/<class>.png`` (ROC curve per class with its AUC and CI), ``plots/auc_bars.png`` (per-class
AUC with 95 % CI, seen and unseen coloured apart), ``plots/overlays/<class>_<n>.png`` (grounding map over the
radiograph with the ground-truth boxes, for the highest-scoring positives of each class).
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import roc_curve  # noqa: E402

from devide.evaluation.baselines import NOT_AVAILABLE, baselines_for  # noqa: E402
from devide.evaluation.metrics import OPTIMISTIC, valid_mask  # noqa: E402

HEADLINE_METRICS = ("f1", "accuracy", "mcc")


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "class"


def fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def fmt_ci(entry: dict) -> str:
    low, high = entry.get("auc_ci", [None, None])
    return f"{fmt(entry.get('auc'))} [{fmt(low)}, {fmt(high)}]"


# ---------------------------------------------------------------------------------------------- files


def write_json(path: Path, results: dict) -> None:
    path.write_text(json.dumps(results, indent=1, ensure_ascii=False, default=str) + "\n", encoding="utf-8")


def write_csv(path: Path, results: dict) -> None:
    """One row per class, then one per macro group; every F1/ACC/MCC column names its protocol."""
    protocols = list(results["metrics"]["protocols"])
    columns = ["dataset", "split", "row", "class", "entity", "group", "query", "training_positives", "n", "n_pos",
               "auc", "auc_ci_low", "auc_ci_high", "bootstrap_dropped"] + [
        f"{m}[{p}]" for p in protocols for m in (*HEADLINE_METRICS, "threshold")]
    queries = {q["label"]: q for q in results["queries"]}
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        base = [results["dataset"], results["split"]]
        for row in results["metrics"]["classes"]:
            query = queries.get(row["class"], {})
            writer.writerow(base + ["class", row["class"], query.get("entity") or "", query.get("group", ""),
                                    query.get("kind", ""), _blank(query.get("training_positives")), row["n"],
                                    row["n_pos"], row["auc"], *row["auc_ci"], row.get("bootstrap_dropped", "")]
                            + [row[p].get(m) for p in protocols for m in (*HEADLINE_METRICS, "threshold")])
        for group, entry in results["metrics"]["macro"].items():
            writer.writerow(base + ["macro", group, "", group, "", "", len(entry["classes"]), "", entry["auc"],
                                    *entry["auc_ci"], entry.get("bootstrap_dropped", "")]
                            + [entry[p].get(m) if m != "threshold" else "" for p in protocols
                               for m in (*HEADLINE_METRICS, "threshold")])


def _blank(value) -> object:
    return "" if value is None else value


def write_rejections(path: Path, rejections: Sequence) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["source", "item", "reason"])
        for r in rejections:
            writer.writerow([r.source, r.item, r.reason])


# ---------------------------------------------------------------------------------------------- plots


def plot_roc(path: Path, name: str, labels: np.ndarray, scores: np.ndarray, entry: dict) -> bool:
    """ROC curve of one class ([N] labels in {1, 0, -1, -100}); False when the AUC is undefined."""
    keep = valid_mask(labels)
    y = labels[keep] == 1
    if y.all() or not y.any():
        return False
    fpr, tpr, _ = roc_curve(y.astype(int), scores[keep])
    fig, ax = plt.subplots(figsize=(3.6, 3.6), dpi=100)
    ax.plot(fpr, tpr, lw=1.6, label=f"AUC {fmt_ci(entry)}")
    ax.plot([0, 1], [0, 1], ls="--", lw=0.8, color="grey")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1.01))
    ax.set_title(f"{name} (n={entry['n']}, pos={entry['n_pos']})", fontsize=9)
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def plot_auc_bars(path: Path, rows: list[dict], groups: dict[str, str]) -> None:
    """Per-class AUC with 95 % CI error bars, seen (blue) / unseen (orange), defined classes only."""
    defined = [r for r in rows if r["auc"] is not None]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.35 * len(defined) + 1.5), 3.8), dpi=100)
    if defined:
        x = np.arange(len(defined))
        auc = np.array([r["auc"] for r in defined])
        low = np.array([r["auc_ci"][0] if r["auc_ci"][0] is not None else r["auc"] for r in defined])
        high = np.array([r["auc_ci"][1] if r["auc_ci"][1] is not None else r["auc"] for r in defined])
        colours = ["tab:blue" if groups.get(r["class"]) == "seen" else "tab:orange" for r in defined]
        # A percentile CI from few resamples need not contain the point AUC: draw the interval itself, not
        # offsets around the bar (negative offsets made errorbar raise).
        ax.bar(x, auc, color=colours)
        ax.errorbar(x, (low + high) / 2, yerr=np.abs(high - low) / 2, fmt="none", capsize=2, ecolor="black")
        ax.set_xticks(x, [r["class"] for r in defined], rotation=60, ha="right", fontsize=7)
    ax.axhline(0.5, ls="--", lw=0.8, color="grey")
    ax.set(ylim=(0, 1), ylabel="AUC (95% CI)", title="zero-shot AUC per class (blue seen, orange unseen)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_overlay(path: Path, image, placed: np.ndarray, boxes: Sequence, frame: tuple[int, int],
                 title: str) -> None:
    """The radiograph (PIL "L") with a grounding map [gh, gw] over it and ground-truth boxes (frame pixels)."""
    width, height = frame
    fig, ax = plt.subplots(figsize=(3.6, 3.6 * height / max(width, 1)), dpi=100)
    ax.imshow(np.asarray(image.resize((placed.shape[1] * 2, placed.shape[0] * 2))), cmap="gray",
              extent=(0, width, height, 0))
    ax.imshow(placed, cmap="jet", alpha=0.4, extent=(0, width, height, 0))
    for x1, y1, x2, y2 in boxes:
        ax.add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, ec="lime", lw=1.2))
    ax.set_title(title, fontsize=8)
    ax.axis("off")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------- markdown


def markdown_report(results: dict, plots: dict[str, list[str]]) -> str:
    metrics, protocols = results["metrics"], list(results["metrics"]["protocols"])
    headline = results["headline_protocol"]
    lines = [f"# Zero-shot evaluation: {results['dataset_title']} ({results['split']})", "",
             f"- model: `{results['model']}` (revision `{results['model_revision'][:12]}`)",
             f"- dataset root: `{results['root']}`",
             f"- images: {results['counts']['manifest_rows']} in the split manifest, "
             f"{results['counts']['evaluated']} evaluated, {results['counts']['rejected_images']} unreadable; "
             f"{results['counts']['rejected_rows']} label rows rejected (see rejections.csv)",
             f"- knowledge hash `{results['knowledge_hash'][:12]}`; {_bootstrap_text(metrics)}", ""]
    if results.get("phantom"):
        lines += ["> Phantom (synthetic) data - the evaluation images or the model's training images: these numbers "
                  "measure the pipeline, not clinical performance, and are not comparable with published results.",
                  ""]
    lines += [f"- {note}" for note in results["notes"]] + [""]
    lines += ["## Threshold protocols", ""] + [f"- `{p}`: {text}" for p, text in metrics["protocols"].items()]
    lines += ["", f"The tables show F1 / ACC / MCC under `{headline}`; optimistic protocols are in results.csv "
              "and below, always labelled.", "", "## Macro AUC by class group", "",
              "| group | classes | AUC [95% CI] | " + " | ".join(f"F1 `{p}`" for p in protocols) + " |",
              "|---|---|---|" + "---|" * len(protocols)]
    for group, entry in metrics["macro"].items():
        lines.append(f"| {group} | {len(entry['classes'])} | {fmt_ci(entry)} | "
                     + " | ".join(fmt(entry[p]["f1"]) + (" (optimistic)" if p in OPTIMISTIC else "")
                                  for p in protocols) + " |")
    lines += ["", "## Per class", "", "*train pos*: positive training labels of the entity (seen = at least one).",
              "", f"| class | entity | group | train pos | query | n | pos | AUC [95% CI] | "
              f"F1 | ACC | MCC (`{headline}`) |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    queries = {q["label"]: q for q in results["queries"]}
    for row in metrics["classes"]:
        q, h = queries[row["class"]], row[headline]
        auc = fmt_ci(row) if row["auc"] is not None else f"n/a ({row['auc_undefined']})"
        positives = q.get("training_positives")
        lines.append(f"| {row['class']} | {q['entity'] or '-'} | {q['group']} | "
                     f"{'-' if positives is None else positives} | {q['kind']} ({q['source']}) | "
                     f"{row['n']} | {row['n_pos']} | {auc} | {fmt(h['f1'])} | {fmt(h['accuracy'])} | "
                     f"{fmt(h['mcc'])} |")
    lines += _grounding_section(results.get("grounding")) + _subgroup_section(results.get("subgroups"))
    lines += _baseline_section(results) + _rejection_section(results) + _plot_section(plots)
    return "\n".join(lines) + "\n"


def _grounding_section(grounding: dict | None) -> list[str]:
    if not grounding or not grounding.get("classes"):
        return []
    keys = [k for k in grounding["overall"] if k != "n"]
    lines = ["", "## Grounding", "", "Maps vs ground-truth boxes/masks on annotated positives (pointing game, "
             "IoU/Dice of the min-max normalised map at thresholds, pixel AUROC of the map).", "",
             "| class | n | " + " | ".join(keys) + " |", "|---|---|" + "---|" * len(keys)]
    for name, entry in [*grounding["classes"].items(), ("**all**", grounding["overall"])]:
        lines.append(f"| {name} | {entry['n']} | " + " | ".join(fmt(entry.get(k)) for k in keys) + " |")
    return lines


def _subgroup_section(subgroups: dict | None) -> list[str]:
    if not subgroups:
        return []
    lines = ["", "## Subgroups", ""]
    for attribute in ("sex", "age"):
        info = subgroups[attribute]
        if not info["groups"]:
            lines.append(f"- {attribute}: no metadata")
            continue
        groups = ", ".join(f"{g}: n={v['n']}, macro AUC {fmt(v['macro_auc'])}" for g, v in info["groups"].items())
        lines.append(f"- {attribute} ({info['unknown']} unknown): {groups}")
        gap = info.get("largest_gap")
        if gap:
            lines.append(f"  - largest gap: {gap['class']} {fmt(gap['gap'])} ({gap['best_group']} "
                         f"{fmt(gap['best_auc'])} vs {gap['worst_group']} {fmt(gap['worst_auc'])})")
        elif info.get("note"):
            lines.append(f"  - {info['note']}")
    return lines


def _bootstrap_text(metrics: dict) -> str:
    """'bootstrap 1000 resamples of 812 patients, seed 0; 3 dropped (undefined macro AUC)'."""
    boot = metrics["bootstrap"]
    text = f"bootstrap {boot['resamples']} resamples"
    if "unit" in boot:
        text += f" of {boot['units']} {boot['unit']}s"
    text += f", seed {boot['seed']}"
    dropped = metrics["macro"].get("all", {}).get("bootstrap_dropped")
    worst = max((r.get("bootstrap_dropped") or 0 for r in metrics["classes"]), default=0)
    if boot["resamples"] and dropped is not None:
        text += (f"; resamples dropped for an undefined AUC: {dropped} for the macro, up to {worst} for one class "
                 "(per class in results.csv)")
    return text


def _baseline_section(results: dict) -> list[str]:
    rows = baselines_for(results["dataset"])
    if not rows:
        return []
    if results.get("phantom"):  # synthetic data: never in one table with real-data numbers
        return ["", "## Published baselines", "",
                "Not shown: this model was trained or evaluated on phantom (synthetic) radiographs, and "
                "published baselines were measured on real data; the two are not comparable."]
    macro = results["metrics"]["macro"]
    lines = ["", "## Published baselines (same dataset)", "", NOT_AVAILABLE,
             "Numbers are macro AUC over the named class set; protocols differ - compare like with like.", "",
             "| method | class set | AUC | F1 | ACC | protocol | source |", "|---|---|---|---|---|---|---|"]
    for class_set in dict.fromkeys(r["class_set"] for r in rows):
        ours = macro.get(class_set)
        if ours:
            opt = ours.get("max-f1-test", {})
            lines.append(f"| **this model** | {class_set} ({len(ours['classes'])}) | {fmt_ci(ours)} | "
                         f"{fmt(opt.get('f1'))} | {fmt(opt.get('accuracy'))} | max-f1-test (optimistic) | this run |")
    for r in rows:
        lines.append(f"| {r['method']} | {r['class_set']} | {fmt(r['auc'])} | {fmt(r.get('f1'))} | "
                     f"{fmt(r.get('acc'))} | {r['protocol']} | {r['source']} |")
    return lines


def _rejection_section(results: dict) -> list[str]:
    reasons = Counter(r["reason"].split(":")[0] for r in results["rejections"])
    if not reasons:
        return ["", "## Rejections", "", "None: every row and image was evaluated."]
    lines = ["", "## Rejections", "", "| reason | count |", "|---|---|"]
    lines += [f"| {reason} | {count} |" for reason, count in reasons.most_common()]
    return lines + ["", "Every rejected row and image is listed with its reason in rejections.csv."]


def _plot_section(plots: dict[str, list[str]]) -> list[str]:
    lines = ["", "## Plots", ""]
    if plots.get("bars"):
        lines.append(f"![per-class AUC]({plots['bars'][0]})")
    for title, key in (("ROC curves", "roc"), ("Grounding overlays", "overlays")):
        if plots.get(key):
            lines += ["", f"### {title}", ""] + [f"![{Path(p).stem}]({p})" for p in plots[key]]
    return lines


def console_table(results: dict, report_path: Path) -> str:
    """The zero-shot table printed at the end of a run: seen and unseen findings, then the report path."""
    headline = results["headline_protocol"]
    queries = {q["label"]: q for q in results["queries"]}
    width = max([len(r["class"]) for r in results["metrics"]["classes"]] + [12])
    out = [f"zero-shot {results['dataset']} ({results['split']}): {results['counts']['evaluated']} images, "
           f"F1/MCC under '{headline}'"]
    for group in ("seen", "unseen"):
        rows = [r for r in results["metrics"]["classes"] if queries[r["class"]]["group"] == group]
        if not rows:
            continue
        out.append(f"  {group} findings")
        for r in rows:
            out.append(f"    {r['class']:<{width}} AUC {fmt_ci(r):<24} F1 {fmt(r[headline]['f1'])}  "
                       f"MCC {fmt(r[headline]['mcc'])}  (n={r['n']}, pos={r['n_pos']})")
        macro = results["metrics"]["macro"].get(group)
        if macro:
            out.append(f"    {'macro ' + group:<{width}} AUC {fmt_ci(macro)}")
    out.append(f"    {'macro all':<{width}} AUC {fmt_ci(results['metrics']['macro']['all'])}")
    if ((results.get("grounding") or {}).get("overall") or {}).get("n"):
        g = results["grounding"]["overall"]
        out.append(f"  grounding: pointing game {fmt(g.get('pointing_game'))}, map AUROC {fmt(g.get('map_auroc'))} "
                   f"(n={g['n']})")
    out.append(f"report: {report_path}")
    return "\n".join(out)
