"""Checkpoints: our own (architecture inside) and timm ViT/DeiT weight files from disk.

Our checkpoints are ``torch.save`` dicts ``{"format", "config", "model", ...meta}`` where
``config`` rebuilds the exact architecture (pruned block shapes included), so
:func:`load_model` needs nothing but the file. Nothing here downloads weights.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Dict, List, Mapping, Tuple, Union

import torch
from timm.layers import resample_abs_pos_embed, resample_patch_embed
from torch import nn

from .detector import ViTDetector

CHECKPOINT_FORMAT = "evit-detector-checkpoint"
CHECKPOINT_VERSION = 1

PathLike = Union[str, os.PathLike]

#: Wrappers other training codebases put around a ViT's state dict.
_PREFIXES = ("module.", "model.", "backbone.", "encoder.", "vit.", "visual.trunk.", "_orig_mod.")
#: Classification-only parts of timm ViT/DeiT checkpoints; a detector has no use for them.
_DROPPED = ("head.", "head_dist.", "fc_norm.", "pre_logits.", "cls_token", "dist_token", "reg_token",
            "attn_pool.")


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable or does not fit the model."""


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside DistributedDataParallel / torch.compile wrappers."""
    while hasattr(model, "module") and isinstance(model.module, nn.Module):
        model = model.module
    return getattr(model, "_orig_mod", model)


def save_checkpoint(model: nn.Module, path: PathLike, **meta: Any) -> Path:
    """Write the model's weights and architecture (plus ``meta``: optimizer state, step...)."""
    net = unwrap(model)
    if not isinstance(net, ViTDetector):
        raise TypeError(f"save_checkpoint expects a ViTDetector, got {type(net).__name__}")
    config = net.config_from_modules()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "config": config,
           "model": net.state_dict()}
    doc.update(meta)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(doc, tmp)
    os.replace(tmp, path)  # never leave a half-written checkpoint behind a crash
    return path


def load_checkpoint(path: PathLike, map_location: Union[str, torch.device] = "cpu") -> Dict[str, Any]:
    """The raw checkpoint dict written by :func:`save_checkpoint` (validated)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        doc = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:  # torch raises many types for corrupt files
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path} is not an evit detector checkpoint (no format {CHECKPOINT_FORMAT!r}); "
            "to start from timm ViT/DeiT weights use load_timm_backbone()")
    return doc


def load_model(path: PathLike, map_location: Union[str, torch.device] = "cpu") -> ViTDetector:
    """Rebuild the detector stored in ``path`` (architecture from the file) in eval mode."""
    doc = load_checkpoint(path, map_location)
    model = ViTDetector(doc["config"])
    model.load_state_dict(doc["model"])
    return model.eval()


def read_weights_file(path: PathLike) -> Dict[str, torch.Tensor]:
    """A state dict from a ``.pth``/``.pt``/``.bin`` (torch) or ``.safetensors`` file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        return load_file(str(path))
    try:
        doc = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise CheckpointError(f"cannot read weights file {path}: {exc}") from exc
    for key in ("model_ema", "state_dict_ema", "model", "state_dict", "module"):
        if isinstance(doc, dict) and isinstance(doc.get(key), dict):
            doc = doc[key]
            break
    if isinstance(doc, nn.Module):
        doc = doc.state_dict()
    if not isinstance(doc, dict) or not any(isinstance(v, torch.Tensor) for v in doc.values()):
        raise CheckpointError(f"{path} holds no state dict of tensors")
    return doc


def vit_state_for_backbone(state: Mapping[str, torch.Tensor], backbone: nn.Module) -> Dict[str, torch.Tensor]:
    """Fit a timm ViT/DeiT state dict to ``backbone``: strip wrapper prefixes, drop the
    classifier and class/distillation tokens, resample patch embedding and position
    embedding (prefix-token rows removed) to the backbone's patch and grid size."""
    state = dict(state)
    changed = True
    while changed:  # prefixes can nest (module.model.blocks...)
        changed = False
        for prefix in _PREFIXES:
            if state and all(k.startswith(prefix) for k in state):
                state = {k[len(prefix):]: v for k, v in state.items()}
                changed = True
    out: Dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.startswith(_DROPPED):
            continue
        if key == "patch_embed.proj.weight":
            target = backbone.patch_embed.proj.weight
            if value.dim() < 4:  # ancient linear patchify
                value = value.reshape(target.shape[0], -1, *target.shape[-2:])
            if value.shape[-2:] != target.shape[-2:]:
                value = resample_patch_embed(value, list(target.shape[-2:]))
        elif key == "pos_embed":
            value = _resample_pos_embed(value, backbone)
        out[key] = value
    return out


def _resample_pos_embed(pos_embed: torch.Tensor, backbone: nn.Module) -> torch.Tensor:
    grid = list(backbone.patch_embed.grid_size)
    n = pos_embed.shape[1]
    side = int(math.isqrt(n))
    prefix = 0
    while side * side != n - prefix and prefix < 8:  # cls / dist / register tokens come first
        prefix += 1
        side = int(math.isqrt(n - prefix))
    if side * side != n - prefix:
        raise CheckpointError(f"pos_embed with {n} positions is not a square grid plus prefix tokens")
    patches = pos_embed[:, prefix:]
    if [side, side] == grid:
        return patches
    return resample_abs_pos_embed(patches, new_size=grid, old_size=[side, side], num_prefix_tokens=0)


def load_timm_backbone(model: ViTDetector, path: PathLike, strict: bool = True) -> Dict[str, List[str]]:
    """Load a timm ViT/DeiT checkpoint FILE from disk into ``model.backbone``.

    Any size/patch/resolution works as long as embed dim, depth and heads match the
    backbone; mismatching shapes raise :class:`CheckpointError` naming the tensor. Returns
    ``{"missing": [...], "unexpected": [...]}``; with ``strict`` any missing backbone weight
    is an error too.
    """
    state = vit_state_for_backbone(read_weights_file(path), model.backbone)
    own = model.backbone.state_dict()
    bad: List[Tuple[str, tuple, tuple]] = [(k, tuple(v.shape), tuple(own[k].shape))
                                           for k, v in state.items() if k in own and v.shape != own[k].shape]
    if bad:
        desc = "; ".join(f"{k} {a} vs model {b}" for k, a, b in bad[:5])
        raise CheckpointError(f"{path} does not fit backbone (embed_dim/depth/heads differ?): {desc}")
    result = model.backbone.load_state_dict(state, strict=False)
    report = {"missing": list(result.missing_keys), "unexpected": list(result.unexpected_keys)}
    if strict and (report["missing"] or report["unexpected"]):
        raise CheckpointError(f"{path}: backbone weights missing {report['missing'][:8]}, "
                              f"unexpected {report['unexpected'][:8]}")
    return report
