"""Anchor-free CenterNet-style dense head on a ViT token grid.

Tokens are folded back into their patch grid, lifted to ``output_stride`` (4) by transposed
convolutions, and three small branches predict per-class centre heatmap logits, box size and
sub-cell centre offset. Only Conv/ConvTranspose/BatchNorm/ReLU: exports to ONNX and builds in
TensorRT 8.2+ without plugins.
"""
from __future__ import annotations

import math
from typing import Dict

import torch
from torch import nn

#: Initial heatmap bias so sigmoid starts near 0.1 (CenterNet): keeps focal loss stable.
HEATMAP_PRIOR = 0.1


def _branch(channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(channels, channels, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(channels, out_channels, 1),
    )


class CenterNetHead(nn.Module):
    """Tokens ``(B, N, D)`` on a ``grid`` -> heatmap/size/offset maps at ``output_stride``."""

    def __init__(self, embed_dim: int, num_classes: int, grid_size: int, upsample_factor: int,
                 channels: int = 64) -> None:
        super().__init__()
        if upsample_factor < 1 or upsample_factor & (upsample_factor - 1):
            raise ValueError(f"upsample factor must be a power of two, got {upsample_factor}")
        self.grid_size = grid_size
        layers = [nn.Conv2d(embed_dim, channels, 1, bias=False), nn.BatchNorm2d(channels),
                  nn.ReLU(inplace=True)]
        for _ in range(int(math.log2(upsample_factor))):
            layers += [nn.ConvTranspose2d(channels, channels, 4, stride=2, padding=1, bias=False),
                       nn.BatchNorm2d(channels), nn.ReLU(inplace=True)]
        self.neck = nn.Sequential(*layers)
        self.heatmap = _branch(channels, num_classes)
        self.size = _branch(channels, 2)
        self.offset = _branch(channels, 2)
        nn.init.constant_(self.heatmap[-1].bias, -math.log((1 - HEATMAP_PRIOR) / HEATMAP_PRIOR))

    def forward(self, tokens: torch.Tensor) -> Dict[str, torch.Tensor]:
        b, n, d = tokens.shape
        g = self.grid_size
        # Fixed grid (dynamic_img_size is off): reshape with constants keeps the graph static.
        x = tokens.transpose(1, 2).reshape(b, d, g, g)
        x = self.neck(x)
        return {"heatmap": self.heatmap(x), "size": self.size(x), "offset": self.offset(x)}
