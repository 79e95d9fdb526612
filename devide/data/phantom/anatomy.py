"""Normal chest anatomy of a frontal radiograph: sampled parameters and the geometry they define.

Distances are normalised to the image width. ``d`` is the distance from the midline (positive laterally) and
``side`` is the *patient's* side: ``right`` lies on the image's left (``u = midline - d``).

Body size, rotation, inspiration, heart size, projection (PA/AP), sex and exposure vary per study; the
findings renderers read the geometry (lung outlines, domes, hila, heart, ribs, clavicles, trachea) to place
themselves anatomically and some (cardiomegaly, emphysema, volume loss) change the parameters first.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property, lru_cache

import numpy as np

from devide.data.phantom import canvas

SIDES = ("right", "left")


def side_sign(side: str) -> float:
    """-1 for the patient's right (image left), +1 for the left."""
    return -1.0 if side == "right" else 1.0


@dataclass(frozen=True)
class AnatomyParams:
    """Everything that defines a normal study's anatomy and exposure (all lengths normalised)."""

    view: str = "PA"
    sex: str = "M"
    cx: float = 0.5  # thorax midline
    mx: float = 0.5  # mediastinum / spine midline (differs from cx with rotation)
    tw: float = 0.36  # half-width of the thorax at the lung bases
    apex: float = 0.13  # top of the lung apices
    dome: tuple[float, float] = (0.67, 0.70)  # (right, left) diaphragm dome heights
    cp_depth: tuple[float, float] = (0.08, 0.08)  # how far the lateral recess drops below the dome
    dome_curve: float = 0.035  # medial dome curvature (flattened in emphysema)
    ctr: float = 0.45  # cardiothoracic ratio
    heart_top: float = 0.43
    heart_left: float = 0.66  # fraction of the heart width left of the midline
    med_w: float = 0.055  # half-width of the upper mediastinum
    knob: float = 0.025  # aortic knob prominence
    hila: tuple[float, float] = (0.42, 0.40)  # (right, left) hilar heights
    fat: float = 0.06  # soft tissue outside the ribs
    air: float = 1.0  # lung air depth factor (hyperlucency > 1)
    vessel_scale: float = 1.0
    vessel_reach: float = 0.92  # fraction of the lung the vessels reach (pruned in emphysema)
    rib_spacing: float = 0.052
    clavicle_v: float = 0.13
    lo: float = 0.02  # density mapped to black
    hi: float = 1.10  # density mapped to white
    gamma: float = 1.0
    noise: float = 3.0  # grey levels
    marker_left: bool = True
    seeds: tuple[int, int, int] = (0, 0, 0)  # vessels, texture, noise

    def elevated(self, side: str, amount: float) -> AnatomyParams:
        """A copy with one hemidiaphragm raised by ``amount`` (volume loss)."""
        dome = list(self.dome)
        dome[SIDES.index(side)] -= amount
        return replace(self, dome=(dome[0], dome[1]))


