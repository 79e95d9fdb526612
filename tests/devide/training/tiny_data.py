"""A tiny prepare-data artifact and knowledge file for trainer tests (images whose content follows the labels)."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import numpy as np
import yaml
from PIL import Image

ENTITIES = ["pleural_effusion", "cardiomegaly", "pneumothorax"]
KNOWLEDGE = {
    "pleural_effusion": {"definition": ["Fluid in the pleural space."],
                         "location": ["Dense opacity at the lung base blunting the costophrenic angle."]},
    "cardiomegaly": {"definition": ["Enlargement of the heart."],
                     "shape": ["A wide cardiac silhouette in the middle of the chest."]},
    "pneumothorax": {"definition": ["Air in the pleural space."],
                     "density": ["A dark lucent rim without lung markings at the apex."]},
}
TINY_MODEL = {
    "vision_config": {"model_type": "vit", "image_size": 32, "patch_size": 8, "num_channels": 1,
                      "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                      "intermediate_size": 64},
    "embed_dim": 32, "fusion_layers": 1, "fusion_heads": 2, "fusion_ffn_dim": 64,
}


def _image(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    image = rng.normal(90, 12, (48, 48))
    if labels[0] == 1:
        image[34:, 4:20] += 120  # effusion: dense left base
    if labels[1] == 1:
        image[18:36, 14:34] += 80  # cardiomegaly: wide central density
    if labels[2] == 1:
        image[2:12, 30:46] -= 70  # pneumothorax: dark right apex
    return np.clip(image, 0, 255).astype(np.uint8)


def _report(labels: np.ndarray) -> str:
    words = {0: "pleural effusion", 1: "cardiomegaly", 2: "pneumothorax"}
    present = [words[i] for i in range(3) if labels[i] == 1]
    return ("There is " + " and ".join(present) + ".") if present else "No acute cardiopulmonary process."


def build(folder: Path, n_train: int = 32, n_validate: int = 16, seed: int = 0) -> tuple[Path, Path]:
    """Write ``folder/root`` (images), ``folder/prepared`` (artifact) and ``folder/knowledge.json``."""
    rng = np.random.default_rng(seed)
    root, prepared = folder / "root", folder / "prepared"
    splits = {}
    for split, n in (("train", n_train), ("validate", n_validate)):
        rows = {"image_path": [], "report_text": [], "labels": [], "study_id": [], "split": []}
        for i in range(n):
            labels = rng.integers(0, 2, 3)
            rel = f"files/p10/p100000{i:02d}/s5{split[0]}{i:06d}/img.jpg"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(_image(labels, rng)).save(root / rel, quality=95)
            rows["image_path"].append(rel)
            rows["report_text"].append(_report(labels))
            rows["labels"].append(labels.astype(int).tolist())
            rows["study_id"].append(i)
            rows["split"].append(split)
        splits[split] = datasets.Dataset.from_dict(rows)
    datasets.DatasetDict(splits).save_to_disk(str(prepared / "dataset"))
    (prepared / "entities.json").write_text(json.dumps(ENTITIES))
    (prepared / "config.resolved.yaml").write_text(yaml.safe_dump({"root": str(root)}))
    (folder / "knowledge.json").write_text(json.dumps(KNOWLEDGE))
    return prepared, folder / "knowledge.json"


def train_config(folder: Path, out: Path, **overrides) -> dict:
    """A tiny training config (CPU, seconds) as a dict for load_config / YAML."""
    config = {
        "dataset": str(folder / "prepared"), "knowledge": str(folder / "knowledge.json"), "out": str(out),
        "entities": ENTITIES, "model": dict(TINY_MODEL), "batch_size": 4, "max_steps": 6, "learning_rate": 1e-3,
        "warmup_steps": 2, "checkpoint_every": 2, "workers": 0, "log_every": 2, "eval_max_images": 16,
        "mixed_precision": "no",
    }
    config.update(overrides)
    return config
