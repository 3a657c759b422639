"""Transformer generator for data-free distillation: latent tokens -> image in [0, 1].

Each output patch is one token: per-token noise (plus an optional class embedding) is
projected to ``embed_dim``, mixed by timm transformer ``Block`` s (so distant patches agree
with each other), linearly mapped to ``patch_size**2 * out_chans`` pixels and folded into
the image with ``pixel_shuffle``. A 3x3 convolution smooths patch seams. The output goes
through a fixed (non-affine) BatchNorm and a sigmoid: whatever the generator learns, each
batch keeps a sane contrast and every pixel stays strictly inside (0, 1), the input range of
every model in this project.

With ``canvas=True`` the generator edits an image instead of drawing from nothing: a canvas
(for data-free KD, a procedural dead-leaves image, see ``image_priors.py``) is patch-embedded
into the tokens, and the output is the canvas in logit space plus the generator's normalised
residual. The canvas brings colour, sharp edges and small parts that a generator trained for
a few hundred steps never finds; the residual is what the teacher priors and the adversarial
game shape.

With ``layout_chans > 0`` the generator is told where to draw: a layout (per-class box masks,
see ``layout.py``) is patch-embedded into the tokens like a canvas and, resized, added to the
feature map of every conv-decoder stage, so a box far smaller than a token still gets pixels
of its own.
"""
from __future__ import annotations

import math
from typing import List, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn
from timm.layers import trunc_normal_
from timm.models.vision_transformer import Block

