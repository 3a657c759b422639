"""Pinhole camera over a flat ground plane: the geometry every synthetic view is rendered with.

World frame is ENU (x east, y north, z up, metres, ground at z = 0). The camera frame is the
OpenCV optical frame (x right, y down, z forward). A pose is a position plus three angles:

- ``yaw``: heading of the optical axis' horizontal direction, radians counter-clockwise from
  east (for a nadir view: the ground direction that appears at the top of the image);
- ``pitch``: depression of the optical axis below the horizon, radians (``pi/2`` = nadir);
- ``roll``: rotation about the optical axis, radians (positive turns the image clockwise).

These are the REP-103 fixed-axis roll/pitch/yaw of an FLU camera link (x forward along
the axis), so ``R_world_optical = Rz(yaw) @ Ry(pitch) @ Rx(roll) @ LINK_OPTICAL``
(``evit_perception.geolocation.frames.rpy_to_matrix`` and ``LINK_OPTICAL``). Flights publish
exactly these numbers, so bags and geolocation share known geometry.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Dict, Tuple

import numpy as np


@dataclass(frozen=True)
class PinholeCamera:
    """Intrinsics and pose of one view (see the module docstring for conventions)."""

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int
    position: Tuple[float, float, float]
    yaw: float
    pitch: float
    roll: float = 0.0

    @classmethod
    def from_fov(cls, width: int, height: int, hfov_deg: float, position, yaw: float,
                 pitch: float, roll: float = 0.0) -> "PinholeCamera":
        """Square pixels, principal point at the image centre, horizontal field of view."""
        f = 0.5 * width / math.tan(math.radians(hfov_deg) / 2.0)
        return cls(f, f, width / 2.0, height / 2.0, int(width), int(height),
                   tuple(float(v) for v in position), float(yaw), float(pitch), float(roll))

    # -- frames ----------------------------------------------------------------------------
    @cached_property
    def rotation_world_from_camera(self) -> np.ndarray:
        """3x3 matrix whose columns are the camera x (right), y (down), z (forward) in ENU."""
        cy_, sy = math.cos(self.yaw), math.sin(self.yaw)
        cp, sp = math.cos(self.pitch), math.sin(self.pitch)
        forward = np.array([cp * cy_, cp * sy, -sp])
        up = np.array([sp * cy_, sp * sy, cp])
        down = -up
        right = np.cross(down, forward)
        cr, sr = math.cos(self.roll), math.sin(self.roll)
        x_axis = cr * right + sr * down
        y_axis = -sr * right + cr * down
        return np.stack([x_axis, y_axis, forward], axis=1)

    @property
    def K(self) -> np.ndarray:  # noqa: N802 - the usual name of the intrinsic matrix
        """3x3 intrinsic matrix."""
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    @cached_property
    def _extrinsics(self) -> Tuple[np.ndarray, np.ndarray]:
        rot = self.rotation_world_from_camera.T
        return rot, -rot @ np.asarray(self.position, dtype=np.float64)

    def _world_to_camera(self) -> Tuple[np.ndarray, np.ndarray]:
        return self._extrinsics

    # -- projections -----------------------------------------------------------------------
    def project(self, points_world: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """World points ``(N, 3)`` -> pixels ``(N, 2)`` and depths ``(N,)`` along the axis."""
        rot, t = self._world_to_camera()
        pc = np.asarray(points_world, dtype=np.float64) @ rot.T + t
        z = pc[:, 2]
        zs = np.where(z > 1e-6, z, 1e-6)
        uv = np.stack([self.fx * pc[:, 0] / zs + self.cx, self.fy * pc[:, 1] / zs + self.cy], axis=1)
        return uv, z

    @cached_property
    def ground_homography_matrix(self) -> np.ndarray:
        """3x3 homography from ground-plane (x, y) metres to image pixels (cached)."""
        return self.ground_homography()

    def ground_homography(self) -> np.ndarray:
        """3x3 homography from ground-plane (x, y) metres to image pixels."""
        rot, t = self._world_to_camera()
        return self.K @ np.stack([rot[:, 0], rot[:, 1], t], axis=1)

    def pixel_to_ground(self, uv: np.ndarray) -> np.ndarray:
        """Pixels ``(N, 2)`` -> ground points ``(N, 2)`` (rays must hit the ground)."""
        h_inv = np.linalg.inv(self.ground_homography_matrix)
        pts = np.concatenate([np.asarray(uv, dtype=np.float64), np.ones((len(uv), 1))], axis=1) @ h_inv.T
        return pts[:, :2] / pts[:, 2:3]

    def max_view_depression(self) -> float:
        """Smallest depression angle (rad) of any image ray; must stay positive to see ground."""
        corners = np.array([[0, 0], [self.width, 0], [0, self.height], [self.width, self.height]],
                           dtype=np.float64)
        rays = np.stack([(corners[:, 0] - self.cx) / self.fx, (corners[:, 1] - self.cy) / self.fy,
                         np.ones(4)], axis=1) @ self.rotation_world_from_camera.T
        rays /= np.linalg.norm(rays, axis=1, keepdims=True)
        return float(np.min(np.arcsin(-rays[:, 2])))

    # -- serialisation ---------------------------------------------------------------------
    def intrinsics_dict(self) -> Dict[str, float]:
        """``{fx, fy, cx, cy, width, height}`` as published with every flight frame."""
        return {"fx": self.fx, "fy": self.fy, "cx": self.cx, "cy": self.cy,
                "width": self.width, "height": self.height}

    def pose_dict(self) -> Dict[str, object]:
        """``{position_enu, yaw, pitch, roll, rotation_world_from_camera}`` (metres, radians)."""
        return {"position_enu": tuple(self.position), "yaw": self.yaw, "pitch": self.pitch,
                "roll": self.roll,
                "rotation_world_from_camera": self.rotation_world_from_camera.tolist()}
