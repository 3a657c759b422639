"""A colour transform for procedural images, fitted to the teacher's token statistics.

Dead-leaves images (:mod:`evit_training.distill.image_priors`) draw their colours uniformly
from the RGB cube: saturated magentas and cyans that no aerial scene holds. The teacher's
checkpoint carries the mean/std of every block's tokens over its training images
(:mod:`evit_training.distill.token_statistics`); the first blocks' statistics depend mostly
on colour, so an affine colour map ``x -> A (x - 0.5) + 0.5 + b`` fitted by gradient
descent to make procedural images match those statistics recovers the training data's
palette (on the synthetic aerial teacher: greens, browns, sand and grey) without looking at
a single image. Twelve numbers, fitted once per run in about a hundred teacher steps.
"""
from __future__ import annotations

from typing import Callable, List, Tuple

import torch
from torch import nn
from tqdm.auto import tqdm


class ColourTransform(nn.Module):
    """``x -> clamp(A (x - 0.5) + 0.5 + b)`` per pixel, ``A`` (C, C) and ``b`` (C,); identity at start."""

    def __init__(self, channels: int = 3) -> None:
        super().__init__()
        self.matrix = nn.Parameter(torch.eye(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out = torch.einsum("ij,bjhw->bihw", self.matrix, images - 0.5) + 0.5 + self.bias.view(1, -1, 1, 1)
        return out.clamp(0.0, 1.0)


def fit_colour_transform(render: Callable[[int], torch.Tensor],
                         stats_loss: Callable[[torch.Tensor], torch.Tensor],
                         channels: int = 3, steps: int = 100, batch_size: int = 16,
                         lr: float = 0.02, progress: bool = False) -> Tuple[ColourTransform, List[float]]:
    """Fit a :class:`ColourTransform` so that ``stats_loss(transform(render(batch_size)))``
    is small; returns ``(transform, loss per step)``.

    ``render(n)`` draws ``n`` fresh procedural images in [0, 1]; ``stats_loss(images)`` is the
    distance of the teacher's token statistics on them to its stored targets (differentiable
    in the images). Fresh images every step, so the map fits the image family rather than
    one batch.
    """
    if steps < 1 or batch_size < 1:
        raise ValueError(f"fit_colour_transform needs steps >= 1 and batch_size >= 1, got {steps}, {batch_size}")
    transform = ColourTransform(channels)
    opt = torch.optim.Adam(transform.parameters(), lr=lr)
    losses = []
    for _ in tqdm(range(steps), desc="fit procedural palette", disable=not progress, leave=False):
        images = render(batch_size)
        loss = stats_loss(transform.to(images.device)(images))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return transform.requires_grad_(False).eval(), losses
