"""Finding renderers: each draws one finding from its aspects (``findings.json``) into the density layers.

A renderer has ``draw(g, finding, rng, layers)`` (density changes, recorded as the finding's footprint) and
optionally ``modify(params, finding) -> params`` for findings that change the anatomy itself (an enlarged
heart, hyperinflated lungs, volume loss). Sizes in centimetres are converted with :func:`cm`, taking the
inner thorax as 30 cm wide.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, ImageDraw

from devide.data.phantom import canvas
from devide.data.phantom.anatomy import SIDES, AnatomyParams, Geometry, side_sign
from devide.data.phantom.case import Finding
from devide.data.phantom.render import Layers

THORAX_CM = 30.0


def cm(g: Geometry, value: float) -> float:
    """Centimetres -> normalised image units for this patient."""
    return value * 2.0 * g.anchor.p.tw / THORAX_CM


@dataclass(frozen=True)
class Renderer:
    draw: Callable[[Geometry, Finding, np.random.Generator, Layers], None]
    modify: Callable[[AnatomyParams, Finding], AnatomyParams] | None = None


def _lesion_profile(g: Geometry, outline: list[canvas.Point], cu: float, cv: float, radius: float,
                    edge_px: float) -> np.ndarray:
    """A solid lesion: outline mask times a dome (thicker in the middle, like a sphere)."""
    mask = canvas.polygon_mask(outline, g.res, blur_px=edge_px)
    return mask * (0.55 + 0.45 * canvas.blob(g.res, cu, cv, radius * 1.1, power=2.0))


def _lung_v_range(g: Geometry, side: str) -> tuple[float, float]:
    return g.anchor.p.apex, g.anchor.p.dome[SIDES.index(side)] + g.anchor.p.cp_depth[SIDES.index(side)]


# ---------------------------------------------------------------------------------------------- pleura


def draw_effusion(g: Geometry, f: Finding, rng: np.random.Generator, layers: Layers) -> None:
    """Dependent homogeneous opacity with a meniscus (higher laterally), blunting the costophrenic angle and
    effacing the hemidiaphragm."""
    _, vv = canvas.grid(g.res)
    for side in f.sides():
        top, bottom = _lung_v_range(g, side)
        fraction = float(f.size or 0.15) * (rng.uniform(0.8, 1.0) if f.side == "bilateral" else 1.0)
        level = bottom - fraction * (bottom - top)
        d = np.abs(canvas.axis(g.res)[None, :] - g.anchor.p.cx) / g.anchor.p.tw  # [1, res]: depends on u only
        meniscus = level - 0.07 * np.clip((d - 0.35) / 0.65, 0.0, 1.0) ** 2 * (0.5 + fraction)
        ramp = canvas.ramp(meniscus - 0.006, meniscus + 0.03, vv) * g.lungs[side]
        layers.fill(ramp)
        layers.density(0.15 * ramp)  # fluid is thicker than the aerated lung it displaces


def draw_pneumothorax(g: Geometry, f: Finding, rng: np.random.Generator, layers: Layers) -> None:
    """A thin visceral pleural line parallel to the chest wall with no lung markings beyond it."""
    side = f.side or "right"
    p = g.anchor.p
    rim = cm(g, 1.2) + float(f.size or 0.2) * 0.25 * p.tw  # apical/lateral rim width
    extent = float(rng.uniform(0.35, 0.55)) + float(f.size or 0.2)
    vs = np.linspace(p.apex, p.apex + extent * (p.dome[SIDES.index(side)] - p.apex), 40)
    taper = np.clip(1.0 - (vs - p.apex) / (vs[-1] - p.apex), 0.0, 1.0) ** 0.6
    wall = g.anchor.lateral(vs)
    visceral = np.maximum(wall - rim * taper, g.anchor.medial(vs, side) + 0.02)
    apex_d = float(g.anchor.lateral(np.float32(p.apex)))
    inner_top = p.apex + 0.8 * rim
    polygon = [(float(g.to_u(d, side)), float(v)) for d, v in zip(wall, vs)]
    line = [(float(g.to_u(d, side)), float(v + 0.8 * rim * t)) for d, v, t in zip(visceral, vs, taper)]
    line = [(float(g.to_u(apex_d - 0.4 * rim, side)), inner_top)] + line
    polygon += line[::-1]
    polygon += [(float(g.to_u(apex_d - 0.9 * rim, side)), p.apex - 0.02)]
    space = canvas.polygon_mask(polygon, g.res, blur_px=0.6) * g.lungs[side]
    layers.prune_vessels(space)
    layers.density(-0.13 * space)  # no lung tissue beyond the line: darker
    pleura = canvas.polyline_mask(line, g.res, width=0.004, blur_px=0.4)
    layers.density(0.16 * pleura * g.lungs[side])


def draw_pleural_thickening(g: Geometry, f: Finding, rng: np.random.Generator, layers: Layers) -> None:
    """A smooth soft-tissue band along the inner chest wall (lateral) or over the apex (apical cap)."""
    side = f.side or "right"
    p = g.anchor.p
    thick = cm(g, float(f.size or 0.8))
    if f.variant == "apical":
        vs = np.linspace(p.apex - 0.01, p.apex + 0.12, 24)
    else:
        top = p.apex + float(rng.uniform(0.1, 0.2))
        vs = np.linspace(top, top + float(rng.uniform(0.18, 0.3)), 24)
    wall = g.anchor.lateral(vs)
    wobble = 1.0 + 0.25 * np.sin(np.linspace(0, np.pi * rng.uniform(2, 4), vs.size) + rng.uniform(0, 6))
    taper = np.sin(np.linspace(0.15, np.pi - 0.15, vs.size)) ** 0.5
    inner = wall - thick * wobble * taper
    outer = wall + 0.01
    polygon = [(float(g.to_u(d, side)), float(v)) for d, v in zip(outer, vs)]
    polygon += [(float(g.to_u(d, side)), float(v)) for d, v in zip(inner[::-1], vs[::-1])]
    if f.variant == "apical":
        _, vv = canvas.grid(g.res)
        band = canvas.ramp(p.apex + thick * 1.6, p.apex + thick * 0.6, vv) * g.lungs[side]
    else:
        band = canvas.polygon_mask(polygon, g.res, blur_px=0.7) * g.lungs[side]
    layers.fill(band)
    layers.density(0.12 * band)


def draw_pneumoperitoneum(g: Geometry, f: Finding, rng: np.random.Generator, layers: Layers) -> None:
    """A crescent of free gas under the hemidiaphragm, outlining the thin diaphragm muscle."""
    for side in f.sides() or ("right",):
        p = g.anchor.p
        ds = np.linspace(0.12 * p.tw, 0.95 * p.tw, 30)
        dome = g.anchor.dome_at(ds, side) + 0.012  # the diaphragm muscle is ~5 mm thick
        depth = cm(g, float(f.size or 1.5)) * np.sin(np.linspace(0.05, np.pi - 0.05, ds.size)) ** 0.7
        upper = [(float(g.to_u(d, side)), float(v)) for d, v in zip(ds, dome)]
        lower = [(float(g.to_u(d, side)), float(v + h)) for d, v, h in zip(ds[::-1], dome[::-1], depth[::-1])]
        crescent = canvas.polygon_mask(upper + lower, g.res, blur_px=0.8)
        layers.density(-0.32 * crescent)


# ---------------------------------------------------------------------------------------------- heart


def modify_cardiomegaly(p: AnatomyParams, f: Finding) -> AnatomyParams:
    """Enlarge the cardiac silhouette to the finding's cardiothoracic ratio, mostly to the left."""
    ctr = float(f.size or 0.6) * (1.06 if p.view == "AP" else 1.0)
    return replace(p, ctr=ctr, heart_left=min(0.7, p.heart_left + 0.04), heart_top=p.heart_top - 0.015)


