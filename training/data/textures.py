"""Procedural ground: terrain textures and a ground model rendered straight into a view.

Textures are generated once per process from a fixed seed (datasets stay deterministic for
a seed) as seamless tiles at :data:`TEXTURE_GSD` metres per pixel. A :class:`GroundModel`
places terrain layers on the world plane (a random rotation and scale of a tile each),
mixes them with smooth random masks and lays roads with markings; :meth:`GroundModel.render`
warps all of it through the camera's ground homography, so the cost follows the output
image, not the area of ground seen, and a flight sees one consistent world.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

TERRAINS = ("grass", "asphalt", "forest", "water", "sand", "rubble")
#: Ground sampling distance of the texture tiles (metres per texture pixel).
TEXTURE_GSD = 0.06
_TILE = 512
_BANK_SEED = 20261123
_MASK_UP = 8


def smooth_noise(rng: np.random.Generator, height: int, width: int, cells: int) -> np.ndarray:
    """Periodic value noise in [0, 1]: ``cells`` random values across, bicubic-upsampled."""
    grid = rng.random((cells, cells), dtype=np.float32)
    padded = np.pad(grid, 2, mode="wrap")
    up = cv2.resize(padded, (width * (cells + 4) // cells, height * (cells + 4) // cells),
                    interpolation=cv2.INTER_CUBIC)
    oy, ox = 2 * height // cells, 2 * width // cells
    return np.clip(up[oy:oy + height, ox:ox + width], 0.0, 1.0)


def fractal_noise(rng: np.random.Generator, size: int, octaves: Sequence[int], falloff: float = 0.6) -> np.ndarray:
    """Sum of periodic :func:`smooth_noise` octaves, normalised to [0, 1]."""
    acc = np.zeros((size, size), np.float32)
    amp = 1.0
    for cells in octaves:
        acc += amp * smooth_noise(rng, size, size, cells)
        amp *= falloff
    lo, hi = float(acc.min()), float(acc.max())
    return (acc - lo) / max(hi - lo, 1e-6)


def _colorize(noise: np.ndarray, dark, light) -> np.ndarray:
    dark = np.asarray(dark, np.float32)
    light = np.asarray(light, np.float32)
    return noise[..., None] * (light - dark) + dark


def _grain(rng: np.random.Generator, size: int, amount: float) -> np.ndarray:
    return (rng.standard_normal((size, size), dtype=np.float32) * amount)[..., None]


def _seamless(img: np.ndarray) -> np.ndarray:
    """Cross-fade with a half-tile roll so the tile wraps without seams (shapes drawn near
    an edge would otherwise be cut)."""
    s = img.shape[0]
    ramp = 1.0 - np.abs(np.linspace(-1.0, 1.0, s, dtype=np.float32))
    w = np.minimum(ramp[:, None], ramp[None, :])[..., None]
    w = np.clip(w * 3.0, 0.0, 1.0)
    rolled = np.roll(img, (s // 2, s // 2), axis=(0, 1))
    return img * w + rolled * (1.0 - w)


def _make_texture(name: str, rng: np.random.Generator) -> np.ndarray:
    s = _TILE
    if name == "grass":
        n = fractal_noise(rng, s, (4, 12, 40, 128), 0.55)
        img = _colorize(n, (30, 85, 55), (75, 160, 110)) + _grain(rng, s, 9)
        tufts = (fractal_noise(rng, s, (64, 128), 0.7) > 0.72)[..., None]
        img = np.where(tufts, img * 0.8, img)
    elif name == "asphalt":
        n = fractal_noise(rng, s, (4, 16, 128), 0.5)
        img = _colorize(n, (70, 72, 76), (102, 102, 106)) + _grain(rng, s, 6)
    elif name == "forest":  # dense understory and small crowns, darker and finer than trees
        n = fractal_noise(rng, s, (8, 32), 0.7)
        img = np.ascontiguousarray(_colorize(n, (20, 50, 28), (40, 85, 50)))
        for _ in range(1400):
            x, y = rng.integers(0, s, 2)
            r = int(rng.integers(4, 11))
            base = np.array([28, 68 + rng.integers(-12, 20), 40], np.float32)
            cv2.circle(img, (int(x), int(y)), r, (base * 0.75).tolist(), -1, cv2.LINE_AA)
            cv2.circle(img, (int(x - r * 0.2), int(y - r * 0.2)), int(r * 0.7), base.tolist(), -1, cv2.LINE_AA)
        img += _grain(rng, s, 6)
    elif name == "water":
        n = fractal_noise(rng, s, (2, 8), 0.5)
        yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
        # ripples with a whole number of periods per tile so the tile still wraps
        ripple = 0.5 + 0.5 * np.sin(2 * math.pi * (24 * xx + 8 * yy) / s + 6.0 * fractal_noise(rng, s, (8,), 1.0))
        img = _colorize(0.7 * n + 0.3 * ripple, (70, 55, 25), (115, 95, 50)) + _grain(rng, s, 3)
    elif name == "sand":
        n = fractal_noise(rng, s, (4, 16, 64), 0.5)
        img = _colorize(n, (120, 160, 185), (160, 200, 220)) + _grain(rng, s, 8)
    elif name == "rubble":
        n = fractal_noise(rng, s, (4, 16, 64), 0.6)
        img = np.ascontiguousarray(_colorize(n, (85, 90, 95), (135, 140, 145)))
        for _ in range(2500):  # broken concrete and bricks
            c = rng.integers(0, s, 2).astype(np.float32)
            r = float(rng.uniform(2, 9))
            pts = c + r * rng.uniform(-1, 1, (int(rng.integers(3, 6)), 2))
            tone = float(rng.uniform(60, 180))
            col = (tone * rng.uniform(0.8, 0.95), tone * rng.uniform(0.85, 1.0), tone)
            cv2.fillPoly(img, [pts.astype(np.int32)], col, cv2.LINE_AA)
        img += _grain(rng, s, 10)
    else:
        raise ValueError(f"unknown terrain {name!r}; expected one of {TERRAINS}")
    return np.clip(_seamless(img), 0, 255).astype(np.uint8)


@lru_cache(maxsize=1)
def texture_bank() -> Dict[str, np.ndarray]:
    """One seamless ``512x512`` BGR tile per terrain, identical in every process."""
    rng = np.random.default_rng(_BANK_SEED)
    return {name: _make_texture(name, rng) for name in TERRAINS}


# -- the ground model ------------------------------------------------------------------------------

@dataclass
class TerrainLayer:
    """A terrain tile laid on the world plane, shown where its mask is above ``cut``."""

    terrain: str
    tile_from_world: np.ndarray  # 3x3: world metres -> tile pixels
    mask: Optional[np.ndarray] = None  # small float32 grid; None = everywhere (the base layer)
    mask_from_world: Optional[np.ndarray] = None  # 3x3: world metres -> mask cells
    cut: float = 0.5
    sharpness: float = 12.0


@dataclass
class Road:
    """A road centre line in world metres."""

    line: np.ndarray  # (N, 2)
    width: float
    paved: bool
    _quads: Optional[Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = field(default=None, repr=False)

    def quads(self) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(surface quads (Q, 4, 2), their centres (Q, 2), dash quads, their centres)``, made once."""
        if self._quads is None:
            surface = _strip_quads(self.line, self.width, step=2.0)
            dashes = _dash_quads(self.line) if self.paved else np.zeros((0, 4, 2))
            self._quads = (surface, surface.mean(axis=1), dashes, dashes.mean(axis=1))
        return self._quads


