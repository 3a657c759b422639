"""Compensated weight selection: refit the layers that lost inputs, in closed form.

:func:`~evit_training.models.weight_selection.select_weights` cuts a student out of a
teacher: every layer keeps a subset of its inputs and outputs. A layer that lost inputs then
computes ``W[:, kept] x[kept]``: what the dropped inputs contributed is gone, and after a
third of every layer is cut the student detects nothing (mAP@0.5 0.004 for ``student_tiny``
from the benchmark's teacher). But the dropped inputs are not independent of the kept ones.
With the teacher's layer-input moments (:mod:`~evit_training.models.layer_moments`, carried
by the checkpoint), the best linear prediction ``x ~= A x[kept] + c`` folds into the layer:
``W' = W A``, ``b' = b + W c`` - a least-squares reconstruction of the teacher's output per
layer (the idea of channel-pruning reconstruction, He et al. 2017, with the data replaced by
stored second moments). The same holds for a dropped block: the layer reading the final norm
is refit to predict ``norm(x_L)`` from ``norm(x_d)``. No image and no gradient step are
involved; the same student starts at mAP@0.5 0.21 (the teacher: 0.35).

Layers refit in a :class:`~evit_training.models.ViTDetector`: per kept block ``attn.qkv``,
``attn.proj``, ``mlp.fc1``, ``mlp.fc2``; in the dense head the convolution reading the
backbone and every convolution reading the narrowed hidden width. A constant term goes into
the layer's bias, or, for a layer without one, into the running mean of the BatchNorm after
it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional

import torch
from torch import nn

from .layer_moments import FINAL_NORM_READER, Moments
from .weight_selection import qkv_rows, select_weights


@dataclass
class _Reader:
    """One student layer to refit: the teacher input channels it reads and output channels it writes."""

    name: str
    keep_in: torch.Tensor
    keep_out: Optional[torch.Tensor]   # None: all of the teacher's outputs
    moments: str                       # the layer_moments entry describing its input


def compensated_selection(teacher: nn.Module, student: nn.Module, moments: Mapping[str, Moments],
                          ridge: float = 1e-3) -> Dict[str, torch.Tensor]:
    """:func:`select_weights` ``teacher`` into ``student``, then refit every layer that lost inputs.

    ``moments``: the teacher's layer-input moments (``layer_moments.from_checkpoint`` or
    ``record_layer_moments``). ``ridge`` regularises each solve (times the mean variance of
    the kept inputs). Returns :func:`select_weights`'s kept index sets. Raises ``ValueError``
    naming the layer when the moments do not fit the teacher.
    """
    if not 0.0 <= ridge < 1.0:
        raise ValueError(f"ridge must be in [0, 1), got {ridge}")
    kept = select_weights(teacher, student)
    t_layers, s_layers = dict(teacher.named_modules()), dict(student.named_modules())
    for reader in _readers(t_layers, student, kept):
        entry = moments.get(reader.moments)
        t_layer = t_layers[reader.name]
        if entry is None:
            raise ValueError(f"layer moments have no entry {reader.moments!r} (for {reader.name}); "
                             "they were recorded on another architecture")
        if entry.mean.numel() != _in_channels(t_layer) and entry.cross is None:
            raise ValueError(f"layer moments of {reader.moments} hold {entry.mean.numel()} channels, "
                             f"the teacher's {reader.name} reads {_in_channels(t_layer)}")
        a, c = entry.regression(reader.keep_in, ridge)
        refit_layer(t_layer, s_layers[reader.name], a, c, reader.keep_out, _batchnorm_after(student, reader.name))
    return kept


def _readers(t_modules: Mapping[str, nn.Module], student: nn.Module,
             kept: Mapping[str, torch.Tensor]) -> List[_Reader]:
    """The layers of a weight-selected :class:`ViTDetector` whose inputs changed
    (``t_modules``: the teacher's modules by name)."""
    head = getattr(student, "head", None)
    if head is None or not hasattr(head, "neck") or "head" not in t_modules:
        raise ValueError(f"compensated selection refits ViT detectors (a dense .head with a .neck); "
                         f"got {type(student).__name__}")
    t_blocks = list(t_modules["backbone.blocks"])
    residual = kept["residual"]
    readers: List[_Reader] = []
    for i in range(len(student.backbone.blocks)):
        attn, hidden = kept[f"attn{i}"], kept[f"mlp{i}"]
        rows = qkv_rows(attn, t_blocks[i].attn.qkv.out_features // 3)
        prefix = f"backbone.blocks.{i}."
        readers += [_Reader(prefix + "attn.qkv", residual, rows, prefix + "attn.qkv"),
                    _Reader(prefix + "attn.proj", attn, residual, prefix + "attn.proj"),
                    _Reader(prefix + "mlp.fc1", residual, hidden, prefix + "mlp.fc1"),
                    _Reader(prefix + "mlp.fc2", hidden, residual, prefix + "mlp.fc2")]
    shallower = len(student.backbone.blocks) < len(t_blocks)
    head_width = kept.get("head")
    for name, layer in student.named_modules():
        if not name.startswith("head.") or not isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d)):
            continue
        t_layer = t_modules[name]
        keep_out = head_width if layer.out_channels != t_layer.out_channels else None
        if name == FINAL_NORM_READER:
            readers.append(_Reader(name, residual, keep_out,
                                   f"depth{len(student.backbone.blocks)}" if shallower else name))
        elif layer.in_channels != t_layer.in_channels:
            readers.append(_Reader(name, head_width, keep_out, name))
    # A layer that reads all of its own input is left an exact copy.
    return [r for r in readers
            if r.moments != r.name or len(r.keep_in) != _in_channels(t_modules[r.name])]