def draw_nothing(g: Geometry, f: Finding, rng: np.random.Generator, layers: Layers) -> None:
    """Findings that act through ``modify`` only."""


def modify_mediastinum(p: AnatomyParams, f: Finding) -> AnatomyParams:
    """Widen the superior mediastinum (> 8 cm) with a prominent aortic contour."""
    factor = float(f.size or 1.8)
    return replace(p, med_w=p.med_w * factor, knob=p.knob + 0.025)


def draw_hernia(g: Geometry, f: Finding, rng: np.random.Generator, layers: Layers) -> None:
    """Hiatal hernia: a rounded retrocardiac opacity containing gas with an air-fluid level."""
    p = g.anchor.p
    radius = cm(g, float(f.size or 5.0)) / 2.0
    cu = p.mx + float(rng.uniform(0.0, 0.025))
    cv = p.dome[1] - radius * float(rng.uniform(0.7, 1.0))
    outline = canvas.ellipse_points(cu, cv, radius * 1.1, radius, n=40, wobble=[(3, 0.04, float(rng.uniform(0, 6)))])
    sac = canvas.polygon_mask(outline, g.res, blur_px=0.8)
    inner = canvas.polygon_mask(canvas.ellipse_points(cu, cv, radius * 0.88, radius * 0.78, n=36), g.res, blur_px=0.6)
    _, vv = canvas.grid(g.res)
    level = cv + radius * float(rng.uniform(-0.1, 0.3))
    gas = inner * (vv < level)
    layers.density(0.05 * sac - 0.24 * gas)


