"""Raster helpers for the phantom renderer: coordinate grids, soft masks, blurs and drawing.

All arrays are float32 ``[R, R]`` in *normalised* image coordinates: ``u`` runs left->right and ``v``
top->bottom over ``[0, 1)``; the patient's right side is on the image's left, as on a frontal radiograph.
Shapes are drawn with Pillow (C speed) into 8-bit images; thick strokes are filled as one outline polygon
(Pillow's round joints cost a pie slice per vertex). Soft edges are a separable Gaussian in numpy applied
only inside the bounding box of what was drawn, so a small lesion costs a small window, not a full frame.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

Point = tuple[float, float]


@lru_cache(maxsize=8)
def grid(res: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates ``(U, V)``, each ``[res, res]`` float32 in [0, 1)."""
    axis = (np.arange(res, dtype=np.float32) + 0.5) / res
    uu, vv = np.meshgrid(axis, axis)
    uu.setflags(write=False)
    vv.setflags(write=False)
    return uu, vv


def axis(res: int) -> np.ndarray:
    """Pixel-centre coordinates along one axis, ``[res]``."""
    return grid(res)[0][0]


def to_px(points: Sequence[Point], res: int) -> list[Point]:
    return [(float(u) * res, float(v) * res) for u, v in points]


def polygon_mask(points: Sequence[Point] | Sequence[Sequence[Point]] | np.ndarray | Sequence[np.ndarray], res: int,
                 blur_px: float = 0.0) -> np.ndarray:
    """Filled polygon(s) (normalised vertices: point lists or ``[n, 2]`` arrays) as a soft mask ``[res, res]``
    in [0, 1].

    A polygon reaching past the frame (the body outline) is drawn on a canvas with a margin, so that its
    blurred edge at the border is the blurred continuation, not a fold at the border.
    """
    polygons = [points] if len(points) and isinstance(points[0][0], (int, float, np.floating)) else points
    # vertices in pixels, [n, 2] float64 each (the arithmetic of to_px, for a whole outline at once)
    pixels = [np.asarray(poly, np.float64).reshape(-1, 2) * res for poly in polygons]
    outside = any(px.size and (px.min() < 0 or px.max() > res) for px in pixels)
    margin = int(np.ceil(2.5 * blur_px)) + 1 if outside and blur_px > 0 else 0
    img = Image.new("L", (res + 2 * margin, res + 2 * margin), 0)
    draw = ImageDraw.Draw(img)
    for px in pixels:
        draw.polygon((px + margin if margin else px).ravel().tolist(), fill=255)
    out = soft(img, blur_px)
    return out[margin:margin + res, margin:margin + res] if margin else out


def polyline_mask(points: Sequence[Point], res: int, width: float, blur_px: float = 0.0,
                  value: int = 255) -> np.ndarray:
    """A stroked polyline (normalised vertices, ``width`` in normalised units) as a soft mask."""
    img = Image.new("L", (res, res), 0)
    draw_polyline(ImageDraw.Draw(img), points, res, width, value)
    return soft(img, blur_px)


def draw_polyline(draw: ImageDraw.ImageDraw, points: Sequence[Point], res: int, width: float,
                  value: int = 255) -> None:
    """Stroke a polyline ``width`` (normalised) wide. Strokes of 3 px and more are filled as one mitred outline
    polygon (smooth joints at the cost of a single fill); thinner ones as plain segments."""
    px = max(1, int(round(width * res)))
    pts = [(float(u) * res, float(v) * res) for u, v in points]
    if px < 3 or len(pts) < 3:
        draw.line(pts, fill=value, width=px)
        return
    draw.polygon(stroke_outline(pts, px / 2.0), fill=value)


