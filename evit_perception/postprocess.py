"""Raw network output -> detections in source-image pixels.

Handles both output layouts of the model contract:

* ``xyxy_score_class``: ``[B, K, 6]`` rows of x1, y1, x2, y2, score, class (score <= 0 pads);
* ``cxcywh_class_scores``: ``[B, N, 4 + C]`` candidates (``[B, 4 + C, N]`` when the
  contract says ``transposed``), the best class of each candidate is its label.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np

from evit_perception.model_contract import (LAYOUT_CXCYWH_CLASS_SCORES, LAYOUT_XYXY_SCORE_CLASS,
                                            ModelContract)
from evit_perception.preprocess import ImageTransform


class OutputShapeError(ValueError):
    """The network output does not have the shape the contract's layout promises."""


class Detections:
    """Boxes ``(N, 4)`` float32 xyxy in source pixels, scores ``(N,)`` float32, class_ids
    ``(N,)`` int32, sorted by descending score."""

    __slots__ = ("boxes", "scores", "class_ids")

    def __init__(self, boxes: np.ndarray, scores: np.ndarray, class_ids: np.ndarray) -> None:
        self.boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        self.scores = np.asarray(scores, dtype=np.float32).reshape(-1)
        self.class_ids = np.asarray(class_ids, dtype=np.int32).reshape(-1)
        if not len(self.boxes) == len(self.scores) == len(self.class_ids):
            raise ValueError(
                f"Detections needs equal lengths, got {len(self.boxes)} boxes, "
                f"{len(self.scores)} scores, {len(self.class_ids)} class ids")

    @classmethod
    def empty(cls) -> "Detections":
        """No detections."""
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int32))

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    def __repr__(self) -> str:
        return f"Detections(n={len(self)})"


def box_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one xyxy box with each of ``boxes`` ``(N, 4)``."""
    ix1 = np.maximum(box[0], boxes[:, 0])
    iy1 = np.maximum(box[1], boxes[:, 1])
    ix2 = np.minimum(box[2], boxes[:, 2])
    iy2 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(ix2 - ix1, 0, None) * np.clip(iy2 - iy1, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    union = area + areas - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def nms(boxes: np.ndarray, scores: np.ndarray, class_ids: np.ndarray, iou_threshold: float,
        max_keep: Optional[int] = None) -> np.ndarray:
    """Class-wise greedy non-maximum suppression.

    Returns indices into the inputs, by descending score, of boxes that overlap no
    higher-scoring box of the same class by more than ``iou_threshold`` (IoU > threshold
    suppresses).
    """
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    if len(boxes) == 0:
        return np.zeros(0, dtype=np.int64)
    scores = np.asarray(scores, dtype=np.float32).reshape(-1)
    class_ids = np.asarray(class_ids).reshape(-1)
    # Shift each class to its own region so one pass never compares two classes.
    span = float(np.abs(boxes).max()) * 2.0 + 1.0
    shifted = boxes.astype(np.float64) + (class_ids.astype(np.float64) * span)[:, None]
    order = np.argsort(-scores, kind="stable")
    keep = []
    limit = len(order) if max_keep is None else max_keep
    while order.size and len(keep) < limit:
        best = order[0]
        keep.append(best)
        rest = order[1:]
        order = rest[box_iou(shifted[best], shifted[rest]) <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


class Postprocessor:
    """``raw network output, ImageTransform -> Detections``.

    ``score_threshold``, ``iou_threshold``, ``max_detections`` and ``class_ids`` (class
    indices to keep, ``None`` for all) are plain attributes; the node changes them at run
    time.
    """

    def __init__(self, contract: ModelContract, score_threshold: float = 0.3,
                 iou_threshold: float = 0.5, max_detections: int = 100,
                 class_ids: Optional[Sequence[int]] = None) -> None:
        self.contract = contract
        self.score_threshold = float(score_threshold)
        self.iou_threshold = float(iou_threshold)
        self.max_detections = int(max_detections)
        self.class_ids = None if class_ids is None else [int(c) for c in class_ids]

    def __call__(self, raw: np.ndarray, transform: ImageTransform) -> Detections:
        boxes, scores, class_ids = self._candidates(np.asarray(raw))
        keep = scores > self.score_threshold
        if self.class_ids is not None:
            keep &= np.isin(class_ids, self.class_ids)
        boxes, scores, class_ids = boxes[keep], scores[keep], class_ids[keep]
        if len(scores) == 0 or self.max_detections <= 0:
            return Detections.empty()
        if self.contract.output.needs_nms:
            order = nms(boxes, scores, class_ids, self.iou_threshold, self.max_detections)
        else:
            order = np.argsort(-scores, kind="stable")[:self.max_detections]
        return Detections(transform.to_source(boxes[order]), scores[order], class_ids[order])

    def _candidates(self, raw: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(boxes xyxy input pixels, scores, class ids) of the first image in the batch."""
        out = self.contract.output
        num_classes = self.contract.num_classes
        rows = raw[0] if raw.ndim == 3 else raw
        if rows.ndim != 2:
            raise OutputShapeError(
                f"model output '{out.name}' has shape {raw.shape}; layout {out.layout} needs "
                "[batch, rows, columns]")
        if out.layout == LAYOUT_XYXY_SCORE_CLASS:
            if rows.shape[1] != 6:
                raise OutputShapeError(
                    f"model output '{out.name}' has shape {raw.shape}; layout {out.layout} "
                    "needs [batch, K, 6] (x1, y1, x2, y2, score, class)")
            rows = rows.astype(np.float32, copy=False)
            class_ids = rows[:, 5].astype(np.int32)
            valid = (class_ids >= 0) & (class_ids < num_classes)
            scores = np.where(valid, rows[:, 4], 0.0).astype(np.float32)
            return rows[:, :4], scores, np.clip(class_ids, 0, num_classes - 1)
        if out.layout == LAYOUT_CXCYWH_CLASS_SCORES:
            if out.transposed:
                rows = rows.T
            if rows.shape[1] != 4 + num_classes:
                expected = f"[batch, {4 + num_classes}, N]" if out.transposed else \
                    f"[batch, N, {4 + num_classes}]"
                raise OutputShapeError(
                    f"model output '{out.name}' has shape {raw.shape}; layout {out.layout} "
                    f"with {num_classes} classes needs {expected}")
            rows = rows.astype(np.float32, copy=False)
            class_scores = rows[:, 4:]
            class_ids = class_scores.argmax(axis=1).astype(np.int32)
            scores = class_scores[np.arange(len(rows)), class_ids]
            # Thousands of candidates, a handful above threshold: decode only those.
            above = scores > self.score_threshold
            rows, scores, class_ids = rows[above], scores[above], class_ids[above]
            cx, cy, half_w, half_h = rows[:, 0], rows[:, 1], rows[:, 2] / 2, rows[:, 3] / 2
            boxes = np.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], axis=1)
            return boxes, scores, class_ids
        raise OutputShapeError(f"unknown output layout {out.layout!r}")