# ---------------------------------------------------------------------------------------------- airspace


def _air_bronchograms(g: Geometry, rng: np.random.Generator, start: canvas.Point, side: str, direction: float,
                      length: float) -> np.ndarray:
    """Branching dark tubes (aerated bronchi) to carve out of an airspace opacity."""
    img = Image.new("L", (g.res, g.res), 0)
    draw = ImageDraw.Draw(img)
    s = side_sign(side)

    def grow(u: float, v: float, angle: float, length: float, depth: int) -> None:
        end = (u + s * np.cos(angle) * length, v + np.sin(angle) * length)
        canvas.draw_polyline(draw, [(u, v), end], g.res, 0.004 + 0.0015 * depth, 255)
        if depth:
            for turn in (-1, 1):
                grow(end[0], end[1], angle + turn * np.deg2rad(rng.uniform(20, 35)), length * 0.7, depth - 1)

    for offset in (-0.5, 0.0, 0.5):
        grow(start[0], start[1], direction + offset, length, 2)
    return canvas.soft(img, 0.6)


LOBES = {"RUL": ("right", "upper"), "RML": ("right", "mid"), "RLL": ("right", "lower"),
         "LUL": ("left", "upper"), "LLL": ("left", "lower")}


def lobe_region(g: Geometry, lobe: str) -> np.ndarray:
    """A lobe's projection on the frontal view: upper lobes above the fissure level (the right one sharply
    bounded by the minor fissure), middle lobe against the right heart border, lower lobes at the bases."""
    side, _ = LOBES[lobe]
    uu, vv = canvas.grid(g.res)
    hv = g.anchor.hilum(side)[1]
    lung = g.lungs[side]
    d = np.abs(uu - g.anchor.p.mx)
    if lobe == "RUL":
        return lung * canvas.ramp(hv + 0.006, hv - 0.004, vv)  # minor fissure: sharp lower border
    if lobe == "LUL":
        return lung * canvas.ramp(hv + 0.08, hv + 0.01, vv)
    if lobe == "RML":
        heart_d = (1 - g.anchor.p.heart_left) * g.anchor.heart_width
        return lung * canvas.ramp(hv - 0.004, hv + 0.006, vv) * canvas.ramp(heart_d + 0.16, heart_d + 0.05, d) * \
            canvas.ramp(g.anchor.p.dome[0] + 0.01, g.anchor.p.dome[0] - 0.05, vv)
    return lung * canvas.ramp(hv + 0.05, hv + 0.13, vv)


def draw_consolidation(g: Geometry, f: Finding, rng: np.random.Generator, layers: Layers) -> None:
    """Homogeneous lobar airspace opacity with air bronchograms, sharp where bounded by a fissure, and
    effacing the adjacent heart border or hemidiaphragm (silhouette sign)."""
    lobe = f.lobe or "RLL"
    side = LOBES[lobe][0]
    region = lobe_region(g, lobe)
    texture = 0.88 + 0.12 * canvas.smooth_noise(rng, g.res, 10)
    hu, hv = g.anchor.hilum(side)
    direction = {"upper": -0.9, "mid": 0.6, "lower": 1.2}[LOBES[lobe][1]]
    bronchi = _air_bronchograms(g, rng, (hu, hv), side, direction, 0.07)
    layers.fill(0.92 * region * texture * (1.0 - 0.3 * bronchi))
    layers.density(0.05 * region)


