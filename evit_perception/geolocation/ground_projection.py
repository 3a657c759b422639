"""Pixels -> points on flat ground: ray through the camera, intersected with the plane z = h.

A person's ground-contact point is the bottom-centre of the box (the feet of a standing
person; for a person lying down, seen from above, it is off by at most half the body length
along the image's vertical axis, which the covariance does not model). Obstacles use the box
centre, but only for bearings (see :mod:`.bearings`), never for ground positions.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List

import numpy as np

from .camera_model import CameraModel
from .frames import RigidTransform

#: Rejection reasons, one per ray ("" = accepted). Also the throttled-warning causes.
ABOVE_HORIZON = "ray_above_horizon"
BEYOND_MAX_RANGE = "beyond_max_range"
CAMERA_BELOW_GROUND = "camera_below_ground"


def ground_contact_pixels(boxes_xyxy: np.ndarray) -> np.ndarray:
    """Bottom-centre ``(N, 2)`` of boxes ``(N, 4)`` x1 y1 x2 y2: where a person touches the ground."""
    b = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4)
    return np.stack([(b[:, 0] + b[:, 2]) * 0.5, b[:, 3]], axis=1)


def box_centre_pixels(boxes_xyxy: np.ndarray) -> np.ndarray:
    """Centre ``(N, 2)`` of boxes ``(N, 4)`` x1 y1 x2 y2."""
    b = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4)
    return np.stack([(b[:, 0] + b[:, 2]) * 0.5, (b[:, 1] + b[:, 3]) * 0.5], axis=1)


@dataclass(frozen=True)
class GroundHits:
    """Where rays meet the ground: ``points (N, 3)`` in the world frame (NaN where rejected),
    ``ranges (N,)`` camera-to-point distances, ``reasons`` ("" for accepted rays)."""

    points: np.ndarray
    ranges: np.ndarray
    reasons: List[str]

    @property
    def valid(self) -> np.ndarray:
        """Boolean mask of accepted rays."""
        return np.array([not r for r in self.reasons], dtype=bool)


def intersect_ground_plane(origin: np.ndarray, directions: np.ndarray, ground_z: float,
                           min_depression: float = math.radians(1.0),
                           max_range: float = float("inf")) -> GroundHits:
    """Intersect rays from ``origin (3,)`` along ``directions (N, 3)`` (world frame, z up)
    with the plane ``z = ground_z``.

    Rays less than ``min_depression`` radians below the horizon are rejected: at grazing angles
    a pixel of error moves the point by kilometres, and rays at or above the horizon never
    reach the ground. Hits farther than ``max_range`` metres are rejected too.
    """
    origin = np.asarray(origin, dtype=np.float64).reshape(3)
    dirs = np.asarray(directions, dtype=np.float64).reshape(-1, 3)
    dirs = dirs / np.linalg.norm(dirs, axis=1, keepdims=True)
    n = dirs.shape[0]
    points = np.full((n, 3), np.nan)
    ranges = np.full(n, np.nan)
    height = origin[2] - float(ground_z)
    if height <= 0.0:
        return GroundHits(points, ranges, [CAMERA_BELOW_GROUND] * n)
    reasons = []
    for i in range(n):
        down = -dirs[i, 2]  # sine of the depression angle
        if down <= math.sin(min_depression):
            reasons.append(ABOVE_HORIZON)
            continue
        distance = height / down
        if distance > max_range:
            reasons.append(BEYOND_MAX_RANGE)
            continue
        points[i] = origin + distance * dirs[i]
        points[i, 2] = float(ground_z)  # exact, not origin.z - height (rounding)
        ranges[i] = distance
        reasons.append("")
    return GroundHits(points, ranges, reasons)


def project_pixels_to_ground(camera: CameraModel, world_from_optical: RigidTransform,
                             pixels: np.ndarray, ground_z: float,
                             min_depression: float = math.radians(1.0),
                             max_range: float = float("inf")) -> GroundHits:
    """Ground points of pixels ``(N, 2)`` seen by ``camera`` posed at ``world_from_optical``."""
    rays_world = camera.pixels_to_rays(pixels) @ world_from_optical.rotation.T
    return intersect_ground_plane(world_from_optical.translation, rays_world, ground_z,
                                  min_depression, max_range)


def horizontal_covariance(origin: np.ndarray, point: np.ndarray, angle_sigma: float,
                          height_sigma: float) -> np.ndarray:
    """2x2 covariance (x, y) of a ground fix from an angular error and a height error.

    Across the ray the error is ``range * angle_sigma``; along it the angular error is
    stretched by ``1 / sin(depression)`` and a height error adds ``height_sigma / tan(depression)``.
    """
    delta = np.asarray(point, dtype=np.float64) - np.asarray(origin, dtype=np.float64)
    horizontal = math.hypot(delta[0], delta[1])
    slant = float(np.linalg.norm(delta))
    sin_dep = max(-delta[2] / slant, 1e-6)
    tan_dep = max(-delta[2] / max(horizontal, 1e-9), 1e-6)
    along = math.hypot(slant * angle_sigma / sin_dep, height_sigma / tan_dep)
    across = slant * angle_sigma
    heading = math.atan2(delta[1], delta[0]) if horizontal > 1e-9 else 0.0
    c, s = math.cos(heading), math.sin(heading)
    rot = np.array([[c, -s], [s, c]])
    return rot @ np.diag([along * along, across * across]) @ rot.T


def agl_from_range(measured_range: float, world_from_base_rotation: np.ndarray) -> float:
    """Height above ground from a body-fixed, downward-looking rangefinder, corrected for tilt."""
    cos_tilt = float(np.asarray(world_from_base_rotation)[2, 2])  # body z . world z
    return float(measured_range) * cos_tilt
