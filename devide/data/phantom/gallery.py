"""Picture grid of every phantom finding (for docs/phantom.md).

    python -m devide.data.phantom.gallery --out docs/images/phantom_findings.png [--size 256] [--no-boxes]

Each tile is one study with a single finding, rendered at ``--size`` and labelled with its entity id; the red
rectangle is the ground-truth box the evaluation sets use.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from devide.data.phantom.case import Case, Finding
from devide.data.phantom.cases import sample_finding
from devide.data.phantom.render import render_case
from devide.data.phantom.spec import load_spec

# A fixed, readable example of each finding (aspects override the sampled ones where it helps the picture).
EXAMPLES: dict[str, dict] = {
    "pleural_effusion": {"side": "right", "size": 0.3, "severity": "moderate"},
    "pneumothorax": {"side": "left", "size": 0.3},
    "cardiomegaly": {"size": 0.64},
    "enlarged_cardiomediastinum": {"size": 2.0},
    "consolidation": {"lobe": "RUL"},
    "pneumonia": {"side": "left", "zone": "lower", "size": 7.0},
    "infiltration": {"side": "right", "zone": "mid"},
    "atelectasis": {"variant": "lobar", "side": "left"},
    "nodule": {"side": "right", "zone": "upper", "size": 2.2, "variant": "single"},
    "mass": {"side": "left", "zone": "upper", "size": 5.5, "variant": "spiculated"},
    "fracture": {"side": "right", "variant": "clavicle"},
    "support_devices": {"devices": ("endotracheal_tube", "nasogastric_tube", "central_venous_catheter")},
    "pleural_thickening": {"side": "right", "size": 1.1, "variant": "lateral"},
    "emphysema": {"variant": "bullous"},
    "hernia": {"size": 7.0},
    "cavity": {"side": "right", "size": 4.5},
    "granuloma": {"side": "left", "zone": "mid", "size": 0.8},
    "pneumoperitoneum": {"side": "right", "size": 2.0},
}


def example(entity: str, index: int) -> Case:
    spec = load_spec()
    finding = sample_finding(np.random.default_rng([index, 17]), spec, entity)
    finding = Finding(**{**finding.__dict__, **EXAMPLES.get(entity, {})})
    return Case(seed=4000 + index, view="PA", sex="M" if index % 3 else "F", age=60, findings=(finding,))


def gallery(size: int = 256, columns: int = 5, boxes: bool = True) -> Image.Image:
    spec = load_spec()
    entities = ["no_finding", *spec.rendered]
    font = ImageFont.load_default(size=max(10, size // 16))
    tiles = []
    for index, entity in enumerate(entities):
        case = Case(seed=4000, view="PA", sex="M", age=60) if entity == "no_finding" else example(entity, index)
        rendered = render_case(case, size)
        tile = Image.fromarray(rendered.image).convert("RGB")
        draw = ImageDraw.Draw(tile)
        box = rendered.box(entity) if entity != "no_finding" else None
        if boxes and box:
            x, y, w, h = box
            draw.rectangle([x, y, x + w, y + h], outline=(255, 40, 40), width=max(1, size // 200))
        draw.text((4, size - size // 12), entity.replace("_", " "), fill=(255, 235, 0), font=font,
                  stroke_width=2, stroke_fill=(0, 0, 0))
        tiles.append(np.asarray(tile))
    while len(tiles) % columns:
        tiles.append(np.zeros_like(tiles[0]))
    rows = [np.hstack(tiles[i:i + columns]) for i in range(0, len(tiles), columns)]
    return Image.fromarray(np.vstack(rows))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Render a picture grid of every phantom finding.")
    parser.add_argument("--out", type=Path, default=Path("docs/images/phantom_findings.png"))
    parser.add_argument("--size", type=int, default=256, help="tile size in pixels")
    parser.add_argument("--columns", type=int, default=5)
    parser.add_argument("--no-boxes", action="store_true", help="do not draw the ground-truth boxes")
    args = parser.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    gallery(args.size, args.columns, not args.no_boxes).save(args.out, optimize=True)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