def _patches(g: Geometry, rng: np.random.Generator, side: str, zone: str, count: int, radius: float
             ) -> np.ndarray:
    """Several overlapping ill-defined blobs in a lung zone."""
    out = np.zeros((g.res, g.res), np.float32)
    for _ in range(count):
        cu, cv = g.anchor.lung_point(side, zone, rng, (0.2, 0.85))
        r = radius * float(rng.uniform(0.6, 1.2))
        out = np.maximum(out, canvas.blob(g.res, cu, cv, r, r * float(rng.uniform(0.7, 1.2)), power=1.6,
                                          angle=float(rng.uniform(0, 3))))
    return out


def draw_pneumonia(g: Geometry, f: Finding, rng: np.random.Generator, layers: Layers) -> None:
    """Patchy, ill-defined, heterogeneous segmental airspace opacity, with faint air bronchograms."""
    texture = np.clip(0.7 + 0.45 * canvas.smooth_noise(rng, g.res, 14), 0.2, 1.0)
    for side in f.sides():
        zone = f.zone or "lower"
        patch = _patches(g, rng, side, zone, int(rng.integers(3, 6)), cm(g, float(f.size or 6.0)) / 3.0)
        hu, hv = g.anchor.hilum(side)
        bronchi = _air_bronchograms(g, rng, (hu, hv), side, {"upper": -0.8, "mid": 0.2, "lower": 1.0}[zone], 0.06)
        layers.fill(0.85 * patch * texture * g.lungs[side] * (1.0 - 0.35 * bronchi))


def draw_infiltration(g: Geometry, f: Finding, rng: np.random.Generator, layers: Layers) -> None:
    """Hazy, mottled, ill-defined opacities, multifocal, less dense than consolidation."""
    mottle = np.clip(0.55 + 0.6 * canvas.smooth_noise(rng, g.res, 28), 0.0, 1.0)
    for side in f.sides():
        zones = [f.zone or "mid"] + ([str(rng.choice(["upper", "mid", "lower"]))] if rng.random() < 0.5 else [])
        patch = sum(_patches(g, rng, side, z, int(rng.integers(2, 4)), cm(g, 4.0)) for z in zones)
        layers.fill(0.6 * np.clip(patch, 0, 1) * mottle * g.lungs[side])


def draw_edema(g: Geometry, f: Finding, rng: np.random.Generator, layers: Layers) -> None:
    """Bilateral perihilar (bat-wing) haziness with indistinct vessels and Kerley B lines at the bases."""
    severity = {"mild": 0.45, "moderate": 0.65, "severe": 0.85}.get(f.severity or "moderate", 0.65)
    img = Image.new("L", (g.res, g.res), 0)
    draw = ImageDraw.Draw(img)
    haze = np.zeros((g.res, g.res), np.float32)
    for side in SIDES:
        hu, hv = g.anchor.hilum(side)
        cu = hu + side_sign(side) * 0.05
        haze = np.maximum(haze, canvas.blob(g.res, cu, hv + 0.04, 0.1, 0.15, power=1.4) * g.lungs[side])
        for _ in range(int(rng.integers(4, 8))):  # Kerley B: short horizontal lines reaching the pleura
            v = float(rng.uniform(g.anchor.p.dome[SIDES.index(side)] - 0.12, g.anchor.p.dome[SIDES.index(side)] - 0.02))
            wall = float(g.anchor.lateral(np.float32(v)))
            canvas.draw_polyline(draw, [(float(g.to_u(wall, side)), v), (float(g.to_u(wall - cm(g, 1.5), side)), v)],
                                 g.res, 0.004, 255)
    kerley = canvas.soft(img, 0.5) * g.lung
    layers.fill(severity * haze)
    layers.prune_vessels(0.6 * haze)
    layers.density(0.06 * kerley)


