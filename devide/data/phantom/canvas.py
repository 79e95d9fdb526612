"""Raster helpers for the phantom renderer: coordinate grids, soft masks, blurs and drawing.

All arrays are float32 ``[R, R]`` in *normalised* image coordinates: ``u`` runs left->right and ``v``
top->bottom over ``[0, 1)``; the patient's right side is on the image's left, as on a frontal radiograph.
Shapes are drawn with Pillow (C speed) into 8-bit masks and blurred there, which keeps one render at
256 x 256 within a few milliseconds.
"""

from __future__ import annotations

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


def polygon_mask(points: Sequence[Point] | Sequence[Sequence[Point]], res: int, blur_px: float = 0.0
                 ) -> np.ndarray:
    """Filled polygon(s) (normalised vertices) as a soft mask ``[res, res]`` in [0, 1]."""
    img = Image.new("L", (res, res), 0)
    draw = ImageDraw.Draw(img)
    polygons = [points] if points and isinstance(points[0][0], (int, float, np.floating)) else points
    for poly in polygons:
        draw.polygon(to_px(poly, res), fill=255)
    return _to_float(blur(img, blur_px))


def polyline_mask(points: Sequence[Point], res: int, width: float, blur_px: float = 0.0,
                  value: int = 255) -> np.ndarray:
    """A stroked polyline (normalised vertices, ``width`` in normalised units) as a soft mask."""
    img = Image.new("L", (res, res), 0)
    draw_polyline(ImageDraw.Draw(img), points, res, width, value)
    return _to_float(blur(img, blur_px))


def draw_polyline(draw: ImageDraw.ImageDraw, points: Sequence[Point], res: int, width: float,
                  value: int = 255) -> None:
    px = max(1, int(round(width * res)))
    draw.line(to_px(points, res), fill=value, width=px, joint="curve")


def blur(img: Image.Image, radius_px: float) -> Image.Image:
    return img.filter(ImageFilter.GaussianBlur(radius_px)) if radius_px > 0 else img


def _to_float(img: Image.Image) -> np.ndarray:
    return np.asarray(img, dtype=np.float32) * (1.0 / 255.0)


def soft_blur(mask: np.ndarray, radius_px: float) -> np.ndarray:
    """Gaussian blur of a [0, 1] float mask (through an 8-bit image: masks do not need more precision)."""
    if radius_px <= 0:
        return mask
    img = Image.fromarray(np.clip(mask * 255.0 + 0.5, 0, 255).astype(np.uint8))
    return _to_float(blur(img, radius_px))


def wide_blur(mask: np.ndarray, radius_px: float) -> np.ndarray:
    """A wide blur done at quarter resolution (4x4 box-reduced, blurred, resized back): cheap and smooth."""
    res = mask.shape[0]
    small_res = max(8, res // 4)
    img = Image.fromarray(np.clip(mask * 255.0 + 0.5, 0, 255).astype(np.uint8))
    small = img.resize((small_res, small_res), Image.BOX)
    small = blur(small, radius_px * small_res / res)
    return _to_float(small.resize((res, res), Image.BILINEAR))


def ramp(edge0: float | np.ndarray, edge1: float | np.ndarray, x: np.ndarray) -> np.ndarray:
    """0 at ``edge0``, 1 at ``edge1`` (either order; edges may be arrays), linear between: a cheap soft step."""
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


def blob(res: int, cu: float, cv: float, ru: float, rv: float | None = None, power: float = 2.0,
         angle: float = 0.0) -> np.ndarray:
    """A smooth (rotated) elliptical bump ``exp(-(r^2)^(power/2))``, 1 at the centre, ``[res, res]``.

    Computed only inside a window of 4 radii around the centre (zero elsewhere) to stay cheap.
    """
    rv = ru if rv is None else rv
    out = np.zeros((res, res), np.float32)
    reach = 4.0 * max(ru, rv)
    c0, c1 = max(0, int((cu - reach) * res)), min(res, int((cu + reach) * res) + 1)
    r0, r1 = max(0, int((cv - reach) * res)), min(res, int((cv + reach) * res) + 1)
    if c0 >= c1 or r0 >= r1:
        return out
    uu, vv = grid(res)
    du = uu[r0:r1, c0:c1] - cu
    dv = vv[r0:r1, c0:c1] - cv
    ca, sa = np.cos(angle), np.sin(angle)
    x = (ca * du + sa * dv) / ru
    y = (-sa * du + ca * dv) / rv
    r2 = x * x + y * y
    out[r0:r1, c0:c1] = np.exp(-(r2 ** (power / 2.0)))
    return out


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
