"""Structured pruning of a timm ViT: whole attention heads and MLP width, with Torch-Pruning.

Only the inner widths of each block shrink (heads of ``attn.qkv`` -> ``attn.proj`` and the
hidden units of ``mlp.fc1`` -> ``mlp.fc2``); the embedding width, patch embedding and the
detection head stay as they are, so the pruned backbone drops into the same detector.

timm's ``Attention.forward`` reshapes with ``self.num_heads``/``self.head_dim`` and
``self.attn_dim``, so after pruning heads we only update those attributes (no forward patch).
The resulting per-block widths (:func:`pruned_architecture`, the ``blocks`` list of
``evit_training.models`` configs) go into the detector's config through
``ViTDetector.config_from_modules()``, so a saved checkpoint reloads without the pruning run;
:func:`apply_pruned_architecture` does the same for a bare timm ViT.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import torch
import torch.nn as nn
import torch_pruning as tp

log = logging.getLogger(__name__)

IMPORTANCE_NAMES = ("magnitude", "taylor", "group_norm")


@dataclass
class PruneResult:
    """What a pruning run did, for logs and the report."""

    arch: List[Dict[str, int]]
    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    steps: int
    history: List[Dict[str, float]] = field(default_factory=list)

    @property
    def params_ratio(self) -> float:
        return self.params_after / max(self.params_before, 1)

    @property
    def macs_ratio(self) -> float:
        return self.macs_after / max(self.macs_before, 1)


def make_importance(name: str) -> tp.importance.Importance:
    """The Torch-Pruning importance criterion named ``name`` (see :data:`IMPORTANCE_NAMES`)."""
    if name == "magnitude":
        return tp.importance.MagnitudeImportance(p=2, group_reduction="mean")
    if name == "taylor":
        return tp.importance.TaylorImportance(group_reduction="mean")
    if name == "group_norm":
        return tp.importance.GroupNormImportance(p=2)
    raise ValueError(f"unknown pruning importance {name!r}; choose one of {IMPORTANCE_NAMES}")


def vit_backbone(model: nn.Module) -> nn.Module:
    """The timm VisionTransformer inside a detector (``.backbone``), or the model itself."""
    backbone = getattr(model, "backbone", model)
    if not hasattr(backbone, "blocks"):
        raise TypeError(f"{type(model).__name__} has no timm ViT '.blocks' to prune")
    return backbone


def pruned_architecture(model: nn.Module) -> List[Dict[str, int]]:
    """Per-block ``{"num_heads", "head_dim", "mlp_hidden"}`` of ``model``'s ViT."""
    return [{"num_heads": int(b.attn.num_heads), "head_dim": int(b.attn.head_dim),
             "mlp_hidden": int(b.mlp.fc1.out_features)} for b in vit_backbone(model).blocks]


def _resize_linear(linear: nn.Linear, in_features: int, out_features: int) -> nn.Linear:
    if linear.in_features == in_features and linear.out_features == out_features:
        return linear
    return nn.Linear(in_features, out_features, bias=linear.bias is not None,
                     device=linear.weight.device, dtype=linear.weight.dtype)


def _set_attention_heads(attn: nn.Module, num_heads: int, head_dim: int) -> None:
    # timm's Attention reads these in forward; scale depends on head_dim only.
    attn.num_heads = num_heads
    attn.head_dim = head_dim
    attn.attn_dim = num_heads * head_dim
    attn.scale = head_dim ** -0.5


def apply_pruned_architecture(model: nn.Module, blocks_spec: Sequence[Mapping[str, int]]) -> nn.Module:
    """Reshape a freshly built timm ViT's blocks to ``blocks_spec`` so a pruned state dict loads.

    Weights of resized layers are re-initialised; load the checkpoint afterwards. (Detectors
    from ``evit_training.models`` do this themselves from ``config["blocks"]``.)
    """
    blocks = vit_backbone(model).blocks
    if len(blocks_spec) != len(blocks):
        raise ValueError(f"pruned architecture lists {len(blocks_spec)} blocks, the model has {len(blocks)}")
    for block, spec in zip(blocks, blocks_spec):
        attn, mlp = block.attn, block.mlp
        if getattr(attn, "gate", None) is not None or not isinstance(attn.q_norm, nn.Identity):
            raise NotImplementedError("pruned reload supports plain timm Attention only")
        heads, head_dim, hidden = int(spec["num_heads"]), int(spec["head_dim"]), int(spec["mlp_hidden"])
        width = heads * head_dim
        attn.qkv = _resize_linear(attn.qkv, attn.qkv.in_features, 3 * width)
        attn.proj = _resize_linear(attn.proj, width, attn.proj.out_features)
        _set_attention_heads(attn, heads, head_dim)
        mlp.fc1 = _resize_linear(mlp.fc1, mlp.fc1.in_features, hidden)
        mlp.fc2 = _resize_linear(mlp.fc2, hidden, mlp.fc2.out_features)
    return model


