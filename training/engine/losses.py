"""CenterNet training targets and losses (focal heatmap, log-size L1, offset L1).

Targets are drawn per image with numpy (a Gaussian per object, CenterNet's radius rule),
then stacked; the losses only look at cells that hold an object centre for size/offset.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from evit_training.models.decode import encode_size


@dataclass(frozen=True)
class LossWeights:
    heatmap: float = 1.0
    size: float = 1.0
    offset: float = 1.0


def gaussian_radius(height: float, width: float, min_overlap: float = 0.7) -> float:
    """CenterNet's radius: the largest centre shift keeping IoU >= ``min_overlap``."""
    a1, b1 = 1.0, height + width
    c1 = width * height * (1 - min_overlap) / (1 + min_overlap)
    r1 = (b1 + math.sqrt(b1 ** 2 - 4 * a1 * c1)) / 2
    a2, b2 = 4.0, 2 * (height + width)
    c2 = (1 - min_overlap) * width * height
    r2 = (b2 + math.sqrt(b2 ** 2 - 4 * a2 * c2)) / 2
    a3, b3 = 4 * min_overlap, -2 * min_overlap * (height + width)
    c3 = (min_overlap - 1) * width * height
    r3 = (b3 + math.sqrt(b3 ** 2 - 4 * a3 * c3)) / 2
    return min(r1, r2, r3)


def _draw_gaussian(heatmap: np.ndarray, cx: int, cy: int, radius: int) -> None:
    diameter = 2 * radius + 1
    sigma = diameter / 6.0
    ys, xs = np.ogrid[-radius:radius + 1, -radius:radius + 1]
    g = np.exp(-(xs * xs + ys * ys) / (2 * sigma * sigma))
    h, w = heatmap.shape
    left, right = min(cx, radius), min(w - cx, radius + 1)
    top, bottom = min(cy, radius), min(h - cy, radius + 1)
    window = heatmap[cy - top:cy + bottom, cx - left:cx + right]
    patch = g[radius - top:radius + bottom, radius - left:radius + right]
    np.maximum(window, patch, out=window)


def encode_targets(targets: Sequence[Mapping[str, torch.Tensor]], num_classes: int, out_size: int,
                   stride: int) -> Dict[str, torch.Tensor]:
    """Per-image ``{"boxes" (n,4) xyxy input px, "labels" (n,)}`` -> dense target tensors.

    Returns ``heatmap (B,C,H,W)``, ``size``/``offset`` ``(B,2,H,W)`` and ``mask (B,1,H,W)``
    marking centre cells (1 where an object's centre falls).
    """
    b = len(targets)
    heat = np.zeros((b, num_classes, out_size, out_size), np.float32)
    size = torch.zeros((b, 2, out_size, out_size))
    offset = torch.zeros((b, 2, out_size, out_size))
    mask = torch.zeros((b, 1, out_size, out_size))
    for i, tgt in enumerate(targets):
        boxes = torch.as_tensor(tgt["boxes"], dtype=torch.float32).reshape(-1, 4)
        labels = torch.as_tensor(tgt["labels"]).reshape(-1).long()
        if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
            raise ValueError(f"label {int(labels.max())} out of range for {num_classes} classes")
        wh = (boxes[:, 2:] - boxes[:, :2]).clamp(min=0)
        centres = (boxes[:, :2] + boxes[:, 2:]) / 2 / stride
        codes = encode_size(wh, stride)
        for j in range(len(labels)):
            if wh[j, 0] < 1 or wh[j, 1] < 1:
                continue
            cx, cy = float(centres[j, 0]), float(centres[j, 1])
            ix, iy = int(cx), int(cy)
            if not (0 <= ix < out_size and 0 <= iy < out_size):
                continue
            radius = max(0, int(gaussian_radius(float(wh[j, 1]) / stride, float(wh[j, 0]) / stride)))
            _draw_gaussian(heat[i, int(labels[j])], ix, iy, radius)
            size[i, :, iy, ix] = codes[j]
            offset[i, 0, iy, ix] = cx - ix
            offset[i, 1, iy, ix] = cy - iy
            mask[i, 0, iy, ix] = 1.0
    return {"heatmap": torch.from_numpy(heat), "size": size, "offset": offset, "mask": mask}


def focal_loss(logits: torch.Tensor, target: torch.Tensor, alpha: float = 2.0, beta: float = 4.0) -> torch.Tensor:
    """CenterNet's penalty-reduced pixel-wise focal loss, normalised by the number of centres."""
    logits = logits.float()
    pred = torch.sigmoid(logits).clamp(1e-4, 1 - 1e-4)
    pos = target.eq(1).float()
    neg = 1.0 - pos
    log_p = F.logsigmoid(logits).clamp(min=math.log(1e-4))
    log_1mp = F.logsigmoid(-logits).clamp(min=math.log(1e-4))
    pos_loss = (log_p * (1 - pred) ** alpha * pos).sum()
    neg_loss = (log_1mp * pred ** alpha * (1 - target) ** beta * neg).sum()
    num_pos = pos.sum().clamp(min=1.0)
    return -(pos_loss + neg_loss) / num_pos


def masked_l1(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean L1 over the cells where ``mask`` is set (zero when no objects)."""
    m = mask.expand_as(pred)
    return (torch.abs(pred.float() - target) * m).sum() / m.sum().clamp(min=1.0)


def detection_loss(outputs: Mapping[str, torch.Tensor], encoded: Mapping[str, torch.Tensor],
                   weights: LossWeights = LossWeights()) -> Dict[str, torch.Tensor]:
    """Supervised CenterNet loss terms and their weighted ``total``."""
    hm = focal_loss(outputs["heatmap"], encoded["heatmap"])
    sz = masked_l1(outputs["size"], encoded["size"], encoded["mask"])
    off = masked_l1(outputs["offset"], encoded["offset"], encoded["mask"])
    total = weights.heatmap * hm + weights.size * sz + weights.offset * off
    return {"total": total, "heatmap": hm.detach(), "size": sz.detach(), "offset": off.detach()}


def targets_to_device(encoded: Mapping[str, torch.Tensor], device: torch.device) -> Dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in encoded.items()}


__all__: List[str] = ["LossWeights", "detection_loss", "encode_targets", "focal_loss", "gaussian_radius",
                      "masked_l1", "targets_to_device"]
