"""Render a phantom case: anatomy + findings -> density -> an 8-bit radiograph, with per-finding masks.

The render is a pure function of the case (seeds included) and the output size, so an image can be
re-rendered bit for bit, or without one of its findings (the tests use this to check that every box holds
its lesion). Smooth structures are rendered at ``render_res`` (half the output size, at least 256) and
upsampled; noise is added at full size.

A finding's support (where it changes the density, hence its box and mask) is recorded while it is drawn.
Findings that change the anatomy itself get the anatomy part from the layers that change: the enlarged
heart and fractured bones enter the density linearly, so their change is exact from the two heart masks or
bone layers alone; the rest (hyperinflation, volume loss, a wider mediastinum) re-compose the study without
them from cached layers.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import lru_cache

import numpy as np
from PIL import Image

from devide.data.phantom import body, canvas
from devide.data.phantom.anatomy import AnatomyParams, Geometry


# Density units -> grey levels: how visible a change is. A finding's footprint is where it changes the
# density by more than this (about 4-9 grey levels after the response curve).
VISIBLE_DENSITY = 0.02
AIR_SCALE = body.AIR_PER_DEPTH  # lung air depth at full inflation (see body.lung_air)
VESSEL_SCALE = 0.11


@dataclass
class Layers:
    """Density channels the findings draw into (``[res, res]`` float32 each, allocated when a finding first
    draws into it: ``None`` is the channel's neutral value, so that :func:`compose` skips it), with per-finding
    footprints.

    ``footprint[key]`` bounds, in density units, how much finding ``key`` changes each pixel: where it is
    below :data:`VISIBLE_DENSITY` the finding is invisible, so boxes and masks are taken from it.
    """

    res: int
    add: np.ndarray | None = None  # extra density (lesions, devices, air crescents); None: zero
    keep_air: np.ndarray | None = None  # product of (1 - airspace filling) over findings; None: one
    lucency: np.ndarray | None = None  # extra lung air (hyperlucency); None: zero
    vessel_keep: np.ndarray | None = None  # multiplier on vascular markings; None: one
    bone_edits: list = field(default_factory=list)  # fracture edits consumed by body.draw_bones
    bone_edit_owners: list = field(default_factory=list)  # the finding behind each edit
    footprint: dict[str, np.ndarray] = field(default_factory=dict)
    current: str = ""

    def _channel(self, name: str, neutral: float) -> np.ndarray:
        if getattr(self, name) is None:
            setattr(self, name, np.full((self.res, self.res), neutral, np.float32))
        return getattr(self, name)

    def _mark(self, amount: np.ndarray) -> None:
        if self.current:
            previous = self.footprint.get(self.current)
            self.footprint[self.current] = np.abs(amount) if previous is None else np.maximum(previous, np.abs(amount))

    def bone_edit(self, edit: dict) -> None:
        """A change of the bones (a fracture), applied when :func:`compose` draws them."""
        self.bone_edits.append(edit)
        self.bone_edit_owners.append(self.current)

    def density(self, amount: np.ndarray) -> None:
        """Add density (positive: tissue, metal; negative: gas outside the lungs)."""
        self._channel("add", 0.0)[...] += amount
        self._mark(amount)

    def fill(self, fraction: np.ndarray) -> None:
        """Replace a fraction of the aerated lung by fluid or tissue (airspace opacity, effusion)."""
        fraction = np.clip(fraction, 0.0, 1.0)
        self._channel("keep_air", 1.0)[...] *= 1.0 - fraction
        self._mark(AIR_SCALE * fraction)

    def hyperlucent(self, amount: np.ndarray) -> None:
        """More air in the lung (relative increase of the air column)."""
        self._channel("lucency", 0.0)[...] += amount
        self._mark(AIR_SCALE * amount)

    def prune_vessels(self, fraction: np.ndarray) -> None:
        fraction = np.clip(fraction, 0.0, 1.0)
        self._channel("vessel_keep", 1.0)[...] *= 1.0 - fraction
        self._mark(VESSEL_SCALE * fraction)


def render_res(size: int) -> int:
    return size if size <= 256 else max(256, size // 2)


def compose(g: Geometry, layers: Layers) -> np.ndarray:
    """Density ``[res, res]`` of the study: normal layers modified by the findings' channels."""
    rng = np.random.default_rng(g.p.seeds[0])
    vessels = body.vessels(g, rng)
    bones = body.bones(g, layers.bone_edits)
    # a channel no finding drew into is left out: multiplying by one or adding zero changes nothing
    air = body.lung_air(g)
    if layers.lucency is not None:
        air *= 1.0 + layers.lucency
    air += body.trachea(g)
    air += body.gastric_bubble(g, rng)
    density = body.soft_tissue(g) + body.heart_and_mediastinum(g)
    density += body.marker(g)
    if layers.vessel_keep is not None:
        vessels *= layers.vessel_keep
    if layers.keep_air is not None:
        vessels *= layers.keep_air
        air *= _air_kept(g, layers)
    bones = bones * bone_contrast(g)
    bones += vessels
    density += bones
    density -= air
    if layers.add is not None:
        density += layers.add
    return density


def bone_contrast(g: Geometry) -> np.ndarray:
    """Bones stand out over aerated lung, much less over the abdomen and mediastinum (density per unit bone)."""
    return 0.45 + 0.55 * np.minimum(g.air_depth * 3.0, 1.0)


def _air_kept(g: Geometry, layers: Layers) -> np.ndarray | float:
    if layers.keep_air is None:
        return 1.0
    return np.where(g.lung > 0, layers.keep_air, 1.0)


def heart_weight(g: Geometry, layers: Layers) -> np.ndarray:
    """d density / d heart mask in :func:`compose` (the heart adds tissue and displaces lung air): the density
    is linear in the heart mask, so a change of the heart alone changes the density by ``weight * change``."""
    lucency = 0.0 if layers.lucency is None else layers.lucency
    return body.HEART_DENSITY + body.AIR_PER_DEPTH * body.RETROCARDIAC_AIR_LOSS * g.p.air * g.air_depth \
        * (1.0 + lucency) * _air_kept(g, layers)


def to_grey(density: np.ndarray, p: AnatomyParams, size: int) -> np.ndarray:
    """Map density to 8-bit grey at the output size, with detector noise. Returns ``[size, size]`` uint8."""
    scaled = np.subtract(density, np.float32(p.lo))
    scaled *= np.float32(LUT_SIZE / (p.hi - p.lo))
    # clip and truncate to table indices in one pass (the same values as clipping, then astype)
    index = np.clip(scaled, 0, LUT_SIZE - 1, out=np.empty(scaled.shape, np.int32), casting="unsafe")
    grey8 = np.take(_response_lut(round(p.gamma, 4)), index)
    noise = _noise_field(size, p.seeds[2])
    grey = _scratch(size)
    if size == 2 * grey8.shape[0]:  # the usual case (512 px and up): bilinear 2x in integers, 16x scaled
        np.multiply(noise, np.float32(16.0 * p.noise), out=grey)  # in place from here on
        grey += upsample2(grey8)
        grey *= np.float32(1.0 / 16.0)
    else:
        img = Image.fromarray(grey8)
        if img.size[0] != size:
            img = img.resize((size, size), Image.BILINEAR)
        np.multiply(noise, np.float32(p.noise), out=grey)
        grey += np.asarray(img, dtype=np.float32)
    # clip and truncate to 8 bits in one pass (the same values as clipping in place, then astype)
    return np.clip(grey, 0, 255, out=np.empty((size, size), np.uint8), casting="unsafe")


_SCRATCH: dict[int, np.ndarray] = {}


def _scratch(size: int) -> np.ndarray:
    """A reusable ``[size, size]`` float32 work buffer (a fresh megabyte per image costs page faults)."""
    if size not in _SCRATCH:
        _SCRATCH[size] = np.empty((size, size), np.float32)
    return _SCRATCH[size]


def upsample2(a: np.ndarray) -> np.ndarray:
    """Bilinear 2x upsampling (pixel centres, edges clamped) of a uint8 image ``[h, w]`` in integer arithmetic:
    ``[2h, 2w]`` uint16 holding 16 x the interpolated value (Pillow's BILINEAR to within rounding, 4x faster)."""
    a = a.astype(np.uint16)
    h, w = a.shape
    rows = np.empty((2 * h, w), np.uint16)
    _interleave(a, rows, axis=0)
    out = np.empty((2 * h, 2 * w), np.uint16)
    _interleave(rows, out, axis=1)
    return out


def _interleave(a: np.ndarray, out: np.ndarray, axis: int) -> None:
    """``out`` (twice ``a``'s length along ``axis``) = 3 x each sample + its neighbour before (even positions)
    or after (odd positions), the border sample standing in for its missing neighbour."""
    a, out = (a, out) if axis == 0 else (a.T, out.T)
    centre = 3 * a
    even, odd = out[0::2], out[1::2]
    np.add(centre[1:], a[:-1], out=even[1:])  # 3/4 of this sample + 1/4 of the one before
    np.add(centre[:1], a[:1], out=even[:1])
    np.add(centre[:-1], a[1:], out=odd[:-1])
    np.add(centre[-1:], a[-1:], out=odd[-1:])


LUT_SIZE = 2048


@lru_cache(maxsize=64)
def _response_lut(gamma: float) -> np.ndarray:
    """Film-like response: grey rises with density, compressing the dense (bright) end a little."""
    return (_response_curve() ** gamma * 255.0 + 0.5).astype(np.uint8)


@lru_cache(maxsize=1)
def _response_curve() -> np.ndarray:
    """The response before the study's gamma (the same for every study), ``[LUT_SIZE]`` in [0, 1]."""
    x = np.linspace(0.0, 1.0, LUT_SIZE)
    curve = (1.0 - np.exp(-1.3 * x)) / (1.0 - np.exp(-1.3))
    out = np.clip(curve, 0, 1)
    out.setflags(write=False)
    return out


def _noise_field(size: int, seed: int) -> np.ndarray:
    """Unit-variance detector noise ``[size, size]``: a random crop of a cached texture (fast, seeded)."""
    tiled = _noise_texture(size)
    rng = np.random.default_rng(seed)
    r, c = rng.integers(0, size, size=2)
    flip = rng.integers(0, 2, size=2)
    tile = tiled[r:r + size, c:c + size]  # = the texture rolled by (-r, -c), without a copy
    return tile[:: -1 if flip[0] else 1, :: -1 if flip[1] else 1]


_NOISE: dict[int, np.ndarray] = {}


def _noise_texture(size: int) -> np.ndarray:
    """The periodic noise texture tiled 2 x 2 (``[2 size, 2 size]``), so that any wrapped crop is a view."""
    if size not in _NOISE:
        rng = np.random.default_rng(20240403)
        white = rng.standard_normal((size, size)).astype(np.float32)
        # slightly correlated, like a real detector's quantum mottle
        smooth = canvas.soft_blur(np.clip(white * 0.15 + 0.5, 0, 1), 0.6)
        texture = ((smooth - smooth.mean()) / (smooth.std() + 1e-6)).astype(np.float32)
        _NOISE[size] = np.tile(texture, (2, 2))
    return _NOISE[size]


@dataclass
class Rendered:
    """A rendered study: the image and, per finding, where it changed the density."""

    image: np.ndarray
    """``[size, size]`` uint8 grey levels."""
    supports: dict[str, np.ndarray]
    """entity id -> ``[res, res]`` float32 upper bound of the density change the finding causes."""
    size: int

    @property
    def res(self) -> int:
        return next(iter(self.supports.values())).shape[0] if self.supports else self.size

    def box(self, entity: str) -> tuple[float, float, float, float] | None:
        """``(x, y, w, h)`` in output pixels around where ``entity`` is visible, or None if nowhere."""
        support = self.supports.get(entity)
        found = canvas.bbox(support, VISIBLE_DENSITY) if support is not None else None
        if found is None:
            return None
        scale = self.size / support.shape[0]
        x0, y0, x1, y1 = found
        return x0 * scale, y0 * scale, (x1 - x0) * scale, (y1 - y0) * scale

    def mask(self, entity: str) -> np.ndarray:
        """``[size, size]`` bool: pixels where ``entity`` is visible."""
        support = self.supports.get(entity)
        if support is None:
            return np.zeros((self.size, self.size), bool)
        visible = support > VISIBLE_DENSITY
        factor, rest = divmod(self.size, visible.shape[0])
        if rest == 0:
            # an integer upscale of a binary mask thresholded at half (what the bilinear path below gives) is
            # pixel replication
            return visible if factor == 1 else visible.repeat(factor, axis=0).repeat(factor, axis=1)
        scaled = Image.fromarray(visible.astype(np.uint8) * 255).resize((self.size, self.size), Image.BILINEAR)
        return np.asarray(scaled) >= 128

    def rle(self, entity: str) -> str:
        """SIIM-ACR run-length encoding of :meth:`mask` (straight from the render-resolution mask when the
        output size is a whole multiple of it)."""
        from devide.data.phantom.formats import mask_to_rle, upscaled_mask_to_rle

        support = self.supports.get(entity)
        if support is not None and self.size % support.shape[0] == 0:
            return upscaled_mask_to_rle(support > VISIBLE_DENSITY, self.size // support.shape[0])
        return mask_to_rle(self.mask(entity))


def anatomy_of(case) -> AnatomyParams:
    from devide.data.phantom.anatomy import sample_anatomy

    patient = np.random.default_rng([case.patient_seed, 0])
    return sample_anatomy(patient, np.random.default_rng([case.seed, 0]), case.view, case.sex, case.age)


def _modified(params: AnatomyParams, findings) -> AnatomyParams:
    from devide.data.phantom.lesions import RENDERERS

    for f in findings:
        modify = RENDERERS[f.entity].modify
        if modify is not None:
            params = modify(params, f)
    return params


def _draw(case, params: AnatomyParams, base: AnatomyParams, findings, res: int) -> tuple[Geometry, Layers]:
    from devide.data.phantom.lesions import RENDERERS

    g = Geometry(params, res, anchor_params=base)
    layers = Layers(res)
    for f in findings:
        layers.current = f.entity
        RENDERERS[f.entity].draw(g, f, np.random.default_rng([case.seed, f.seed, 1]), layers)
    layers.current = ""
    return g, layers


def _density(case, base: AnatomyParams, findings, res: int) -> tuple[np.ndarray, Layers]:
    g, layers = _draw(case, _modified(base, findings), base, findings, res)
    return compose(g, layers), layers


def needs_difference(entity: str) -> bool:
    """Findings whose visible extent includes a change of the anatomy (measured against the study without
    them, see :func:`anatomy_change`)."""
    from devide.data.phantom.lesions import RENDERERS

    return RENDERERS[entity].modify is not None or entity == "fracture"


HEART_FIELDS = ("ctr", "heart_left", "heart_top")


def anatomy_change(case, base: AnatomyParams, findings: list, f, g: Geometry, layers: Layers,
                   density: np.ndarray) -> np.ndarray:
    """``[res, res]`` |density change| caused by ``f`` changing the anatomy (the study with vs without ``f``)."""
    others = [o for o in findings if o is not f]
    params_without = _modified(base, others)
    if f.entity == "fracture" and params_without == g.p:
        # bones enter the density linearly: only the fractured bone layer differs
        kept = [e for e, owner in zip(layers.bone_edits, layers.bone_edit_owners) if owner != f.entity]
        return np.abs(body.bones(g, layers.bone_edits) - body.bones(g, kept)) * bone_contrast(g)
    if replace(params_without, **{k: getattr(g.p, k) for k in HEART_FIELDS}) == g.p:
        # only the heart changed (cardiomegaly): the density is linear in the heart mask
        heart_without = Geometry(params_without, g.res, anchor_params=base).heart
        return np.abs(g.heart - heart_without) * heart_weight(g, layers)
    without, _ = _density(case, base, others, g.res)
    return np.abs(density - without)


def render_case(case, size: int, exclude: tuple[str, ...] = ()) -> Rendered:
    """Render ``case`` at ``size`` x ``size`` (optionally without some findings)."""
    res = render_res(size)
    base = anatomy_of(case)
    findings = [f for f in case.findings if f.entity not in exclude]
    g, layers = _draw(case, _modified(base, findings), base, findings, res)
    density = compose(g, layers)
    supports = dict(layers.footprint)
    for f in findings:
        if needs_difference(f.entity):
            diff = anatomy_change(case, base, findings, f, g, layers, density)
            supports[f.entity] = np.maximum(supports[f.entity], diff) if f.entity in supports else diff
    return Rendered(to_grey(density, base, size), supports, size)