def stroke_outline(pts: Sequence[Point], half_width: float) -> list[Point]:
    """Outline polygon of a polyline ``pts`` (pixels) stroked ``2 * half_width`` wide, with butt ends and mitred
    joints (mitre length capped at twice the half width). Plain Python: the polylines have a few dozen
    vertices, where numpy's per-call overhead dominates."""
    normals = []
    for (x0, y0), (x1, y1) in zip(pts[:-1], pts[1:]):
        length = math.hypot(x1 - x0, y1 - y0) or 1e-9
        normals.append((-(y1 - y0) / length, (x1 - x0) / length))
    offsets = [normals[0]]
    for (ax, ay), (bx, by) in zip(normals[:-1], normals[1:]):
        mx, my = ax + bx, ay + by
        norm = math.hypot(mx, my) or 1e-9
        mx, my = mx / norm, my / norm
        scale = 1.0 / max(mx * bx + my * by, 0.5)  # 1 / cos(half the turn), capped at 2
        offsets.append((mx * scale, my * scale))
    offsets.append(normals[-1])
    left = [(x + half_width * ox, y + half_width * oy) for (x, y), (ox, oy) in zip(pts, offsets)]
    right = [(x - half_width * ox, y - half_width * oy) for (x, y), (ox, oy) in zip(pts, offsets)]
    return left + right[::-1]


def stroke_outlines(lines: np.ndarray, res: int, width: float | Sequence[float]) -> list:
    """Outline polygons (flat pixel coordinates, for ``ImageDraw.polygon``) of ``lines`` ``[m, n, 2]``
    (normalised) stroked ``width`` wide: :func:`stroke_outline` for many polylines in one numpy pass. Several
    widths give one list of outlines per width (the joints' geometry computed once)."""
    pts = lines * res
    seg = np.diff(pts, axis=1)
    seg /= np.maximum(np.linalg.norm(seg, axis=2, keepdims=True), 1e-9)
    normals = np.stack([-seg[..., 1], seg[..., 0]], axis=2)  # [m, n-1, 2]
    mid = normals[:, :-1] + normals[:, 1:]
    mid /= np.maximum(np.linalg.norm(mid, axis=2, keepdims=True), 1e-9)
    cos_half = np.maximum((mid * normals[:, 1:]).sum(axis=2, keepdims=True), 0.5)
    offsets = np.concatenate([normals[:, :1], mid / cos_half, normals[:, -1:]], axis=1)
    out = []
    for each in ([width] if np.ndim(width) == 0 else width):
        half = max(1, int(round(each * res))) / 2.0
        outline = np.concatenate([pts + half * offsets, (pts - half * offsets)[:, ::-1]], axis=1)
        out.append(outline.reshape(len(lines), -1).tolist())
    return out[0] if np.ndim(width) == 0 else out


def blur(img: Image.Image, radius_px: float) -> Image.Image:
    return img.filter(ImageFilter.GaussianBlur(radius_px)) if radius_px > 0 else img


def _to_float(img: Image.Image) -> np.ndarray:
    return np.asarray(img, dtype=np.float32) * (1.0 / 255.0)


@lru_cache(maxsize=64)
def gaussian_taps(sigma: float, reach: int = 0) -> np.ndarray:
    """Normalised 1-D Gaussian weights out to 2.5 sigma (or ``reach`` pixels). The sub-pixel blurs (sigma < 1)
    that soften drawn edges use the nearest neighbours only, which carry ~95 % of the weight: the edge comes out
    a little crisper (sigma ~0.7) for half the arithmetic."""
    reach = reach or (1 if sigma < 1.0 else int(np.ceil(2.5 * sigma)))
    x = np.arange(-reach, reach + 1, dtype=np.float64)
    taps = np.exp(-0.5 * (x / sigma) ** 2)
    return (taps / taps.sum()).astype(np.float32)


def gaussian(a: np.ndarray, sigma: float, edges: str = "extend") -> np.ndarray:
    """Separable Gaussian blur of a float32 array ``[h, w]``; returns a new ``[h, w]`` array.

    ``edges="extend"`` repeats the border pixels (as Pillow does); ``"zero"`` treats the outside as 0, which
    skips the padding copy and is exact for windows that already carry a zero margin.
    """
    if sigma <= 0:
        return a.astype(np.float32, copy=True)
    return _blur(a, gaussian_taps(round(float(sigma), 4)), edges)