@dataclass
class GroundModel:
    """Everything on the ground plane that is not an object: terrains and roads."""

    layers: List[TerrainLayer]
    roads: List[Road] = field(default_factory=list)
    road_surfaces: Dict[bool, np.ndarray] = field(default_factory=dict)  # paved -> tile_from_world

    def render(self, ground_to_image: np.ndarray, width: int, height: int) -> np.ndarray:
        """The ground as seen through ``ground_to_image`` (3x3 homography world metres -> pixels)."""
        bank = texture_bank()
        image_to_ground = np.linalg.inv(ground_to_image)

        def warp(src, from_world, flags=cv2.INTER_LINEAR, border=cv2.BORDER_WRAP):
            # lookup: image pixel -> world -> source pixel
            return cv2.warpPerspective(src, from_world @ image_to_ground, (width, height),
                                       flags=flags | cv2.WARP_INVERSE_MAP, borderMode=border)

        image = warp(bank[self.layers[0].terrain], self.layers[0].tile_from_world)
        # masks are smooth: warp them at a quarter of the resolution, then upsample
        qw, qh = max(2, width // 4), max(2, height // 4)
        quarter = np.diag([width / qw, height / qh, 1.0])
        for layer in self.layers[1:]:
            n = cv2.warpPerspective(layer.mask, layer.mask_from_world @ image_to_ground @ quarter, (qw, qh),
                                    flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                    borderMode=cv2.BORDER_REFLECT_101)
            n = cv2.resize(n, (width, height), interpolation=cv2.INTER_LINEAR)
            w = np.clip((n - layer.cut) * layer.sharpness, 0.0, 1.0)
            if not w.any():
                continue
            image = cv2.blendLinear(warp(bank[layer.terrain], layer.tile_from_world), image, w, 1.0 - w)
        if self.roads:
            image = self._render_roads(image, ground_to_image, image_to_ground, warp)
        return image

    def _render_roads(self, image, ground_to_image, image_to_ground, warp) -> np.ndarray:
        h, w = image.shape[:2]
        # the visible ground: image corners (and a margin) back-projected
        corners = np.array([[-0.2, -0.2, 1], [1.2, -0.2, 1], [1.2, 1.2, 1], [-0.2, 1.2, 1]]) * (w, h, 1)
        g = corners @ image_to_ground.T
        valid = g[:, 2] > 0
        if not valid.all():  # horizon in view: keep to the lower part of the image
            corners[:2, 1] = 0.0
            g = corners @ image_to_ground.T
        g = g[:, :2] / g[:, 2:3]
        lo, hi = g.min(axis=0) - 10.0, g.max(axis=0) + 10.0
        for paved in (False, True):
            mask = np.zeros((h, w), np.uint8)
            marks = np.zeros((h, w), np.uint8)
            for road in self.roads:
                if road.paved != paved:
                    continue
                surface, s_centre, dashes, d_centre = road.quads()
                # only the pieces near the visible ground (far ones could sit behind the camera)
                _fill_ground_quads(mask, surface[np.all((s_centre >= lo) & (s_centre <= hi), axis=1)],
                                   ground_to_image)
                _fill_ground_quads(marks, dashes[np.all((d_centre >= lo) & (d_centre <= hi), axis=1)],
                                   ground_to_image)
            if not mask.any():
                continue
            wmask = mask.astype(np.float32) * (1.0 / 255.0)
            surface = warp(texture_bank()["asphalt" if paved else "sand"], self.road_surfaces[paved])
            if not paved:
                surface = cv2.addWeighted(surface, 0.75, np.full_like(surface, (60, 90, 115)), 0.25, 0)
            image = cv2.blendLinear(surface, image, wmask, 1.0 - wmask)
            if marks.any():
                wm = marks.astype(np.float32) * (0.8 / 255.0)
                image = cv2.blendLinear(np.full_like(image, 215), image, wm, 1.0 - wm)
        return image


def _resample(line: np.ndarray, step: float) -> Tuple[np.ndarray, np.ndarray]:
    seg = np.linalg.norm(np.diff(line, axis=0), axis=1)
    s = np.r_[0.0, np.cumsum(seg)]
    dense = np.arange(0.0, s[-1], step)
    return np.stack([np.interp(dense, s, line[:, 0]), np.interp(dense, s, line[:, 1])], axis=1), dense


def _strip_quads(line: np.ndarray, width: float, step: float) -> np.ndarray:
    """World quads ``(Q, 4, 2)`` covering a strip of ``width`` along ``line``."""
    pts, _ = _resample(line, step)
    if len(pts) < 2:
        return np.zeros((0, 4, 2))
    d = np.gradient(pts, axis=0)
    d /= np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-9)
    normal = np.stack([-d[:, 1], d[:, 0]], axis=1) * (width / 2)
    left, right = pts + normal, pts - normal
    return np.stack([left[:-1], left[1:], right[1:], right[:-1]], axis=1)


