"""The multi-label projection layer learns from the image: L_tnc alone, pure noise vs informative images.

Two small runs of the model trained on L_tnc only (no presence head, no L_itc, no L_pta). On pure-noise images
with random labels the held-out L_tnc cannot go below its floor (the label entropy, ``tnc_floor``) and the
``similarity`` output ranks positives no better than chance; on images whose content follows the labels the
held-out L_tnc falls well below the floor and ``similarity`` ranks positives above negatives.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from devide.modeling import DevideConfig, DevideModel
from devide.modeling.losses import tnc_floor

ENTITIES = ["pleural_effusion", "cardiomegaly", "pneumothorax"]
KNOWLEDGE = {
    "pleural_effusion": ["Dense opacity at the lung base blunting the costophrenic angle.", "Fluid in the pleural space."],
    "cardiomegaly": ["A wide cardiac silhouette in the middle of the chest.", "Enlargement of the heart."],
    "pneumothorax": ["A dark lucent rim without lung markings at the apex.", "Air in the pleural space."],
}
CONFIG = {"entities": ENTITIES, "embed_dim": 32, "fusion_layers": 1, "fusion_heads": 2, "fusion_ffn_dim": 64,
          "fusion_dropout": 0.0, "use_bce": False, "use_itc": False, "use_pta": False,
          "vision_config": {"model_type": "vit", "image_size": 32, "patch_size": 8, "num_channels": 1,
                            "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                            "intermediate_size": 64}}


def synthetic(n: int, informative: bool, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n images [n, 1, 32, 32] and labels [n, 3]; informative: each finding drawn where its sentence says."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, (n, 3))
    images = rng.normal(0.0, 0.5, (n, 1, 32, 32))
    if informative:
        images[labels[:, 0] == 1, :, 22:, 2:14] += 2.0  # effusion: dense left base
        images[labels[:, 1] == 1, :, 10:24, 9:23] += 1.5  # cardiomegaly: wide central density
        images[labels[:, 2] == 1, :, 1:8, 20:31] -= 1.5  # pneumothorax: dark right apex
    return torch.tensor(images, dtype=torch.float32), torch.tensor(labels)


def train_and_measure(informative: bool, steps: int = 120, seed: int = 0, **config) -> dict[str, float]:
    """Train on 256 images for ``steps`` batches of 32; held-out L_tnc, its floor and similarity AUROC."""
    from sklearn.metrics import roc_auc_score

    torch.manual_seed(seed)
    model = DevideModel(DevideConfig(**{**CONFIG, **config}))
    model.set_knowledge(KNOWLEDGE)
    images, labels = synthetic(256, informative, seed)
    test_images, test_labels = synthetic(256, informative, seed + 1)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        index = torch.randint(0, len(images), (32,), generator=generator)
        loss = model(images[index], labels=labels[index]).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        held_out = float(model(test_images, labels=test_labels).loss_tnc)
        similarity = model.predict(test_images).similarity.numpy()
    aucs = [roc_auc_score(test_labels[:, e].numpy(), similarity[:, e]) for e in range(len(ENTITIES))]
    return {"loss": held_out, "floor": tnc_floor(test_labels), "auc": float(np.mean(aucs)), "min_auc": min(aucs)}


@pytest.mark.slow
def test_tnc_cannot_beat_its_floor_on_noise_but_does_on_informative_images():
    noise = train_and_measure(informative=False)
    informative = train_and_measure(informative=True)
    # noise: nothing to read; the held-out loss stays at or above the label entropy, similarity is chance
    assert noise["loss"] > noise["floor"] - 0.01, noise
    assert abs(noise["auc"] - 0.5) < 0.08, noise
    # informative: the same objective reads the image
    assert informative["loss"] < 0.6 * informative["floor"], informative
    assert informative["min_auc"] > 0.9, informative
