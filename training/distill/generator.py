"""Transformer generator for data-free distillation: latent tokens -> image in [0, 1].

Each output patch is one token: per-token noise (plus an optional class embedding) is
projected to ``embed_dim``, mixed by timm transformer ``Block`` s (so distant patches agree
with each other), linearly mapped to ``patch_size**2 * out_chans`` pixels and folded into
the image with ``pixel_shuffle``. A 3x3 convolution smooths patch seams. The output goes
through a fixed (non-affine) BatchNorm and a sigmoid: whatever the generator learns, each
batch keeps a sane contrast and every pixel stays strictly inside (0, 1), the input range of
every model in this project.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from timm.layers import trunc_normal_
from timm.models.vision_transformer import Block


class TransformerGenerator(nn.Module):
    """Generate ``(B, out_chans, image_size, image_size)`` images from latent tokens.

    Args:
        image_size: side of the generated (square) image; must be divisible by ``patch_size``.
        out_chans: image channels (1 for digits, 3 for detectors).
        patch_size: pixels per token side.
        latent_dim: size of each noise token.
        embed_dim, depth, num_heads, mlp_ratio: the transformer trunk.
        num_classes: > 0 makes the generator class-conditional (a label embedding is added to
            every token), so a target class can be requested per image.
    """

    def __init__(self, image_size: int = 32, out_chans: int = 3, patch_size: int = 4, latent_dim: int = 32,
                 embed_dim: int = 96, depth: int = 2, num_heads: int = 4, mlp_ratio: float = 2.0,
                 num_classes: int = 0) -> None:
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} is not divisible by patch_size {patch_size}")
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.image_size = image_size
        self.out_chans = out_chans
        self.patch_size = patch_size
        self.latent_dim = latent_dim
        self.num_classes = num_classes
        self.grid = image_size // patch_size
        self.num_tokens = self.grid * self.grid
        self.latent_proj = nn.Linear(latent_dim, embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_tokens, embed_dim))
        self.class_embed = nn.Embedding(num_classes, embed_dim) if num_classes > 0 else None
        self.blocks = nn.Sequential(*[Block(embed_dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=True)
                                      for _ in range(depth)])
        self.norm = nn.LayerNorm(embed_dim)
        self.to_pixels = nn.Linear(embed_dim, out_chans * patch_size * patch_size)
        self.smooth = nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1)
        self.output_norm = nn.BatchNorm2d(out_chans, affine=False)
        trunc_normal_(self.pos_embed, std=0.02)

    def sample_latent(self, batch_size: int, generator: Optional[torch.Generator] = None,
                      device: Optional[torch.device] = None) -> torch.Tensor:
        """Standard-normal latent tokens ``(B, num_tokens, latent_dim)``."""
        return torch.randn(batch_size, self.num_tokens, self.latent_dim, generator=generator).to(
            device or self.pos_embed.device)

    def forward(self, latent: torch.Tensor, labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        if latent.ndim != 3 or latent.shape[1:] != (self.num_tokens, self.latent_dim):
            raise ValueError(f"latent must be (B, {self.num_tokens}, {self.latent_dim}), got {tuple(latent.shape)}")
        tokens = self.latent_proj(latent) + self.pos_embed
        if self.class_embed is not None:
            if labels is None:
                raise ValueError("this generator is class-conditional: pass labels (B,)")
            tokens = tokens + self.class_embed(labels).unsqueeze(1)
        tokens = self.norm(self.blocks(tokens))
        patches = self.to_pixels(tokens)                                  # (B, N, C*p*p)
        b = patches.shape[0]
        patches = patches.transpose(1, 2).reshape(b, -1, self.grid, self.grid)
        image = F.pixel_shuffle(patches, self.patch_size)                # (B, C, H, W)
        image = image + self.smooth(image)
        return torch.sigmoid(self.output_norm(image))