def draw_atelectasis(g: Geometry, f: Finding, rng: np.random.Generator, layers: Layers) -> None:
    """Plate-like (linear) basal opacities, or left lower lobe collapse behind the heart (sail sign)."""
    side = f.side or "right"
    if f.variant == "lobar":
        p = g.anchor.p
        hu, hv = g.anchor.hilum("left")
        apex_pt = (p.mx + 0.01, hv + 0.03)
        tri = [apex_pt, (p.mx + 0.02, p.dome[1] + 0.02), (p.mx + cm(g, 6.0), p.dome[1] + 0.02)]
        wedge = canvas.polygon_mask(tri, g.res, blur_px=0.8)
        layers.fill(wedge * g.lungs["left"])
        layers.density(0.16 * wedge)
        return
    img = Image.new("L", (g.res, g.res), 0)
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(1, 4))):
        cu, cv = g.anchor.lung_point(side, "lower", rng, (0.2, 0.7))
        half = cm(g, float(rng.uniform(2.0, 3.5)))
        tilt = float(rng.uniform(-0.15, 0.15))
        canvas.draw_polyline(draw, [(cu - half, cv - tilt * half), (cu, cv + 0.003), (cu + half, cv + tilt * half)],
                             g.res, cm(g, float(rng.uniform(0.3, 0.5))), 255)
    plates = canvas.soft(img, 0.8) * g.lungs[side]
    layers.fill(0.9 * plates)


def modify_volume_loss(p: AnatomyParams, f: Finding) -> AnatomyParams:
    """Atelectasis pulls the hemidiaphragm up on its side (lobar collapse: the left)."""
    side = "left" if f.variant == "lobar" else (f.side or "right")
    return p.elevated(side, 0.03 if f.variant == "lobar" else 0.02)


# ---------------------------------------------------------------------------------------------- lesions


def draw_nodule(g: Geometry, f: Finding, rng: np.random.Generator, layers: Layers) -> None:
    """Round, well-circumscribed, homogeneous soft-tissue opacity under 3 cm."""
    count = int(rng.integers(2, 4)) if f.variant == "multiple" else 1
    for i in range(count):
        side = f.side if f.side in SIDES else str(rng.choice(SIDES))
        zone = f.zone if i == 0 and f.zone else str(rng.choice(["upper", "mid", "lower"]))
        cu, cv = g.anchor.lung_point(side, zone, rng, (0.3, 0.85))
        r = cm(g, float(f.size or 1.8) * (1.0 if i == 0 else rng.uniform(0.6, 0.9))) / 2.0
        outline = canvas.ellipse_points(cu, cv, r, r * float(rng.uniform(0.9, 1.05)), n=32,
                                        wobble=[(3, 0.03, float(rng.uniform(0, 6)))])
        layers.density(0.3 * _lesion_profile(g, outline, cu, cv, r, 0.7))


def draw_mass(g: Geometry, f: Finding, rng: np.random.Generator, layers: Layers) -> None:
    """A lobulated soft-tissue opacity over 3 cm, well defined or spiculated."""
    side = f.side or "right"
    cu, cv = g.anchor.lung_point(side, f.zone or "upper", rng, (0.35, 0.7))
    r = cm(g, float(f.size or 5.0)) / 2.0
    wobble = [(2, 0.06, float(rng.uniform(0, 6))), (3, 0.08, float(rng.uniform(0, 6))), (5, 0.04, float(rng.uniform(0, 6)))]
    outline = canvas.ellipse_points(cu, cv, r, r * float(rng.uniform(0.8, 1.05)), n=64, angle=float(rng.uniform(0, 3)),
                                    wobble=wobble)
    layer = 0.34 * _lesion_profile(g, outline, cu, cv, r, 0.9)
    if f.variant == "spiculated":
        img = Image.new("L", (g.res, g.res), 0)
        draw = ImageDraw.Draw(img)
        for angle in rng.uniform(0, 2 * np.pi, int(rng.integers(10, 16))):
            reach = r * float(rng.uniform(1.25, 1.6))
            canvas.draw_polyline(draw, [(cu + 0.8 * r * np.cos(angle), cv + 0.8 * r * np.sin(angle)),
                                        (cu + reach * np.cos(angle), cv + reach * np.sin(angle))], g.res, 0.004, 255)
        layer += 0.12 * canvas.soft(img, 0.5) * g.lung
    layers.density(layer)