DECODERS = ("linear", "conv")


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
        upsample: the transformer draws ``image_size / upsample`` pixels a side, then resizes.
        decoder: ``"linear"`` maps each token to its patch's pixels (pixel shuffle);
            ``"conv"`` reads the token grid as a feature map and doubles its resolution with
            upsample + 3x3 conv stages (TransGAN-style), a stronger local smoothness prior.
        output_affine: let the generator learn a per-channel brightness/contrast after the
            normalisation (the sigmoid still bounds the range); without it every batch has
            half its pixels above 0.5, which real images (dark backgrounds) rarely do.
        output_gain: multiplies the normalised output before the sigmoid; > 1 gives
            high-contrast, nearly two-level images (ink on paper), 1 gives soft grey images.
        canvas: take a canvas image ``(B, out_chans, image_size, image_size)`` in [0, 1] in
            ``forward`` and return ``sigmoid(logit(canvas) + canvas_residual * residual)``.
        canvas_residual: scale of the generator's residual on a canvas (its residual is
            batch-normalised, so 1 is a strong edit and 0.25 a light one).
        layout_chans: > 0 makes the generator layout-conditional: ``forward`` takes a layout
            ``(B, layout_chans, image_size, image_size)`` (needs the conv decoder).
    """

    def __init__(self, image_size: int = 32, out_chans: int = 3, patch_size: int = 4, latent_dim: int = 32,
                 embed_dim: int = 96, depth: int = 2, num_heads: int = 4, mlp_ratio: float = 2.0,
                 num_classes: int = 0, upsample: int = 1, output_gain: float = 1.0,
                 decoder: str = "linear", output_affine: bool = False, canvas: bool = False,
                 canvas_residual: float = 1.0, layout_chans: int = 0) -> None:
        super().__init__()
        if layout_chans < 0 or (layout_chans and decoder != "conv"):
            raise ValueError(f"layout_chans must be >= 0 and needs the conv decoder; got {layout_chans} "
                             f"with decoder {decoder!r}")
        if upsample < 1 or image_size % upsample:
            raise ValueError(f"upsample must be a positive divisor of image_size {image_size}, got {upsample}")
        if decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")
        if (image_size // upsample) % patch_size:
            raise ValueError(f"image_size {image_size} / upsample {upsample} is not divisible by "
                             f"patch_size {patch_size}")
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.image_size = image_size
        self.out_chans = out_chans
        self.patch_size = patch_size
        self.latent_dim = latent_dim
        self.num_classes = num_classes
        self.upsample = upsample
        self.output_gain = float(output_gain)
        self.grid = image_size // upsample // patch_size
        self.num_tokens = self.grid * self.grid
        self.latent_proj = nn.Linear(latent_dim, embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_tokens, embed_dim))
        self.class_embed = nn.Embedding(num_classes, embed_dim) if num_classes > 0 else None
        # One token per canvas patch: a strided conv over the (image_size / grid) pixels it covers.
        stride = image_size // self.grid
        self.canvas_embed = nn.Conv2d(out_chans, embed_dim, kernel_size=stride, stride=stride) if canvas else None
        self.canvas_residual = float(canvas_residual)
        self.layout_chans = layout_chans
        self.layout_embed = nn.Conv2d(layout_chans, embed_dim, kernel_size=stride, stride=stride) \
            if layout_chans else None
        self.blocks = nn.Sequential(*[Block(embed_dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=True)
                                      for _ in range(depth)])
        self.norm = nn.LayerNorm(embed_dim)
        self.decoder = decoder
        self.layout_stages: Optional[nn.ModuleList] = None
        if decoder == "linear":
            self.to_pixels = nn.Linear(embed_dim, out_chans * patch_size * patch_size)
        else:
            stages = int(round(math.log2(patch_size)))
            if 2 ** stages != patch_size:
                raise ValueError(f"the conv decoder needs a power-of-two patch_size, got {patch_size}")
            layers: List[nn.Module] = []
            width = embed_dim
            for _ in range(stages):
                out_width = max(16, width // 2)
                layers += [nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                           nn.Conv2d(width, out_width, 3, padding=1), nn.GELU()]
                width = out_width
            layers.append(nn.Conv2d(width, out_chans, 3, padding=1))
            self.to_pixels = nn.Sequential(*layers)
            # The layout enters each stage after its upsampling, at that stage's resolution.
            widths = [m.in_channels for m in layers if isinstance(m, nn.Conv2d)][:stages]
            self.layout_stages = nn.ModuleList(nn.Conv2d(layout_chans, w, 3, padding=1) for w in widths) \
                if layout_chans else None
        self.smooth = nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1)
        self.output_norm = nn.BatchNorm2d(out_chans, affine=output_affine)
        trunc_normal_(self.pos_embed, std=0.02)

    def sample_latent(self, batch_size: int, generator: Optional[torch.Generator] = None,
                      device: Optional[torch.device] = None) -> torch.Tensor:
        """Standard-normal latent tokens ``(B, num_tokens, latent_dim)``."""
        return torch.randn(batch_size, self.num_tokens, self.latent_dim, generator=generator).to(
            device or self.pos_embed.device)

    def forward(self, latent: torch.Tensor, labels: Optional[torch.Tensor] = None,
                canvas: Optional[torch.Tensor] = None, layout: Optional[torch.Tensor] = None) -> torch.Tensor:
        if latent.ndim != 3 or latent.shape[1:] != (self.num_tokens, self.latent_dim):
            raise ValueError(f"latent must be (B, {self.num_tokens}, {self.latent_dim}), got {tuple(latent.shape)}")
        tokens = self.latent_proj(latent) + self.pos_embed
        tokens = tokens + self._embed_input(self.canvas_embed, canvas, self.out_chans, latent.shape[0],
                                            "edits a canvas", "canvas", "canvas=True")
        tokens = tokens + self._embed_input(self.layout_embed, layout, self.layout_chans, latent.shape[0],
                                            "draws a layout", "layout", "layout_chans")
        if self.class_embed is not None:
            if labels is None:
                raise ValueError("this generator is class-conditional: pass labels (B,)")
            tokens = tokens + self.class_embed(labels).unsqueeze(1)
        tokens = self.norm(self.blocks(tokens))
        b = tokens.shape[0]
        if self.decoder == "linear":
            patches = self.to_pixels(tokens)                              # (B, N, C*p*p)
            patches = patches.transpose(1, 2).reshape(b, -1, self.grid, self.grid)
            image = F.pixel_shuffle(patches, self.patch_size)            # (B, C, H/u, W/u)
        else:
            image = self._decode(tokens.transpose(1, 2).reshape(b, -1, self.grid, self.grid), layout)
        if self.upsample > 1:
            image = F.interpolate(image, scale_factor=self.upsample, mode="bilinear", align_corners=False)
        image = image + self.smooth(image)
        residual = self.output_gain * self.output_norm(image)
        if self.canvas_embed is not None:
            return torch.sigmoid(torch.logit(canvas.clamp(0.01, 0.99)) + self.canvas_residual * residual)
        return torch.sigmoid(residual)

    def _embed_input(self, embed: Optional[nn.Conv2d], image: Optional[torch.Tensor], chans: int, batch: int,
                     role: str, name: str, option: str) -> Union[torch.Tensor, float]:
        """Tokens of an image-sized input (canvas or layout) for a generator built to take it, else 0;
        an input that is missing, misshapen or not expected is named."""
        if embed is None:
            if image is not None:
                raise ValueError(f"{name} given to a generator built without {option}")
            return 0.0
        expected = (batch, chans, self.image_size, self.image_size)
        if image is None or tuple(image.shape) != expected:
            raise ValueError(f"this generator {role}: pass {name} {expected}, got "
                             f"{None if image is None else tuple(image.shape)}")
        return embed(image).flatten(2).transpose(1, 2)

    def _decode(self, features: torch.Tensor, layout: Optional[torch.Tensor]) -> torch.Tensor:
        """The conv decoder, with the layout added after every upsampling when there is one."""
        if self.layout_stages is None:
            return self.to_pixels(features)
        stage = 0
        for module in self.to_pixels:
            features = module(features)
            if isinstance(module, nn.Upsample):
                resized = F.adaptive_avg_pool2d(layout, features.shape[-2:])
                features = features + self.layout_stages[stage](resized)
                stage += 1
        return features