def _dash_quads(line: np.ndarray) -> np.ndarray:
    """Dashed centre marking: 3 m dashes every 9 m, 0.15 m wide, as quads ``(Q, 4, 2)``."""
    pts, s = _resample(line, 1.0)
    if len(pts) < 2:
        return np.zeros((0, 4, 2))
    on = np.flatnonzero((s[:-1] % 9.0) < 3.0)
    a, b = pts[on], pts[on + 1]
    d = b - a
    n = np.stack([-d[:, 1], d[:, 0]], axis=1) / np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-9) * 0.075
    return np.stack([a + n, b + n, b - n, a - n], axis=1)


def _fill_ground_quads(mask: np.ndarray, quads: np.ndarray, ground_to_image: np.ndarray) -> None:
    """Project world quads ``(Q, 4, 2)`` into ``mask`` (255 inside), skipping any behind the camera."""
    if len(quads) == 0:
        return
    q = np.asarray(quads, np.float64)  # (Q, 4, 2)
    p = q @ ground_to_image[:, :2].T + ground_to_image[:, 2]
    front = np.all(p[..., 2] > 1e-6, axis=1)
    if not front.any():
        return
    uv = p[front, :, :2] / p[front, :, 2:3]
    uv = np.clip(uv, -1e5, 1e5)
    cv2.fillPoly(mask, list(np.round(uv * 16).astype(np.int32)), 255, cv2.LINE_AA, 4)


