"""Detections <-> vision_msgs, for vision_msgs 4.x (Humble and later) with a 3.x/2.x shim.

vision_msgs changed two field layouts over its life:

* 4.x: ``results[i].hypothesis.class_id`` / ``.score`` and ``bbox.center.position.x/.y``
* 3.x (Galactic): the same hypothesis, but ``bbox.center.x/.y`` (geometry_msgs/Pose2D)
* 2.x (Foxy): ``results[i].id`` / ``results[i].score`` and ``bbox.center.x/.y``

The shim looks at the message instances themselves, so the same code fills whatever
vision_msgs the running distribution ships. ``class_id`` always carries the class *name*.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from vision_msgs.msg import Detection2D, Detection2DArray, ObjectHypothesisWithPose

from evit_perception.postprocess import Detections


def to_detection2d_array(detections: Detections, header: Any,
                         class_names: Sequence[str]) -> Detection2DArray:
    """Build a Detection2DArray carrying ``header`` unchanged (stamp and frame_id).

    Boxes are xyxy source-image pixels; the message gets centre and size.
    """
    msg = Detection2DArray()
    msg.header = header
    boxes = np.asarray(detections.boxes, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(detections.scores, dtype=np.float64).reshape(-1)
    class_ids = np.asarray(detections.class_ids).reshape(-1)
    out = []
    for (x1, y1, x2, y2), score, class_id in zip(boxes.tolist(), scores.tolist(), class_ids.tolist()):
        det = Detection2D()
        det.header = header
        result = ObjectHypothesisWithPose()
        _set_hypothesis(result, _class_name(int(class_id), class_names), float(score))
        det.results.append(result)
        _set_center(det.bbox.center, (x1 + x2) / 2.0, (y1 + y2) / 2.0)
        det.bbox.size_x = float(x2 - x1)
        det.bbox.size_y = float(y2 - y1)
        out.append(det)
    msg.detections = out
    return msg


def from_detection2d_array(msg: Detection2DArray, class_names: Sequence[str]) -> Detections:
    """Read a Detection2DArray back into :class:`Detections` (first hypothesis per box).

    ``class_id`` strings are looked up in ``class_names``; a purely numeric id is taken as
    the index. Raises ValueError for a class the list does not know.
    """
    index = {name: i for i, name in enumerate(class_names)}
    boxes, scores, class_ids = [], [], []
    for det in msg.detections:
        if not det.results:
            raise ValueError("Detection2D without results: no class or score to read")
        class_id, score = _get_hypothesis(det.results[0])
        if class_id in index:
            class_ids.append(index[class_id])
        elif class_id.isdigit():
            class_ids.append(int(class_id))
        else:
            raise ValueError(f"class_id {class_id!r} is not one of {list(class_names)}")
        cx, cy = _get_center(det.bbox.center)
        hw, hh = det.bbox.size_x / 2.0, det.bbox.size_y / 2.0
        boxes.append((cx - hw, cy - hh, cx + hw, cy + hh))
        scores.append(score)
    return Detections(
        boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        scores=np.asarray(scores, dtype=np.float32).reshape(-1),
        class_ids=np.asarray(class_ids, dtype=np.int32).reshape(-1),
    )


def label_info(class_names: Sequence[str], header: Any, threshold: float) -> Any:
    """vision_msgs/LabelInfo mapping class indices to names (None where the type is absent)."""
    try:
        from vision_msgs.msg import LabelInfo, VisionClass
    except ImportError:  # vision_msgs < 4.1 has no LabelInfo
        return None
    msg = LabelInfo()
    msg.header = header
    msg.class_map = [VisionClass(class_id=i, class_name=str(name)) for i, name in enumerate(class_names)]
    msg.threshold = float(threshold)
    return msg


def _class_name(class_id: int, class_names: Sequence[str]) -> str:
    return class_names[class_id] if 0 <= class_id < len(class_names) else str(class_id)


def _set_hypothesis(result: Any, class_id: str, score: float) -> None:
    if hasattr(result, "hypothesis"):  # 3.x and 4.x
        result.hypothesis.class_id = class_id
        result.hypothesis.score = score
    else:  # 2.x
        result.id = class_id
        result.score = score


def _get_hypothesis(result: Any):
    if hasattr(result, "hypothesis"):
        return str(result.hypothesis.class_id), float(result.hypothesis.score)
    return str(result.id), float(result.score)


def _set_center(center: Any, x: float, y: float) -> None:
    if hasattr(center, "position"):  # 4.x vision_msgs/Pose2D
        center.position.x = x
        center.position.y = y
    else:  # 2.x/3.x geometry_msgs/Pose2D
        center.x = x
        center.y = y


def _get_center(center: Any):
    if hasattr(center, "position"):
        return float(center.position.x), float(center.position.y)
    return float(center.x), float(center.y)