def _record_arch(model: nn.Module) -> None:
    # ViTDetector reads its widths back from the layers into config["blocks"].
    if hasattr(model, "config_from_modules"):
        model.config_from_modules()


def count_macs_params(model: nn.Module, example_inputs: torch.Tensor) -> "tuple[int, int]":
    """(MACs, params) of one forward pass, counted by Torch-Pruning."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        macs, params = tp.utils.count_ops_and_params(model, example_inputs)
    model.train(was_training)
    return int(macs), int(params)


def prune_vit(
    model: nn.Module,
    example_inputs: torch.Tensor,
    target_macs_ratio: Optional[float] = None,
    target_params_ratio: Optional[float] = None,
    importance: str = "magnitude",
    max_steps: int = 20,
    max_pruning_ratio: float = 0.9,
    max_head_ratio: float = 0.5,
    prune_heads: bool = True,
    round_to: Optional[int] = 8,
    prune_head: bool = True,
    loss_fn: Optional[Callable[[nn.Module], torch.Tensor]] = None,
    progress: bool = True,
) -> PruneResult:
    """Prune ``model``'s ViT in place, step by step, until MACs (or params) reach the target.

    ``target_*_ratio`` is what remains (0.5 = half the MACs). Each of up to ``max_steps``
    steps removes a further slice of every block's MLP width (up to ``max_pruning_ratio``)
    and whole attention heads (up to ``max_head_ratio`` of each block's heads; the least
    important heads of a block go first); the run stops at the first step that meets the
    target. ``loss_fn(model)`` is
    required for Taylor importance (gradients are taken on it before each step).

    With ``prune_head`` the hidden channels of a detector's dense head (see
    :func:`head_hidden_layers`) shrink in step with the MLP width, all to one common width so
    the head stays describable by a single ``head_channels``; its output convolutions keep
    their channels.
    """
    if (target_macs_ratio is None) == (target_params_ratio is None):
        raise ValueError("give exactly one of target_macs_ratio / target_params_ratio")
    target = target_macs_ratio if target_macs_ratio is not None else target_params_ratio
    if not 0.0 < float(target) < 1.0:
        raise ValueError(f"pruning target ratio must be in (0, 1), got {target}")
    if importance == "taylor" and loss_fn is None:
        raise ValueError("Taylor importance needs loss_fn(model) -> loss for gradients")

    backbone = vit_backbone(model)
    device = next(model.parameters()).device
    example_inputs = example_inputs.to(device)
    macs0, params0 = count_macs_params(model, example_inputs)

    blocks = list(backbone.blocks)
    init_heads = [int(b.attn.num_heads) for b in blocks]
    init_hidden = [int(b.mlp.fc1.out_features) for b in blocks]
    head_layers = head_hidden_layers(model) if prune_head else []
    init_head_width = [_out_channels(m) for m in head_layers]
    prunable = [b.mlp.fc1 for b in blocks] + ([b.attn.qkv for b in blocks] if prune_heads else []) + head_layers
    # The dependency graph spans the whole detector when its head is pruned too.
    root = model if head_layers else backbone
    # Everything else keeps its output width: the residual stream, patch embed, outputs.
    ignored = [m for m in root.modules()
               if isinstance(m, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)) and all(m is not p for p in prunable)]

    history: List[Dict[str, float]] = []
    macs, params = macs0, params0
    steps = 0
    bar = _progress(max_steps, progress)
    for steps in range(1, max_steps + 1):
        # A fresh local pruner per step, told exactly how much of each block to cut now:
        # Torch-Pruning's own iterative head schedule rounds up per step and would strip
        # one head from every block each step.
        ratio = max_pruning_ratio * steps / max_steps
        head_ratio = max_head_ratio * steps / max_steps
        width_plan: Dict[nn.Module, float] = {}
        head_plan: Dict[nn.Module, float] = {}
        for block, heads0, hidden0 in zip(blocks, init_heads, init_hidden):
            hidden = block.mlp.fc1.out_features
            want = max(_round_down(hidden0 * (1.0 - ratio), round_to), 1)
            if want < hidden:
                width_plan[block.mlp.fc1] = _fraction(hidden, want)
            if prune_heads:
                heads = int(block.attn.num_heads)
                want_heads = max(int(round(heads0 * (1.0 - head_ratio))), 1)
                if want_heads < heads:
                    # slightly under the exact fraction: Torch-Pruning takes ceil(ratio * heads)
                    frac = (heads - want_heads) / heads - 1e-6
                    head_plan[block.attn.qkv] = frac
                    width_plan[block.attn.qkv] = frac
        for layer, width0 in zip(head_layers, init_head_width):
            want = max(_round_down(width0 * (1.0 - ratio), round_to), 1)
            if want < _out_channels(layer):
                width_plan[layer] = _fraction(_out_channels(layer), want)
        if not width_plan:
            continue
        if importance == "taylor":
            model.zero_grad()
            loss_fn(model).backward()
            for param in model.parameters():  # layers the loss does not reach score zero
                if param.grad is None:
                    param.grad = torch.zeros_like(param)
        pruner = tp.pruner.BasePruner(
            root, example_inputs, importance=make_importance(importance),
            pruning_ratio=0.0, pruning_ratio_dict=width_plan, iterative_steps=1,
            ignored_layers=ignored + [m for m in prunable if m not in width_plan],
            num_heads={b.attn.qkv: int(b.attn.num_heads) for b in blocks} if prune_heads else {},
            prune_num_heads=prune_heads, prune_head_dims=False, head_pruning_ratio=0.0,
            head_pruning_ratio_dict=head_plan or None,
            # pos_embed/cls_token carry the embedding width, which is never pruned here.
            unwrapped_parameters=[(p, p.dim() - 1) for p in (getattr(backbone, "pos_embed", None),
                                                               getattr(backbone, "cls_token", None),
                                                               getattr(backbone, "reg_token", None))
                                  if isinstance(p, nn.Parameter)],
        )
        pruner.step()
        for block in blocks:
            attn = block.attn
            _set_attention_heads(attn, attn.qkv.out_features // (3 * attn.head_dim), attn.head_dim)
        model.zero_grad()
        macs, params = count_macs_params(model, example_inputs)
        history.append({"step": steps, "macs_ratio": macs / macs0, "params_ratio": params / params0})
        if bar is not None:
            bar.update(1)
            bar.set_postfix(macs=f"{macs / macs0:.2f}", params=f"{params / params0:.2f}")
        reached = (macs / macs0 if target_macs_ratio is not None else params / params0) <= target
        if reached:
            break
    if bar is not None:
        bar.close()
    achieved = macs / macs0 if target_macs_ratio is not None else params / params0
    if achieved > target:
        log.warning("pruning stopped at %.3f of the original (target %.3f): caps reached "
                    "(max_pruning_ratio=%s, max_head_ratio=%s)", achieved, target,
                    max_pruning_ratio, max_head_ratio)
    _record_arch(model)
    return PruneResult(arch=pruned_architecture(model), params_before=params0, params_after=params,
                       macs_before=macs0, macs_after=macs, steps=steps, history=history)


def head_hidden_layers(model: nn.Module) -> List[nn.Module]:
    """Convolutions inside ``model.head`` whose output channels are internal to the head.

    Every branch's last convolution produces the detector's outputs and is left alone; so
    is a model without a convolutional ``head``.
    """
    head = getattr(model, "head", None)
    if not isinstance(head, nn.Module) or not hasattr(model, "backbone"):
        return []
    convs = [m for m in head.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    outputs = []
    for name, branch in head.named_children():
        if name == "neck":
            continue
        branch_convs = [m for m in branch.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
        if branch_convs:
            outputs.append(branch_convs[-1])
    return [m for m in convs if all(m is not o for o in outputs)]


def _out_channels(layer: nn.Module) -> int:
    return int(layer.out_channels if hasattr(layer, "out_channels") else layer.out_features)


def _fraction(current: int, want: int) -> float:
    # A hair under the exact fraction so Torch-Pruning's int() keeps exactly ``want``.
    return (current - want) / current - 1e-9


def _round_down(value: float, multiple: Optional[int]) -> int:
    if not multiple or value < multiple:
        return int(value)
    return int(value // multiple) * multiple


def _progress(total: int, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="prune", unit="step")
