"""Weight selection: initialise a smaller ViT from a larger one, without data.

After "Initializing Models with Larger Ones" (Xu et al., ICLR 2024): the student takes the
teacher's first ``depth`` blocks, and from every teacher tensor the elements at a subset of
indices along each dimension that is smaller in the student. The subsets are *consistent*:
one index set per role (the residual stream, each block's MLP width, the dense head's
width), so a channel the student keeps means the same thing in every layer that reads or
writes it. Attention keeps whole heads (the student's head width must equal the teacher's),
chosen by the L2 norm of their query/key/value/projection weights; the other roles take
evenly spaced indices, as the paper does.

It is how a data-free run starts from the teacher's knowledge rather than from noise: no
image is looked at, only weights.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn


def _evenly_spaced(total: int, keep: int) -> torch.Tensor:
    if keep > total:
        raise ValueError(f"cannot select {keep} of {total} channels")
    return torch.linspace(0, total - 1, keep).round().long()


def _heads_by_norm(attn: nn.Module, keep: int) -> List[int]:
    """Indices of the ``keep`` heads of a timm Attention with the largest weight norm, sorted."""
    heads = int(attn.num_heads)
    head_dim = attn.qkv.weight.shape[0] // (3 * heads)
    qkv = attn.qkv.weight.detach().reshape(3, heads, head_dim, -1)
    proj = attn.proj.weight.detach().reshape(attn.proj.weight.shape[0], heads, head_dim)
    score = qkv.pow(2).sum((0, 2, 3)) + proj.pow(2).sum((0, 2))
    return sorted(score.topk(keep).indices.tolist())


def qkv_rows(attn_channels: torch.Tensor, attn_width: int) -> torch.Tensor:
    """Rows of a fused ``qkv`` projection (q, k, v stacked, ``attn_width`` each) that produce the
    attention channels ``attn_channels``."""
    return torch.cat([part * attn_width + attn_channels for part in range(3)])


def select_weights(teacher: nn.Module, student: nn.Module,
                   heads: Optional[Sequence[Sequence[int]]] = None) -> Dict[str, torch.Tensor]:
    """Overwrite ``student``'s weights with a consistent selection of ``teacher``'s.

    Both have a timm ViT ``.backbone`` (detectors: :class:`~evit_training.models.ViTDetector`;
    the digits classifiers) with the same patch size, input size, classes and attention head
    width, and the same kind of task head; the student may have
    fewer blocks, a narrower residual stream, fewer heads, a narrower MLP and head.
    ``heads`` (per student block, the teacher heads to keep) overrides the choice by weight norm.
    Returns the teacher indices kept per role: ``"residual"`` (the residual-stream channels,
    which also say where the student's tokens sit in the teacher's), ``"attn<i>"`` (block i's
    attention channels, whole heads), ``"mlp<i>"``, ``"head"``.
    Raises ``ValueError`` naming the first shape that cannot be selected.
    """
    t_vit, s_vit = teacher.backbone, student.backbone
    t_blocks, s_blocks = list(t_vit.blocks), list(s_vit.blocks)
    if len(s_blocks) > len(t_blocks):
        raise ValueError(f"student has {len(s_blocks)} blocks, more than the teacher's {len(t_blocks)}")
    if t_vit.patch_embed.proj.weight.shape[1:] != s_vit.patch_embed.proj.weight.shape[1:]:
        raise ValueError("teacher and student patch embeddings differ in patch size or channels")
    t_state, s_state = teacher.state_dict(), student.state_dict()
    index_sets: Dict[Tuple[str, int, int], torch.Tensor] = {}

    def shared(role: str, total: int, keep: int) -> torch.Tensor:
        return index_sets.setdefault((role, total, keep), _evenly_spaced(total, keep))

    residual = shared("residual", t_vit.embed_dim, s_vit.embed_dim)
    selected: Dict[str, torch.Tensor] = {}

    def take(key: str, per_dim: List[torch.Tensor]) -> None:
        value = t_state[key]
        for dim, index in enumerate(per_dim):
            if index is not None:
                value = value.index_select(dim, index)
        if value.shape != s_state[key].shape:
            raise ValueError(f"{key}: selected {tuple(value.shape)} from the teacher's {tuple(t_state[key].shape)}, "
                             f"student needs {tuple(s_state[key].shape)}")
        selected[key] = value

    for i, (t_block, s_block) in enumerate(zip(t_blocks, s_blocks)):
        t_heads, s_heads = int(t_block.attn.num_heads), int(s_block.attn.num_heads)
        head_dim = t_block.attn.qkv.weight.shape[0] // (3 * t_heads)
        if s_block.attn.qkv.weight.shape[0] // (3 * s_heads) != head_dim:
            raise ValueError(f"block {i}: weight selection keeps whole heads; head width {head_dim} (teacher) vs "
                             f"{s_block.attn.qkv.weight.shape[0] // (3 * s_heads)} (student)")
        kept_heads = list(heads[i]) if heads is not None else _heads_by_norm(t_block.attn, s_heads)
        if len(kept_heads) != s_heads or not all(0 <= h < t_heads for h in kept_heads):
            raise ValueError(f"block {i}: heads {kept_heads} are not {s_heads} of the teacher's {t_heads}")
        attn_dims = torch.tensor([h * head_dim + j for h in kept_heads for j in range(head_dim)])
        index_sets[(f"attn{i}", t_heads * head_dim, s_heads * head_dim)] = attn_dims
        rows = qkv_rows(attn_dims, t_heads * head_dim)
        hidden = shared(f"mlp{i}", t_block.mlp.fc1.out_features, s_block.mlp.fc1.out_features)
        prefix = f"backbone.blocks.{i}."
        plan = {
            "norm1.weight": [residual], "norm1.bias": [residual],
            "attn.qkv.weight": [rows, residual], "attn.qkv.bias": [rows],
            "attn.proj.weight": [residual, attn_dims], "attn.proj.bias": [residual],
            "norm2.weight": [residual], "norm2.bias": [residual],
            "mlp.fc1.weight": [hidden, residual], "mlp.fc1.bias": [hidden],
            "mlp.fc2.weight": [residual, hidden], "mlp.fc2.bias": [residual],
        }
        for name, per_dim in plan.items():
            if prefix + name in s_state:
                take(prefix + name, per_dim)
        for name in s_state:   # a block part the plan does not know (layer scale, q/k norm): refuse, not guess
            if name.startswith(prefix) and name not in selected:
                raise ValueError(f"{name}: weight selection does not know this block parameter")

    for key in s_state:
        if key in selected or key.startswith("backbone.blocks."):
            continue
        if key not in t_state:
            raise ValueError(f"{key} is in the student but not in the teacher")
        t_value, s_value = t_state[key], s_state[key]
        if key.startswith("backbone."):
            # pos_embed (1, N, D), patch_embed (D, C, p, p), final norm (D): the residual axis.
            per_dim = [residual if t == t_vit.embed_dim and s == s_vit.embed_dim and t != s else None
                       for t, s in zip(t_value.shape, s_value.shape)]
        else:
            # The task head: it reads the residual stream (a dim-1 axis of the embedding width),
            # its own hidden width is one shared role.
            per_dim = []
            for dim, (t, s) in enumerate(zip(t_value.shape, s_value.shape)):
                if t == s:
                    per_dim.append(None)
                elif dim == 1 and (t, s) == (t_vit.embed_dim, s_vit.embed_dim):
                    per_dim.append(residual)
                else:
                    per_dim.append(shared("head", t, s))
        take(key, per_dim)
    student.load_state_dict(selected)
    return {role: index for (role, _, _), index in index_sets.items()}