def _tile_transform(rng: np.random.Generator) -> np.ndarray:
    scale = rng.uniform(0.8, 1.25) / TEXTURE_GSD  # tile px per metre
    angle = rng.uniform(0, 2 * math.pi)
    c, s = math.cos(angle) * scale, math.sin(angle) * scale
    ox, oy = rng.uniform(0, _TILE, 2)
    return np.array([[c, -s, ox], [s, c, oy], [0.0, 0.0, 1.0]])


def _road_line(rng: np.random.Generator, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """A gently curving line crossing the box ``lo..hi`` (world metres)."""
    size = hi - lo
    diag = float(np.linalg.norm(size))
    angle = rng.uniform(0, math.pi)
    d = np.array([math.cos(angle), math.sin(angle)])
    normal = np.array([-d[1], d[0]])
    centre = lo + size * rng.uniform(0.25, 0.75, 2)
    t = np.linspace(-0.75 * diag, 0.75 * diag, 40)
    bend = rng.uniform(-0.12, 0.12) * diag * np.sin(np.linspace(0, rng.uniform(0.5, 2.0) * math.pi, 40))
    return centre + t[:, None] * d + bend[:, None] * normal


def make_ground_model(rng: np.random.Generator, lo: Sequence[float], hi: Sequence[float],
                      terrains: Sequence[str] = (), road_probability: float = 0.5,
                      max_roads: int = 2) -> GroundModel:
    """A random ground covering the world box ``lo..hi`` (metres): 1-3 terrains, maybe roads."""
    lo_a, hi_a = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
    if not terrains:
        # forest floor hides trees and persons alike: a base only now and then
        base = str(rng.choice(["grass", "grass", "grass", "sand", "sand", "rubble", "forest"]))
        extra = [str(t) for t in rng.permutation(["grass", "forest", "water", "sand", "rubble"]) if t != base]
        terrains = [base] + extra[: int(rng.integers(0, 3))]
    layers = [TerrainLayer(terrains[0], _tile_transform(rng))]
    size = hi_a - lo_a
    for name in terrains[1:]:
        cell = float(rng.uniform(12.0, 40.0))  # patch size in metres
        cells = np.maximum(2, np.ceil(size / cell).astype(int) + 1)
        grid = rng.random((int(cells[1]), int(cells[0])), dtype=np.float32)
        # bicubic once here, so the per-view bilinear warp of it stays smooth
        grid = cv2.resize(grid, (grid.shape[1] * _MASK_UP, grid.shape[0] * _MASK_UP), interpolation=cv2.INTER_CUBIC)
        k = _MASK_UP / cell
        mask_from_world = np.array([[k, 0.0, -lo_a[0] * k], [0.0, k, -lo_a[1] * k], [0.0, 0.0, 1.0]])
        layers.append(TerrainLayer(name, _tile_transform(rng), grid, mask_from_world,
                                   float(rng.uniform(0.5, 0.7)), float(rng.uniform(8.0, 25.0))))
    model = GroundModel(layers, road_surfaces={True: _tile_transform(rng), False: _tile_transform(rng)})
    if rng.random() < road_probability:
        paved = bool(rng.random() < 0.75)
        for _ in range(int(rng.integers(1, max_roads + 1))):
            width = float(rng.uniform(5.0, 8.0) if paved else rng.uniform(3.0, 4.5))
            model.roads.append(Road(_road_line(rng, lo_a, hi_a), width, paved))
    return model


def distance_to_roads(model: GroundModel, xy: Sequence[float]) -> float:
    """Distance (m) from a point to the nearest road edge; negative inside a road."""
    p = np.asarray(xy, np.float64)
    best = math.inf
    for road in model.roads:
        a, b = road.line[:-1], road.line[1:]
        ab = b - a
        t = np.clip(((p - a) * ab).sum(1) / np.maximum((ab * ab).sum(1), 1e-9), 0, 1)
        d = float(np.min(np.linalg.norm(a + t[:, None] * ab - p, axis=1))) - road.width / 2
        best = min(best, d)
    return best