def draw_granuloma(g: Geometry, f: Finding, rng: np.random.Generator, layers: Layers) -> None:
    """A small, very dense (calcified), sharply marginated round nodule."""
    side = f.side or "right"
    cu, cv = g.anchor.lung_point(side, f.zone or "upper", rng, (0.3, 0.85))
    r = cm(g, float(f.size or 0.6)) / 2.0
    outline = canvas.ellipse_points(cu, cv, r, r, n=24)
    layers.density(0.55 * canvas.polygon_mask(outline, g.res, blur_px=0.4))


def draw_cavity(g: Geometry, f: Finding, rng: np.random.Generator, layers: Layers) -> None:
    """A thick-walled gas-filled cavity with an air-fluid level, usually in an upper zone."""
    side = f.side or "right"
    cu, cv = g.anchor.lung_point(side, f.zone or "upper", rng, (0.35, 0.75))
    r = cm(g, float(f.size or 4.0)) / 2.0
    outer = canvas.polygon_mask(canvas.ellipse_points(cu, cv, r, r * 0.95, n=40, wobble=[(3, 0.06, float(rng.uniform(0, 6)))]),
                                g.res, blur_px=0.8)
    wall = cm(g, float(rng.uniform(0.5, 0.9)))
    inner = canvas.polygon_mask(canvas.ellipse_points(cu + 0.1 * wall, cv, r - wall, (r - wall) * 0.9, n=36), g.res,
                                blur_px=0.5)
    _, vv = canvas.grid(g.res)
    fluid = inner * canvas.ramp(cv + 0.15 * r - 0.002, cv + 0.15 * r + 0.002, vv)
    layers.density(0.3 * (outer - inner) + 0.26 * fluid)


# ---------------------------------------------------------------------------------------------- diffuse


def modify_emphysema(p: AnatomyParams, f: Finding) -> AnatomyParams:
    """Hyperinflation: low, flattened domes, hyperlucent lungs, pruned peripheral vessels, narrow heart."""
    return replace(p, dome=(p.dome[0] + 0.055, p.dome[1] + 0.05), dome_curve=0.008, cp_depth=(0.05, 0.05),
                   air=p.air * 1.22, vessel_reach=0.55, ctr=p.ctr * 0.85, rib_spacing=p.rib_spacing * 1.06,
                   heart_top=p.heart_top + 0.03)


def draw_emphysema(g: Geometry, f: Finding, rng: np.random.Generator, layers: Layers) -> None:
    """Upper-zone bullae: thin-walled lucent spaces (the rest acts through the anatomy)."""
    if f.variant != "bullous":
        return
    for side in SIDES:
        cu, cv = g.anchor.lung_point(side, "upper", rng, (0.4, 0.8))
        r = cm(g, float(rng.uniform(2.5, 4.5))) / 2
        bulla = canvas.polygon_mask(canvas.ellipse_points(cu, cv, r, r * 0.9, n=32), g.res, blur_px=0.6) * g.lungs[side]
        ring = canvas.polyline_mask(canvas.ellipse_points(cu, cv, r, r * 0.9, n=32) + [canvas.ellipse_points(cu, cv, r, r * 0.9, n=32)[0]],
                                    g.res, 0.003, blur_px=0.4)
        layers.prune_vessels(bulla)
        layers.density(-0.05 * bulla + 0.05 * ring * g.lungs[side])


def draw_fibrosis(g: Geometry, f: Finding, rng: np.random.Generator, layers: Layers) -> None:
    """Coarse reticular (net-like) opacities, peripheral and basal, bilateral, with reduced lung volumes."""
    field = canvas.smooth_noise(rng, g.res, 26)
    net = np.exp(-((field / 0.28) ** 2))  # zero crossings of a random field form a network of lines
    _, vv = canvas.grid(g.res)
    basal = canvas.ramp(g.anchor.p.apex + 0.12, g.anchor.p.dome[0] - 0.05, vv)
    peripheral = 1.0 - np.minimum(g.air_depth * 1.3, 1.0) * 0.7
    weight = g.lung * (0.25 + 0.75 * basal) * peripheral
    layers.density(0.3 * net * weight)
    layers.fill(0.3 * weight)