def _blur(a: np.ndarray, taps: np.ndarray, edges: str) -> np.ndarray:
    """Separable blur of ``a`` ``[h, w]`` with symmetric ``taps``; ``edges`` as in :func:`gaussian`."""
    if edges == "extend":
        reach = taps.size // 2
        return _blur_zero(np.pad(a, reach, mode="edge"), taps)[reach:-reach, reach:-reach]
    return _blur_zero(a, taps)


def _blur_zero(a: np.ndarray, taps: np.ndarray) -> np.ndarray:
    reach = taps.size // 2
    weighted = np.empty(a.shape, np.result_type(a, taps))
    for axis in (0, 1):
        out = a * taps[reach]
        n = a.shape[axis]
        for k in range(1, min(reach, n - 1) + 1):
            np.multiply(a, taps[reach + k], out=weighted)  # symmetric taps: one product serves k before and after
            if axis == 0:
                out[k:] += weighted[:-k]
                out[:-k] += weighted[k:]
            else:
                out[:, k:] += weighted[:, :-k]
                out[:, :-k] += weighted[:, k:]
        a = out
    return a


def soft(img: Image.Image, radius_px: float, scale: float = 1.0 / 255.0) -> np.ndarray:
    """An 8-bit drawing as float32 ``[h, w]`` (``value * scale``) with Gaussian soft edges of ``radius_px``.

    Only the bounding box of what was drawn (plus the blur's reach) is blurred: everything else is zero, which
    is exactly what a full-frame blur would give there.
    """
    h, w = img.size[1], img.size[0]
    out = np.zeros((h, w), np.float32)
    box = img.getbbox()
    if box is None:
        return out
    reach = int(np.ceil(2.5 * radius_px)) + 1 if radius_px > 0 else 0
    x0, y0 = max(0, box[0] - reach), max(0, box[1] - reach)
    x1, y1 = min(w, box[2] + reach), min(h, box[3] + reach)
    if (x1 - x0) * (y1 - y0) * 2 < w * h:  # a small drawing: convert only its window
        window = np.asarray(img.crop((x0, y0, x1, y1)), dtype=np.float32)
    else:
        window = np.asarray(img)[y0:y1, x0:x1].astype(np.float32)
    if radius_px > 0:
        # a drawing cut by the image border continues beyond it (edges extended, as a full-frame blur does);
        # one that stays inside has zeros at the border, where extending and zero padding agree
        touches_border = box[0] == 0 or box[1] == 0 or box[2] == w or box[3] == h
        edges = "extend" if touches_border else "zero"
        blur_window = half_res_gaussian if radius_px >= HALF_RES_BLUR else gaussian
        window = blur_window(window, radius_px, edges)
    np.multiply(window, np.float32(scale), out=out[y0:y1, x0:x1])
    return out


HALF_RES_BLUR = 1.9
"""Blurs at least this wide (sigma, pixels) run at half resolution (:func:`half_res_gaussian`): the soft body
outline and breasts (2 px at the 256 px render of a 512 px image; the resampling's own spread is a small part
of such a blur), never the sharper edges of bones, vessels and lungs."""
_RESAMPLING_VARIANCE = 0.25 + 2.0 / 3.0  # pixels^2 added by the 2x box reduction and the bilinear 2x upsampling


def half_res_gaussian(a: np.ndarray, sigma: float, edges: str = "extend") -> np.ndarray:
    """:func:`gaussian` of ``a`` ``[h, w]`` for wide blurs (the soft body outline), a quarter of the arithmetic:
    2x box-reduced, blurred at half resolution with the rest of the variance, bilinearly upsampled (Pillow, C).
    Within ~2 % of the full-resolution blur of a drawn edge (the same width: the resampling's own spread is
    subtracted)."""
    h, w = a.shape
    if h % 2 or w % 2:  # repeat the last row / column: it is beyond the drawing (zero) or the frame's edge
        a = np.pad(a, ((0, h % 2), (0, w % 2)), mode="edge")
    small = np.asarray(Image.fromarray(a, mode="F").reduce(2))
    half_sigma = math.sqrt(max(sigma * sigma - _RESAMPLING_VARIANCE, 0.25)) / 2.0
    small = _blur(small, gaussian_taps(round(half_sigma, 4), math.ceil(2.5 * half_sigma)), edges)
    return upsample(small, 2)[:h, :w]


