"""The normal radiograph's layers: soft tissue, lungs, heart, mediastinum, bones, vessels, trachea.

Each function returns a density layer ``[res, res]`` (float32, arbitrary units: air outside the body 0,
soft tissue ~0.8, bone adds ~0.1-0.3); :func:`devide.data.phantom.render.compose` sums them with the
findings' layers and maps density to grey levels. Thin structures (ribs, clavicles, vessels) are drawn as
Pillow strokes and blurred once, which is far cheaper than evaluating distance fields in numpy.
"""

from __future__ import annotations

import json
import math
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from devide.data.phantom import canvas
from devide.data.phantom.anatomy import SIDES, Geometry, restricted, side_sign


def soft_tissue(g: Geometry) -> np.ndarray:
    """Neck, shoulders, chest wall, mediastinum and abdomen; thicker in the middle of the body."""
    p = g.p
    layer = _body_wall(g.res, p.mx, p.cx, p.tw, p.fat, p.clavicle_v, p.apex)
    if p.sex == "F":  # the breast shadows sit on the domes, which findings may move: a layer of their own
        layer = layer + _breasts(restricted(p, BREAST_FIELDS), g.res)
    return layer


BREAST_FIELDS = ("tw", "dome", "cx")


@lru_cache(maxsize=8)
def _breasts(p, res: int) -> np.ndarray:
    out = 0.1 * breasts(Geometry(p, res))
    out.setflags(write=False)
    return out


@lru_cache(maxsize=8)
def _body_wall(res: int, mx: float, cx: float, tw: float, fat: float, clavicle_v: float, apex: float) -> np.ndarray:
    # cached: the difference renders of a study (and its second image) share the body
    cl = clavicle_v
    half = tw + fat
    outline = [
        (mx - 0.085, -0.01), (mx + 0.085, -0.01), (mx + 0.11, cl - 0.08), (cx + half + 0.1, cl - 0.06),
        (1.02, cl - 0.02), (1.02, cl + 0.1), (cx + half + 0.02, apex + 0.22), (cx + half, 0.62),
        (cx + half + 0.015, 1.02), (cx - half - 0.015, 1.02), (cx - half, 0.62),
        (cx - half - 0.02, apex + 0.22), (-0.02, cl + 0.1), (-0.02, cl - 0.02),
        (cx - half - 0.1, cl - 0.06), (mx - 0.11, cl - 0.08),
    ]
    body = canvas.polygon_mask(outline, res, blur_px=2.0 * res / 256)
    layer = body * _thickness_profile(res, round(cx, 3), round(half, 3))
    layer.setflags(write=False)
    return layer


@lru_cache(maxsize=64)
def _thickness_profile(res: int, cx: float, half: float) -> np.ndarray:
    u = canvas.axis(res)
    column = 0.6 + 0.22 * np.sqrt(np.clip(1.0 - ((u - cx) / (half + 0.02)) ** 2, 0.0, 1.0))
    return np.broadcast_to(column[None, :], (res, res)).astype(np.float32)


def breasts(g: Geometry) -> np.ndarray:
    """Breast shadows over the lower zones with a sharp inferolateral margin."""
    p, res = g.p, g.res
    shapes = []
    for side in SIDES:
        cu = float(g.to_u(0.55 * p.tw, side))
        cv = p.dome[SIDES.index(side)] - 0.03
        ellipse = canvas.ellipse_points(cu, cv, 0.17, 0.11, n=40)
        shapes.append([(u, v) for u, v in ellipse if v > cv - 0.05])
    _, vv = canvas.grid(res)
    return canvas.polygon_mask(shapes, res, blur_px=2.0 * res / 256) * canvas.ramp(p.dome[0] - 0.16, p.dome[0] - 0.02, vv)


AIR_PER_DEPTH = 0.58  # density of the air column at full lung depth
RETROCARDIAC_AIR_LOSS = 0.62  # share of that air the heart displaces
HEART_DENSITY = 0.1


def lung_air(g: Geometry) -> np.ndarray:
    """Air in the lungs (subtracted from the density); thinner behind the heart."""
    return AIR_PER_DEPTH * g.p.air * g.air_depth * (1.0 - RETROCARDIAC_AIR_LOSS * g.heart)


def heart_and_mediastinum(g: Geometry) -> np.ndarray:
    return HEART_DENSITY * g.heart + _hila(g.res, g.hilum("right"), g.hilum("left"))


@lru_cache(maxsize=8)
def _hila(res: int, right: canvas.Point, left: canvas.Point) -> np.ndarray:
    return 0.1 * (canvas.blob(res, *right, 0.02, 0.035, power=1.5) + canvas.blob(res, *left, 0.02, 0.035, power=1.5))


