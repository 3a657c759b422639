"""Object layouts for data-free detection KD: where the generator should draw objects.

A generator rewarded only for confident teacher heatmaps fills its scenes with whatever the
teacher fires on most easily: on the synthetic aerial teacher, 26 objects per image (real
scenes hold about 9), persons too large and obstacles far too small. DIODE (Chawla et al.,
"Data-free Knowledge Distillation for Object Detection", WACV 2021) fixes the layout first:
boxes are sampled, and the image is optimised until the teacher detects exactly those boxes.
Here the boxes are sampled per generated image and

* drawn as per-class box masks (:func:`layout_masks`), an input of the generator, which
  therefore knows where each object goes and how large it is;
* encoded as CenterNet targets (``engine.losses.encode_targets``) for the teacher's own
  detection loss on the generated image, the generator's objective in place of "be confident
  somewhere".

The sampling uses generic priors only (no statistics of any dataset): a uniform number of
objects, uniform centres, log-uniform sides (scale invariance) and log-uniform aspect ratios,
uniform classes (class balance by construction).
"""
from __future__ import annotations

import math
from typing import Dict, List, Sequence, Tuple

import torch


def sample_layouts(count: int, image_size: int, num_classes: int, generator: torch.Generator,
                   objects: Sequence[int] = (2, 10), sides: Sequence[float] = (8.0, 64.0),
                   max_aspect: float = 2.0) -> List[Dict[str, torch.Tensor]]:
    """``count`` random layouts ``{"boxes": (n, 4) xyxy pixels, "labels": (n,)}``.

    Args:
        objects: (fewest, most) objects per image, inclusive, drawn uniformly.
        sides: (smallest, largest) box side in pixels, the geometric mean of width and height,
            drawn log-uniformly.
        max_aspect: width / height is log-uniform in ``[1 / max_aspect, max_aspect]``.
    Boxes are clipped to the image; centres are uniform over it.
    """
    check_layout_arguments(objects, sides, max_aspect)
    lo, hi = int(objects[0]), int(objects[1])
    if count < 0 or image_size < 1 or num_classes < 1:
        raise ValueError(f"sample_layouts needs count >= 0, image_size >= 1 and num_classes >= 1; "
                         f"got {count}, {image_size}, {num_classes}")
    log_sides = (math.log(sides[0]), math.log(sides[1]))
    log_aspect = math.log(max_aspect)
    layouts = []
    for _ in range(count):
        n = int(torch.randint(lo, hi + 1, (), generator=generator))
        side = torch.exp(log_sides[0] + (log_sides[1] - log_sides[0]) * torch.rand(n, generator=generator))
        aspect = torch.exp(log_aspect * (2 * torch.rand(n, generator=generator) - 1))
        w, h = side * aspect.sqrt(), side / aspect.sqrt()
        centre = torch.rand(n, 2, generator=generator) * image_size
        boxes = torch.stack([centre[:, 0] - w / 2, centre[:, 1] - h / 2,
                             centre[:, 0] + w / 2, centre[:, 1] + h / 2], 1).clamp(0, image_size)
        labels = torch.randint(0, num_classes, (n,), generator=generator)
        layouts.append({"boxes": boxes, "labels": labels})
    return layouts


def layout_masks(layouts: Sequence[Dict[str, torch.Tensor]], num_classes: int, image_size: int) -> torch.Tensor:
    """Per-class box masks ``(B, num_classes, image_size, image_size)``: 1 inside every box of
    that class (pixel centres inside the box), 0 elsewhere."""
    masks = torch.zeros(len(layouts), num_classes, image_size, image_size)
    coords = torch.arange(image_size, dtype=torch.float32) + 0.5
    for i, layout in enumerate(layouts):
        for (x0, y0, x1, y1), label in zip(layout["boxes"].tolist(), layout["labels"].tolist()):
            rows = (coords >= y0) & (coords < y1)
            cols = (coords >= x0) & (coords < x1)
            masks[i, int(label)] += (rows[:, None] & cols[None, :]).float()
    return masks.clamp_(max=1.0)


def check_layout_arguments(objects: Sequence[int], sides: Sequence[float], max_aspect: float,
                           prefix: str = "") -> None:
    """Raise a ``ValueError`` naming ``{prefix}objects``, ``{prefix}sides`` or
    ``{prefix}max_aspect`` when it is not a valid argument of :func:`sample_layouts`
    (``prefix="layout_"`` names the data-free config keys)."""
    fewest, most = layout_range(objects, prefix + "objects")
    if fewest < 0 or fewest != int(fewest) or most != int(most):
        raise ValueError(f"{prefix}objects must be whole numbers [fewest, most] >= 0, got {objects!r}")
    if layout_range(sides, prefix + "sides")[0] < 1:
        raise ValueError(f"{prefix}sides must be pixels >= 1, got {sides!r}")
    if max_aspect < 1:
        raise ValueError(f"{prefix}max_aspect must be >= 1, got {max_aspect}")


def layout_range(values: Sequence[float], name: str) -> Tuple[float, float]:
    """``(lo, hi)`` from a two-element config list, naming ``name`` when it is not one."""
    if not isinstance(values, (list, tuple)) or len(values) != 2:
        raise ValueError(f"{name} must be a pair [lo, hi], got {values!r}")
    lo, hi = float(values[0]), float(values[1])
    if lo > hi:
        raise ValueError(f"{name} must be [lo, hi] with lo <= hi, got {list(values)}")
    return lo, hi