def modify_fibrosis(p: AnatomyParams, f: Finding) -> AnatomyParams:
    return replace(p, dome=(p.dome[0] - 0.03, p.dome[1] - 0.03))


# ---------------------------------------------------------------------------------------------- bones and devices


def draw_fracture(g: Geometry, f: Finding, rng: np.random.Generator, layers: Layers) -> None:
    """Rib fractures (cortical break with step-off, or callus when healing) or a displaced clavicle fracture.
    The bones are drawn in :func:`render.compose`; this records the edits and marks nothing itself."""
    side = f.side or "right"
    healing = f.variant == "healing"
    if f.variant == "clavicle":
        layers.bone_edit({"bone": "clavicle", "side": side, "t": float(rng.uniform(0.4, 0.6)),
                                  "shift": cm(g, float(rng.uniform(0.9, 1.4))), "callus": False})
        return
    first = int(rng.integers(4, 7))
    t = float(rng.uniform(0.72, 0.88))
    for k in range(first, first + int(rng.integers(2, 4))):
        layers.bone_edit({"bone": "rib", "side": side, "k": k, "t": t + float(rng.uniform(-0.03, 0.03)),
                                  "shift": cm(g, 0.3 if healing else float(rng.uniform(0.5, 0.9))), "callus": healing})


DEVICE_VALUE = 0.7


def draw_support_devices(g: Geometry, f: Finding, rng: np.random.Generator, layers: Layers) -> None:
    """Radiopaque tubes, lines and implanted devices in their expected positions."""
    img = Image.new("L", (g.res, g.res), 0)
    draw = ImageDraw.Draw(img)
    for device in f.devices or ("endotracheal_tube",):
        DEVICES[device](g, draw, rng)
    layers.density(canvas.soft(img, 0.6, scale=DEVICE_VALUE / 255.0))


def _tube(draw: ImageDraw.ImageDraw, g: Geometry, pts: list[canvas.Point], width: float, stripe: bool) -> None:
    canvas.draw_polyline(draw, pts, g.res, width, 110)
    if stripe:  # radiopaque marker stripe
        canvas.draw_polyline(draw, pts, g.res, width * 0.35, 255)


def _ett(g: Geometry, draw: ImageDraw.ImageDraw, rng: np.random.Generator) -> None:
    cu, cv = g.anchor.carina
    tip = cv - cm(g, float(rng.uniform(3.0, 6.0)))
    _tube(draw, g, [(g.anchor.p.mx - 0.01, 0.0), (g.anchor.p.mx - 0.002, tip * 0.6), (cu - 0.002, tip)], 0.012, True)


def _ngt(g: Geometry, draw: ImageDraw.ImageDraw, rng: np.random.Generator) -> None:
    p = g.anchor.p
    stomach = (float(g.to_u(0.45 * p.tw, "left")), p.dome[1] + 0.07)
    pts = [(p.mx + 0.012, 0.0), (p.mx + 0.008, p.heart_top), (p.mx + 0.03, p.dome[1] - 0.01),
           (stomach[0] - 0.03, stomach[1]), stomach, (stomach[0] + 0.02, stomach[1] - 0.02)]
    _tube(draw, g, pts, 0.008, True)


def _cvc(g: Geometry, draw: ImageDraw.ImageDraw, rng: np.random.Generator) -> None:
    p = g.anchor.p
    tip_v = g.anchor.carina[1] + cm(g, float(rng.uniform(2.0, 4.0)))
    if rng.random() < 0.5:  # right internal jugular
        pts = [(p.mx - 0.06, 0.0), (p.mx - 0.045, p.clavicle_v), (p.mx - 0.03, p.clavicle_v + 0.08), (p.mx - 0.025, tip_v)]
    else:  # left PICC through the arm and subclavian vein
        pts = [(p.cx + p.tw + 0.14, p.clavicle_v + 0.1), (p.cx + p.tw - 0.02, p.clavicle_v + 0.04),
               (p.mx + 0.05, p.clavicle_v + 0.06), (p.mx - 0.02, p.clavicle_v + 0.1), (p.mx - 0.025, tip_v)]
    _tube(draw, g, pts, 0.006, False)


