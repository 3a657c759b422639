"""Frames and rotations: ENU/NED, FLU/FRD, camera optical frame, camera mount; numpy only.

Conventions (docs/geolocation.md has the long version):

* ROS (REP-103) world frames ``map``/``odom`` are ENU (x east, y north, z up); the body frame
  ``base_link`` is FLU (x forward, y left, z up). MAVROS publishes in these conventions.
* PX4 works in NED (x north, y east, z down) with an FRD body (x forward, y right, z down).
* A camera's optical frame (``*_optical_frame``) has z forward along the optical axis, x right
  and y down in the image; the camera's own ``camera_link`` is FLU-like (x forward).
* Quaternions are ROS order ``(x, y, z, w)``. A rotation matrix ``R_a_b`` maps vectors given
  in frame b into frame a (``v_a = R_a_b @ v_b``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence, Tuple

import numpy as np

#: Swaps ENU <-> NED (its own inverse): x_ned = y_enu, y_ned = x_enu, z_ned = -z_enu.
ENU_NED = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, -1.0]])
#: Swaps FLU <-> FRD body axes (its own inverse).
FLU_FRD = np.diag([1.0, -1.0, -1.0])
#: ``R_link_optical``: optical axes (x right, y down, z forward) expressed in an FLU camera link.
LINK_OPTICAL = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])


def quaternion_to_matrix(q_xyzw: Sequence[float]) -> np.ndarray:
    """Rotation matrix of a (not necessarily unit) quaternion in ROS ``(x, y, z, w)`` order."""
    x, y, z, w = (float(v) for v in q_xyzw)
    n = x * x + y * y + z * z + w * w
    if not math.isfinite(n) or n < 1e-12:
        raise ValueError("quaternion (%g, %g, %g, %g) has zero or non-finite norm" % (x, y, z, w))
    s = 2.0 / n
    return np.array([
        [1.0 - s * (y * y + z * z), s * (x * y - z * w), s * (x * z + y * w)],
        [s * (x * y + z * w), 1.0 - s * (x * x + z * z), s * (y * z - x * w)],
        [s * (x * z - y * w), s * (y * z + x * w), 1.0 - s * (x * x + y * y)],
    ])


def matrix_to_quaternion(rotation: np.ndarray) -> np.ndarray:
    """Unit quaternion ``(x, y, z, w)`` with ``w >= 0`` of a 3x3 rotation matrix."""
    m = np.asarray(rotation, dtype=np.float64)
    trace = m[0, 0] + m[1, 1] + m[2, 2]
    # Shepperd's method: branch on the largest diagonal term for numerical stability.
    if trace > 0.0:
        s = 2.0 * math.sqrt(trace + 1.0)
        q = [(m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s, 0.25 * s]
    elif m[0, 0] > m[1, 1] and m[0, 0] > m[2, 2]:
        s = 2.0 * math.sqrt(1.0 + m[0, 0] - m[1, 1] - m[2, 2])
        q = [0.25 * s, (m[0, 1] + m[1, 0]) / s, (m[0, 2] + m[2, 0]) / s, (m[2, 1] - m[1, 2]) / s]
    elif m[1, 1] > m[2, 2]:
        s = 2.0 * math.sqrt(1.0 + m[1, 1] - m[0, 0] - m[2, 2])
        q = [(m[0, 1] + m[1, 0]) / s, 0.25 * s, (m[1, 2] + m[2, 1]) / s, (m[0, 2] - m[2, 0]) / s]
    else:
        s = 2.0 * math.sqrt(1.0 + m[2, 2] - m[0, 0] - m[1, 1])
        q = [(m[0, 2] + m[2, 0]) / s, (m[1, 2] + m[2, 1]) / s, 0.25 * s, (m[1, 0] - m[0, 1]) / s]
    quat = np.array(q)
    quat /= np.linalg.norm(quat)
    return -quat if quat[3] < 0 else quat


def rpy_to_matrix(roll: float, pitch: float, yaw: float) -> np.ndarray:
    """``R = Rz(yaw) @ Ry(pitch) @ Rx(roll)`` (REP-103 fixed-axis roll, pitch, yaw in radians)."""
    cr, sr = math.cos(roll), math.sin(roll)
    cp, sp = math.cos(pitch), math.sin(pitch)
    cy, sy = math.cos(yaw), math.sin(yaw)
    return np.array([
        [cy * cp, cy * sp * sr - sy * cr, cy * sp * cr + sy * sr],
        [sy * cp, sy * sp * sr + cy * cr, sy * sp * cr - cy * sr],
        [-sp, cp * sr, cp * cr],
    ])


def quaternion_slerp(q0: Sequence[float], q1: Sequence[float], fraction: float) -> np.ndarray:
    """Spherical interpolation between unit quaternions (shortest path), ``fraction`` in [0, 1]."""
    a = np.asarray(q0, dtype=np.float64) / np.linalg.norm(q0)
    b = np.asarray(q1, dtype=np.float64) / np.linalg.norm(q1)
    dot = float(np.dot(a, b))
    if dot < 0.0:  # q and -q are the same rotation; take the short way round
        b, dot = -b, -dot
    if dot > 0.9995:  # nearly parallel: linear interpolation is exact enough and stable
        q = a + fraction * (b - a)
        return q / np.linalg.norm(q)
    theta = math.acos(min(dot, 1.0))
    sin_theta = math.sin(theta)
    return (math.sin((1.0 - fraction) * theta) * a + math.sin(fraction * theta) * b) / sin_theta


def enu_to_ned_position(p_enu: Sequence[float]) -> np.ndarray:
    """ENU position/vector -> NED (also NED -> ENU: the swap is its own inverse)."""
    return ENU_NED @ np.asarray(p_enu, dtype=np.float64)


ned_to_enu_position = enu_to_ned_position


def enu_flu_to_ned_frd_rotation(r_enu_flu: np.ndarray) -> np.ndarray:
    """Attitude of an FLU body in ENU (ROS/MAVROS) -> attitude of the FRD body in NED (PX4)."""
    return ENU_NED @ np.asarray(r_enu_flu, dtype=np.float64) @ FLU_FRD


def ned_frd_to_enu_flu_rotation(r_ned_frd: np.ndarray) -> np.ndarray:
    """Attitude of an FRD body in NED (PX4) -> attitude of the FLU body in ENU (ROS/MAVROS)."""
    return ENU_NED @ np.asarray(r_ned_frd, dtype=np.float64) @ FLU_FRD


@dataclass(frozen=True)
class RigidTransform:
    """``T_a_b``: maps points in frame b to frame a: ``p_a = rotation @ p_b + translation``."""

    rotation: np.ndarray = field(default_factory=lambda: np.eye(3))
    translation: np.ndarray = field(default_factory=lambda: np.zeros(3))

    @classmethod
    def from_pose(cls, position: Sequence[float], quaternion_xyzw: Sequence[float]) -> "RigidTransform":
        """The transform of a pose (a frame's position and orientation in its parent frame)."""
        return cls(quaternion_to_matrix(quaternion_xyzw), np.asarray(position, dtype=np.float64))

    def compose(self, other: "RigidTransform") -> "RigidTransform":
        """``T_a_c = T_a_b.compose(T_b_c)``."""
        return RigidTransform(self.rotation @ other.rotation,
                              self.rotation @ other.translation + self.translation)

    def inverse(self) -> "RigidTransform":
        """``T_b_a`` from ``T_a_b``."""
        rt = self.rotation.T
        return RigidTransform(rt, -rt @ self.translation)

    def apply(self, points: np.ndarray) -> np.ndarray:
        """Transform points shaped ``(3,)`` or ``(N, 3)``."""
        return np.asarray(points, dtype=np.float64) @ self.rotation.T + self.translation

    def quaternion(self) -> np.ndarray:
        """Rotation as a unit quaternion ``(x, y, z, w)``."""
        return matrix_to_quaternion(self.rotation)


#: Gimbal-down default: camera 10 cm ahead of and 5 cm below base_link, pitched down 90 degrees
#: (nadir), so image "up" points to the drone's nose. Pitch 0.785 (45 deg) is a typical oblique.
DEFAULT_MOUNT_XYZ = (0.10, 0.0, -0.05)
DEFAULT_MOUNT_RPY = (0.0, math.pi / 2.0, 0.0)


@dataclass(frozen=True)
class CameraMount:
    """Static mounting of ``camera_link`` (FLU-like, x along the optical axis) on ``base_link``.

    ``xyz`` in metres and ``rpy`` in radians follow REP-103 in the body frame: positive pitch
    tilts the camera's optical axis down, positive yaw turns it to the left.
    """

    xyz: Tuple[float, float, float] = DEFAULT_MOUNT_XYZ
    rpy: Tuple[float, float, float] = DEFAULT_MOUNT_RPY

    def __post_init__(self) -> None:
        for name, values in (("xyz", self.xyz), ("rpy", self.rpy)):
            if len(values) != 3 or not all(math.isfinite(float(v)) for v in values):
                raise ValueError("camera mount %s must be 3 finite numbers, got %r" % (name, list(values)))

    def base_to_optical(self) -> RigidTransform:
        """``T_base_optical``: camera optical frame -> base_link."""
        rotation = rpy_to_matrix(*self.rpy) @ LINK_OPTICAL
        return RigidTransform(rotation, np.asarray(self.xyz, dtype=np.float64))
