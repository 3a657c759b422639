"""What the drone camera does to a rendered view: exposure, white balance, blur, noise.

Boxes are unaffected (photometric changes and blur of at most a few pixels).
"""
from __future__ import annotations

import math

import cv2
import numpy as np


def motion_blur_kernel(length: int, angle: float) -> np.ndarray:
    """Normalised line kernel of ``length`` px at ``angle`` radians."""
    k = np.zeros((length, length), np.float32)
    c = (length - 1) / 2.0
    dx, dy = math.cos(angle) * c, math.sin(angle) * c
    cv2.line(k, (int(round(c - dx)), int(round(c - dy))), (int(round(c + dx)), int(round(c + dy))), 1.0, 1,
             cv2.LINE_AA)
    return k / k.sum()


def apply_sensor(rng: np.random.Generator, bgr: np.ndarray, strength: float = 1.0) -> np.ndarray:
    """Random exposure/gamma, colour cast, vignetting, motion or defocus blur and noise."""
    h, w = bgr.shape[:2]
    if rng.random() < 0.35 * strength:
        length = int(rng.integers(3, 8))
        bgr = cv2.filter2D(bgr, -1, motion_blur_kernel(length, float(rng.uniform(0, math.pi))))
    elif rng.random() < 0.3 * strength:
        bgr = cv2.GaussianBlur(bgr, (0, 0), float(rng.uniform(0.5, 1.1)))
    gain = rng.uniform(0.65, 1.35) * rng.uniform(0.92, 1.08, 3)  # exposure and white balance
    gamma = rng.uniform(0.8, 1.25)
    lut = np.clip(255.0 * (np.arange(256) / 255.0) ** gamma, 0, 255)
    luts = np.stack([np.clip(lut * g, 0, 255) for g in gain], axis=1).astype(np.uint8)
    bgr = cv2.LUT(bgr, luts.reshape(256, 1, 3))
    if rng.random() < 0.4 * strength:  # lens vignetting, cheap at low resolution
        yy, xx = np.mgrid[0:9, 0:9].astype(np.float32) - 4.0
        v = 1.0 - rng.uniform(0.1, 0.3) * (xx ** 2 + yy ** 2) / 32.0
        v = cv2.resize(v, (w, h), interpolation=cv2.INTER_LINEAR)
        bgr = cv2.multiply(bgr, cv2.merge([v, v, v]), dtype=cv2.CV_8U)
    sigma = rng.uniform(1.0, 7.0) * strength
    if sigma > 0.5:
        noise = rng.standard_normal((h, w, 1), dtype=np.float32) * sigma
        noise = np.repeat(noise, 3, axis=2) + rng.standard_normal((h, w, 3), dtype=np.float32) * (0.4 * sigma)
        bgr = cv2.add(bgr, noise, dtype=cv2.CV_8U)
    return bgr