def sample_anatomy(patient: np.random.Generator, study: np.random.Generator, view: str, sex: str, age: int
                   ) -> AnatomyParams:
    """Draw an adult's anatomy (``patient``: the same for every study of a subject) and one image's
    positioning, inspiration and exposure (``study``)."""
    tw = float(patient.uniform(0.325, 0.385))
    ctr = float(np.clip(patient.normal(0.44, 0.025), 0.38, 0.49))
    dome_gap = float(patient.uniform(0.01, 0.035))
    body = dict(
        tw=tw, apex=float(patient.uniform(0.11, 0.15)),
        cp_depth=(float(patient.uniform(0.065, 0.095)), float(patient.uniform(0.065, 0.095))),
        dome_curve=float(patient.uniform(0.03, 0.045)), heart_left=float(patient.uniform(0.58, 0.64)),
        knob=float(patient.uniform(0.012, 0.03)) + (0.006 if age > 70 else 0.0), fat=float(patient.uniform(0.035, 0.09)),
        air=float(patient.uniform(0.92, 1.06)), vessel_scale=float(patient.uniform(0.85, 1.15)),
        hila_base=(float(patient.uniform(0.41, 0.45)), float(patient.uniform(0.39, 0.43))),
        med_w=float(patient.uniform(0.048, 0.06)), vessel_seed=int(patient.integers(0, 2**31 - 1)),
    )
    rotation = float(study.normal(0.0, 0.008))
    inspiration = float(study.uniform(-0.035, 0.03)) - (0.03 if view == "AP" else 0.0)
    dome_r = 0.675 + inspiration
    magnify = 1.08 if view == "AP" else 1.0  # the heart and mediastinum are magnified on AP projection
    return AnatomyParams(
        view=view, sex=sex, cx=0.5 + float(study.normal(0.0, 0.01)), mx=0.5 + rotation, tw=body["tw"], apex=body["apex"],
        dome=(dome_r, dome_r + dome_gap), cp_depth=body["cp_depth"], dome_curve=body["dome_curve"], ctr=ctr * magnify,
        heart_top=float(patient.uniform(0.41, 0.45)) + 0.5 * inspiration, heart_left=body["heart_left"],
        med_w=body["med_w"] * (1.06 if view == "AP" else 1.0), knob=body["knob"],
        hila=(body["hila_base"][0] + 0.4 * inspiration, body["hila_base"][1] + 0.4 * inspiration), fat=body["fat"],
        air=body["air"], vessel_scale=body["vessel_scale"],
        rib_spacing=float(patient.uniform(0.049, 0.056)) * (1.0 + 0.6 * inspiration),
        clavicle_v=float(study.uniform(0.16, 0.19)) - (0.035 if view == "AP" else 0.0),
        lo=float(study.uniform(0.02, 0.1)), hi=float(study.uniform(1.15, 1.3)), gamma=float(study.uniform(0.85, 1.2)),
        noise=float(study.uniform(1.5, 4.5)), marker_left=bool(study.random() < 0.8),
        seeds=(body["vessel_seed"], int(study.integers(0, 2**31 - 1)), int(study.integers(0, 2**31 - 1))),
    )


