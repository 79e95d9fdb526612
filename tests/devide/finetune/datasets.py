"""Tiny SIIM-ACR and CheXpert roots in their real layouts whose images follow their labels, and a tiny model.

SIIM: DICOMs under ``dicom-images-train/<study>/<series>/<sop>.dcm`` with a PatientID header, ``train-rle.csv``
(relative column-major RLE, ``-1`` for negatives); a positive has a bright square whose mask is the RLE.
CheXpert: ``CheXpert-v1.0-small/valid.csv`` + JPEGs; Cardiomegaly brightens the centre, Pleural Effusion the
lower left; some patients have two studies (patient-level selection must keep them together).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from devide.data.adapters.chexpert import CLASSES as CHEXPERT_CLASSES
from devide.data.adapters.siim import rle_encode
from tests.devide.evaluation import fixtures

SIDE = 48
TINY_VISION = {"model_type": "vit", "image_size": 32, "patch_size": 8, "num_channels": 1, "hidden_size": 32,
               "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64}


def siim_lesion(index: int) -> tuple[int, int, int]:
    """(row, col, side) of the lesion of positive image ``index``: upper part of the image, varying."""
    return 6 + index % 5, 8 + (index * 7) % 24, 10 + index % 6


def siim(root: Path, n: int = 40, positive_every: int = 2) -> list[str]:
    """``n`` images, every ``positive_every``-th positive; returns the ImageIds."""
    import pydicom

    rng = np.random.default_rng(0)
    lines, ids = ["ImageId, EncodedPixels"], []
    for i in range(n):
        sop = f"1.2.276.0.7230010.3.1.4.{1000 + i}"
        path = fixtures.write_dicom(root / "dicom-images-train" / f"1.2.3.{i}" / f"1.2.3.{i}.1" / f"{sop}.dcm", SIDE)
        image = rng.normal(90, 10, (SIDE, SIDE))
        mask = np.zeros((SIDE, SIDE), dtype=bool)
        if i % positive_every == 0:
            r, c, s = siim_lesion(i)
            mask[r:r + s, c:c + s] = True
            image[mask] += 110
        ds = pydicom.dcmread(path)
        ds.PixelData = np.clip(image, 0, 255).astype(np.uint8).tobytes()
        ds.PatientID = f"P{i // 2:04d}"  # two images per patient
        ds.save_as(path, enforce_file_format=True)
        lines.append(f"{sop}, {rle_encode(mask)}")
        ids.append(sop)
    fixtures.write_text(root / "train-rle.csv", "\n".join(lines) + "\n")
    return ids


def chexpert(root: Path, n_patients: int = 30) -> None:
    """valid.csv with 0/1 labels for every class; every third patient has a second study."""
    rng = np.random.default_rng(1)
    header = "Path,Sex,Age,Frontal/Lateral,AP/PA," + ",".join(CHEXPERT_CLASSES)
    rows = [header]
    for p in range(n_patients):
        for study in range(1, 2 + (p % 3 == 0)):
            cardio, effusion = int(rng.random() < 0.4), int(rng.random() < 0.3)
            image = rng.normal(80, 10, (SIDE, SIDE))
            if cardio:
                image[16:34, 14:34] += 90
            if effusion:
                image[34:, 2:20] += 100
            rel = f"CheXpert-v1.0-small/valid/patient{64000 + p}/study{study}/view1_frontal.jpg"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(root / rel, quality=95)
            labels = {c: 0 for c in CHEXPERT_CLASSES}
            labels.update({"Cardiomegaly": cardio, "Pleural Effusion": effusion,
                           "No Finding": int(not (cardio or effusion))})
            rows.append(f"{rel},Female,{50 + p},Frontal,PA," + ",".join(f"{labels[c]:.1f}" for c in CHEXPERT_CLASSES))
    fixtures.write_text(root / "CheXpert-v1.0-small" / "valid.csv", "\n".join(rows) + "\n")


def tiny_model(folder: Path) -> Path:
    """A saved DeViDe model with a 32 px, patch-8 ViT tower (the shipped MiniLM text tower)."""
    import torch

    from devide.modeling import DevideConfig, DevideModel

    torch.manual_seed(0)
    config = DevideConfig(vision_config=TINY_VISION, embed_dim=32, fusion_layers=1, fusion_heads=2,
                          fusion_ffn_dim=64, entities=["pneumothorax", "cardiomegaly", "pleural_effusion"])
    DevideModel(config).save_pretrained(folder)
    return folder
