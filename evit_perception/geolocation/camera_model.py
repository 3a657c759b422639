"""Pinhole camera with ROS distortion models: pixels <-> rays in the camera optical frame.

Built from sensor_msgs/CameraInfo (``k``, ``d``, ``distortion_model``, ``r``, ``p``, binning
and ROI). OpenCV does the (un)distortion, so ``plumb_bob``, ``rational_polynomial`` and
``equidistant`` (fisheye) behave exactly as in image_proc.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import cv2
import numpy as np

PLUMB_BOB = "plumb_bob"
RATIONAL_POLYNOMIAL = "rational_polynomial"
EQUIDISTANT = "equidistant"
#: Accepted coefficient counts per distortion model (OpenCV order k1 k2 p1 p2 [k3 [k4 k5 k6]]).
DISTORTION_LENGTHS = {PLUMB_BOB: (0, 4, 5), RATIONAL_POLYNOMIAL: (0, 5, 8), EQUIDISTANT: (0, 4)}
# Iterative undistortion: OpenCV's default 5 iterations leave centimetre errors at image corners
# of wide lenses seen from 100 m; these criteria converge to well below a millipixel.
_UNDISTORT_CRITERIA = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 100, 1e-12)


class CameraModelError(ValueError):
    """CameraInfo cannot describe a camera (missing or zero intrinsics, unknown distortion)."""


@dataclass(frozen=True)
class CameraModel:
    """Intrinsics ``k`` (3x3), distortion ``d`` and the model name, for full-resolution pixels.

    ``binning`` and ``roi_offset`` map pixels of a binned or cropped image (what the detector
    saw) to the full-resolution pixels the calibration is for.
    """

    k: np.ndarray
    d: np.ndarray
    distortion_model: str = PLUMB_BOB
    width: int = 0
    height: int = 0
    binning: Sequence[int] = (1, 1)
    roi_offset: Sequence[int] = (0, 0)

    def __post_init__(self) -> None:
        k = np.asarray(self.k, dtype=np.float64)
        if k.shape != (3, 3) or not np.all(np.isfinite(k)):
            raise CameraModelError("camera matrix K must be 3x3 and finite, got %r" % (k.tolist(),))
        fx, fy = k[0, 0], k[1, 1]
        if fx <= 0.0 or fy <= 0.0:
            raise CameraModelError(
                "camera_info has no intrinsics (fx=%g, fy=%g): the camera is not calibrated or the "
                "driver publishes a zero K" % (fx, fy))
        model = self.distortion_model or PLUMB_BOB
        d = np.asarray(self.d, dtype=np.float64).ravel()
        if model not in DISTORTION_LENGTHS:
            raise CameraModelError("unsupported distortion_model %r (supported: %s)"
                                   % (model, ", ".join(sorted(DISTORTION_LENGTHS))))
        if d.size not in DISTORTION_LENGTHS[model] or not np.all(np.isfinite(d)):
            raise CameraModelError("distortion_model %r needs %s finite coefficients, got %d"
                                   % (model, " or ".join(str(n) for n in DISTORTION_LENGTHS[model] if n),
                                      d.size))
        object.__setattr__(self, "k", k)
        object.__setattr__(self, "d", d)
        object.__setattr__(self, "distortion_model", model)

    @classmethod
    def from_camera_info(cls, msg: Any, rectified: bool = False) -> "CameraModel":
        """Model for detections made on the raw image, or on ``image_rect`` when ``rectified``.

        For a rectified image the projection matrix ``P`` is the camera and there is no
        distortion (rays then live in the rectified frame, which for a monocular camera is the
        optical frame).
        """
        if rectified:
            p = np.asarray(msg.p, dtype=np.float64).reshape(3, 4)
            k, d, model = p[:, :3], np.zeros(0), PLUMB_BOB
        else:
            k = np.asarray(msg.k, dtype=np.float64).reshape(3, 3)
            d, model = np.asarray(msg.d, dtype=np.float64), str(msg.distortion_model)
            if not np.any(d):  # drivers send plumb_bob + zeros, or "" + empty, for "none"
                d, model = np.zeros(0), model or PLUMB_BOB
        return cls(k, d, model, int(msg.width), int(msg.height),
                   (max(1, int(msg.binning_x)), max(1, int(msg.binning_y))),
                   (int(msg.roi.x_offset), int(msg.roi.y_offset)))

    def _to_full_resolution(self, pixels: np.ndarray) -> np.ndarray:
        return pixels * np.asarray(self.binning, dtype=np.float64) + np.asarray(self.roi_offset, dtype=np.float64)

    def pixels_to_rays(self, pixels: np.ndarray) -> np.ndarray:
        """Unit rays ``(N, 3)`` in the optical frame (z forward) through pixels ``(N, 2)``."""
        uv = self._to_full_resolution(np.asarray(pixels, dtype=np.float64).reshape(-1, 2))
        if uv.shape[0] == 0:
            return np.zeros((0, 3))
        src = uv.reshape(-1, 1, 2)
        if self.d.size == 0:
            normalized = cv2.undistortPoints(src, self.k, None).reshape(-1, 2)
        elif self.distortion_model == EQUIDISTANT:
            normalized = _undistort_fisheye(src, self.k, self.d.reshape(1, 4)).reshape(-1, 2)
        else:
            normalized = _undistort_pinhole(src, self.k, self.d).reshape(-1, 2)
        rays = np.hstack([normalized, np.ones((normalized.shape[0], 1))])
        return rays / np.linalg.norm(rays, axis=1, keepdims=True)

    def project(self, points_optical: np.ndarray) -> np.ndarray:
        """Pixels ``(N, 2)`` of points ``(N, 3)`` in the optical frame (must have z > 0)."""
        pts = np.asarray(points_optical, dtype=np.float64).reshape(-1, 1, 3)
        if pts.shape[0] == 0:
            return np.zeros((0, 2))
        zero = np.zeros(3)
        if self.distortion_model == EQUIDISTANT and self.d.size:
            uv, _ = cv2.fisheye.projectPoints(pts, zero, zero, self.k, self.d.reshape(1, 4))
        else:
            uv, _ = cv2.projectPoints(pts, zero, zero, self.k, self.d if self.d.size else None)
        uv = uv.reshape(-1, 2)
        return (uv - np.asarray(self.roi_offset, dtype=np.float64)) / np.asarray(self.binning, dtype=np.float64)

    def pixel_angle(self) -> float:
        """Angle in radians subtended by one pixel at the principal point (for uncertainty)."""
        return math.atan(1.0 / max(self.k[0, 0], self.k[1, 1]))



def _undistort_pinhole(src: np.ndarray, k: np.ndarray, d: np.ndarray) -> np.ndarray:
    # OpenCV 4.x names the variant with termination criteria undistortPointsIter; 5.x folds
    # the criteria into undistortPoints.
    if hasattr(cv2, "undistortPointsIter"):
        return cv2.undistortPointsIter(src, k, d, None, None, _UNDISTORT_CRITERIA)
    return cv2.undistortPoints(src, k, d, criteria=_UNDISTORT_CRITERIA)


def _undistort_fisheye(src: np.ndarray, k: np.ndarray, d: np.ndarray) -> np.ndarray:
    try:
        return cv2.fisheye.undistortPoints(src, k, d, criteria=_UNDISTORT_CRITERIA)
    except TypeError:  # OpenCV < 4.6 has no criteria argument (and fewer iterations)
        return cv2.fisheye.undistortPoints(src, k, d)