@dataclass
class Geometry:
    """Derived anatomy at a render resolution ``res`` (masks are ``[res, res]`` float32 in [0, 1])."""

    p: AnatomyParams
    res: int
    anchor_params: AnatomyParams | None = None
    """The anatomy before findings changed it: lesions are placed against it, so removing an enlarged
    heart or a hyperinflation does not move the other findings."""

    @cached_property
    def vs(self) -> np.ndarray:
        """Sample heights for outlines ``[160]`` (only the lung outlines need them: computed on first use)."""
        return np.linspace(self.p.apex, 1.0, 160, dtype=np.float32)

    @cached_property
    def anchor(self) -> Geometry:
        if self.anchor_params is None or self.anchor_params == self.p:
            return self
        return Geometry(self.anchor_params, self.res)

    # ------------------------------------------------------------------ outlines (functions of v or d)
    def lateral(self, v: np.ndarray) -> np.ndarray:
        """Distance from the midline of the inner chest wall at height ``v``."""
        p = self.p
        apex_d = 0.42 * p.tw
        widest = p.apex + 0.36
        t = np.clip((widest - v) / (widest - p.apex), 0.0, 1.0)
        return apex_d + (p.tw - apex_d) * np.sqrt(np.clip(1.0 - t * t, 0.0, 1.0)) + 0.01 * np.clip(v - widest, 0, None)

    def medial(self, v: np.ndarray, side: str) -> np.ndarray:
        """Distance from the midline of the mediastinal border of a lung at height ``v``."""
        p = self.p
        apex_d = 0.42 * p.tw
        base = p.med_w + 0.012 * np.clip((v - p.apex - 0.25) / 0.2, 0.0, 1.0)
        if side == "left":
            base = base + p.knob * np.exp(-(((v - (p.apex + 0.2)) / 0.035) ** 2))  # aortic knob
        top = p.apex + 0.12
        t = np.clip((top - v) / (top - p.apex), 0.0, 1.0)
        return apex_d - (apex_d - base) * np.sqrt(np.clip(1.0 - t * t, 0.0, 1.0))

    def dome_at(self, d: np.ndarray, side: str) -> np.ndarray:
        """Height of the hemidiaphragm at distance ``d`` from the midline."""
        p = self.p
        i = SIDES.index(side)
        peak = 0.45 * p.tw
        lateral = np.clip((d - peak) / (p.tw - peak), 0.0, None)
        medial = np.clip((peak - d) / peak, 0.0, None)
        return p.dome[i] + p.cp_depth[i] * lateral ** 2.2 + p.dome_curve * medial ** 2

    def to_u(self, d: np.ndarray | float, side: str, medial: bool = False) -> np.ndarray:
        centre = self.p.mx if medial else self.p.cx
        return centre + side_sign(side) * np.asarray(d)

    def lung_outline(self, side: str, shrink: float = 0.0) -> list[canvas.Point]:
        """Closed outline (normalised points) of one lung; ``shrink`` pulls the apex and lateral wall in."""
        return [(float(u), float(v)) for u, v in self.lung_outline_array(side, shrink)]

    def lung_outline_array(self, side: str, shrink: float = 0.0) -> np.ndarray:
        """:meth:`lung_outline` as an ``[n, 2]`` array of ``(u, v)``."""
        p = self.p
        vs = self.vs
        lat = self.lateral(vs)
        med = self.medial(vs, side)
        dome_lat = self.dome_at(lat, side)
        keep = vs <= dome_lat
        vs_k, lat_k = vs[keep], lat[keep] - shrink
        # sample the dome on a fixed grid so that moving the medial end does not re-shape the whole dome
        med_end = float(self.medial(np.float32(p.dome[SIDES.index(side)]), side))
        ds = np.linspace(float(lat_k[-1]), 0.0, 60)
        ds = np.append(ds[ds > med_end], med_end)
        dome_v = self.dome_at(ds, side)
        med_keep = vs <= self.dome_at(med, side)
        vs_m, med_m = vs[med_keep][::-1], med[med_keep][::-1]
        us = np.concatenate([self.to_u(lat_k, side), self.to_u(ds, side), self.to_u(med_m, side, medial=True)])
        vs_all = np.concatenate([vs_k + shrink * 0.8 * (1 - (vs_k - p.apex) / 0.5), dome_v, vs_m])
        return np.stack([us, vs_all], axis=1)

    # ------------------------------------------------------------------ masks
    @cached_property
    def lung(self) -> np.ndarray:
        """Both lungs ``[res, res]`` (drawn together, blurred once; cached per lung outline)."""
        return _lung_mask(restricted(self.p, LUNG_FIELDS), self.res)

    @cached_property
    def lungs(self) -> dict[str, np.ndarray]:
        """Each lung alone ``[res, res]``: the lung mask split at the midline (the patient's right on the image's
        left), by whole columns since the split depends on ``u`` only."""
        split = int(np.count_nonzero(canvas.axis(self.res) < self.p.mx))
        right = np.zeros_like(self.lung)
        right[:, :split] = self.lung[:, :split]
        left = np.zeros_like(self.lung)
        left[:, split:] = self.lung[:, split:]
        return {"right": right, "left": left}

    @cached_property
    def air_depth(self) -> np.ndarray:
        """Relative thickness of aerated lung along the beam: thick centrally, thin at the edges."""
        # blurred from the lungs as they were before findings changed them, so that moving one border
        # (a wider mediastinum, a raised dome) changes the air column only near that border
        return self.lung * _depth_profile(restricted(self.anchor.p, LUNG_FIELDS), self.res)

    @property
    def heart_width(self) -> float:
        return self.p.ctr * 2.0 * self.p.tw

    def heart_outline(self) -> list[canvas.Point]:
        """The cardiac silhouette: right atrial border, left ventricle rounding into the apex, left atrial
        appendage / pulmonary trunk at the top."""
        p = self.p
        width = self.heart_width
        dome = self.anchor.p.dome  # the heart rests on the domes as they were before volume loss
        d_right = (1.0 - p.heart_left) * width
        d_left = p.heart_left * width
        top = p.heart_top
        base = p.med_w + 0.005
        pts: list[canvas.Point] = [(p.mx + base, top - 0.02), (p.mx - base, top - 0.05)]
        for t in _RIGHT_HEART_T:  # right atrial convexity, 1-2 cm right of the spine
            v = top - 0.03 + t * (dome[0] - top + 0.03)
            d = base + (d_right - base) * np.sin(np.pi * (0.08 + 0.62 * t)) ** 0.8
            pts.append((p.mx - d, v))
        pts.append((p.mx - 0.7 * d_right, dome[0] + 0.05))
        pts.append((p.mx + 0.7 * d_left, dome[1] + 0.05))
        for t in _LEFT_HEART_T:  # left ventricle: widest low down, apex rounding onto the dome
            v = top + t * (dome[1] + 0.01 - top)
            d = base + (d_left - base) * np.sin(np.pi * 0.55 * t) ** 0.85
            pts.append((p.mx + d, v))
        return [(float(u), float(v)) for u, v in pts]

    @cached_property
    def heart(self) -> np.ndarray:
        return _heart_mask(restricted(self.p, HEART_FIELDS), self.anchor.p.dome, self.res)

    @property
    def heart_box(self) -> tuple[float, float, float, float]:
        pts = np.array(self.heart_outline())
        return float(pts[:, 0].min()), float(pts[:, 1].min()), float(pts[:, 0].max()), float(pts[:, 1].max())

    def hilum(self, side: str) -> canvas.Point:
        p = self.anchor.p  # the hila (and the vessels from them) stay put when the mediastinum widens
        d = p.med_w + 0.035
        return float(self.to_u(d, side, medial=True)), p.hila[SIDES.index(side)]

    @property
    def carina(self) -> canvas.Point:
        return self.p.mx + 0.004, self.p.apex + 0.22

    def zone_v(self, zone: str, side: str) -> tuple[float, float]:
        """Vertical extent (v0, v1) of a lung zone (upper / mid / lower thirds of the lung height)."""
        top = self.p.apex + 0.02
        bottom = self.p.dome[SIDES.index(side)]
        third = (bottom - top) / 3.0
        index = {"upper": 0, "mid": 1, "lower": 2}[zone]
        return top + index * third, top + (index + 1) * third

    def lung_point(self, side: str, zone: str, rng: np.random.Generator, lateral_frac: tuple[float, float] = (0.25, 0.8)
                   ) -> canvas.Point:
        """A random point inside a lung zone, ``lateral_frac`` of the way from mediastinum to chest wall."""
        v0, v1 = self.zone_v(zone, side)
        v = float(rng.uniform(v0 + 0.2 * (v1 - v0), v1 - 0.15 * (v1 - v0)))
        med, lat = float(self.medial(np.float32(v), side)), float(self.lateral(np.float32(v)))
        if side == "left" and v > self.p.heart_top:
            med = max(med, float(self.p.heart_left * self.p.ctr * 2 * self.p.tw) * 0.9)
        if side == "right" and v > self.p.heart_top + 0.05:
            med = max(med, float((1 - self.p.heart_left) * self.p.ctr * 2 * self.p.tw) * 0.9)
        frac = float(rng.uniform(*lateral_frac))
        d = med + frac * max(lat - med, 0.02)
        return float(self.to_u(d, side)), v

    def lung_width_at(self, v: float, side: str) -> tuple[float, float]:
        """(medial, lateral) distances from the midline at height ``v``."""
        return float(self.medial(np.float32(v), side)), float(self.lateral(np.float32(v)))


