"""Tiny timm ViT classifiers with named configs, and their checkpoint format.

``ViTClassifier`` takes images in [0, 1] and normalises inside, like the detectors in
``evit_training.models``, so generators and datasets share one pixel range. The timm model
is exposed as ``.backbone`` (blocks, norm) for hooks used by distillation.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Union

import torch
from torch import nn
from timm.models.vision_transformer import VisionTransformer

#: Named architectures. Patch 8 on 32x32 digits (each token sees 2x2 original pixels) gives
#: 16 tokens, which keeps the adversarial loop affordable on a shared 2-core CPU; mean-pooled
#: tokens (no class token) train faster from scratch on 1.4k images.
CLASSIFIER_CONFIGS: Dict[str, Dict[str, Any]] = {
    "digits_teacher": dict(img_size=32, patch_size=8, in_chans=1, num_classes=10, embed_dim=96, depth=4,
                           num_heads=4, mlp_ratio=2.0, class_token=False, global_pool="avg"),
    "digits_student": dict(img_size=32, patch_size=8, in_chans=1, num_classes=10, embed_dim=48, depth=2,
                           num_heads=2, mlp_ratio=2.0, class_token=False, global_pool="avg"),
    "digits_micro": dict(img_size=32, patch_size=8, in_chans=1, num_classes=10, embed_dim=24, depth=1,
                         num_heads=2, mlp_ratio=2.0, class_token=False, global_pool="avg"),
}


class ViTClassifier(nn.Module):
    """A timm ``VisionTransformer`` that takes [0, 1] images and returns class logits."""

    def __init__(self, arch: Dict[str, Any], mean: float = 0.5, std: float = 0.5) -> None:
        super().__init__()
        self.arch = dict(arch)
        self.backbone = VisionTransformer(**self.arch)
        self.register_buffer("pixel_mean", torch.tensor(float(mean)), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(float(std)), persistent=False)

    @property
    def input_size(self) -> int:
        return int(self.arch["img_size"])

    @property
    def in_chans(self) -> int:
        return int(self.arch.get("in_chans", 3))

    @property
    def num_classes(self) -> int:
        return int(self.arch["num_classes"])

    def forward_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """Final-norm patch tokens ``(B, N, D)`` (prefix tokens dropped)."""
        tokens = self.backbone.forward_features((images - self.pixel_mean) / self.pixel_std)
        return tokens[:, self.backbone.num_prefix_tokens:]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone((images - self.pixel_mean) / self.pixel_std)


def create_classifier(name: str, **overrides: Any) -> ViTClassifier:
    """Build a named classifier (see ``CLASSIFIER_CONFIGS``); ``overrides`` change arch kwargs."""
    if name not in CLASSIFIER_CONFIGS:
        raise ValueError(f"unknown classifier config {name!r}; choose one of {sorted(CLASSIFIER_CONFIGS)}")
    return ViTClassifier({**CLASSIFIER_CONFIGS[name], **overrides})


def save_classifier(model: ViTClassifier, path: Union[str, Path], **extra: Any) -> Path:
    """Write ``{"arch", "state_dict", **extra}``; ``load_classifier`` rebuilds the model from it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"kind": "vit_classifier", "arch": model.arch, "state_dict": model.state_dict(), **extra}, path)
    return path


def load_classifier(path: Union[str, Path]) -> ViTClassifier:
    """Load a checkpoint written by :func:`save_classifier`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"classifier checkpoint not found: {path}")
    blob = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(blob, dict) or blob.get("kind") != "vit_classifier":
        raise ValueError(f"{path} is not a ViT classifier checkpoint (missing kind='vit_classifier')")
    model = ViTClassifier(blob["arch"])
    model.load_state_dict(blob["state_dict"])
    return model
