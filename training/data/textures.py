"""Procedural ground: terrain textures and the ground raster a view is warped from.

Textures are generated once per process from a fixed seed (so datasets stay deterministic
for a seed) at :data:`TEXTURE_GSD` metres per pixel; a scene samples rotated, scaled crops of
them, mixes terrains with smooth random masks and paints roads on top.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Dict, List, Sequence, Tuple

import cv2
import numpy as np

TERRAINS = ("grass", "asphalt", "forest", "water", "sand", "rubble")
#: Ground sampling distance of the texture bank (metres per texture pixel).
TEXTURE_GSD = 0.06
_TILE = 512
_BANK_SEED = 20261123


def smooth_noise(rng: np.random.Generator, height: int, width: int, cells: int) -> np.ndarray:
    """Value noise in [0, 1], ``cells`` random values across the larger side, bicubic-upsampled."""
    ch = max(2, int(round(cells * height / max(height, width))) + 1)
    cw = max(2, int(round(cells * width / max(height, width))) + 1)
    grid = rng.random((ch, cw), dtype=np.float32)
    return np.clip(cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC), 0.0, 1.0)


def fractal_noise(rng: np.random.Generator, size: int, octaves: Sequence[int],
                  falloff: float = 0.6) -> np.ndarray:
    """Sum of :func:`smooth_noise` octaves, normalised to [0, 1]."""
    acc = np.zeros((size, size), np.float32)
    amp, total = 1.0, 0.0
    for cells in octaves:
        acc += amp * smooth_noise(rng, size, size, cells)
        total += amp
        amp *= falloff
    acc /= total
    lo, hi = float(acc.min()), float(acc.max())
    return (acc - lo) / max(hi - lo, 1e-6)


def _colorize(noise: np.ndarray, dark, light) -> np.ndarray:
    dark = np.asarray(dark, np.float32)
    light = np.asarray(light, np.float32)
    return noise[..., None] * (light - dark) + dark


def _grain(rng: np.random.Generator, size: int, amount: float) -> np.ndarray:
    return (rng.standard_normal((size, size), dtype=np.float32) * amount)[..., None]


def _make_texture(name: str, rng: np.random.Generator) -> np.ndarray:
    s = _TILE
    if name == "grass":
        n = fractal_noise(rng, s, (4, 12, 40, 120), 0.55)
        img = _colorize(n, (30, 85, 55), (75, 160, 110)) + _grain(rng, s, 9)
        tufts = (fractal_noise(rng, s, (60, 200), 0.7) > 0.72)[..., None]
        img = np.where(tufts, img * 0.78, img)
    elif name == "asphalt":
        n = fractal_noise(rng, s, (3, 20, 200), 0.5)
        img = _colorize(n, (70, 72, 76), (105, 105, 108)) + _grain(rng, s, 7)
    elif name == "forest":
        n = fractal_noise(rng, s, (6, 24), 0.7)
        img = _colorize(n, (20, 55, 30), (45, 95, 55))
        img = np.ascontiguousarray(img)
        for _ in range(900):  # crowns seen from above: dark rim, lit cap towards the sun
            x, y = rng.integers(0, s, 2)
            r = int(rng.integers(8, 26))
            base = np.array([30, 80 + rng.integers(-15, 25), 45], np.float32)
            cv2.circle(img, (int(x), int(y)), r, (base * 0.65).tolist(), -1, cv2.LINE_AA)
            cv2.circle(img, (int(x - r * 0.2), int(y - r * 0.2)), int(r * 0.75), base.tolist(), -1,
                       cv2.LINE_AA)
        img += _grain(rng, s, 6)
    elif name == "water":
        n = fractal_noise(rng, s, (2, 6), 0.5)
        yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
        ripple = 0.5 + 0.5 * np.sin((xx * 0.35 + yy * 0.12) + 6.0 * fractal_noise(rng, s, (8,), 1.0))
        img = _colorize(0.7 * n + 0.3 * ripple, (70, 55, 25), (120, 100, 55)) + _grain(rng, s, 3)
    elif name == "sand":
        n = fractal_noise(rng, s, (3, 10, 60), 0.5)
        img = _colorize(n, (120, 160, 185), (165, 205, 225)) + _grain(rng, s, 8)
    elif name == "rubble":
        n = fractal_noise(rng, s, (4, 16, 64), 0.6)
        img = np.ascontiguousarray(_colorize(n, (85, 90, 95), (140, 145, 150)))
        for _ in range(2500):  # broken concrete and bricks
            c = rng.integers(0, s, 2).astype(np.float32)
            r = float(rng.uniform(2, 9))
            pts = c + r * rng.uniform(-1, 1, (int(rng.integers(3, 6)), 2))
            tone = float(rng.uniform(60, 190))
            col = (tone * rng.uniform(0.8, 1.0), tone * rng.uniform(0.85, 1.0), tone)
            cv2.fillPoly(img, [pts.astype(np.int32)], col, cv2.LINE_AA)
        img += _grain(rng, s, 10)
    else:  # pragma: no cover - guarded by TERRAINS
        raise ValueError(f"unknown terrain {name!r}; expected one of {TERRAINS}")
    return np.clip(img, 0, 255).astype(np.uint8)


@lru_cache(maxsize=1)
def texture_bank() -> Dict[str, np.ndarray]:
    """One ``512x512`` BGR tile per terrain, identical in every process."""
    rng = np.random.default_rng(_BANK_SEED)
    return {name: _make_texture(name, rng) for name in TERRAINS}


@dataclass
class GroundRaster:
    """A BGR image of the ground plane and where it lies in the world.

    Pixel ``(col, row)`` centre is at ``x = origin[0] + col * gsd``, ``y = origin[1] - row * gsd``.
    """

    image: np.ndarray
    gsd: float
    origin: Tuple[float, float]
    #: Road centre lines in world metres, each ``(N, 2)``, with their widths.
    roads: List[np.ndarray] = field(default_factory=list)
    road_widths: List[float] = field(default_factory=list)

    def raster_to_world(self) -> np.ndarray:
        """3x3 affine from raster pixels to ground metres."""
        return np.array([[self.gsd, 0.0, self.origin[0]], [0.0, -self.gsd, self.origin[1]],
                         [0.0, 0.0, 1.0]])

    def world_to_raster(self, xy: np.ndarray) -> np.ndarray:
        """Ground metres ``(N, 2)`` -> raster pixels ``(N, 2)``."""
        xy = np.asarray(xy, np.float64)
        return np.stack([(xy[:, 0] - self.origin[0]) / self.gsd,
                         (self.origin[1] - xy[:, 1]) / self.gsd], axis=1)


def _terrain_layer(rng: np.random.Generator, name: str, height: int, width: int,
                   gsd: float) -> np.ndarray:
    """A rotated, scaled crop of one terrain tile covering ``height x width`` at ``gsd``."""
    tile = texture_bank()[name]
    scale = gsd / TEXTURE_GSD * rng.uniform(0.8, 1.25)  # texture px per raster px
    angle = rng.uniform(0, 2 * math.pi)
    c, s = math.cos(angle) * scale, math.sin(angle) * scale
    ox, oy = rng.uniform(0, _TILE, 2)
    # maps raster (x, y) -> tile coordinates; WARP_INVERSE_MAP keeps it an exact lookup
    m = np.array([[c, -s, ox], [s, c, oy]], np.float64)
    return cv2.warpAffine(tile, m, (width, height), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_REFLECT_101)


def _road_polyline(rng: np.random.Generator, width_px: int, height_px: int) -> np.ndarray:
    """A gently curving line crossing the raster, in raster pixels."""
    diag = math.hypot(width_px, height_px)
    angle = rng.uniform(0, math.pi)
    d = np.array([math.cos(angle), math.sin(angle)])
    normal = np.array([-d[1], d[0]])
    centre = np.array([width_px, height_px]) * rng.uniform(0.25, 0.75, 2)
    t = np.linspace(-0.75 * diag, 0.75 * diag, 24)
    bend = rng.uniform(-0.15, 0.15) * diag * np.sin(np.linspace(0, rng.uniform(0.5, 2.0) * math.pi, 24))
    return centre + t[:, None] * d + bend[:, None] * normal


def make_ground(rng: np.random.Generator, height: int, width: int, gsd: float,
                origin: Tuple[float, float], terrains: Sequence[str] = (),
                road_probability: float = 0.5) -> GroundRaster:
    """Compose a ground raster: 1-3 terrains under smooth masks, maybe roads with markings."""
    if not terrains:
        base = rng.choice(["grass", "grass", "sand", "rubble", "forest"])
        extra = [t for t in rng.permutation(["grass", "forest", "water", "sand", "rubble"])
                 if t != base][: int(rng.integers(0, 3))]
        terrains = [base] + list(extra)
    image = _terrain_layer(rng, terrains[0], height, width, gsd)
    for name in terrains[1:]:
        layer = _terrain_layer(rng, name, height, width, gsd)
        # a patch size in metres so the mix looks the same at every gsd
        cells = max(2, int(width * gsd / rng.uniform(15, 45)))
        n = smooth_noise(rng, height, width, cells)
        cut = rng.uniform(0.45, 0.7)
        w = np.clip((n - cut) * rng.uniform(8, 25), 0.0, 1.0)
        image = cv2.blendLinear(layer, image, w, 1.0 - w)
    raster = GroundRaster(image=image, gsd=gsd, origin=origin)
    if rng.random() < road_probability:
        _paint_roads(rng, raster, int(rng.integers(1, 3)))
    return raster


def _paint_roads(rng: np.random.Generator, raster: GroundRaster, count: int) -> None:
    h, w = raster.image.shape[:2]
    paved = rng.random() < 0.75
    surface = _terrain_layer(rng, "asphalt" if paved else "sand", h, w, raster.gsd)
    if not paved:
        surface = cv2.addWeighted(surface, 0.8, np.full_like(surface, (60, 90, 110)), 0.2, 0)
    mask = np.zeros((h, w), np.uint8)
    marks = np.zeros((h, w), np.uint8)
    for _ in range(count):
        line_px = _road_polyline(rng, w, h)
        width_m = float(rng.uniform(5.0, 8.0) if paved else rng.uniform(3.0, 4.5))
        thick = max(2, int(round(width_m / raster.gsd)))
        pts = np.round(line_px).astype(np.int32)
        cv2.polylines(mask, [pts], False, 255, thick, cv2.LINE_AA)
        if paved:  # dashed centre line: 3 m dash, 6 m gap
            seg = np.cumsum(np.r_[0, np.linalg.norm(np.diff(line_px, axis=0), axis=1)]) * raster.gsd
            dense = np.linspace(0, seg[-1], int(seg[-1] / 0.5))
            xs = np.interp(dense, seg, line_px[:, 0])
            ys = np.interp(dense, seg, line_px[:, 1])
            on = (dense % 9.0) < 3.0
            lw = max(1, int(round(0.15 / raster.gsd)))
            for i in range(len(dense) - 1):
                if on[i]:
                    cv2.line(marks, (int(xs[i]), int(ys[i])), (int(xs[i + 1]), int(ys[i + 1])), 255, lw)
        world = (raster.raster_to_world() @ np.c_[line_px, np.ones(len(line_px))].T).T[:, :2]
        raster.roads.append(world)
        raster.road_widths.append(width_m)
    wmask = mask.astype(np.float32) / 255.0
    raster.image = cv2.blendLinear(surface, raster.image, wmask, 1.0 - wmask)
    if paved:
        wm = (marks.astype(np.float32) / 255.0) * 0.8
        white = np.full_like(raster.image, 215)
        raster.image = cv2.blendLinear(white, raster.image, wm, 1.0 - wm)
