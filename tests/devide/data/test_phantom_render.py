"""Phantom renderer: determinism, every finding visible inside its box, masks, specification."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from devide.config import ConfigError
from devide.data.phantom import Case, Finding, load_spec, mask_to_rle, render_case, rle_to_mask
from devide.data.phantom.cases import sample_finding
from devide.data.phantom.lesions import RENDERERS
from devide.data.phantom.spec import ASPECTS, validate

SIZE = 128
# pixels whose grey level changes by at least this much count as "the lesion" in the difference image
DIFF_LEVEL = 12


def _case(entity: str, seed: int = 3, **aspects) -> Case:
    spec = load_spec()
    finding = sample_finding(np.random.default_rng(seed), spec, entity)
    if aspects:
        finding = Finding(**{**finding.__dict__, **aspects})
    companion = sample_finding(np.random.default_rng(seed + 1), spec, "nodule" if entity != "nodule" else "granuloma")
    return Case(seed=1000 + seed, view="PA", sex="F", age=50, findings=(finding, companion))


def test_render_is_deterministic_and_seed_dependent():
    case = _case("pleural_effusion")
    first, again = render_case(case, SIZE), render_case(case, SIZE)
    assert first.image.dtype == np.uint8 and first.image.shape == (SIZE, SIZE)
    assert np.array_equal(first.image, again.image)
    other = render_case(Case(seed=case.seed + 1, findings=case.findings), SIZE)
    assert not np.array_equal(first.image, other.image)


@pytest.mark.parametrize("entity", sorted(RENDERERS))
def test_box_contains_the_lesion(entity):
    """Pixel difference against the same study rendered without the finding lies inside its box."""
    case = _case(entity)
    with_it = render_case(case, SIZE)
    without = render_case(case.without(entity), SIZE)
    diff = np.abs(with_it.image.astype(int) - without.image.astype(int))
    changed = diff >= DIFF_LEVEL
    assert changed.sum() >= 3, f"{entity} is not visible at {SIZE} px"
    box = with_it.box(entity)
    assert box is not None
    x, y, w, h = box
    margin = 2
    inside = np.zeros_like(changed)
    inside[max(0, int(y) - margin):int(np.ceil(y + h)) + margin, max(0, int(x) - margin):int(np.ceil(x + w)) + margin] = True
    assert not (changed & ~inside).any(), f"{entity}: {int((changed & ~inside).sum())} changed pixels outside the box"
    # the box is about the lesion, not the whole image
    assert w * h < 0.8 * SIZE * SIZE
    # the other finding of the study did not move
    companion = case.findings[1].entity
    assert with_it.box(companion) == without.box(companion)


@pytest.mark.parametrize("entity", ["pneumothorax", "nodule", "cardiomegaly", "pleural_effusion", "support_devices"])
def test_findings_survive_downsampling_to_training_size(entity):
    """Rendered at 512 and reduced to 128 px (as training does), the finding still changes its box."""
    case = _case(entity, seed=5)
    with_it, without = render_case(case, 512), render_case(case.without(entity), 512)
    small = [np.asarray(Image.fromarray(r.image).resize((128, 128), Image.BILINEAR), dtype=float) for r in (with_it, without)]
    x, y, w, h = (int(round(v / 4)) for v in with_it.box(entity))
    region = np.abs(small[0] - small[1])[y:y + max(h, 1), x:x + max(w, 1)]
    assert region.max() >= 20, f"{entity}: max change {region.max():.1f} grey levels at 128 px"


def test_mask_matches_box_and_rle_round_trip():
    case = _case("pneumothorax", side="left")
    rendered = render_case(case, SIZE)
    mask = rendered.mask("pneumothorax")
    assert mask.any()
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    x, y, w, h = rendered.box("pneumothorax")
    assert x - 2 <= cols[0] and cols[-1] <= x + w + 2 and y - 2 <= rows[0] and rows[-1] <= y + h + 2
    assert cols.mean() > SIZE / 2, "the patient's left is on the image's right"
    assert np.array_equal(rle_to_mask(mask_to_rle(mask), SIZE, SIZE), mask)
    assert mask_to_rle(np.zeros((4, 4), bool)) == "-1"


def test_rle_is_column_major_and_relative():
    mask = np.zeros((4, 3), bool)  # 4 rows (height), 3 columns (width)
    mask[1:3, 0] = True  # column 0, rows 1-2 -> column-major positions 1, 2
    mask[0, 1] = True  # column 1, row 0 -> position 4
    assert mask_to_rle(mask) == "1 2 1 1"


def test_specification_covers_every_renderer_with_all_aspects():
    spec = load_spec()
    assert len(spec.rendered) >= 16
    required = {"atelectasis", "cardiomegaly", "pleural_effusion", "infiltration", "mass", "nodule", "pneumonia",
                "pneumothorax", "consolidation", "edema", "emphysema", "fibrosis", "pleural_thickening", "hernia",
                "fracture", "support_devices"}
    assert required <= set(spec.rendered)
    for entity in spec.rendered:
        assert set(ASPECTS) <= set(spec.get(entity)["aspects"])
    bad = {**spec.data, "findings": {**spec.findings, "nodule": {**spec.findings["nodule"], "aspects": {}}}}
    with pytest.raises(ConfigError, match="nodule"):
        validate(bad, "test")


def test_entities_exist_in_knowledge_vocabulary():
    vocabulary = pytest.importorskip("knowledge.vocabulary").load_vocabulary()
    spec = load_spec()
    missing = [e for e in spec.findings if e not in vocabulary]
    assert not missing


def test_upscaled_rle_equals_rle_of_the_replicated_mask():
    from devide.data.phantom.formats import upscaled_mask_to_rle

    rng = np.random.default_rng(0)
    for _ in range(200):
        side, factor = int(rng.integers(1, 10)), int(rng.integers(1, 4))
        mask = rng.random((side, side)) < rng.random()
        mask[:, int(rng.integers(0, side))] = True  # full columns: runs that continue into the next column
        big = mask.repeat(factor, axis=0).repeat(factor, axis=1)
        assert upscaled_mask_to_rle(mask, factor) == mask_to_rle(big)
    rendered = render_case(_case("pleural_effusion", side="bilateral"), 512)
    assert rendered.rle("pleural_effusion") == mask_to_rle(rendered.mask("pleural_effusion")) != "-1"


@pytest.mark.parametrize("entity", ["cardiomegaly", "fracture", "atelectasis"])
def test_anatomy_change_matches_a_second_composition(entity):
    """The support of a finding that changes the anatomy (computed from the changed layers alone) equals the
    density difference against a full composition of the study without it."""
    from devide.data.phantom import render

    case = _case(entity)
    base = render.anatomy_of(case)
    findings = list(case.findings)
    g, layers = render._draw(case, render._modified(base, findings), base, findings, SIZE)
    density = render.compose(g, layers)
    finding = next(f for f in findings if f.entity == entity)
    change = render.anatomy_change(case, base, findings, finding, g, layers, density)
    without, _ = render._density(case, base, [f for f in findings if f is not finding], SIZE)
    assert np.abs(change - np.abs(density - without)).max() < 1e-5
    assert (change > render.VISIBLE_DENSITY).any()


def test_integer_upsampling_matches_pillow_bilinear():
    from devide.data.phantom.render import upsample2

    image = (np.random.default_rng(1).random((37, 53)) * 255).astype(np.uint8)
    pillow = np.asarray(Image.fromarray(image).resize((106, 74), Image.BILINEAR), dtype=int)
    ours = (upsample2(image).astype(int) + 8) // 16
    assert np.abs(pillow - ours).max() <= 1


@pytest.mark.parametrize("factor", [2, 4])
def test_numpy_upsampling_matches_pillow_bilinear(factor):
    from devide.data.phantom.canvas import upsample

    for shape in [(37, 53), (1, 3), (64, 64)]:
        image = np.random.default_rng(2).random(shape).astype(np.float32)
        pillow = np.asarray(Image.fromarray(image, mode="F").resize((shape[1] * factor, shape[0] * factor),
                                                                    Image.BILINEAR))
        ours = upsample(image, factor)
        assert ours.shape == pillow.shape and ours.dtype == np.float32
        assert np.abs(ours - pillow).max() < 1e-6


@pytest.mark.parametrize("edges", ["extend", "zero"])
def test_half_resolution_blur_matches_the_full_blur_of_an_edge(edges):
    """The wide soft edges (body outline) are blurred at half resolution: close to the full-resolution Gaussian
    of the same width, odd sizes included."""
    from devide.data.phantom.canvas import gaussian, half_res_gaussian

    drawing = np.zeros((61, 47), np.float32)
    drawing[12:50, 9:30] = 255.0  # a block with a zero margin wider than the blur's reach
    drawing[30:50, 30:38] = 255.0
    full, half = gaussian(drawing, 2.0, edges), half_res_gaussian(drawing, 2.0, edges)
    assert half.shape == full.shape
    assert np.abs(half - full).max() < 0.05 * 255  # within 5 % of the edge step
    assert abs(float(half.sum()) - float(full.sum())) < 0.01 * float(full.sum())  # no density lost or gained


def test_stroke_outlines_with_several_widths_equal_one_width_at_a_time():
    from devide.data.phantom.canvas import stroke_outlines

    lines = np.random.default_rng(3).random((4, 6, 2))
    both = stroke_outlines(lines, 256, (0.02, 0.009))
    assert both == [stroke_outlines(lines, 256, 0.02), stroke_outlines(lines, 256, 0.009)]