def _in_channels(layer: nn.Module) -> int:
    return int(layer.in_features if isinstance(layer, nn.Linear) else layer.in_channels)


def _batchnorm_after(model: nn.Module, name: str) -> Optional[nn.BatchNorm2d]:
    """The BatchNorm right after layer ``name`` in its ``nn.Sequential``, if any."""
    parent_name, _, index = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    if isinstance(parent, nn.Sequential) and index.isdigit() and int(index) + 1 < len(parent):
        follower = parent[int(index) + 1]
        if isinstance(follower, nn.BatchNorm2d):
            return follower
    return None


@torch.no_grad()
def refit_layer(t_layer: nn.Module, s_layer: nn.Module, a: torch.Tensor, c: torch.Tensor,
                keep_out: Optional[torch.Tensor], batchnorm: Optional[nn.BatchNorm2d]) -> None:
    """Set ``s_layer`` (Linear, Conv2d or ConvTranspose2d) to ``t_layer`` reading ``A x[kept] + c``
    instead of its full input ``x``: ``W' = W A`` restricted to the outputs ``keep_out`` (None:
    all), and ``W c`` added to the bias, or, for a layer without one, taken off the running mean
    of ``batchnorm``, the BatchNorm that follows it. Exact where the dropped inputs are affine
    in the kept ones (for convolutions, away from the zero-padded border)."""
    w = t_layer.weight.double()
    if isinstance(t_layer, nn.ConvTranspose2d):    # (in, out, kh, kw)
        weight = torch.einsum("iokl,is->sokl", w, a)
        # Each output pixel of a strided transposed convolution sees 1/(sh*sw) of the taps.
        const = torch.einsum("iokl,i->o", w, c) / (t_layer.stride[0] * t_layer.stride[1])
        out_dim = 1
    elif isinstance(t_layer, nn.Conv2d):           # (out, in, kh, kw); interior pixels see every tap
        weight = torch.einsum("oikl,is->oskl", w, a)
        const = torch.einsum("oikl,i->o", w, c)
        out_dim = 0
    elif isinstance(t_layer, nn.Linear):
        weight, const, out_dim = w @ a, w @ c, 0
    else:
        raise TypeError(f"cannot refit a {type(t_layer).__name__}")
    if keep_out is not None:
        weight, const = weight.index_select(out_dim, keep_out), const[keep_out]
    if tuple(weight.shape) != tuple(s_layer.weight.shape):
        raise ValueError(f"refit weight {tuple(weight.shape)} does not fit the student's {tuple(s_layer.weight.shape)}")
    s_layer.weight.copy_(weight.to(s_layer.weight))
    if t_layer.bias is not None:
        bias = t_layer.bias.double() if keep_out is None else t_layer.bias.double()[keep_out]
        s_layer.bias.copy_((bias + const).to(s_layer.bias))
    elif batchnorm is not None:
        batchnorm.running_mean.sub_(const.to(batchnorm.running_mean))
    elif const.abs().max() > 0:
        raise ValueError("a refit layer without bias needs a BatchNorm after it for its constant term")
