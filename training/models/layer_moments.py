"""Layer-input moments: what a least-squares refit of a layer needs to know about the data.

A BatchNorm layer carries the mean and variance of its input over the training data, and
data-free methods lean on them (DeepInversion). A cut that drops some of a layer's inputs
needs one step more: the *covariance* of those inputs, which says how well the kept ones
predict the dropped ones (:mod:`~evit_training.models.compensation` refits the layer with
it). So the trainer records, once when training ends, the mean and covariance of the input of
every linear and convolutional layer of a detector over a sample of its training images, and
stores them in the checkpoint under ``layer_moments``. The teacher file then carries a
summary of its data and no image: compressing it later needs the file alone.

For a student with fewer blocks, the layer reading the backbone's final norm sees
``norm(x_d)`` (the residual stream after block ``d``) instead of ``norm(x_L)``; the entries
``depth<d>`` record that source's moments and its cross-covariance with the true input.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

#: Checkpoint key under which the moments travel with a model.
CHECKPOINT_KEY = "layer_moments"
#: The layer of a :class:`~evit_training.models.ViTDetector` that reads the backbone's final norm.
FINAL_NORM_READER = "head.neck.0"
_LAYERS = (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)


@dataclass
class Moments:
    """Mean and covariance of what a layer reads (``source``), and, where the student's layer
    reads something else than the teacher's, the teacher input's mean and its covariance with
    that source (``target_mean``, ``cross``: target x source)."""

    mean: torch.Tensor
    cov: torch.Tensor
    target_mean: Optional[torch.Tensor] = None
    cross: Optional[torch.Tensor] = None

    def regression(self, keep: torch.Tensor, ridge: float) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(A, c)`` of the best linear prediction of the full input from its channels ``keep``:
        ``x ~= A @ x[keep] + c`` (ridge ``ridge`` times the mean kept variance, for channels
        that are constant or copies of one another)."""
        cov = self.cov.double()
        cross = (self.cov if self.cross is None else self.cross).double()[:, keep]
        kept_cov = cov[keep][:, keep]
        lam = ridge * float(kept_cov.diagonal().mean().clamp(min=1e-12))
        eye = torch.eye(len(keep), dtype=kept_cov.dtype)
        a = torch.linalg.solve(kept_cov + lam * eye, cross.T).T
        target_mean = (self.mean if self.target_mean is None else self.target_mean).double()
        return a, target_mean - a @ self.mean.double()[keep]


class _Accumulator:
    """Float64 sums for one source (and optionally a target read at the same samples)."""

    def __init__(self) -> None:
        self.count = 0
        self.sum: Optional[torch.Tensor] = None
        self.outer: Optional[torch.Tensor] = None
        self.target_sum: Optional[torch.Tensor] = None
        self.cross: Optional[torch.Tensor] = None

    def add(self, source: torch.Tensor, target: Optional[torch.Tensor] = None) -> None:
        # Products of one batch in float32 (fast), summed over batches in float64 (exact enough
        # for thousands of images).
        x = source.detach().float()
        self.sum = _plus(self.sum, x.sum(0, dtype=torch.float64))
        self.outer = _plus(self.outer, (x.T @ x).double())
        if target is not None:
            y = target.detach().float()
            self.target_sum = _plus(self.target_sum, y.sum(0, dtype=torch.float64))
            self.cross = _plus(self.cross, (y.T @ x).double())
        self.count += x.shape[0]

    def moments(self) -> Moments:
        mean = self.sum / self.count
        cov = self.outer / self.count - torch.outer(mean, mean)
        out = Moments(mean.float().cpu(), cov.float().cpu())
        if self.target_sum is not None:
            target_mean = self.target_sum / self.count
            out.target_mean = target_mean.float().cpu()
            out.cross = (self.cross / self.count - torch.outer(target_mean, mean)).float().cpu()
        return out


def _plus(total: Optional[torch.Tensor], value: torch.Tensor) -> torch.Tensor:
    return value if total is None else total + value