_RIGHT_HEART_T = np.linspace(0.0, 1.0, 14)  # samples along the right and left heart borders
_LEFT_HEART_T = np.linspace(1.0, 0.0, 18)


# ---------------------------------------------------------------------------------------------- cached masks
# A study is often composed twice (with and without a finding that changes the anatomy) and the layers are
# keyed by the parameters they depend on, so the second composition redraws only what the finding changed.

LUNG_FIELDS = ("apex", "tw", "med_w", "knob", "dome", "cp_depth", "dome_curve", "cx", "mx")
HEART_FIELDS = ("ctr", "tw", "heart_left", "heart_top", "med_w", "mx")


def restricted(p: AnatomyParams, fields: tuple[str, ...]) -> AnatomyParams:
    """``p`` with every field outside ``fields`` at its default: a cache key that changes only with ``fields``
    (the cached layers are drawn from it, so a layer reading another field would come out visibly wrong)."""
    return AnatomyParams(**{name: getattr(p, name) for name in fields})


def _frozen(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


@lru_cache(maxsize=16)
def _lung_mask(p: AnatomyParams, res: int) -> np.ndarray:
    g = Geometry(p, res)
    return _frozen(canvas.polygon_mask([g.lung_outline_array(s) for s in SIDES], res, blur_px=0.8 * res / 256))


@lru_cache(maxsize=8)
def _depth_profile(p: AnatomyParams, res: int) -> np.ndarray:
    """Wide blur of the lungs, scaled so that the middle of a lung reaches full depth ``[res, res]``."""
    return _frozen(np.minimum(canvas.wide_blur(_lung_mask(p, res), 0.045 * res) * 1.7, 1.0))


@lru_cache(maxsize=16)
def _heart_mask(p: AnatomyParams, anchor_dome: tuple[float, float], res: int) -> np.ndarray:
    g = Geometry(p, res, anchor_params=replace(p, dome=anchor_dome))
    return _frozen(canvas.polygon_mask(g.heart_outline(), res, blur_px=0.9 * res / 256))