def trachea(g: Geometry) -> np.ndarray:
    """The tracheal air column down to the carina, and the main bronchi (subtracted from the density)."""
    return _trachea(restricted(g.p, ("mx", "apex")), g.res)


@lru_cache(maxsize=8)
def _trachea(p, res: int) -> np.ndarray:
    cu, cv = Geometry(p, res).carina
    img = Image.new("L", (res, res), 0)
    draw = ImageDraw.Draw(img)
    canvas.draw_polyline(draw, [(p.mx - 0.002, 0.0), (p.mx + 0.001, cv * 0.6), (cu, cv)], res, 0.028, 255)
    for side in SIDES:
        s = side_sign(side)
        canvas.draw_polyline(draw, [(cu, cv - 0.005), (cu + s * 0.03, cv + 0.022), (cu + s * 0.055, cv + 0.05)],
                             res, 0.014, 180)
    out = canvas.soft(img, 1.3 * res / 256, scale=0.2 / 255.0)
    out.setflags(write=False)
    return out


def gastric_bubble(g: Geometry, rng: np.random.Generator) -> np.ndarray:
    p = g.p
    cu = float(g.to_u(0.45 * p.tw, "left"))
    cv = p.dome[1] + 0.05
    return 0.2 * canvas.blob(g.res, cu, cv, float(rng.uniform(0.03, 0.05)), 0.022, power=3.0)


# ---------------------------------------------------------------------------------------------- bones


def posterior_rib(g: Geometry, side: str, k: int) -> list[canvas.Point]:
    """Centre line of posterior rib ``k`` (0 = first rib): up from the spine, then curving down laterally."""
    p = g.p
    top = p.apex - 0.05 + p.rib_spacing * (k + 0.06 * k * k) * 0.95
    us = p.mx + side_sign(side) * p.tw * _RIB_S
    vs = top + _RIB_DV
    return list(zip(us.tolist(), vs.tolist()))


_RIB_S = np.linspace(0.08, 1.08, 12)
_RIB_DV = -0.05 * _RIB_S + 0.13 * _RIB_S * _RIB_S + 0.05 * np.clip(_RIB_S - 0.85, 0, None)
_ANTERIOR_S = np.linspace(1.02, 0.3, 8)
_ANTERIOR_DV = 0.17 * np.clip(1.0 - _ANTERIOR_S, 0, None) ** 1.1 + 0.03 * np.clip(_ANTERIOR_S - 0.9, 0, None)


def anterior_rib(g: Geometry, side: str, k: int) -> list[canvas.Point]:
    """Centre line of anterior rib ``k``: from the lateral wall sloping down medially to the cartilage."""
    p = g.p
    top = p.apex + 0.005 + p.rib_spacing * 1.3 * k
    us = p.cx + side_sign(side) * p.tw * _ANTERIOR_S
    return list(zip(us.tolist(), (top + _ANTERIOR_DV).tolist()))


def clavicle_points(g: Geometry, side: str) -> list[canvas.Point]:
    p = g.p
    rise = 0.075 if p.view == "PA" else 0.03
    ds = np.linspace(0.03, p.tw + 0.06, 14)
    t = (ds - ds[0]) / (ds[-1] - ds[0])
    vs = p.clavicle_v + 0.03 - rise * t - 0.012 * np.sin(np.pi * t * 1.7)
    return list(zip((p.mx + side_sign(side) * ds).tolist(), vs.tolist()))


