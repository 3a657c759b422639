"""ViTDetector: a timm VisionTransformer backbone with a CenterNet-style dense head.

The backbone is a stock ``timm.models.vision_transformer.VisionTransformer`` (no class token,
fixed input size) so any timm ViT/DeiT checkpoint loads into it and Torch-Pruning sees the
familiar ``blocks[i].attn.qkv/proj`` and ``blocks[i].mlp.fc1/fc2`` layers.
"""
from __future__ import annotations

import copy
from typing import Any, Dict, Mapping, Union

import torch
from timm.layers import Mlp
from timm.layers.attention import Attention
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from .configs import resolve_config
from .decode import decode_detections
from .head import CenterNetHead


class ViTDetector(nn.Module):
    """Images ``(B, 3, S, S)`` RGB in ``[0, 1]`` -> dict of dense maps and backbone tokens.

    ``forward`` returns ``heatmap`` (class logits, ``(B, C, S/4, S/4)``), ``size`` and
    ``offset`` (``(B, 2, S/4, S/4)``) and ``tokens`` (``(B, N, D)``, for feature KD).
    ``config`` is the dict that rebuilds this architecture (see :meth:`config_from_modules`).
    """

    def __init__(self, config: Mapping[str, Any]) -> None:
        super().__init__()
        cfg = resolve_config(config)
        self.config = cfg
        self.backbone = VisionTransformer(
            img_size=cfg["input_size"], patch_size=cfg["patch_size"], embed_dim=cfg["embed_dim"],
            depth=cfg["depth"], num_heads=cfg["num_heads"], mlp_ratio=cfg["mlp_ratio"],
            num_classes=0, global_pool="", class_token=False, dynamic_img_size=False,
            drop_path_rate=cfg["drop_path_rate"])
        if cfg["blocks"] is not None:
            _apply_block_structure(self.backbone, cfg["blocks"])
        grid = cfg["input_size"] // cfg["patch_size"]
        self.head = CenterNetHead(cfg["embed_dim"], len(cfg["class_names"]), grid,
                                  cfg["patch_size"] // cfg["output_stride"], cfg["head_channels"])
        self.register_buffer("pixel_mean", torch.tensor(cfg["mean"]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(cfg["std"]).view(1, 3, 1, 1), persistent=False)

    @property
    def class_names(self) -> list:
        return list(self.config["class_names"])

    @property
    def input_size(self) -> int:
        return int(self.config["input_size"])

    @property
    def stride(self) -> int:
        return int(self.config["output_stride"])

    def forward(self, images: torch.Tensor) -> Dict[str, torch.Tensor]:
        size = self.config["input_size"]
        if not torch.jit.is_tracing() and tuple(images.shape[1:]) != (3, size, size):
            raise ValueError(f"expected images of shape (B, 3, {size}, {size}), got {tuple(images.shape)}")
        x = (images - self.pixel_mean) / self.pixel_std
        tokens = self.backbone.forward_features(x)
        out = self.head(tokens)
        out["tokens"] = tokens
        return out

    @torch.no_grad()
    def predict(self, images: torch.Tensor, max_detections: int = 100) -> torch.Tensor:
        """Decoded detections ``(B, K, 6)``: x1, y1, x2, y2 (input px), score, class."""
        return decode_detections(self(images), self.stride, max_detections)

    def config_from_modules(self) -> Dict[str, Any]:
        """Read the architecture back from the layers (after pruning) and store it in ``config``."""
        vit = self.backbone
        cfg = copy.deepcopy(self.config)
        cfg["embed_dim"] = int(vit.patch_embed.proj.out_channels)
        cfg["depth"] = len(vit.blocks)
        blocks = []
        for blk in vit.blocks:
            attn = blk.attn
            blocks.append({"num_heads": int(attn.num_heads),
                           "head_dim": int(attn.qkv.out_features // (3 * attn.num_heads)),
                           "mlp_hidden": int(blk.mlp.fc1.out_features)})
        uniform_heads = cfg["embed_dim"] // cfg["num_heads"] if cfg["num_heads"] else 0
        uniform = all(b["num_heads"] == cfg["num_heads"] and b["head_dim"] == uniform_heads
                      and b["mlp_hidden"] == int(cfg["embed_dim"] * cfg["mlp_ratio"]) for b in blocks)
        cfg["blocks"] = None if uniform else blocks
        cfg["head_channels"] = int(self.head.heatmap[0].in_channels)
        self.config = cfg
        return copy.deepcopy(cfg)


def _apply_block_structure(vit: VisionTransformer, blocks: list) -> None:
    """Resize attention and MLP layers block by block (the shape a pruned model had)."""
    dim = vit.embed_dim
    for blk, spec in zip(vit.blocks, blocks):
        blk.attn = Attention(dim, num_heads=int(spec["num_heads"]), attn_head_dim=int(spec["head_dim"]),
                             qkv_bias=True)
        blk.mlp = Mlp(dim, hidden_features=int(spec["mlp_hidden"]), act_layer=nn.GELU)


def create_detector(name_or_cfg: Union[str, Mapping[str, Any]] = "student_tiny", **overrides: Any) -> ViTDetector:
    """Build a detector from a named config (``teacher``, ``student``, ``teacher_tiny``,
    ``student_tiny``, ``test_micro``) or a config dict, with keyword overrides."""
    return ViTDetector(resolve_config(name_or_cfg, **overrides))
