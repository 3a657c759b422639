"""Synthetic flights: a drone moving over one persistent scene, frame by frame.

The world (ground, roads, objects, sun, camera sensor) is drawn once from the seed; the
drone then flies a smooth loop over it with slowly changing altitude, heading and pitch
while persons walk and vehicles drive along roads. Every frame carries exact boxes and the
camera intrinsics and pose used to render it (conventions in :mod:`.camera`), so a bag can
carry CameraInfo and geolocation can be checked against known geometry.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from . import objects as obj_lib
from .camera import PinholeCamera
from .sensor import apply_sensor_settings, sample_sensor
from .synthetic import _size, populate
from .textures import GroundModel, make_ground_model


@dataclass
class FlightFrame:
    """One frame of a flight."""

    index: int
    stamp_s: float  # seconds since the first frame
    bgr: np.ndarray  # HxWx3 uint8
    boxes: np.ndarray  # (N, 4) float32 xyxy pixels
    labels: np.ndarray  # (N,) int64, index into CLASS_NAMES
    camera: Dict[str, float]  # fx, fy, cx, cy, width, height
    pose: Dict[str, object]  # position_enu (x, y, z) m, yaw, pitch, roll rad, rotation_world_from_camera
    #: Stable id of the object behind each box (for tracking), and its ground point (ENU m).
    track_ids: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))
    positions_enu: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), np.float64))


@dataclass
class _Mover:
    """How one object moves: along a road (arc length) or in a straight slow walk."""

    road: Optional[int] = None
    s0: float = 0.0
    lateral: float = 0.0
    speed: float = 0.0  # m/s along the road (signed) or walking speed


@dataclass
class FlightPlan:
    """The loop the drone flies and how its altitude, pitch and heading wobble."""

    centre: Tuple[float, float]
    radius: float
    speed: float
    altitude: float
    altitude_swing: float
    pitch: float
    pitch_swing: float
    hfov_deg: float
    phase: float

    def camera_at(self, t: float, width: int, height: int) -> PinholeCamera:
        """The camera at ``t`` seconds: on the loop, looking ahead along it."""
        omega = self.speed / self.radius
        a = self.phase + omega * t
        x = self.centre[0] + self.radius * math.cos(a)
        y = self.centre[1] + self.radius * math.sin(a)
        z = self.altitude + self.altitude_swing * math.sin(2 * math.pi * t / 37.0)
        yaw = a + math.pi / 2 + 0.12 * math.sin(2 * math.pi * t / 23.0)
        pitch = self.pitch + self.pitch_swing * math.sin(2 * math.pi * t / 29.0 + 1.0)
        roll = 0.03 * math.sin(2 * math.pi * t / 5.0)
        return PinholeCamera.from_fov(width, height, self.hfov_deg, (x, y, z), yaw, min(pitch, math.pi / 2), roll)


def _road_point(line: np.ndarray, s: float) -> Tuple[np.ndarray, np.ndarray]:
    """Point and unit direction at arc length ``s`` (wrapping back and forth along the line)."""
    seg = np.linalg.norm(np.diff(line, axis=0), axis=1)
    cum = np.r_[0.0, np.cumsum(seg)]
    total = cum[-1]
    period = 2 * total
    u = s % period
    forward = u <= total
    u = u if forward else period - u
    i = int(np.clip(np.searchsorted(cum, u) - 1, 0, len(seg) - 1))
    d = (line[i + 1] - line[i]) / max(seg[i], 1e-9)
    p = line[i] + d * (u - cum[i])
    return p, (d if forward else -d)


def _arc_length(line: np.ndarray, xy: Sequence[float]) -> Tuple[float, float]:
    """Arc length of the closest point on ``line`` to ``xy`` and the signed lateral offset."""
    p = np.asarray(xy, np.float64)
    a, b = line[:-1], line[1:]
    ab = b - a
    seg = np.linalg.norm(ab, axis=1)
    t = np.clip(((p - a) * ab).sum(1) / np.maximum(seg ** 2, 1e-9), 0, 1)
    closest = a + t[:, None] * ab
    i = int(np.argmin(np.linalg.norm(closest - p, axis=1)))
    d = ab[i] / max(seg[i], 1e-9)
    lateral = float((p - closest[i]) @ np.array([-d[1], d[0]]))
    return float(np.r_[0.0, np.cumsum(seg)][i] + t[i] * seg[i]), lateral


class FlightWorld:
    """One persistent scene and a flight plan; :meth:`frame` renders any instant of it."""

    def __init__(self, seed: int = 0, image_size: Tuple[int, int] = (640, 480), fps: float = 10.0) -> None:
        if fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        self.width, self.height = _size(image_size)
        self.fps = float(fps)
        rng = np.random.default_rng(seed)
        self.seed = seed
        scale = math.sqrt(min(self.width, self.height) / 320.0)
        # persons ~8-20 px at the loop's mean altitude (as in single images)
        person_px = float(rng.uniform(9.0, 14.0)) * scale
        hfov = float(rng.uniform(55.0, 70.0))
        f = 0.5 * self.width / math.tan(math.radians(hfov) / 2)
        pitch = math.radians(float(rng.uniform(55.0, 80.0)))
        altitude = float(np.clip(1.75 / person_px * f * math.sin(pitch), 12.0, 120.0))
        radius = float(rng.uniform(2.0, 3.0) * altitude)
        self.plan = FlightPlan(centre=(0.0, 0.0), radius=radius, speed=float(rng.uniform(3.0, 6.0)),
                               altitude=altitude, altitude_swing=0.15 * altitude, pitch=pitch,
                               pitch_swing=math.radians(6.0), hfov_deg=hfov,
                               phase=float(rng.uniform(0, 2 * math.pi)))
        reach = radius + 3.5 * altitude  # the loop plus how far an oblique camera sees
        lo, hi = np.array([-reach, -reach]), np.array([reach, reach])
        self.ground: GroundModel = make_ground_model(rng, lo, hi, road_probability=0.85, max_roads=3)
        self.sun = obj_lib.sun_direction(float(rng.uniform(0, 2 * math.pi)), math.radians(float(rng.uniform(30, 65))))
        sun_xy = tuple((self.sun[:2] / max(np.linalg.norm(self.sun[:2]), 1e-9)).tolist())
        self.shadow_strength = float(rng.uniform(0.3, 0.5))
        self.sensor = sample_sensor(rng, 0.6)
        self.sensor = type(self.sensor)(**{**self.sensor.__dict__, "motion_blur_px": 0})
        # objects in the band the camera sweeps over, densities per square metre
        band_lo, band_hi = max(0.0, radius - 1.5 * altitude), radius + 3.0 * altitude
        area = math.pi * (band_hi ** 2 - band_lo ** 2)

        def sampler(n: int) -> np.ndarray:
            r = np.sqrt(rng.uniform(band_lo ** 2, band_hi ** 2, n))
            a = rng.uniform(0, 2 * math.pi, n)
            return np.stack([r * np.cos(a), r * np.sin(a)], axis=1)

        probe = self.plan.camera_at(0.0, self.width, self.height)
        counts = {"person": int(area / 900.0) + 10, "vehicle": int(area / 3000.0) + 4,
                  "obstacle": int(area / 700.0) + 10}
        self.objects: List[obj_lib.SceneObject] = populate(rng, probe, self.ground, sun_xy, counts, sampler=sampler)
        self._base = [(o.x, o.y, o.heading) for o in self.objects]
        self.movers: List[_Mover] = []
        for o in self.objects:
            if o.kind == "vehicle" and self.ground.roads and rng.random() < 0.6:
                dists = [_arc_length(r.line, (o.x, o.y)) for r in self.ground.roads]
                k = int(np.argmin([abs(lat) for _, lat in dists]))
                s0, lateral = dists[k]
                if abs(lateral) < self.ground.roads[k].width / 2:
                    self.movers.append(_Mover(k, s0, lateral, float(rng.uniform(2.0, 7.0) * rng.choice([-1, 1]))))
                    continue
            if o.kind == "person_standing" and rng.random() < 0.7:
                self.movers.append(_Mover(speed=float(rng.uniform(0.3, 1.3))))
                continue
            self.movers.append(_Mover())
        self._rng_seed = int(rng.integers(0, 2 ** 31 - 1))

    def _place(self, t: float) -> None:
        for o, (x, y, heading), m in zip(self.objects, self._base, self.movers):
            if m.road is not None:
                line = self.ground.roads[m.road].line
                p, d = _road_point(line, m.s0 + m.speed * t)
                if m.speed < 0:
                    d = -d
                n = np.array([-d[1], d[0]])
                o.x, o.y = (p + n * m.lateral).tolist()
                o.heading = math.atan2(d[1], d[0])
            elif m.speed:
                # a slow walk that turns gently
                turn = 0.4 * math.sin(t / 6.0 + x)
                o.heading = heading + turn
                o.x = x + m.speed * t * math.cos(heading) + 2.0 * math.sin(t / 6.0)
                o.y = y + m.speed * t * math.sin(heading)

    def frame(self, index: int) -> FlightFrame:
        """Render frame ``index`` (time ``index / fps``)."""
        t = index / self.fps
        self._place(t)
        cam = self.plan.camera_at(t, self.width, self.height)
        bgr = self.ground.render(cam.ground_homography_matrix, self.width, self.height)
        # only objects near the view go through the renderer
        centres = np.array([[o.x, o.y, 0.0] for o in self.objects]) if self.objects else np.zeros((0, 3))
        idx: List[int] = []
        if len(centres):
            uv, depth = cam.project(centres)
            margin = 0.5 * max(self.width, self.height)
            near = (depth > 0) & (uv[:, 0] > -margin) & (uv[:, 0] < self.width + margin) \
                & (uv[:, 1] > -margin) & (uv[:, 1] < self.height + margin)
            idx = np.flatnonzero(near).tolist()
        visible = [self.objects[i] for i in idx]
        boxes, labels, kept = obj_lib.render_objects(bgr, cam, visible, self.sun, self.shadow_strength)
        rng = np.random.default_rng((self._rng_seed, index))
        exposure = 1.0 + 0.05 * math.sin(2 * math.pi * t / 17.0)  # auto-exposure drifting a little
        bgr = apply_sensor_settings(rng, bgr, self.sensor, exposure)
        track = np.asarray([idx[k] for k in kept], np.int64)
        pos = np.asarray([[self.objects[i].x, self.objects[i].y, 0.0] for i in track], np.float64).reshape(-1, 3)
        return FlightFrame(index=index, stamp_s=t, bgr=bgr, boxes=boxes, labels=labels,
                           camera=cam.intrinsics_dict(), pose=cam.pose_dict(), track_ids=track, positions_enu=pos)


def generate_flight(num_frames: int, image_size: Tuple[int, int] = (640, 480), seed: int = 0,
                    fps: float = 10.0) -> Iterator[FlightFrame]:
    """Yield ``num_frames`` temporally coherent :class:`FlightFrame` of one synthetic flight.

    Deterministic for a seed. ``image_size`` is ``(width, height)``.
    """
    if num_frames < 0:
        raise ValueError(f"num_frames must be >= 0, got {num_frames}")
    world = FlightWorld(seed, image_size, fps)
    for i in range(int(num_frames)):
        yield world.frame(i)