def draw_bones(g: Geometry, edits: list[dict] | None = None) -> Image.Image:
    """All bones into one 8-bit image (value ~ bone thickness).

    ``edits`` are fractures: ``{"bone": "rib" | "clavicle", "side", "k" (rib number), "t" (0-1 along the
    bone from medial), "shift" (displacement of the lateral fragment), "callus" (healing)}``.
    """
    p, res = g.p, g.res
    img = Image.new("L", (res, res), 0)
    draw = ImageDraw.Draw(img)
    rib_w = 0.42 * p.rib_spacing
    breaks = {(e["bone"], e["side"], e.get("k", 0)): e for e in edits or ()}
    for side in SIDES:
        # the intact ribs' outlines in one batch (numpy); drawing order as if stroked one by one
        for outline in canvas.stroke_outlines(_anterior_lines(g, side, 6), res, rib_w * 1.1):
            draw.polygon(outline, fill=50)  # anterior ribs: faint, drawn first
        cortex, medulla = canvas.stroke_outlines(_posterior_lines(g, side, 12), res, (rib_w, rib_w * 0.45))
        for k in range(12):
            edit = breaks.get(("rib", side, k))
            if not edit:
                draw.polygon(cortex[k], fill=120)
                draw.polygon(medulla[k], fill=85)  # medulla: cortices read brighter
                continue
            pts = posterior_rib(g, side, k)
            for piece in _pieces(pts, edit):
                canvas.draw_polyline(draw, piece, res, rib_w, 120)
                canvas.draw_polyline(draw, piece, res, rib_w * 0.45, 85)
            _draw_break(draw, pts, edit, res, rib_w)
        hu = float(g.to_u(p.tw + 0.11, side))
        hv = p.clavicle_v - 0.01
        canvas.draw_polyline(draw, [(hu, hv), (float(g.to_u(p.tw + 0.14, side)), 0.5)], res, 0.07, 120)
        draw.ellipse(canvas.to_px([(hu - 0.06, hv - 0.055), (hu + 0.06, hv + 0.06)], res), fill=150)
        inner = p.tw * (0.8 if p.view == "AP" else 1.02)
        scapula = [(g.to_u(p.tw + 0.06, side), p.clavicle_v + 0.02), (g.to_u(inner, side), p.apex + 0.1),
                   (g.to_u(inner + 0.03, side), p.apex + 0.36), (g.to_u(p.tw + 0.09, side), p.apex + 0.4)]
        draw.polygon(canvas.to_px([(float(u), float(v)) for u, v in scapula], res), fill=45)
        clav = clavicle_points(g, side)
        edit = breaks.get(("clavicle", side, 0))
        for piece in _pieces(clav, edit):
            canvas.draw_polyline(draw, piece, res, 0.026, 170)
            canvas.draw_polyline(draw, piece, res, 0.012, 140)
        if edit:
            _draw_break(draw, clav, edit, res, 0.026)
    _draw_spine(draw, g)
    return img


def _posterior_lines(g: Geometry, side: str, count: int) -> np.ndarray:
    """:func:`posterior_rib` 0..count-1 as ``[count, points, 2]`` normalised coordinates (the same arithmetic,
    vectorised over the ribs)."""
    p = g.p
    k = np.arange(count, dtype=np.float64)[:, None]
    tops = p.apex - 0.05 + p.rib_spacing * (k + 0.06 * k * k) * 0.95
    us = p.mx + side_sign(side) * p.tw * _RIB_S
    return np.stack([np.broadcast_to(us, (count, us.size)), tops + _RIB_DV], axis=2)


def _anterior_lines(g: Geometry, side: str, count: int) -> np.ndarray:
    """:func:`anterior_rib` 0..count-1 as ``[count, points, 2]`` (vectorised over the ribs)."""
    p = g.p
    k = np.arange(count, dtype=np.float64)[:, None]
    tops = p.apex + 0.005 + p.rib_spacing * 1.3 * k
    us = p.cx + side_sign(side) * p.tw * _ANTERIOR_S
    return np.stack([np.broadcast_to(us, (count, us.size)), tops + _ANTERIOR_DV], axis=2)


def point_along(points: list[canvas.Point], t: float) -> tuple[canvas.Point, canvas.Point]:
    """The point at fraction ``t`` of a polyline's vertices and the unit direction there."""
    arr = np.asarray(points)
    x = t * (len(arr) - 1)
    i = min(int(x), len(arr) - 2)
    frac = x - i
    here = arr[i] * (1 - frac) + arr[i + 1] * frac
    direction = arr[i + 1] - arr[i]
    direction = direction / (np.linalg.norm(direction) + 1e-9)
    return (float(here[0]), float(here[1])), (float(direction[0]), float(direction[1]))


def _pieces(points: list[canvas.Point], edit: dict | None) -> list[list[canvas.Point]]:
    """The bone's polyline, split at a fracture with the lateral fragment displaced."""
    if not edit:
        return [points]
    here, _ = point_along(points, edit["t"])
    cut = int(edit["t"] * (len(points) - 1)) + 1
    shift = edit["shift"]
    medial = [*points[:cut], here]
    lateral = [(here[0], here[1] + shift), *[(u, v + shift) for u, v in points[cut:]]]
    return [medial, lateral]