def _channels_last(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A layer input as (samples, channels): tokens for linear layers, pixels for convolutions."""
    if isinstance(layer, nn.Linear):
        return x.reshape(-1, x.shape[-1])
    return x.movedim(1, -1).reshape(-1, x.shape[1])


@torch.no_grad()
def record_layer_moments(model: nn.Module, images: Iterable[torch.Tensor]) -> Tuple[Dict[str, Moments], int]:
    """Stream ``images`` (batches ``(B, C, H, W)``) through a detector and return ``(moments,
    image_count)``: per linear/convolutional layer name the moments of its input, plus
    ``depth<d>`` for every shallower depth ``d`` (see the module docstring)."""
    backbone = getattr(model, "backbone", None)
    if backbone is None or not hasattr(backbone, "blocks") or not isinstance(
            _submodule(model, FINAL_NORM_READER), (nn.Conv2d, nn.Linear)):
        raise ValueError(f"{type(model).__name__} is not a ViT detector (.backbone.blocks and "
                         f"{FINAL_NORM_READER}); layer moments are recorded for ViTDetector models")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    layers = {name: _Accumulator() for name, m in model.named_modules() if isinstance(m, _LAYERS)}
    blocks = list(backbone.blocks)
    depths = {d: _Accumulator() for d in range(1, len(blocks))}
    block_outputs: List[torch.Tensor] = []
    handles = []

    def layer_hook(name: str):
        def hook(module: nn.Module, inputs: Tuple[torch.Tensor, ...]) -> None:
            layers[name].add(_channels_last(module, inputs[0]))
        return hook

    def final_norm_hook(_module: nn.Module, _inputs: Tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        # The final norm applied to a shallower residual stream (functional: calling the module
        # here would re-enter this hook).
        norm, target = backbone.norm, output.reshape(-1, output.shape[-1])
        for d, acc in depths.items():
            source = F.layer_norm(block_outputs[d - 1], norm.normalized_shape, norm.weight, norm.bias, norm.eps)
            acc.add(source.reshape(-1, output.shape[-1]), target)

    try:
        for name, module in model.named_modules():
            if name in layers:
                handles.append(module.register_forward_pre_hook(layer_hook(name)))
        for block in blocks:
            handles.append(block.register_forward_hook(lambda _m, _i, out: block_outputs.append(out)))
        handles.append(backbone.norm.register_forward_hook(final_norm_hook))
        count = 0
        for batch in images:
            block_outputs.clear()
            model(batch.to(device))
            count += int(batch.shape[0])
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    if count == 0:
        raise ValueError("no images to record layer moments from")
    moments = {name: acc.moments() for name, acc in layers.items()}
    moments.update({f"depth{d}": acc.moments() for d, acc in depths.items()})
    return moments, count


def _submodule(model: nn.Module, name: str) -> Optional[nn.Module]:
    try:
        return model.get_submodule(name)
    except AttributeError:
        return None


def to_checkpoint(moments: Mapping[str, Moments], image_count: int) -> Dict[str, Any]:
    """The ``layer_moments`` checkpoint entry."""
    layers = {}
    for name, m in moments.items():
        entry = {"mean": m.mean.clone(), "cov": m.cov.clone()}
        if m.cross is not None:
            entry.update(target_mean=m.target_mean.clone(), cross=m.cross.clone())
        layers[name] = entry
    return {"images": int(image_count), "layers": layers}


def from_checkpoint(doc: Mapping[str, Any]) -> Optional[Dict[str, Moments]]:
    """Moments stored in a checkpoint dict, or ``None`` when it has none."""
    entry = doc.get(CHECKPOINT_KEY) if isinstance(doc, Mapping) else None
    if not entry:
        return None
    return {name: Moments(mean=torch.as_tensor(e["mean"]).float(), cov=torch.as_tensor(e["cov"]).float(),
                          target_mean=None if e.get("target_mean") is None else torch.as_tensor(e["target_mean"]).float(),
                          cross=None if e.get("cross") is None else torch.as_tensor(e["cross"]).float())
            for name, e in entry["layers"].items()}
