"""Bearings (azimuth, elevation) of detections for avoidance, from the camera model alone.

Bearings are given in an FLU frame (REP-103), normally ``base_link``: azimuth is measured from
the x axis (forward) towards y (left), so positive = to the left, counter-clockwise seen from
above; elevation is positive above the x-y plane. No pose or ground model is needed, so
bearings exist for every detection, at any altitude, even above the horizon.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .camera_model import CameraModel
from .frames import rpy_to_matrix
from .ground_projection import box_centre_pixels


@dataclass(frozen=True)
class Bearings:
    """Per detection: unit ``directions (N, 3)``, ``azimuth``/``elevation`` (N,) of the box
    centre and the box's angular ``width``/``height`` (N,), all radians, in one FLU frame."""

    directions: np.ndarray
    azimuth: np.ndarray
    elevation: np.ndarray
    width: np.ndarray
    height: np.ndarray


def azimuth_elevation(directions: np.ndarray) -> tuple:
    """``(azimuth, elevation)`` arrays of directions ``(N, 3)`` in an FLU frame."""
    d = np.asarray(directions, dtype=np.float64).reshape(-1, 3)
    return np.arctan2(d[:, 1], d[:, 0]), np.arctan2(d[:, 2], np.hypot(d[:, 0], d[:, 1]))


def bearing_matrix(azimuth: float, elevation: float) -> np.ndarray:
    """Rotation whose x axis points along the bearing (yaw = azimuth, pitch = -elevation)."""
    return rpy_to_matrix(0.0, -elevation, azimuth)


def _angle_between(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    # atan2(|a x b|, a . b) stays accurate for the small angles of distant objects
    return np.arctan2(np.linalg.norm(np.cross(a, b), axis=1), np.sum(a * b, axis=1))


def box_bearings(camera: CameraModel, boxes_xyxy: np.ndarray,
                 frame_from_optical: np.ndarray) -> Bearings:
    """Bearings of boxes ``(N, 4)`` (pixels) in the frame that ``frame_from_optical`` (3x3
    rotation of the camera optical frame in it, e.g. ``base_link``) maps into."""
    b = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4)
    centre = box_centre_pixels(b)
    rot = np.asarray(frame_from_optical, dtype=np.float64)
    directions = camera.pixels_to_rays(centre) @ rot.T
    azimuth, elevation = azimuth_elevation(directions)
    left = camera.pixels_to_rays(np.stack([b[:, 0], centre[:, 1]], axis=1))
    right = camera.pixels_to_rays(np.stack([b[:, 2], centre[:, 1]], axis=1))
    top = camera.pixels_to_rays(np.stack([centre[:, 0], b[:, 1]], axis=1))
    bottom = camera.pixels_to_rays(np.stack([centre[:, 0], b[:, 3]], axis=1))
    return Bearings(directions, azimuth, elevation, _angle_between(left, right), _angle_between(top, bottom))
