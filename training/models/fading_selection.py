"""Fading selection: weight selection done gradually, while the model keeps training.

:func:`~evit_training.models.weight_selection.select_weights` cuts a student out of the
teacher in one go: a third of every layer disappears, and the student starts near zero mAP
and must be trained back. Without real images that restoration is the hard part: a student
that starts as the teacher itself keeps its real-image mAP through data-free KD, while one
that starts from the cut does not get it back (docs/data_free_kd.md). Here the cut is a
path instead: a teacher-shaped copy in which every part the selection would drop (trailing
blocks, attention heads, MLP units, head channels, residual-stream channels) is scaled by a
factor ``alpha``, moved from 1 (the teacher, exactly) to 0 while the copy trains. At
``alpha = 0`` the copy computes exactly the selected student's function, and
:meth:`FadingSelection.extract` copies its weights into the student.

Residual channels cannot simply be scaled, since every LayerNorm averages over them; each
LayerNorm is replaced by one whose mean and variance weight the dropped channels by
``alpha`` (a plain LayerNorm at 1, one over the kept channels only at 0) and whose output
on them is scaled by ``alpha``, so nothing reads them once they are gone.
"""
from __future__ import annotations

import copy
import math
from typing import Callable, List, Tuple

import torch
from torch import nn

from .head import CenterNetHead
from .weight_selection import _heads_by_norm, select_weights


class _Fader:
    """The shared fading factor (1: teacher, 0: student)."""

    def __init__(self) -> None:
        self.alpha = 1.0


def _weights(keep: torch.Tensor, fader: _Fader) -> torch.Tensor:
    """Per-channel factors: 1 where kept, ``alpha`` where dropped."""
    return keep + fader.alpha * (1.0 - keep)


class _FadingLayerNorm(nn.LayerNorm):
    """LayerNorm whose statistics and output weight the dropped channels by ``alpha``."""

    def __init__(self, norm: nn.LayerNorm, keep: torch.Tensor, fader: _Fader) -> None:
        super().__init__(norm.normalized_shape, eps=norm.eps, elementwise_affine=True,
                         device=norm.weight.device, dtype=norm.weight.dtype)
        self.load_state_dict(norm.state_dict())
        self.register_buffer("keep", keep.to(norm.weight), persistent=False)
        self.fader = fader

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fader.alpha >= 1.0:
            return super().forward(x)
        w = _weights(self.keep, self.fader)
        mean = (x * w).sum(-1, keepdim=True) / w.sum()
        var = ((x - mean).pow(2) * w).sum(-1, keepdim=True) / w.sum()
        return ((x - mean) * torch.rsqrt(var + self.eps) * self.weight + self.bias) * w


class FadingSelection:
    """A teacher-shaped copy that fades into ``student``'s architecture (see module docstring).

    ``teacher`` and ``student`` as for :func:`select_weights` (the student is only a template
    of the shape; its weights are overwritten by :meth:`extract`). ``model`` is the copy to
    train; set :attr:`alpha` as training goes (:func:`cosine_fade` gives a cosine path).
    """

    def __init__(self, teacher: nn.Module, student: nn.Module) -> None:
        self.student = student
        self.fader = _Fader()
        self.model = copy.deepcopy(teacher).requires_grad_(True)   # a frozen teacher gives a trainable copy
        t_blocks = list(self.model.backbone.blocks)
        s_blocks = list(student.backbone.blocks)
        self.heads: List[List[int]] = [_heads_by_norm(t.attn, int(s.attn.num_heads))
                                       for t, s in zip(t_blocks, s_blocks)]
        roles = select_weights(self.model, copy.deepcopy(student), heads=self.heads)   # index sets only
        device = next(self.model.parameters()).device

        def keep_mask(total: int, kept: torch.Tensor) -> torch.Tensor:
            mask = torch.zeros(total, device=device)
            mask[kept.to(device)] = 1.0
            return mask

        width = self.model.backbone.embed_dim
        residual = keep_mask(width, roles["residual"])
        for name, module in list(self.model.backbone.named_modules()):
            if isinstance(module, nn.LayerNorm) and module.normalized_shape == (width,):
                parent_name, _, child = name.rpartition(".")
                parent = self.model.backbone.get_submodule(parent_name) if parent_name else self.model.backbone
                setattr(parent, child, _FadingLayerNorm(module, residual, self.fader))
        for i, block in enumerate(t_blocks):
            if i >= len(s_blocks):   # a trailing block the student lacks: its residual update fades
                block.register_forward_hook(self._fade_update)
                continue
            heads, head_dim = int(block.attn.num_heads), block.attn.proj.in_features // int(block.attn.num_heads)
            attn = torch.zeros(heads * head_dim, device=device)
            for h in self.heads[i]:
                attn[h * head_dim:(h + 1) * head_dim] = 1.0
            self._fade_input(block.attn.proj, attn, channel_dim=-1)
            self._fade_input(block.mlp.fc2, keep_mask(block.mlp.fc2.in_features, roles[f"mlp{i}"]), channel_dim=-1)
        head = getattr(self.model, "head", None)
        if isinstance(head, CenterNetHead) and "head" in roles:   # detectors: the dense head's hidden width
            channels = int(head.heatmap[0].in_channels)
            mask = keep_mask(channels, roles["head"])
            for layer in list(head.neck)[1:] + [m for branch in (head.heatmap, head.size, head.offset) for m in branch]:
                if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d)) and layer.in_channels == channels:
                    self._fade_input(layer, mask, channel_dim=1)

    @property
    def alpha(self) -> float:
        """How much of the dropped parts is left: 1 = the teacher, 0 = the student's function."""
        return self.fader.alpha

    @alpha.setter
    def alpha(self, value: float) -> None:
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {value}")
        self.fader.alpha = float(value)

    def _fade_update(self, _module: nn.Module, inputs: Tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
        return inputs[0] + self.fader.alpha * (output - inputs[0])

    def _fade_input(self, layer: nn.Module, keep: torch.Tensor, channel_dim: int) -> None:
        shape = [1] * (3 if channel_dim == -1 else 4)
        shape[channel_dim] = -1
        keep = keep.view(shape)

        def hook(_module: nn.Module, inputs: Tuple[torch.Tensor, ...]):
            if self.fader.alpha >= 1.0:
                return None
            return (inputs[0] * _weights(keep.to(inputs[0]), self.fader),) + tuple(inputs[1:])
        layer.register_forward_pre_hook(hook)

    def extract(self) -> nn.Module:
        """Copy the faded model's kept weights into the student and return it (needs ``alpha == 0``
        for the student to compute what the faded model computed)."""
        if self.fader.alpha != 0.0:
            raise ValueError(f"extract() needs alpha == 0 (the faded model is the student's function), "
                             f"got {self.alpha}")
        select_weights(self.model, self.student, heads=self.heads)
        self.student.train(self.model.training)
        return self.student


def cosine_fade(total_steps: int) -> Callable[[int], float]:
    """``alpha`` for step ``s``: 1 at 0, half a cosine down to 0 at ``total_steps``, 0 after."""
    if total_steps < 1:
        raise ValueError(f"a fade needs at least one step, got {total_steps}")
    return lambda step: 0.5 * (1.0 + math.cos(math.pi * min(1.0, step / total_steps)))
