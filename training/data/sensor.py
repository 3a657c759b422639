"""What the drone camera does to a rendered view: exposure, white balance, blur, noise.

Boxes are unaffected (photometric changes and blur of at most a few pixels). Settings are
drawn once (:func:`sample_sensor`) and applied per frame (:func:`apply_sensor_settings`), so
a flight keeps one exposure and white balance while single images each get their own.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple

import cv2
import numpy as np


@dataclass(frozen=True)
class SensorSettings:
    """Photometric and blur settings of one camera (or one image)."""

    gain: Tuple[float, float, float] = (1.0, 1.0, 1.0)  # exposure x white balance, BGR
    gamma: float = 1.0
    vignetting: float = 0.0  # brightness lost in the corners
    motion_blur_px: int = 0  # 0 = none
    motion_blur_angle: float = 0.0
    defocus_sigma: float = 0.0
    noise_sigma: float = 3.0


def motion_blur_kernel(length: int, angle: float) -> np.ndarray:
    """Normalised line kernel of ``length`` px at ``angle`` radians."""
    k = np.zeros((length, length), np.float32)
    c = (length - 1) / 2.0
    dx, dy = math.cos(angle) * c, math.sin(angle) * c
    cv2.line(k, (int(round(c - dx)), int(round(c - dy))), (int(round(c + dx)), int(round(c + dy))), 1.0, 1,
             cv2.LINE_AA)
    return k / k.sum()


def sample_sensor(rng: np.random.Generator, strength: float = 1.0) -> SensorSettings:
    """Random settings; ``strength`` 0 gives a clean image, 1 the full range."""
    blur_len, blur_angle, defocus = 0, 0.0, 0.0
    if rng.random() < 0.2 * strength:
        blur_len, blur_angle = int(rng.integers(3, 7)), float(rng.uniform(0, math.pi))
    elif rng.random() < 0.2 * strength:
        defocus = float(rng.uniform(0.5, 1.1))
    spread = 0.35 * strength
    gain = rng.uniform(1 - spread, 1 + spread) * rng.uniform(1 - 0.08 * strength, 1 + 0.08 * strength, 3)
    return SensorSettings(gain=tuple(float(g) for g in gain),
                          gamma=float(rng.uniform(1 - 0.2 * strength, 1 + 0.25 * strength)),
                          vignetting=float(rng.uniform(0.1, 0.3)) if rng.random() < 0.4 * strength else 0.0,
                          motion_blur_px=blur_len, motion_blur_angle=blur_angle, defocus_sigma=defocus,
                          noise_sigma=float(rng.uniform(1.0, 5.0) * strength))


def apply_sensor_settings(rng: np.random.Generator, bgr: np.ndarray, s: SensorSettings,
                          exposure: float = 1.0) -> np.ndarray:
    """Blur, then tone curve (gamma, gains x ``exposure``), vignetting and fresh noise."""
    h, w = bgr.shape[:2]
    if s.motion_blur_px >= 2:
        bgr = cv2.filter2D(bgr, -1, motion_blur_kernel(s.motion_blur_px, s.motion_blur_angle))
    elif s.defocus_sigma > 0.3:
        bgr = cv2.GaussianBlur(bgr, (0, 0), s.defocus_sigma)
    lut = 255.0 * (np.arange(256) / 255.0) ** s.gamma
    luts = np.stack([np.clip(lut * g * exposure, 0, 255) for g in s.gain], axis=1).astype(np.uint8)
    bgr = cv2.LUT(bgr, luts.reshape(256, 1, 3))
    if s.vignetting > 0:  # a 9x9 falloff upsampled: cheap at any resolution
        yy, xx = np.mgrid[0:9, 0:9].astype(np.float32) - 4.0
        v = cv2.resize(1.0 - s.vignetting * (xx ** 2 + yy ** 2) / 32.0, (w, h), interpolation=cv2.INTER_LINEAR)
        bgr = cv2.multiply(bgr, cv2.merge([v, v, v]), dtype=cv2.CV_8U)
    if s.noise_sigma > 0.5:
        # OpenCV's generator (seeded from ours) is several times faster than NumPy's normal
        cv2.setRNGSeed(int(rng.integers(0, 2 ** 31 - 1)))
        noise = np.empty((h, w, 3), np.int16)
        cv2.randn(noise, 0.0, float(s.noise_sigma))
        bgr = cv2.add(bgr, noise, dtype=cv2.CV_8U)
    return bgr


def apply_sensor(rng: np.random.Generator, bgr: np.ndarray, strength: float = 1.0,
                 settings: Optional[SensorSettings] = None) -> np.ndarray:
    """Random (or given) sensor settings applied to one image."""
    return apply_sensor_settings(rng, bgr, settings if settings is not None else sample_sensor(rng, strength))