def _draw_break(draw: ImageDraw.ImageDraw, points: list[canvas.Point], edit: dict, res: int, width: float) -> None:
    here, (du, dv) = point_along(points, edit["t"])
    if edit.get("callus"):
        # healing: a fusiform collar of new bone around the break
        a, b = 1.6 * width, 1.1 * width
        draw.ellipse(canvas.to_px([(here[0] - a, here[1] - b + edit["shift"] / 2),
                                   (here[0] + a, here[1] + b + edit["shift"] / 2)], res), fill=150)
        return
    # acute: a lucent fracture line across the cortex
    nu, nv = -dv, du
    reach = 0.8 * width + abs(edit["shift"])
    line = [(here[0] - nu * reach, here[1] - nv * reach), (here[0] + nu * reach, here[1] + nv * reach)]
    canvas.draw_polyline(draw, line, res, max(0.0045, 0.18 * width), 0)


_CORNER = [(math.cos(a), math.sin(a)) for a in np.linspace(0.0, math.pi / 2, 4)]


def _rounded_box(u0: float, v0: float, u1: float, v1: float, radius: float, res: int) -> list[canvas.Point]:
    """Outline (pixels) of a rectangle with rounded corners (each a 4-vertex arc): one polygon fill, where
    Pillow's rounded_rectangle draws four pie slices."""
    x0, y0, x1, y1, r = u0 * res, v0 * res, u1 * res, v1 * res, max(1.0, radius * res)
    corners = ((x1 - r, y1 - r, 1, 1), (x0 + r, y1 - r, -1, 1), (x0 + r, y0 + r, -1, -1), (x1 - r, y0 + r, 1, -1))
    out = []
    for i, (cx, cy, sx, sy) in enumerate(corners):
        arc = _CORNER if i % 2 == 0 else _CORNER[::-1]
        out += [(cx + sx * r * c, cy + sy * r * s) for c, s in arc]
    return out


def _vertebra_levels() -> np.ndarray:
    """Top of each vertebral body (normalised), growing taller down the spine: ``[n]``."""
    levels, v = [], 0.0
    while v < 1.0:
        levels.append(v)
        v += 0.033 + 0.012 * v + 0.008
    return np.asarray(levels)


_VERTEBRAE = _vertebra_levels()
_CORNER_ARCS = np.asarray([_CORNER if i % 2 == 0 else _CORNER[::-1] for i in range(4)])  # [4 corners, 4, (c, s)]
_CORNER_SIGNS = np.asarray([(1, 1), (-1, 1), (-1, -1), (1, -1)], dtype=np.float64)


def _draw_spine(draw: ImageDraw.ImageDraw, g: Geometry) -> None:
    """Vertebral bodies (rounded boxes, :func:`_rounded_box` for all levels at once) and their pedicles."""
    p, res = g.p, g.res
    v = _VERTEBRAE
    x0, x1 = (p.mx - 0.028 - 0.01 * v) * res, (p.mx + 0.028 + 0.01 * v) * res
    y0, y1 = v * res, (v + (0.033 + 0.012 * v)) * res
    r = max(1.0, 0.006 * res)
    centres = np.stack([np.stack([x1 - r, y1 - r], 1), np.stack([x0 + r, y1 - r], 1),
                        np.stack([x0 + r, y0 + r], 1), np.stack([x1 - r, y0 + r], 1)], axis=1)  # [n, 4, 2]
    arcs = (_CORNER_SIGNS * r)[:, None, :] * _CORNER_ARCS  # [4, 4, 2]
    boxes = (centres[:, :, None, :] + arcs[None]).reshape(len(v), -1).tolist()
    centres_u = [p.mx + s * (0.022 + 0.008 * v) for s in (-1, 1)]
    pedicles = np.stack([np.stack([(cu - 0.006) * res, (v + 0.006) * res, (cu + 0.006) * res, (v + 0.018) * res], 1)
                         for cu in centres_u], axis=1).tolist()  # [n, 2 sides, (x0, y0, x1, y1)]
    for box, pair in zip(boxes, pedicles):
        draw.polygon(box, fill=38)
        for ellipse in pair:
            draw.ellipse(ellipse, fill=55)


def bones(g: Geometry, edits: list[dict] | None = None) -> np.ndarray:
    """The blurred bone layer (cached per anatomy and fracture edits: difference renders share it)."""
    key = json.dumps(edits or [], sort_keys=True)
    return _bones(restricted(g.p, BONE_FIELDS), g.res, key)


BONE_FIELDS = ("tw", "apex", "rib_spacing", "mx", "cx", "view", "clavicle_v")


@lru_cache(maxsize=8)
def _bones(p, res: int, edits: str) -> np.ndarray:
    img = draw_bones(Geometry(p, res), json.loads(edits))
    out = canvas.soft(img, 0.8 * res / 256, scale=0.3 / 255.0)
    out.setflags(write=False)
    return out


# ---------------------------------------------------------------------------------------------- vessels


