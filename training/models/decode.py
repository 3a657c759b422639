"""Box coding shared by training targets, torch inference and the exported graph.

Sizes are predicted as ``log(extent / stride)`` (scale-invariant for 6 px persons and 100 px
buildings alike); offsets are the centre's fractional position inside its heatmap cell.
Decoding is peak picking on the sigmoid heatmap (3x3 max-pool equality), TopK over classes
and cells, and gathering size/offset at the peaks: all plain ONNX ops TensorRT parses.
"""
from __future__ import annotations

from typing import Dict

import torch
import torch.nn.functional as F

#: Clamp on the log-size before exp so an untrained head never overflows to inf.
MAX_LOG_SIZE = 8.0


def encode_size(extent: torch.Tensor, stride: int) -> torch.Tensor:
    """Box width/height in input pixels -> regression target."""
    return torch.log(extent.clamp(min=1.0) / stride)


def decode_size(code: torch.Tensor, stride: int) -> torch.Tensor:
    """Regression output -> box width/height in input pixels."""
    return torch.exp(code.clamp(max=MAX_LOG_SIZE)) * stride


def decode_detections(outputs: Dict[str, torch.Tensor], stride: int, max_detections: int = 100) -> torch.Tensor:
    """Dense head outputs -> ``(B, K, 6)`` rows ``x1, y1, x2, y2, score, class`` in input pixels.

    Rows are sorted by score; no NMS is needed (peaks are local maxima). ``K`` is
    ``min(max_detections, C*H*W)``.
    """
    logits, size, offset = outputs["heatmap"], outputs["size"], outputs["offset"]
    b, c, h, w = logits.shape
    heat = torch.sigmoid(logits)
    peaks = F.max_pool2d(heat, kernel_size=3, stride=1, padding=1)
    heat = heat * (peaks == heat).to(heat.dtype)
    k = min(max_detections, c * h * w)
    scores, index = torch.topk(heat.reshape(b, c * h * w), k)
    # Index arithmetic in float (exact below 2**24 cells) keeps TensorRT away from int64 math.
    index_f = index.to(heat.dtype)
    classes = torch.floor(index_f / float(h * w))
    cell_f = index_f - classes * float(h * w)
    ys = torch.floor(cell_f / float(w))
    xs = cell_f - ys * float(w)
    cell = cell_f.to(torch.int64).unsqueeze(1).expand(b, 2, k)
    wh = decode_size(torch.gather(size.reshape(b, 2, h * w), 2, cell), stride)
    off = torch.gather(offset.reshape(b, 2, h * w), 2, cell)
    cx = (xs + off[:, 0]) * stride
    cy = (ys + off[:, 1]) * stride
    half_w, half_h = wh[:, 0] / 2, wh[:, 1] / 2
    return torch.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h, scores, classes], dim=2)
