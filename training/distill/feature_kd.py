"""Feature KD: student tokens projected onto the teacher's token space.

A learned linear map (a 1x1 convolution on the token grid) lifts student tokens to the
teacher's width; if the patch grids differ (e.g. patch 8 student vs patch 16 teacher) the
projected student grid is resized bilinearly to the teacher's. The loss is MSE on
LayerNorm-standardised tokens (scale-free across teachers) or 1 - cosine similarity.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

FEATURE_LOSSES = ("mse", "cosine")


def _grid(tokens: torch.Tensor) -> torch.Tensor:
    b, n, d = tokens.shape
    side = int(math.isqrt(n))
    if side * side != n:
        raise ValueError(f"{n} tokens do not form a square grid (class tokens must be removed)")
    return tokens.transpose(1, 2).reshape(b, d, side, side)


class FeatureProjector(nn.Module):
    """Student tokens ``(B, Ns, Ds)`` -> ``(B, Nt, Dt)`` on the teacher's grid."""

    def __init__(self, student_dim: int, teacher_dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(student_dim, teacher_dim)

    def forward(self, student_tokens: torch.Tensor, teacher_tokens: torch.Tensor) -> torch.Tensor:
        x = self.proj(student_tokens)
        if x.shape[1] != teacher_tokens.shape[1]:
            t_side = int(math.isqrt(teacher_tokens.shape[1]))
            x = F.interpolate(_grid(x), size=(t_side, t_side), mode="bilinear", align_corners=False)
            x = x.flatten(2).transpose(1, 2)
        return x


def feature_kd_loss(projected: torch.Tensor, teacher_tokens: torch.Tensor, kind: str = "mse") -> torch.Tensor:
    """Distance between projected student tokens and teacher tokens (same shape)."""
    if kind not in FEATURE_LOSSES:
        raise ValueError(f"feature loss {kind!r} not in {FEATURE_LOSSES}")
    p, t = projected.float(), teacher_tokens.float()
    if p.shape != t.shape:
        raise ValueError(f"projected {tuple(p.shape)} and teacher {tuple(t.shape)} tokens differ")
    if kind == "cosine":
        return (1.0 - F.cosine_similarity(p, t, dim=-1)).mean()
    d = t.shape[-1]
    return F.mse_loss(F.layer_norm(p, (d,)), F.layer_norm(t, (d,)))