def vessels(g: Geometry, rng: np.random.Generator) -> np.ndarray:
    """Branching pulmonary vessels from the hila, tapering towards the periphery (masked to the lungs)."""
    p, res = g.p, g.res
    trees = _vessel_trees(res, g.p.seeds[0], p.vessel_scale)
    layer = np.zeros((res, res), np.float32)
    for side, tree in zip(SIDES, trees):
        hu, hv = g.hilum(side)
        _paste_max(layer, tree, int(round((hu - TREE_ORIGIN) * res)), int(round((hv - TREE_ORIGIN) * res)))
    reach = canvas.ramp(0.2, 0.6 * p.vessel_reach, g.air_depth)
    return 0.11 * layer * reach


TREE_ORIGIN = 0.5  # the trees are drawn from a hilum at (0.5, 0.5) and moved to the study's hila


def _paste_max(dst: np.ndarray, src: np.ndarray, dx: int, dy: int) -> None:
    """``dst = max(dst, src shifted by (dx, dy) pixels)``, clipped to the frame (both ``[res, res]``)."""
    res = dst.shape[0]
    x0, x1 = max(0, dx), min(res, res + dx)
    y0, y1 = max(0, dy), min(res, res + dy)
    if x0 < x1 and y0 < y1:
        np.maximum(dst[y0:y1, x0:x1], src[y0 - dy:y1 - dy, x0 - dx:x1 - dx], out=dst[y0:y1, x0:x1])


@lru_cache(maxsize=8)
def _vessel_trees(res: int, seed: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """The drawn (right, left) vessel trees, each ``[res, res]`` from a hilum at (TREE_ORIGIN, TREE_ORIGIN).

    Cached per patient: a subject's studies (and a study's renders without a finding) move them to their
    hila by whole pixels instead of drawing them again.
    """
    rng = np.random.default_rng(seed)
    jitter = rng.normal(0.0, 1.0, size=4096).tolist()
    pos = [0]

    def noise() -> float:
        pos[0] += 1
        return jitter[pos[0] % 4096]

    trees = []
    for side in SIDES:
        img = Image.new("L", (res, res), 0)
        draw = ImageDraw.Draw(img)
        s = side_sign(side)
        for angle in np.linspace(-120, 100, 7):
            direction = math.radians(angle + 6 * noise())
            length = 0.09 * (1.15 if angle > 30 else 1.0)
            _branch(draw, noise, res, TREE_ORIGIN, TREE_ORIGIN, s, direction, length, 0.01 * scale, 3)
        trees.append(canvas.soft(img, 0.8 * res / 256))
        trees[-1].setflags(write=False)
    return trees[0], trees[1]


def _branch(draw: ImageDraw.ImageDraw, noise, res: int, u: float, v: float, s: float, angle: float,
            length: float, width: float, depth: int) -> None:
    # angle: 0 points laterally, +90 down; s mirrors it for the two lungs (math, not numpy: scalar calls)
    du = s * math.cos(angle) * length
    dv = math.sin(angle) * length
    end = (u + du, v + dv)
    mid = (u + du * 0.5 + 0.005 * noise(), v + dv * 0.5 + 0.005 * noise())
    # canvas.draw_polyline inlined (a patient's trees are a few hundred strokes)
    px = max(1, round(width * res))
    pts = [(u * res, v * res), (mid[0] * res, mid[1] * res), (end[0] * res, end[1] * res)]
    value = int(255 * 0.8 ** (3 - depth))
    if px < 3:
        draw.line(pts, fill=value, width=px)
    else:
        draw.polygon(canvas.stroke_outline(pts, px / 2.0), fill=value)
    if depth == 0:
        return
    for turn in (-1.0, 1.0):
        spread = math.radians(26 + 7 * noise())
        _branch(draw, noise, res, end[0], end[1], s, angle + turn * spread, length * (0.75 + 0.05 * noise()),
                width * 0.7, depth - 1)


@lru_cache(maxsize=16)
def _marker_image(res: int, left: bool) -> np.ndarray:
    img = Image.new("L", (res, res), 0)
    size = max(8, int(res * 0.045))
    font = ImageFont.load_default(size=size)
    u = 0.88 if left else 0.07
    ImageDraw.Draw(img).text((u * res, 0.04 * res), "L" if left else "R", fill=255, font=font)
    return np.asarray(img, dtype=np.float32) / 255.0 * 0.9


def marker(g: Geometry) -> np.ndarray:
    """The radiographer's side marker letter, in a top corner outside the body."""
    return _marker_image(g.res, g.p.marker_left)