def upsample(a: np.ndarray, factor: int) -> np.ndarray:
    """Bilinear upsampling of a float32 ``[h, w]`` by a whole ``factor`` (pixel centres aligned, edges
    clamped): ``[factor h, factor w]``, as Pillow's BILINEAR resize gives (to float rounding), 4x faster."""
    return _upsample_axis(_upsample_axis(np.asarray(a, np.float32), factor, 0), factor, 1)


def _upsample_axis(a: np.ndarray, factor: int, axis: int) -> np.ndarray:
    n = a.shape[axis]
    first, last = (a[:1], a[-1:]) if axis == 0 else (a[:, :1], a[:, -1:])
    padded = np.concatenate([first, a, last], axis=axis)  # clamped neighbours beyond the edges
    shape = list(a.shape)
    shape[axis] *= factor
    out = np.empty(shape, np.float32)
    weighted: dict[float, np.ndarray] = {}  # padded * weight, shared by the phases that use the same weight

    def times(weight: float) -> np.ndarray:
        if weight not in weighted:
            weighted[weight] = padded * np.float32(weight)
        return weighted[weight]

    def shifted(b: np.ndarray, start: int) -> np.ndarray:
        return b[start:start + n] if axis == 0 else b[:, start:start + n]

    for phase in range(factor):
        position = (phase + 0.5) / factor - 0.5  # where this output pixel falls, relative to its source pixel
        base = math.floor(position)  # its left neighbour: -1 (the one before) or 0 (itself)
        weight = position - base
        target = out[phase::factor] if axis == 0 else out[:, phase::factor]
        np.add(shifted(times(weight), base + 2), shifted(times(1.0 - weight), base + 1), out=target)
    return out


def soft_blur(mask: np.ndarray, radius_px: float) -> np.ndarray:
    """Gaussian blur of a [0, 1] float mask (through an 8-bit image: masks do not need more precision)."""
    if radius_px <= 0:
        return mask
    img = Image.fromarray(np.clip(mask * 255.0 + 0.5, 0, 255).astype(np.uint8))
    return _to_float(blur(img, radius_px))


