"""Boxes drawn on the frame, for people watching the detector in rqt_image_view or RViz.

The node renders this only while someone subscribes to the debug topic: drawing and
serialising a camera-sized image costs more than many small models take to run.
"""
from __future__ import annotations

from typing import Any, Sequence, Tuple

import cv2
import numpy as np

from sensor_msgs.msg import Image

from evit_perception.postprocess import Detections

# Distinct, colour-blind-friendly BGR colours (Okabe-Ito palette) cycled by class index.
_PALETTE: Tuple[Tuple[int, int, int], ...] = (
    (0, 159, 230), (233, 180, 86), (115, 158, 0), (66, 228, 240),
    (178, 114, 0), (0, 94, 213), (167, 121, 204), (0, 0, 0),
)


def draw_detections(bgr: np.ndarray, detections: Detections,
                    class_names: Sequence[str]) -> np.ndarray:
    """A copy of ``bgr`` with one labelled box per detection (``name score``)."""
    canvas = np.ascontiguousarray(bgr).copy()
    thickness = max(1, int(round(min(canvas.shape[:2]) / 320)))
    for box, score, class_id in zip(np.asarray(detections.boxes).reshape(-1, 4),
                                    np.asarray(detections.scores).reshape(-1),
                                    np.asarray(detections.class_ids).reshape(-1)):
        x1, y1, x2, y2 = (int(round(float(v))) for v in box)
        colour = _PALETTE[int(class_id) % len(_PALETTE)]
        cv2.rectangle(canvas, (x1, y1), (x2, y2), colour, thickness)
        name = class_names[int(class_id)] if 0 <= int(class_id) < len(class_names) else str(class_id)
        label = f"{name} {float(score):.2f}"
        (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, 0.4 * thickness, thickness)
        top = max(0, y1 - th - base)
        cv2.rectangle(canvas, (x1, top), (x1 + tw, top + th + base), colour, -1)
        cv2.putText(canvas, label, (x1, top + th), cv2.FONT_HERSHEY_SIMPLEX, 0.4 * thickness,
                    (255, 255, 255), thickness, cv2.LINE_AA)
    return canvas


def bgr_to_image_msg(bgr: np.ndarray, header: Any) -> Image:
    """sensor_msgs/Image (bgr8) of an HxWx3 uint8 array, with ``header`` unchanged."""
    bgr = np.ascontiguousarray(bgr, dtype=np.uint8)
    if bgr.ndim != 3 or bgr.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 BGR image, got shape {bgr.shape}")
    msg = Image()
    msg.header = header
    msg.height, msg.width = int(bgr.shape[0]), int(bgr.shape[1])
    msg.encoding = "bgr8"
    msg.is_bigendian = 0
    msg.step = int(bgr.shape[1] * 3)
    msg.data = bgr.tobytes()
    return msg
