"""Token statistics: a ViT's stand-in for BatchNorm running statistics.

A CNN carries, in every BatchNorm layer, the mean and variance of that layer's input over
its training data, and data-free methods (DeepInversion) synthesise images by matching
them. A ViT normalises with LayerNorm, which keeps nothing. So the trainer records the same
kind of summary once, when training ends: for every transformer block, the per-channel mean
and standard deviation of the residual stream entering ``norm1``, over a sample of the
training images, and stores it in the checkpoint under ``token_stats``. Data-free KD then
matches its synthetic images to these targets: the teacher file travels with a prior of its
data, and no image.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

#: Checkpoint key under which the statistics travel with a model.
CHECKPOINT_KEY = "token_stats"

Stats = List[Tuple[torch.Tensor, torch.Tensor]]


def _blocks(model: nn.Module) -> Sequence[nn.Module]:
    backbone = getattr(model, "backbone", None)
    if backbone is None or not hasattr(backbone, "blocks"):
        raise ValueError(f"{type(model).__name__} has no timm ViT `.backbone` with `.blocks`")
    return list(backbone.blocks)


@contextmanager
def capture_norm_inputs(model: nn.Module) -> Iterator[List[torch.Tensor]]:
    """Collect, during the ``with`` body, the input of every block's ``norm1`` (B, N, D),
    one tensor per block per forward pass, in a list the caller reads and clears."""
    captured: List[torch.Tensor] = []
    handles = [block.norm1.register_forward_pre_hook(lambda _m, inputs: captured.append(inputs[0]))
               for block in _blocks(model)]
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()


def token_statistics(norm_inputs: Sequence[torch.Tensor]) -> Stats:
    """Per block: ``(mean, std)`` per channel over batch and tokens (differentiable)."""
    stats = []
    for x in norm_inputs:
        flat = x.reshape(-1, x.shape[-1]).float()
        stats.append((flat.mean(0), flat.var(0, unbiased=False).add(1e-6).sqrt()))
    return stats


@torch.no_grad()
def record_token_statistics(model: nn.Module, images: Iterable[torch.Tensor]) -> Tuple[Stats, int]:
    """Stream ``images`` (batches ``(B, C, H, W)`` in the model's input range) through ``model``
    and return ``(stats, image_count)``: per block ``(mean, std)`` per channel over all
    images and tokens, accumulated in float64 so thousands of images sum exactly enough."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    sums: List[torch.Tensor] = []
    squares: List[torch.Tensor] = []
    tokens = 0
    count = 0
    try:
        with capture_norm_inputs(model) as captured:
            for batch in images:
                captured.clear()
                model(batch.to(device))
                for i, x in enumerate(captured):
                    flat = x.reshape(-1, x.shape[-1]).double()
                    if i == len(sums):
                        sums.append(torch.zeros(flat.shape[1], dtype=torch.float64, device=flat.device))
                        squares.append(torch.zeros_like(sums[-1]))
                    sums[i] += flat.sum(0)
                    squares[i] += (flat * flat).sum(0)
                tokens += captured[0].shape[0] * captured[0].shape[1] if captured else 0
                count += int(batch.shape[0])
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError("no images to record token statistics from")
    stats = []
    for total, square in zip(sums, squares):
        mean = total / tokens
        var = (square / tokens - mean * mean).clamp(min=0.0)
        stats.append((mean.float().cpu(), var.add(1e-6).sqrt().float().cpu()))
    return stats, count


def dataset_batches(dataset: Any, max_images: int, batch_size: int = 32) -> Iterator[torch.Tensor]:
    """The first ``max_images`` images of a dataset of ``(image, target)`` items, batched."""
    n = min(int(max_images), len(dataset))
    for start in range(0, n, batch_size):
        yield torch.stack([dataset[i][0] for i in range(start, min(n, start + batch_size))])


def to_checkpoint(stats: Stats, image_count: int) -> Dict[str, Any]:
    """The ``token_stats`` checkpoint entry."""
    return {"images": int(image_count), "mean": [m.clone() for m, _ in stats], "std": [s.clone() for _, s in stats]}


def from_checkpoint(doc: Mapping[str, Any]) -> Optional[Stats]:
    """Statistics stored in a checkpoint dict, or ``None`` when it has none."""
    entry = doc.get(CHECKPOINT_KEY) if isinstance(doc, Mapping) else None
    if not entry:
        return None
    return [(torch.as_tensor(m).float(), torch.as_tensor(s).float()) for m, s in zip(entry["mean"], entry["std"])]


def check_fits(stats: Stats, model: nn.Module) -> None:
    """Raise ``ValueError`` when ``stats`` were not recorded on a model of this block layout."""
    blocks = _blocks(model)
    if len(stats) != len(blocks):
        raise ValueError(f"token statistics hold {len(stats)} blocks, the teacher has {len(blocks)}")
    for i, ((mean, std), block) in enumerate(zip(stats, blocks)):
        width = block.norm1.normalized_shape[0]
        if mean.numel() != width or std.numel() != width:
            raise ValueError(f"token statistics of block {i} have {mean.numel()} channels, the teacher's "
                             f"block has {width}")
