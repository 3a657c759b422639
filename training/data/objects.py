"""Things on the ground: persons, vehicles and obstacles as small 3D models, drawn with shadows.

Every object is a few convex parts (boxes, ellipsoids) in world metres. A part is drawn as
the convex hull of its projected corners (side colour) with its top face on top (top
colour), so the same model looks right from nadir and oblique views. Shadows are the hulls
of the corners pushed along the sun direction onto the ground.

Boxes are exact: each object also writes its id into an id map (with a margin around the
image), and its box is the extent of the pixels still showing its id after nearer objects
were painted (see :func:`render_objects` for the keep rule).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

import cv2
import numpy as np

from .camera import PinholeCamera

#: Label indices follow ``CLASS_NAMES`` in synthetic.py.
PERSON, VEHICLE, OBSTACLE = 0, 1, 2
#: An object is kept when at least this fraction of its own pixels stays visible ...
MIN_VISIBLE_FRACTION = 0.3
#: ... and its visible box is at least this many pixels on each side.
MIN_BOX_SIDE = 2.0

_CLOTHES = [(0, 90, 255), (0, 0, 200), (0, 220, 255), (200, 80, 20), (40, 40, 40), (230, 230, 230),
            (60, 110, 60), (120, 60, 140), (30, 60, 120), (0, 140, 255), (180, 180, 60)]
_SKIN = [(140, 170, 220), (90, 120, 170), (60, 80, 120), (40, 40, 60)]
_CAR = [(235, 235, 235), (30, 30, 30), (170, 170, 175), (40, 40, 180), (150, 60, 20), (30, 90, 30),
        (60, 160, 220), (110, 110, 115), (20, 20, 120)]
_ROOF = [(70, 70, 150), (90, 90, 95), (150, 150, 150), (60, 80, 110), (120, 130, 140), (50, 50, 55)]


@dataclass
class Part:
    """A convex solid: its 3D points, which of them form the top face, and two colours."""

    points: np.ndarray  # (N, 3) world metres
    side: Tuple[float, float, float]
    top: Optional[Tuple[float, float, float]] = None
    top_index: Optional[Sequence[int]] = None


@dataclass
class SceneObject:
    """One labelled thing at ground position ``(x, y)`` facing ``heading`` (rad from east)."""

    label: int
    kind: str
    x: float
    y: float
    heading: float
    dims: Tuple[float, ...]
    colors: Tuple[Tuple[float, float, float], ...]
    #: Velocity in m/s (flights move persons and vehicles a little).
    velocity: Tuple[float, float] = (0.0, 0.0)
    extra: dict = field(default_factory=dict)

    @property
    def radius(self) -> float:
        """Footprint radius in metres, for spacing objects apart."""
        return 0.5 * max(self.dims[0], self.dims[1])

    def parts(self) -> List[Part]:
        """The convex parts of this object in world coordinates."""
        return _BUILDERS[self.kind](self)


def box_points(cx: float, cy: float, z0: float, length: float, width: float, height: float,
               heading: float) -> np.ndarray:
    """8 corners of a box on ``z0``: bottom face first (0-3), then top face (4-7)."""
    c, s = math.cos(heading), math.sin(heading)
    hl, hw = length / 2.0, width / 2.0
    local = np.array([[hl, hw], [-hl, hw], [-hl, -hw], [hl, -hw]])
    xy = local @ np.array([[c, s], [-s, c]]) + (cx, cy)
    out = np.empty((8, 3))
    out[:4, :2] = xy
    out[4:, :2] = xy
    out[:4, 2] = z0
    out[4:, 2] = z0 + height
    return out


_TOP = (4, 5, 6, 7)
def _unit_ellipsoid() -> np.ndarray:
    ring = np.linspace(0, 2 * math.pi, 12, endpoint=False)
    pts = [(0.0, 0.0, 1.0), (0.0, 0.0, -1.0)]
    for lat in (-0.6, 0.0, 0.6):
        pts.extend(zip(math.cos(lat) * np.cos(ring), math.cos(lat) * np.sin(ring), np.full(12, math.sin(lat))))
    return np.asarray(pts, dtype=np.float64)


_UNIT_ELLIPSOID = _unit_ellipsoid()


def ellipsoid_points(cx: float, cy: float, zc: float, rx: float, ry: float, rz: float) -> np.ndarray:
    """Points on three latitude rings and the poles of an axis-aligned ellipsoid."""
    return _UNIT_ELLIPSOID * (rx, ry, rz) + (cx, cy, zc)


def _along(obj: SceneObject, d: float, side: float = 0.0) -> Tuple[float, float]:
    c, s = math.cos(obj.heading), math.sin(obj.heading)
    return obj.x + d * c - side * s, obj.y + d * s + side * c


def _shade(color, k: float) -> Tuple[float, float, float]:
    return tuple(float(min(255.0, v * k)) for v in color)


def _person_standing(o: SceneObject) -> List[Part]:
    height = o.dims[2]
    clothes, trousers, skin = o.colors
    legs = 0.47 * height
    torso = 0.33 * height
    return [
        Part(box_points(o.x, o.y, 0.0, 0.32, 0.22, legs, o.heading), _shade(trousers, 0.8), trousers, _TOP),
        Part(box_points(o.x, o.y, legs, 0.45, 0.26, torso, o.heading), _shade(clothes, 0.8), clothes, _TOP),
        Part(box_points(o.x, o.y, legs + torso + 0.02, 0.22, 0.2, height - legs - torso - 0.02, o.heading),
             _shade(skin, 0.8), skin, _TOP),
    ]


def _person_lying(o: SceneObject) -> List[Part]:
    length = o.dims[0]
    clothes, trousers, skin = o.colors
    parts = []
    lx, ly = _along(o, -0.22 * length)
    parts.append(Part(box_points(lx, ly, 0.0, 0.5 * length, 0.3, 0.18, o.heading + o.extra.get("bend", 0.0)),
                      _shade(trousers, 0.8), trousers, _TOP))
    tx, ty = _along(o, 0.2 * length)
    parts.append(Part(box_points(tx, ty, 0.0, 0.36 * length, 0.44, 0.24, o.heading), _shade(clothes, 0.8),
                      clothes, _TOP))
    for side in (-1.0, 1.0):  # arms, spread or along the body
        spread = o.extra.get("arms", 0.3) * side
        ax, ay = _along(o, 0.2 * length, side * 0.32)
        parts.append(Part(box_points(ax, ay, 0.0, 0.55, 0.11, 0.1, o.heading + spread), _shade(clothes, 0.75),
                          _shade(clothes, 0.95), _TOP))
    hx, hy = _along(o, 0.45 * length)
    parts.append(Part(box_points(hx, hy, 0.0, 0.22, 0.19, 0.2, o.heading), _shade(skin, 0.8), skin, _TOP))
    return parts


def _vehicle(o: SceneObject) -> List[Part]:
    length, width, height = o.dims
    paint = o.colors[0]
    glass = (45, 35, 30)
    cabin_len = o.extra.get("cabin", 0.5) * length
    cabin_off = o.extra.get("cabin_offset", -0.05) * length
    cx, cy = _along(o, cabin_off)
    body_h = 0.55 * height
    return [
        Part(box_points(o.x, o.y, 0.15, length, width, body_h - 0.15, o.heading), _shade(paint, 0.7), paint, _TOP),
        Part(box_points(cx, cy, body_h, cabin_len, 0.92 * width, height - body_h - 0.05, o.heading), glass,
             glass, _TOP),
        Part(box_points(cx, cy, height - 0.05, 0.75 * cabin_len, 0.8 * width, 0.05, o.heading),
             paint, paint, _TOP),
    ]


def _tree(o: SceneObject) -> List[Part]:
    radius, _, height = o.dims
    canopy = o.colors[0]
    crown_h = min(height * 0.6, 2.2 * radius)
    zc = height - crown_h / 2.0
    sun = o.extra.get("sun_xy", (0.0, 0.0))
    aspect = o.extra.get("aspect", 1.0)
    parts = [Part(box_points(o.x, o.y, 0.0, 0.35, 0.35, zc, o.heading), (40, 60, 80)),
             Part(ellipsoid_points(o.x, o.y, zc, radius, radius * aspect, crown_h / 2.0), _shade(canopy, 0.65))]
    # clumps of foliage around the crown, lit more on the side facing the sun
    for k, lobe in enumerate(o.extra.get("lobes", ())):
        a, r = lobe
        dx, dy = math.cos(a), math.sin(a)
        lit = 0.85 + 0.25 * max(0.0, -(dx * sun[0] + dy * sun[1]))
        parts.append(Part(ellipsoid_points(o.x + 0.45 * radius * dx, o.y + 0.45 * radius * aspect * dy,
                                           zc + 0.15 * crown_h, r * radius, r * radius, 0.3 * crown_h),
                          _shade(canopy, lit)))
    parts.append(Part(ellipsoid_points(o.x - 0.3 * radius * sun[0], o.y - 0.3 * radius * sun[1], zc + 0.3 * crown_h,
                                       0.4 * radius, 0.4 * radius, 0.2 * crown_h), _shade(canopy, 1.25)))
    return parts


def _pole(o: SceneObject) -> List[Part]:
    _, _, height = o.dims
    color = o.colors[0]
    parts = [Part(box_points(o.x, o.y, 0.0, 0.35, 0.35, height, o.heading), color, _shade(color, 1.2), _TOP)]
    if o.extra.get("crossarm", False):
        parts.append(Part(box_points(o.x, o.y, height - 0.6, 2.0, 0.15, 0.15, o.heading), _shade(color, 0.8),
                          color, _TOP))
    return parts


def _building(o: SceneObject) -> List[Part]:
    length, width, height = o.dims
    wall, roof = o.colors
    parts = [Part(box_points(o.x, o.y, 0.0, length, width, height, o.heading), wall, roof, _TOP)]
    if o.extra.get("gable", False):  # ridge along the length; the two slopes shade differently
        rise = 0.35 * width
        for side, k in ((-1.0, 0.85), (1.0, 1.15)):
            corners = [_along(o, d, side * width / 2.0) + (height,) for d in (-length / 2, length / 2)]
            corners += [_along(o, d, 0.0) + (height + rise,) for d in (length / 2, -length / 2)]
            parts.append(Part(np.asarray(corners, np.float64), _shade(roof, k)))
    else:  # flat roof with a parapet
        parts.append(Part(box_points(o.x, o.y, height, length - 0.8, width - 0.8, 0.01, o.heading),
                          _shade(roof, 0.85), _shade(roof, 0.85), _TOP))
    return parts


_BUILDERS = {"person_standing": _person_standing, "person_lying": _person_lying, "vehicle": _vehicle,
             "tree": _tree, "pole": _pole, "building": _building}


# -- sampling ----------------------------------------------------------------------------------

def _pick(rng: np.random.Generator, palette) -> Tuple[float, float, float]:
    base = np.asarray(palette[int(rng.integers(len(palette)))], np.float64)
    return tuple(np.clip(base * rng.uniform(0.85, 1.15, 3), 0, 255).tolist())


def make_person(rng: np.random.Generator, x: float, y: float, lying: bool) -> SceneObject:
    """A standing or lying person (1.5-1.9 m) in random clothes."""
    height = float(rng.uniform(1.5, 1.9))
    colors = (_pick(rng, _CLOTHES), _pick(rng, _CLOTHES[3:] + [(40, 40, 40)]), _pick(rng, _SKIN))
    heading = float(rng.uniform(0, 2 * math.pi))
    if lying:
        return SceneObject(PERSON, "person_lying", x, y, heading, (height, 0.6, 0.25), colors,
                           extra={"arms": float(rng.choice([0.15, 0.5, 1.2])), "bend": float(rng.uniform(-0.3, 0.3))})
    return SceneObject(PERSON, "person_standing", x, y, heading, (0.45, 0.45, height), colors)


def make_vehicle(rng: np.random.Generator, x: float, y: float, heading: float) -> SceneObject:
    """A car, van or small truck."""
    kind = rng.choice(["car", "car", "car", "van", "truck"])
    if kind == "car":
        dims, cabin, off = (rng.uniform(3.8, 4.9), rng.uniform(1.65, 1.9), rng.uniform(1.35, 1.6)), 0.5, -0.05
    elif kind == "van":
        dims, cabin, off = (rng.uniform(4.8, 5.8), rng.uniform(1.9, 2.1), rng.uniform(1.9, 2.4)), 0.8, 0.05
    else:
        dims, cabin, off = (rng.uniform(6.0, 8.5), rng.uniform(2.2, 2.5), rng.uniform(2.6, 3.4)), 0.22, 0.36
    return SceneObject(VEHICLE, "vehicle", x, y, heading, tuple(float(v) for v in dims), (_pick(rng, _CAR),),
                       extra={"cabin": cabin, "cabin_offset": off})


def make_obstacle(rng: np.random.Generator, x: float, y: float, sun_xy: Tuple[float, float],
                  kind: Optional[str] = None) -> SceneObject:
    """A tree (most often), a pole or a small building (or the given ``kind``)."""
    kind = kind or str(rng.choice(["tree", "tree", "tree", "tree", "pole", "building"]))
    heading = float(rng.uniform(0, 2 * math.pi))
    if kind == "tree":
        r = float(rng.uniform(1.0, 2.8))
        green = (rng.uniform(25, 60), rng.uniform(70, 130), rng.uniform(35, 75))
        lobes = tuple((float(a), float(rng.uniform(0.35, 0.55)))
                      for a in rng.uniform(0, 2 * math.pi) + np.arange(int(rng.integers(3, 6))) * 2 * math.pi / 5)
        return SceneObject(OBSTACLE, "tree", x, y, heading, (r * 2, r * 2, float(rng.uniform(2.2, 3.2) * r)),
                           (tuple(green),), extra={"aspect": float(rng.uniform(0.85, 1.15)), "sun_xy": sun_xy,
                                                   "lobes": lobes})
    if kind == "pole":
        return SceneObject(OBSTACLE, "pole", x, y, heading, (0.3, 0.3, float(rng.uniform(5.0, 10.0))),
                           (_pick(rng, [(120, 120, 125), (60, 90, 120), (90, 90, 90)]),),
                           extra={"crossarm": bool(rng.random() < 0.5)})
    dims = (float(rng.uniform(4, 8)), float(rng.uniform(3.5, 7)), float(rng.uniform(3, 6)))
    wall = _pick(rng, [(170, 180, 190), (120, 140, 170), (200, 200, 200), (100, 110, 120)])
    return SceneObject(OBSTACLE, "building", x, y, heading, dims, (wall, _pick(rng, _ROOF)),
                       extra={"gable": bool(rng.random() < 0.5)})


# -- drawing -----------------------------------------------------------------------------------

_SHIFT = 4
_ONE = 1 << _SHIFT


def _hull_fixed(uv: np.ndarray, offset: float = 0.0) -> np.ndarray:
    hull = cv2.convexHull(uv.astype(np.float32))
    return np.round((hull + offset) * _ONE).astype(np.int32)


def shadow_points(points: np.ndarray, sun_dir: np.ndarray) -> np.ndarray:
    """Project 3D points along the sun ray onto z = 0; ``sun_dir`` points from the sun (z < 0)."""
    t = points[:, 2] / -sun_dir[2]
    out = np.zeros_like(points)
    out[:, :2] = points[:, :2] + t[:, None] * sun_dir[:2]
    return out


def sun_direction(azimuth: float, elevation: float) -> np.ndarray:
    """Unit vector of sunlight travel (from the sun towards the ground) in ENU."""
    ce = math.cos(elevation)
    return np.array([-ce * math.cos(azimuth), -ce * math.sin(azimuth), -math.sin(elevation)])


def render_objects(image: np.ndarray, camera: PinholeCamera, objects: Sequence[SceneObject],
                   sun_dir: np.ndarray, shadow_strength: float = 0.45,
                   margin: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray, List[int]]:
    """Paint shadows and objects into ``image`` (in place); return exact boxes.

    Objects are painted far to near. An object is kept when at least
    :data:`MIN_VISIBLE_FRACTION` of the pixels it covered when drawn (counted on a canvas
    extending ``margin`` px beyond the image - by default a quarter of the larger side, at
    least 64 - so leaving the frame counts as hidden) remain
    visible inside the image, and its visible box is at least :data:`MIN_BOX_SIDE` px wide
    and high. Returns ``(boxes xyxy float32 (N, 4), labels int64 (N,), indices of kept
    objects)``; boxes are pixel-edge coordinates (a one-pixel object at column 5 spans 5..6).
    """
    h, w = image.shape[:2]
    if margin is None:
        margin = max(64, max(h, w) // 4)
    projected = []
    shadow = np.zeros((h, w), np.uint8)
    for idx, obj in enumerate(objects):
        parts = obj.parts()
        sizes = [len(p.points) for p in parts]
        pts = np.vstack([p.points for p in parts])
        # one projection for the object and its shadow
        uv_all, depth_all = camera.project(np.vstack([pts, shadow_points(pts, sun_dir)]))
        n = len(pts)
        uv, depth = uv_all[:n], depth_all[:n]
        if np.any(depth <= 0.5):
            continue
        if uv[:, 0].max() < -margin or uv[:, 1].max() < -margin or uv[:, 0].min() > w + margin \
                or uv[:, 1].min() > h + margin:
            continue
        splits = np.cumsum(sizes)[:-1]
        if np.all(depth_all[n:] > 0.5):
            for suv in np.split(uv_all[n:], splits):
                cv2.fillConvexPoly(shadow, _hull_fixed(suv), 255, cv2.LINE_AA, _SHIFT)
        projected.append((float(depth.mean()), idx, parts, np.split(uv, splits)))
    if shadow.any():
        soft = cv2.GaussianBlur(shadow, (3, 3), 0).astype(np.float32) * (shadow_strength / 255.0)
        dark = np.zeros_like(image)
        image[:] = cv2.blendLinear(dark, image, soft, 1.0 - soft)

    ids = np.zeros((h + 2 * margin, w + 2 * margin), np.uint16)
    drawn: List[Tuple[int, int, Tuple[int, int, int, int]]] = []
    for order, (_, idx, parts, part_uvs) in enumerate(sorted(projected, key=lambda t: -t[0])):
        key = order + 1
        for part, uv in zip(parts, part_uvs):
            cv2.fillConvexPoly(image, _hull_fixed(uv), part.side, cv2.LINE_8, _SHIFT)
            cv2.fillConvexPoly(ids, _hull_fixed(uv, margin), key, cv2.LINE_8, _SHIFT)
            if part.top is not None:
                cv2.fillConvexPoly(image, _hull_fixed(uv[list(part.top_index)]), part.top, cv2.LINE_8, _SHIFT)
        uv = np.vstack(part_uvs) + margin
        x0 = int(np.clip(np.floor(uv[:, 0].min()) - 1, 0, w + 2 * margin))
        y0 = int(np.clip(np.floor(uv[:, 1].min()) - 1, 0, h + 2 * margin))
        x1 = int(np.clip(np.ceil(uv[:, 0].max()) + 2, 0, w + 2 * margin))
        y1 = int(np.clip(np.ceil(uv[:, 1].max()) + 2, 0, h + 2 * margin))
        full = int(np.count_nonzero(ids[y0:y1, x0:x1] == key))
        drawn.append((idx, full, (x0, y0, x1, y1)))

    boxes, labels, kept = [], [], []
    for order, (idx, full, (x0, y0, x1, y1)) in enumerate(drawn):
        key = order + 1
        # only the part inside the image counts as visible
        ix0, iy0 = max(x0, margin), max(y0, margin)
        ix1, iy1 = min(x1, margin + w), min(y1, margin + h)
        if full == 0 or ix1 <= ix0 or iy1 <= iy0:
            continue
        sub = ids[iy0:iy1, ix0:ix1] == key
        visible = int(np.count_nonzero(sub))
        if visible < MIN_VISIBLE_FRACTION * full:
            continue
        cols = np.flatnonzero(sub.any(axis=0))
        rows = np.flatnonzero(sub.any(axis=1))
        box = (ix0 + cols[0] - margin, iy0 + rows[0] - margin, ix0 + cols[-1] + 1 - margin,
               iy0 + rows[-1] + 1 - margin)
        if box[2] - box[0] < MIN_BOX_SIDE or box[3] - box[1] < MIN_BOX_SIDE:
            continue
        boxes.append(box)
        labels.append(objects[idx].label)
        kept.append(idx)
    return (np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(labels, np.int64), kept)