def wide_blur(mask: np.ndarray, radius_px: float) -> np.ndarray:
    """A wide blur done at quarter resolution (4x4 box-reduced, blurred, resized back): cheap and smooth."""
    res = mask.shape[0]
    if res % 4 == 0 and res >= 32:
        small = np.asarray(Image.fromarray(np.asarray(mask, np.float32), mode="F").reduce(4))  # 4x4 means, in C
        return upsample(gaussian(small, radius_px / 4.0, "extend"), 4)
    small_res = max(8, res // 4)
    img = Image.fromarray(np.clip(mask * 255.0 + 0.5, 0, 255).astype(np.uint8))
    small = img.resize((small_res, small_res), Image.BOX)
    small = blur(small, radius_px * small_res / res)
    return _to_float(small.resize((res, res), Image.BILINEAR))


def ramp(edge0: float | np.ndarray, edge1: float | np.ndarray, x: np.ndarray) -> np.ndarray:
    """0 at ``edge0``, 1 at ``edge1`` (either order; edges may be arrays broadcasting against ``x``), linear
    between: a cheap soft step."""
    if np.ndim(edge0) == 0 and np.ndim(edge1) == 0:  # scalar edges: one multiply-add and a clip, in float32
        span = float(edge1) - float(edge0)
        span = span if abs(span) >= 1e-6 else 1e-6
        out = (x - np.float32(edge0)) * np.float32(1.0 / span)
        return np.clip(out, 0.0, 1.0, out=out)
    span = np.asarray(edge1, dtype=np.float32) - edge0
    span = np.where(np.abs(span) < 1e-6, 1e-6, span)
    return np.clip((x - edge0) / span, 0.0, 1.0)


def ellipse_points(cu: float, cv: float, ru: float, rv: float, angle: float = 0.0, n: int = 48,
                   wobble: Sequence[tuple[int, float, float]] = ()) -> list[Point]:
    """Vertices of an ellipse rotated by ``angle`` (radians); ``wobble`` = (harmonic, amplitude, phase)
    terms that modulate the radius, for lobulated outlines."""
    t = np.linspace(0.0, 2.0 * np.pi, n, endpoint=False)
    scale = np.ones_like(t)
    for harmonic, amplitude, phase in wobble:
        scale += amplitude * np.cos(harmonic * t + phase)
    x = ru * scale * np.cos(t)
    y = rv * scale * np.sin(t)
    ca, sa = np.cos(angle), np.sin(angle)
    return list(zip(cu + ca * x - sa * y, cv + sa * x + ca * y, strict=True))


BLOB_FLOOR = 1e-3  # blobs are cut where they fall below this (far under a grey level)


def blob(res: int, cu: float, cv: float, ru: float, rv: float | None = None, power: float = 2.0,
         angle: float = 0.0) -> np.ndarray:
    """A smooth (rotated) elliptical bump ``exp(-(r^2)^(power/2))``, 1 at the centre, ``[res, res]``.

    Computed only inside the window where it exceeds :data:`BLOB_FLOOR` (at most 4 radii around the centre,
    zero elsewhere), in float32, to stay cheap.
    """
    rv = ru if rv is None else rv
    out = np.zeros((res, res), np.float32)
    reach = min(4.0, (-math.log(BLOB_FLOOR)) ** (1.0 / power)) * max(ru, rv)
    c0, c1 = max(0, int((cu - reach) * res)), min(res, int((cu + reach) * res) + 1)
    r0, r1 = max(0, int((cv - reach) * res)), min(res, int((cv + reach) * res) + 1)
    if c0 >= c1 or r0 >= r1:
        return out
    # offsets along each axis ([w] and [h]), combined by broadcasting: the grid's values without its 2-D passes
    du = axis(res)[c0:c1] - np.float32(cu)
    dv = axis(res)[r0:r1] - np.float32(cv)
    ca, sa = math.cos(angle), math.sin(angle)
    x = (np.float32(ca / ru) * du)[None, :] + (np.float32(sa / ru) * dv)[:, None]
    y = (np.float32(-sa / rv) * du)[None, :] + (np.float32(ca / rv) * dv)[:, None]
    r2 = x * x
    r2 += y * y
    window = out[r0:r1, c0:c1]
    if power == 2.0:
        np.exp(np.negative(r2, out=r2), out=window)
    else:  # a table lookup: a fractional power and an exp per pixel cost several times more
        table, per_unit = _blob_table(power)
        r2 *= np.float32(per_unit)
        index = np.minimum(r2, np.float32(table.size - 1), out=np.empty(r2.shape, np.int32), casting="unsafe")
        np.take(table, index, out=window)
    return out


@lru_cache(maxsize=16)
def _blob_table(power: float) -> tuple[np.ndarray, float]:
    """``exp(-(r2)^(power/2))`` sampled finely in ``r2`` up to where it reaches :data:`BLOB_FLOOR` (then 0)."""
    top = (-math.log(BLOB_FLOOR)) ** (2.0 / power)
    per_unit = 8192 / top
    r2 = (np.arange(8193, dtype=np.float64) + 0.5) / per_unit
    table = np.exp(-(r2 ** (power / 2.0))).astype(np.float32)
    table[-1] = 0.0
    return table, per_unit


def smooth_noise(rng: np.random.Generator, res: int, cells: int) -> np.ndarray:
    """Band-limited random field ``[res, res]`` with ~``cells`` features across, zero mean, unit-ish std."""
    coarse = rng.standard_normal((cells + 3, cells + 3)).astype(np.float32)
    img = Image.fromarray(coarse, mode="F").resize((res + 2 * res // cells, res + 2 * res // cells),
                                                   Image.BICUBIC)
    off = res // cells
    return np.asarray(img, dtype=np.float32)[off:off + res, off:off + res]


def bbox(mask: np.ndarray, threshold: float) -> tuple[int, int, int, int] | None:
    """``(x0, y0, x1, y1)`` (exclusive ends, pixels) of ``mask > threshold``, or None when empty."""
    rows = np.flatnonzero((mask > threshold).any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero((mask > threshold).any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1