def _pacemaker(g: Geometry, draw: ImageDraw.ImageDraw, rng: np.random.Generator) -> None:
    p = g.anchor.p
    gu, gv = float(g.to_u(0.6 * p.tw, "left")), p.clavicle_v + 0.06
    box = canvas.to_px([(gu - 0.04, gv - 0.028), (gu + 0.04, gv + 0.028)], g.res)
    draw.rounded_rectangle(box, radius=max(2, int(0.012 * g.res)), fill=255)
    atrium = (p.mx - 0.035, p.heart_top + 0.08)
    ventricle = (p.mx + 0.07, p.dome[1] - 0.04)
    for tip in (atrium, ventricle):
        pts = [(gu - 0.03, gv), (p.mx + 0.04, p.clavicle_v + 0.07), (p.mx - 0.02, p.heart_top), tip]
        canvas.draw_polyline(draw, pts, g.res, 0.005, 230)


def _chest_tube(g: Geometry, draw: ImageDraw.ImageDraw, rng: np.random.Generator) -> None:
    p = g.anchor.p
    side = "right" if rng.random() < 0.6 else "left"
    entry = (float(g.to_u(p.tw + 0.06, side)), p.dome[SIDES.index(side)] - 0.06)
    pts = [entry, (float(g.to_u(p.tw - 0.03, side)), entry[1] - 0.04), (float(g.to_u(0.75 * p.tw, side)), p.apex + 0.2),
           (float(g.to_u(0.55 * p.tw, side)), p.apex + 0.06)]
    _tube(draw, g, pts, 0.012, True)


def _sternotomy(g: Geometry, draw: ImageDraw.ImageDraw, rng: np.random.Generator) -> None:
    p = g.anchor.p
    for v in np.linspace(p.clavicle_v + 0.06, p.heart_top + 0.17, int(rng.integers(5, 8))):
        u = p.mx + float(rng.normal(0, 0.004))
        draw.ellipse(canvas.to_px([(u - 0.012, v - 0.007), (u + 0.012, v + 0.007)], g.res), outline=255,
                     width=max(1, int(0.004 * g.res)))


DEVICES: dict[str, Callable[[Geometry, ImageDraw.ImageDraw, np.random.Generator], None]] = {
    "endotracheal_tube": _ett,
    "nasogastric_tube": _ngt,
    "central_venous_catheter": _cvc,
    "pacemaker": _pacemaker,
    "chest_tube": _chest_tube,
    "sternotomy_wires": _sternotomy,
}


RENDERERS: dict[str, Renderer] = {
    "pleural_effusion": Renderer(draw_effusion),
    "pneumothorax": Renderer(draw_pneumothorax),
    "pleural_thickening": Renderer(draw_pleural_thickening),
    "pneumoperitoneum": Renderer(draw_pneumoperitoneum),
    "cardiomegaly": Renderer(draw_nothing, modify_cardiomegaly),
    "enlarged_cardiomediastinum": Renderer(draw_nothing, modify_mediastinum),
    "hernia": Renderer(draw_hernia),
    "consolidation": Renderer(draw_consolidation),
    "pneumonia": Renderer(draw_pneumonia),
    "infiltration": Renderer(draw_infiltration),
    "edema": Renderer(draw_edema),
    "atelectasis": Renderer(draw_atelectasis, modify_volume_loss),
    "nodule": Renderer(draw_nodule),
    "mass": Renderer(draw_mass),
    "granuloma": Renderer(draw_granuloma),
    "cavity": Renderer(draw_cavity),
    "emphysema": Renderer(draw_emphysema, modify_emphysema),
    "fibrosis": Renderer(draw_fibrosis, modify_fibrosis),
    "fracture": Renderer(draw_fracture),
    "support_devices": Renderer(draw_support_devices),
}
