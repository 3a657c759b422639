"""Data-free knowledge distillation: a transformer generator and a student play a game
around a frozen teacher, and no real image is ever used.

After the method family of "Optimizing Vision Transformers with Data-Free Knowledge
Transfer": rounds alternate

* generator step(s): synthesise a batch, then minimise
  ``- w_adversarial * D(teacher, student)`` (find images on which they disagree) plus teacher
  priors that keep the images "natural" for the teacher:

  - ``feature_stats``: mean/std of every block's LayerNorm input (per channel, over batch
    and tokens), recorded with forward pre-hooks, matched to target statistics. A ViT has
    no BatchNorm running statistics to invert, so our trainer stores their analogue in every
    checkpoint it writes (:mod:`evit_training.distill.token_statistics`: the same mean/std
    over a sample of its training images). Those are the targets when the teacher carries
    them; for a teacher without them they are recorded once on random *smooth* noise images
    (blurred uniform noise at several scales), a weak prior that only pins the scale of the
    residual stream to what the teacher sees on image-like inputs.
  - ``batchnorm_stats``: where the teacher does have BatchNorm (our detectors' head), DeepInversion's
    original prior: batch mean/std of every BatchNorm input matched to its running statistics.
  - ``patch_similarity``: the differential entropy (Gaussian kernel density estimate) of the
    cosine similarities between patch tokens in every block, maximised (PSAQ-ViT): real
    images give diverse patch relations; degenerate images give all-similar patches.
  - ``confidence``: the teacher should be sure of what it sees (cross-entropy to a requested
    class with a class-conditional generator, else the per-image prediction entropy; for
    detectors, strong peaks in the heatmaps).
  - ``class_balance``: the entropy of the teacher's mean prediction over the batch,
    maximised, so every class keeps appearing.
  - ``total_variation``: an optional smoothness prior on pixels.

* student step(s): the student imitates the teacher on fresh synthetic images mixed with a
  memory bank of past batches (so it does not forget what earlier generators produced),
  optionally colour-jittered and mixed with procedural dead-leaves images (generic priors
  that look at no data, :mod:`evit_training.distill.image_priors`), with optional
  shifts/flips and CutMix between synthetic images: KL on softened logits
  (classification) or the project's dense logit KD (heatmap BCE + size/offset L1,
  :mod:`evit_training.distill.logit_kd`) for detectors, plus a patch-relation loss (MSE
  between the teacher's and student's patch cosine-similarity matrices, which needs no
  projector between different widths).

The step budget counts *student* steps, so arms of a benchmark compare at equal steps; the
generator's steps are extra work, reported as wall-clock. Checkpoints hold everything that
decides the future (models, optimisers, schedulers, memory bank, RNG states, step), so a
resumed run continues bit-for-bit like an uninterrupted one on the same machine.
"""
from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from evit_training.distill.generator import TransformerGenerator
from evit_training.distill.image_priors import colour_jitter, dead_leaves, paste_boxes
from evit_training.distill.layout import check_layout_arguments, layout_masks, sample_layouts
from evit_training.distill.palette import ColourTransform, fit_colour_transform
from evit_training.distill.token_statistics import check_fits, record_token_statistics, token_statistics
from evit_training.models.fading_selection import FadingSelection, cosine_fade

TASKS = ("classification", "detection")
AUGMENT_MODES = ("roll", "crop")
GENERATOR_JITTERS = ("none", "roll", "crop")
DETECTION_PRIORS = ("topk", "peaks", "layout")
STATS_SOURCES = ("auto", "teacher", "noise")
STUDENT_INITS = ("random", "weight_selection", "compensated_selection")
MOMENT_SOURCES = ("auto", "teacher", "procedural")
CANVASES = ("none", "dead_leaves")
PROCEDURAL_STYLES = ("flat", "textured")
PALETTES = ("random", "teacher")
CHECKPOINT_NAME = "last.pt"


@dataclass
class DataFreeConfig:
    """Every knob of the data-free game. Loss weights of 0 switch a term off.

    Defaults follow the digits settings (conv decoder, unconditional, strong priors) except
    where a choice is task-specific (budget, bank size, augmentation);
    training/configs/data_free_*.yaml spell out every value per task.
    """

    steps: int = 600                    # student optimizer steps (the comparable budget)
    batch_size: int = 64                # images per student step (fresh + memory bank)
    generator_steps: int = 1            # generator updates per round
    student_steps: int = 2              # student updates per round
    warmup_generator_steps: int = 50    # prior-only generator steps before the student starts
    lr_student: float = 2e-3
    # decay of an exponential moving average of the student's weights, which becomes the
    # student when the budget is spent (0: off); it smooths a student chasing a moving generator
    student_ema: float = 0.0
    # decoupled pull of the student's weights towards their starting values (L2-SP), per unit
    # of learning rate like weight decay: a weight-selected student keeps more of the teacher
    anchor_decay: float = 0.0
    # parameter-name prefixes of the student kept at their starting values (e.g. "backbone.patch_embed"):
    # a weight-selected student keeps the teacher's low-level filters, which synthetic images distort most
    frozen_student: Tuple[str, ...] = ()
    # Gradual weight selection (models/fading_selection.py): > 0 trains a copy of the teacher
    # whose parts the student lacks fade out over this share of the budget, then extracts the
    # student from it; 0 trains the student in its own shape from the first step.
    fade_fraction: float = 0.0
    lr_generator: float = 1e-3
    weight_decay: float = 0.05
    temperature: float = 4.0
    seed: int = 0
    # generator architecture (image size / channels come from the teacher)
    generator_patch_size: int = 8
    generator_upsample: int = 1         # synthesise at image_size / this, resize bilinearly
    generator_output_gain: float = 1.0  # contrast of the generated images (see TransformerGenerator)
    generator_decoder: str = "conv"     # "conv" (upsample + conv stages) or "linear" (pixel shuffle)
    generator_output_affine: bool = True   # learnable brightness/contrast after the output norm
    generator_latent_dim: int = 32
    generator_embed_dim: int = 96
    generator_depth: int = 2
    generator_heads: int = 4
    # "dead_leaves": the generator edits procedural dead-leaves canvases (image_priors.py)
    # instead of drawing from noise alone; canvas_residual scales its edit
    generator_canvas: str = "none"
    canvas_residual: float = 1.0
    conditional: bool = False           # class-conditional generator (classification only)
    # generator loss weights
    w_adversarial: float = 0.5
    w_feature_stats: float = 1.0
    # DeepInversion's own prior where the teacher has one: the running mean/variance of its
    # BatchNorm layers (the detector's head), matched by the batch statistics of the synthetic images
    w_batchnorm_stats: float = 0.0
    w_patch_similarity: float = 1.0
    w_confidence: float = 1.0
    w_class_balance: float = 1.0
    w_total_variation: float = 0.0
    w_diversity: float = 1.0            # mode seeking: images from different latents must differ
    adversarial_clip: float = 5.0       # the gap the generator chases is clamped per image
    # Random per-image framing of the generator's images before teacher and student judge them
    # in the generator step (DeepInversion's jitter): "roll" = wrap-around shift of up to
    # `generator_jitter_shift` pixels per axis + flips, "crop" = the student's crop_scale zoom +
    # that shift. Without it the generator can satisfy the teacher at fixed places (the image
    # border, the patch grid) rather than with objects that hold anywhere.
    generator_jitter: str = "none"
    generator_jitter_shift: int = 16
    # detection priors: "topk" = the strongest 4 cells of the most confident class;
    # "peaks" = `target_objects` local maxima per image confident, the rest of the map quiet,
    # class balance over those peaks
    # "layout" = boxes sampled per image (layout.py) are an input of the generator and the
    # teacher's detection loss against them its objective (DIODE-style); no class balance term
    detection_prior: str = "topk"
    target_objects: int = 4
    layout_objects: Tuple[int, int] = (2, 10)        # "layout": fewest, most objects per image
    layout_sides: Tuple[float, float] = (8.0, 64.0)  # "layout": box sides in pixels, log-uniform
    layout_max_aspect: float = 2.0                   # "layout": width/height within [1/this, this]
    # student loss weights
    w_kl: float = 1.0
    heatmap_focal_gamma: float = 0.0    # detection: weight heatmap KD cells by |p_student - p_teacher|^gamma
    w_box: float = 1.0                  # detection: size/offset imitation
    # detection: the teacher's detections above the threshold as hard CenterNet targets
    # (focal heatmap + size/offset), the supervised loss a detector is trained with
    w_pseudo_labels: float = 0.0
    pseudo_label_threshold: float = 0.3
    w_feature: float = 1.0              # patch-relation matching
    # A student started by weight selection (inherited_channels given): its block inputs match
    # the teacher's on the residual channels it kept, block by block (0 switches it off).
    w_inherited_tokens: float = 0.0
    # synthetic data handling
    memory_bank_size: int = 2048
    memory_fraction: float = 0.5        # share of each student batch drawn from the bank
    augment: bool = True                # random shifts (and flips for detection)
    max_shift: int = 2
    augment_mode: str = "roll"          # "roll": one wrap-around shift per batch; "crop": per-image zoom + shift
    crop_scale: float = 0.8             # "crop": smallest side of the crop, as a share of the image side
    cutmix_prob: float = 0.5
    # share of every student batch replaced by 2x2 mosaics of half-size batch images: objects at
    # half the scale the generator draws them, four scenes' worth of them per image
    mosaic_fraction: float = 0.0
    # generic image priors (image_priors.py): a share of every student batch drawn as
    # procedural dead-leaves images, and per-image colour jitter of the synthetic ones
    procedural_fraction: float = 0.0
    procedural_style: str = "flat"      # "flat" dead leaves, or "textured": on spectral-noise ground
    # "random": colours uniform in the RGB cube; "teacher": a colour map fitted once to the
    # teacher's token statistics (palette.py), which recovers its training data's palette
    procedural_palette: str = "random"
    palette_fit_steps: int = 100
    # detection: the teacher's detections (score > paste_threshold) in the fresh generator images,
    # cropped and pasted this many times onto every procedural image: objects on textured ground
    paste_objects: int = 0
    paste_threshold: float = 0.3
    colour_jitter: float = 0.0
    # statistics prior targets: "teacher" = the token statistics stored in the teacher's
    # checkpoint (recorded on its training data, see token_statistics.py); "noise" = recorded
    # here on smooth noise images; "auto" = the teacher's when its checkpoint has them
    feature_stats_source: str = "auto"
    stats_batches: int = 4
    # bookkeeping
    grid_every: int = 100               # PNG grid of synthetic images every N student steps
    checkpoint_every: int = 100
    log_every: int = 10

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "DataFreeConfig":
        """Build from a mapping, rejecting unknown keys by name (typos should not pass)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown data-free option(s) {unknown}; known: {sorted(known)}")
        values = dict(values)
        for name in ("frozen_student", "layout_objects", "layout_sides"):
            if isinstance(values.get(name), list):   # YAML gives lists
                values[name] = tuple(values[name])
        cfg = cls(**values)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first impossible setting."""
        for name in ("steps", "batch_size", "student_steps", "grid_every", "checkpoint_every", "log_every"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("generator_steps", "warmup_generator_steps", "memory_bank_size", "max_shift", "paste_objects"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if isinstance(self.frozen_student, str) or not all(isinstance(p, str) for p in self.frozen_student):
            raise ValueError(f"frozen_student must be a list of parameter-name prefixes, got {self.frozen_student!r}")
        if not 0.0 <= self.fade_fraction <= 1.0:
            raise ValueError(f"fade_fraction must be in [0, 1], got {self.fade_fraction}")
        if self.fade_fraction and self.w_inherited_tokens:
            raise ValueError("fade_fraction trains a teacher-shaped copy; w_inherited_tokens needs the student's "
                             "own shape (set one of them to 0)")
        if self.anchor_decay < 0:
            raise ValueError(f"anchor_decay must be >= 0, got {self.anchor_decay}")
        if not 0.0 <= self.student_ema < 1.0:
            raise ValueError(f"student_ema must be in [0, 1), got {self.student_ema}")
        for name in ("memory_fraction", "cutmix_prob", "mosaic_fraction", "pseudo_label_threshold",
                     "paste_threshold", "procedural_fraction", "colour_jitter"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")
        if self.generator_jitter not in GENERATOR_JITTERS:
            raise ValueError(f"generator_jitter must be one of {GENERATOR_JITTERS}, got {self.generator_jitter!r}")
        if self.generator_jitter_shift < 0:
            raise ValueError(f"generator_jitter_shift must be >= 0, got {self.generator_jitter_shift}")
        if self.generator_jitter != "none" and self.detection_prior == "layout":
            raise ValueError("generator_jitter moves the images away from their sampled layout boxes; "
                             "use generator_jitter: none with detection_prior: layout")
        if self.augment_mode not in AUGMENT_MODES:
            raise ValueError(f"augment_mode must be one of {AUGMENT_MODES}, got {self.augment_mode!r}")
        if not 0.0 < self.crop_scale <= 1.0:
            raise ValueError(f"crop_scale must be in (0, 1], got {self.crop_scale}")
        if self.detection_prior not in DETECTION_PRIORS:
            raise ValueError(f"detection_prior must be one of {DETECTION_PRIORS}, got {self.detection_prior!r}")
        if self.target_objects < 1:
            raise ValueError(f"target_objects must be >= 1, got {self.target_objects}")
        check_layout_arguments(self.layout_objects, self.layout_sides, self.layout_max_aspect, prefix="layout_")
        if self.feature_stats_source not in STATS_SOURCES:
            raise ValueError(f"feature_stats_source must be one of {STATS_SOURCES}, got {self.feature_stats_source!r}")
        if self.generator_canvas not in CANVASES:
            raise ValueError(f"generator_canvas must be one of {CANVASES}, got {self.generator_canvas!r}")
        if self.procedural_style not in PROCEDURAL_STYLES:
            raise ValueError(f"procedural_style must be one of {PROCEDURAL_STYLES}, got {self.procedural_style!r}")
        if self.procedural_palette not in PALETTES:
            raise ValueError(f"procedural_palette must be one of {PALETTES}, got {self.procedural_palette!r}")
        if self.palette_fit_steps < 1:
            raise ValueError(f"palette_fit_steps must be positive, got {self.palette_fit_steps}")
        if self.heatmap_focal_gamma < 0:
            raise ValueError(f"heatmap_focal_gamma must be >= 0, got {self.heatmap_focal_gamma}")


# ----------------------------------------------------------------------------- model views
class _TeacherStudentView:
    """Uniform access to predictions, patch tokens and LayerNorm inputs of timm-ViT models.

    Classification models return logits and expose ``.backbone`` (timm VisionTransformer);
    detectors (:class:`evit_training.models.ViTDetector`) return a dict with ``tokens``.
    """

    def __init__(self, model: nn.Module, task: str, record_norm_inputs: bool,
                 record_batchnorm_inputs: bool = False) -> None:
        backbone = getattr(model, "backbone", None)
        if backbone is None or not hasattr(backbone, "blocks"):
            raise ValueError(f"{type(model).__name__} has no timm ViT `.backbone` with `.blocks`; data-free KD "
                             "reads the teacher's token features through it")
        self.model = model
        self.task = task
        self.backbone = backbone
        self.norm_inputs: List[torch.Tensor] = []
        self.batchnorm_inputs: List[Tuple[torch.Tensor, nn.Module]] = []
        self._tokens: Optional[torch.Tensor] = None
        self._handles = []
        if record_norm_inputs:
            for block in backbone.blocks:
                self._handles.append(block.norm1.register_forward_pre_hook(self._record_norm_input))
        self.batchnorms = [m for m in model.modules()
                           if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None]
        if record_batchnorm_inputs:
            for bn in self.batchnorms:
                self._handles.append(bn.register_forward_pre_hook(self._record_batchnorm_input))
        if task == "classification":
            self._handles.append(backbone.norm.register_forward_hook(self._record_tokens))

    def _record_norm_input(self, module: nn.Module, inputs: Tuple[torch.Tensor, ...]) -> None:
        self.norm_inputs.append(inputs[0])

    def _record_batchnorm_input(self, module: nn.Module, inputs: Tuple[torch.Tensor, ...]) -> None:
        self.batchnorm_inputs.append((inputs[0], module))

    def _record_tokens(self, module: nn.Module, inputs: Tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        self._tokens = output[:, getattr(self.backbone, "num_prefix_tokens", 0):]

    def __call__(self, images: torch.Tensor) -> Tuple[Any, torch.Tensor]:
        """Return ``(prediction, patch_tokens (B,N,D))``; fills ``norm_inputs`` and ``batchnorm_inputs`` if recording."""
        self.norm_inputs = []
        self.batchnorm_inputs = []
        out = self.model(images)
        if self.task == "detection":
            if not isinstance(out, Mapping) or "heatmap" not in out or "tokens" not in out:
                raise ValueError("a detection model must return a dict with 'heatmap', 'size', 'offset', 'tokens'")
            return out, out["tokens"]
        if self._tokens is None:
            raise RuntimeError("classifier tokens were not recorded; is backbone.norm used in forward?")
        tokens, self._tokens = self._tokens, None
        return out, tokens

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


def _model_geometry(model: nn.Module) -> Tuple[int, int]:
    """``(image_size, in_chans)`` of a timm-ViT based model."""
    patch_embed = model.backbone.patch_embed
    size = patch_embed.img_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    return int(size), int(patch_embed.proj.in_channels)


# ----------------------------------------------------------------------------- losses
def _moment_distance(mean: torch.Tensor, std: torch.Tensor, t_mean: torch.Tensor, t_std: torch.Tensor) -> torch.Tensor:
    """RMS distance of per-channel means plus that of standard deviations (DeepInversion's form)."""
    return torch.linalg.vector_norm(mean - t_mean) / math.sqrt(mean.numel()) \
        + torch.linalg.vector_norm(std - t_std) / math.sqrt(std.numel())


def feature_stats_loss(norm_inputs: List[torch.Tensor],
                       targets: List[Tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """DeepInversion-style distance of token statistics to the targets, averaged over blocks."""
    loss = norm_inputs[0].new_zeros(())
    for (mean, std), (t_mean, t_std) in zip(token_statistics(norm_inputs), targets):
        loss = loss + _moment_distance(mean, std, t_mean, t_std)
    return loss / max(1, len(targets))


def batchnorm_stats_loss(inputs: List[Tuple[torch.Tensor, nn.Module]]) -> torch.Tensor:
    """DeepInversion's BatchNorm prior: distance of each BatchNorm input's batch mean/std (per
    channel, over batch and space) to the layer's running statistics, averaged over layers."""
    loss = inputs[0][0].new_zeros(())
    for x, bn in inputs:
        dims = [0] + list(range(2, x.dim()))
        mean, var = x.mean(dims), x.var(dims, unbiased=False)
        loss = loss + _moment_distance(mean, (var + bn.eps).sqrt(), bn.running_mean, (bn.running_var + bn.eps).sqrt())
    return loss / max(1, len(inputs))


def patch_similarity_entropy(tokens: torch.Tensor, bandwidth: float = 0.05, max_pairs: int = 512,
                             generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Mean differential entropy of pairwise patch cosine similarities (Gaussian KDE), per image."""
    x = F.normalize(tokens.float(), dim=-1)
    sims = x @ x.transpose(1, 2)                                          # (B, N, N)
    n = sims.shape[-1]
    iu = torch.triu_indices(n, n, offset=1, device=sims.device)
    values = sims[:, iu[0], iu[1]]                                        # (B, P)
    if values.shape[1] > max_pairs:
        pick = torch.randperm(values.shape[1], generator=generator)[:max_pairs].to(values.device)
        values = values[:, pick]
    diff = (values.unsqueeze(2) - values.unsqueeze(1)) / bandwidth       # (B, P, P)
    density = torch.exp(-0.5 * diff * diff).mean(2) / (bandwidth * math.sqrt(2 * math.pi))
    return -(density + 1e-8).log().mean()


def patch_relation_loss(student_tokens: torch.Tensor, teacher_tokens: torch.Tensor) -> torch.Tensor:
    """MSE between patch cosine-similarity matrices; grids are pooled to the smaller one."""
    s, t = student_tokens.float(), teacher_tokens.float()
    if s.shape[1] != t.shape[1]:
        s, t = _pool_tokens_to(s, min(s.shape[1], t.shape[1])), _pool_tokens_to(t, min(s.shape[1], t.shape[1]))
    s, t = F.normalize(s, dim=-1), F.normalize(t, dim=-1)
    return F.mse_loss(s @ s.transpose(1, 2), t @ t.transpose(1, 2))


def inherited_token_loss(student_inputs: List[torch.Tensor], teacher_inputs: List[torch.Tensor],
                         channels: torch.Tensor) -> torch.Tensor:
    """Block-by-block MSE between a weight-selected student's block inputs and the teacher's
    on the residual ``channels`` the student kept, each scaled by the teacher's variance there."""
    losses = []
    for s, t in zip(student_inputs, teacher_inputs):
        target = t.index_select(-1, channels.to(t.device)).float()
        losses.append(F.mse_loss(s.float(), target) / target.var().clamp(min=1e-6))
    return torch.stack(losses).mean()


def _pool_tokens_to(tokens: torch.Tensor, count: int) -> torch.Tensor:
    b, n, d = tokens.shape
    side, target = int(math.isqrt(n)), int(math.isqrt(count))
    if side * side != n or target * target != count:
        raise ValueError(f"cannot match token grids of {n} and {count} tokens (not square)")
    grid = tokens.transpose(1, 2).reshape(b, d, side, side)
    return F.adaptive_avg_pool2d(grid, target).flatten(2).transpose(1, 2)


def _kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float,
        reduction: str = "batchmean") -> torch.Tensor:
    kl = F.kl_div(F.log_softmax(student_logits / temperature, 1), F.log_softmax(teacher_logits / temperature, 1),
                  reduction="none", log_target=True).sum(1) * temperature ** 2
    return kl.mean() if reduction == "batchmean" else kl


def _local_maxima(best: torch.Tensor) -> torch.Tensor:
    """Cells of a class-max heatmap ``(B, H, W)`` that are the maximum of their 3x3 window."""
    return best == F.max_pool2d(best.unsqueeze(1), 3, 1, 1).squeeze(1)


def heatmap_peak_priors(heatmap_logits: torch.Tensor, target_objects: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(confidence, class_mix)`` of a CenterNet heatmap for the generator's "peaks" prior.

    Scenes hold a handful of objects: the ``target_objects`` strongest local maxima (3x3) of
    each image's class-max heatmap should be confident (``-log p`` of each), every other cell
    quiet (its mean probability is added). ``class_mix`` (C,) is the class distribution at
    those peaks averaged over the batch, for a class-balance term that counts objects rather
    than whole images.
    """
    heat = torch.sigmoid(heatmap_logits.float())                      # (B, C, H, W)
    best = heat.amax(1)                                               # (B, H, W)
    is_peak = _local_maxima(best)
    k = min(target_objects, best[0].numel())
    # Non-peak cells rank last (-1) so the top k are local maxima whenever there are k of them.
    index = torch.where(is_peak, best, torch.full_like(best, -1.0)).flatten(1).topk(k, dim=1).indices
    peaks = best.flatten(1).gather(1, index)                          # (B, k), differentiable
    quiet = best.flatten(1).scatter(1, index, 0.0).sum(1) / max(1, best[0].numel() - k)
    confidence = -(peaks + 1e-6).log().mean() + quiet.mean()
    per_class = heat.flatten(2).gather(2, index.unsqueeze(1).expand(-1, heat.shape[1], -1))   # (B, C, k)
    share = per_class / per_class.sum(1, keepdim=True).clamp(min=1e-6)
    return confidence, share.mean((0, 2))


@torch.no_grad()
def confident_detections(t_out: Mapping[str, torch.Tensor], stride: int, threshold: float) -> List[torch.Tensor]:
    """Per image, the decoded detections ``(N, 6)`` (x0, y0, x1, y1 in pixels, score, class)
    of dense outputs ``t_out`` scoring above ``threshold``."""
    from evit_training.models.decode import decode_detections

    rows = decode_detections({k: t_out[k].float() for k in ("heatmap", "size", "offset")}, stride)
    return [r[r[:, 4] > threshold] for r in rows]


@torch.no_grad()
def pseudo_label_targets(t_out: Mapping[str, torch.Tensor], stride: int, threshold: float) -> Dict[str, torch.Tensor]:
    """The teacher's detections scoring above ``threshold`` drawn as CenterNet training
    targets (Gaussian heatmap peaks, size and offset at the centre cells), on its device.

    Soft heatmap KD copies every cell of the teacher's map; these hard targets give the
    student the sharp peaks of the supervised loss it was designed for, at the teacher's
    own boxes, so no label is needed.
    """
    boxes = [{"boxes": r[:, :4].cpu(), "labels": r[:, 5].long().cpu()}
             for r in confident_detections(t_out, stride, threshold)]
    return centernet_targets(boxes, t_out["heatmap"], stride)


def centernet_targets(boxes: List[Dict[str, torch.Tensor]], heatmap: torch.Tensor,
                      stride: int) -> Dict[str, torch.Tensor]:
    """Boxes per image (``{"boxes": (n, 4) xyxy pixels, "labels": (n,)}``) encoded as
    CenterNet targets on the grid, class count and device of ``heatmap``."""
    from evit_training.engine.losses import encode_targets

    encoded = encode_targets(boxes, heatmap.shape[1], heatmap.shape[-1], stride)
    return {k: v.to(heatmap.device) for k, v in encoded.items()}


def batch_diversity(images: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Mean distance between each image (and its teacher tokens) and its batch neighbour.

    A mode-seeking term: maximised, it stops a (conditional) generator from drawing one
    image per class whatever the noise says.
    """
    pixel = (images - images.roll(1, 0)).abs().flatten(1).mean(1)
    feats = F.normalize(tokens.float().mean(1), dim=-1)
    return (pixel + (feats - feats.roll(1, 0)).norm(dim=-1)).mean()


def random_crop_shift(images: torch.Tensor, min_scale: float, max_shift: int, generator: torch.Generator,
                      flip: bool = False) -> torch.Tensor:
    """Per-image random resized crop (side in ``[min_scale, 1]`` of the image, square) and
    shift of up to ``max_shift`` pixels, border-padded; optional horizontal flips.

    Per image rather than per batch, so one student batch shows many framings of the
    synthetic data, which is all the variety a data-free student gets.
    """
    b, _, h, w = images.shape
    scale = min_scale + (1.0 - min_scale) * torch.rand(b, generator=generator)
    # Crop centres that keep the crop inside the image, plus a pixel shift on top.
    centre = (1.0 - scale).unsqueeze(1) * (2 * torch.rand(b, 2, generator=generator) - 1)
    shift = torch.randint(-max_shift, max_shift + 1, (b, 2), generator=generator).float() * 2 / torch.tensor([w, h])
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = scale
    theta[:, 1, 1] = scale
    if flip:
        theta[:, 0, 0] *= torch.where(torch.rand(b, generator=generator) < 0.5, -1.0, 1.0)
    theta[:, :, 2] = centre - shift
    grid = F.affine_grid(theta.to(images.device, images.dtype), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def random_roll(images: torch.Tensor, max_shift: int, generator: torch.Generator, flip: bool = False) -> torch.Tensor:
    """Per-image wrap-around shift of up to ``max_shift`` pixels per axis (differentiable, no
    resampling), with optional horizontal flips. A shift of half the image side or more puts
    every generated pixel equally often at every place the teacher looks."""
    b = images.shape[0]
    dy = torch.randint(-max_shift, max_shift + 1, (b,), generator=generator).tolist()
    dx = torch.randint(-max_shift, max_shift + 1, (b,), generator=generator).tolist()
    flips = (torch.rand(b, generator=generator) < 0.5).tolist() if flip else [False] * b
    out = [torch.roll(img, shifts=(y, x), dims=(1, 2)) for img, y, x in zip(images, dy, dx)]
    return torch.stack([img.flip(2) if f else img for img, f in zip(out, flips)])


def mosaic(images: torch.Tensor, fraction: float, generator: torch.Generator) -> torch.Tensor:
    """Replace a random ``fraction`` of ``images`` (B, C, H, W) with 2x2 mosaics of four batch
    images, each downscaled to half size (antialiased).

    The generator draws objects at one scale, mostly large; a mosaic shows them at half that
    scale and four scenes' worth of them per image, which is where a detector's small objects
    are. The teacher labels the mosaic itself, so no box bookkeeping is needed.
    """
    b, c, h, w = images.shape
    count = int(round(b * fraction))
    if count == 0:
        return images
    hh, hw = h // 2, w // 2
    small = F.interpolate(images, size=(hh, hw), mode="bilinear", antialias=True, align_corners=False)
    tiles = small[torch.randint(0, b, (count * 4,), generator=generator).to(images.device)]
    tiles = tiles.view(count, 4, c, hh, hw)
    grid = torch.cat([torch.cat([tiles[:, 0], tiles[:, 1]], 3), torch.cat([tiles[:, 2], tiles[:, 3]], 3)], 2)
    if grid.shape[-2:] != (h, w):    # odd sides: stretch the last row/column of pixels
        grid = F.pad(grid, (0, w - 2 * hw, 0, h - 2 * hh), mode="replicate")
    out = images.clone()
    out[torch.randperm(b, generator=generator)[:count].to(images.device)] = grid
    return out


def total_variation(images: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference between neighbouring pixels."""
    return (images[..., 1:, :] - images[..., :-1, :]).abs().mean() + \
        (images[..., :, 1:] - images[..., :, :-1]).abs().mean()


# ----------------------------------------------------------------------------- memory bank
class SyntheticMemoryBank:
    """Ring buffer of past synthetic images, stored as uint8 (4x smaller, exact on resume)."""

    def __init__(self, capacity: int, image_shape: Tuple[int, int, int]) -> None:
        self.images = torch.zeros((capacity,) + tuple(image_shape), dtype=torch.uint8)
        self.count = 0
        self.cursor = 0

    @property
    def capacity(self) -> int:
        return int(self.images.shape[0])

    def push(self, images: torch.Tensor) -> None:
        if self.capacity == 0:
            return
        quantised = (images.detach().clamp(0, 1) * 255).round().to(torch.uint8).cpu()
        for img in quantised[-self.capacity:]:
            self.images[self.cursor] = img
            self.cursor = (self.cursor + 1) % self.capacity
            self.count = min(self.count + 1, self.capacity)

    def sample(self, count: int, generator: torch.Generator) -> torch.Tensor:
        index = torch.randint(0, self.count, (count,), generator=generator)
        return self.images[index].float() / 255.0

    def state_dict(self) -> Dict[str, Any]:
        return {"images": self.images[:self.count].clone(), "count": self.count, "cursor": self.cursor}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.count, self.cursor = int(state["count"]), int(state["cursor"])
        self.images[:self.count] = state["images"]


# ----------------------------------------------------------------------------- the loop
class DataFreeDistiller:
    """Train ``student`` to imitate ``teacher`` on generated images only.

    Args:
        teacher: frozen model (timm-ViT ``.backbone``), inputs in [0, 1].
        student: model trained in place (same output layout as the teacher).
        cfg: :class:`DataFreeConfig`.
        out_dir: checkpoints (``last.pt``), ``samples/step_XXXXXX.png`` grids, ``history.json``.
        task: ``"classification"`` (logits) or ``"detection"`` (dense CenterNet maps).
        resume: continue from ``out_dir/last.pt`` when it exists.
        token_stats: the teacher's stored token statistics (``token_statistics.from_checkpoint``),
            the targets of the ``feature_stats`` prior unless ``cfg.feature_stats_source`` is
            "noise"; without them the targets are recorded on smooth noise.
        inherited_channels: the teacher's residual channels a weight-selected student kept
            (``select_weights(...)["residual"]``), for the ``w_inherited_tokens`` loss.
        stats_images: optional few real images ``(N, C, H, W)`` in [0, 1]; when given, the
            targets are recorded from the teacher on them instead (the "tiny real subset"
            variant; the student still never trains on them).
        device: where teacher, student and generator run (default: the teacher's device);
            the memory bank and the random generator stay on the CPU.
    """

    def __init__(self, teacher: nn.Module, student: nn.Module, cfg: Optional[DataFreeConfig] = None,
                 out_dir: Union[str, Path] = "runs/data_free", task: str = "classification",
                 resume: bool = True, show_progress: bool = True,
                 stats_images: Optional[torch.Tensor] = None,
                 token_stats: Optional[List[Tuple[torch.Tensor, torch.Tensor]]] = None,
                 inherited_channels: Optional[torch.Tensor] = None,
                 device: Optional[Union[str, torch.device]] = None) -> None:
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        self.cfg = cfg or DataFreeConfig()
        self.cfg.validate()
        if self.cfg.paste_objects and task != "detection":
            raise ValueError("paste_objects pastes the teacher's detections: it needs task 'detection'")
        self.layout_conditional = task == "detection" and self.cfg.detection_prior == "layout"
        self.task = task
        self.out_dir = Path(out_dir)
        self.resume = resume
        self.show_progress = show_progress
        self.device = torch.device(device) if device is not None else next(teacher.parameters()).device
        self.teacher = teacher.to(self.device).eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.fading: Optional[FadingSelection] = None
        if self.cfg.fade_fraction:
            # Train the teacher-shaped copy; `student` receives its weights when the fade is done.
            self.fading = FadingSelection(self.teacher, student.to(self.device))
            self._fade = cosine_fade(max(1, round(self.cfg.fade_fraction * self.cfg.steps)))
            student = self.fading.model
        self.student = student.to(self.device)
        self.image_size, self.in_chans = _model_geometry(teacher)
        if self.cfg.colour_jitter and self.in_chans != 3:
            raise ValueError(f"colour_jitter needs an RGB teacher; this one reads {self.in_chans} channel(s)")
        if _model_geometry(student) != (self.image_size, self.in_chans):
            raise ValueError(f"teacher input {(self.image_size, self.in_chans)} and student input "
                             f"{_model_geometry(student)} (size, channels) differ")
        torch.manual_seed(self.cfg.seed)
        self.rng = torch.Generator().manual_seed(self.cfg.seed)
        self.teacher_view = _TeacherStudentView(teacher, task, record_norm_inputs=True,
                                                record_batchnorm_inputs=bool(self.cfg.w_batchnorm_stats))
        if self.cfg.w_batchnorm_stats and not self.teacher_view.batchnorms:
            raise ValueError("w_batchnorm_stats needs a teacher with BatchNorm running statistics; "
                             f"{type(teacher).__name__} has none (set it to 0)")
        self.inherited_channels = inherited_channels
        if self.cfg.w_inherited_tokens and inherited_channels is None:
            raise ValueError("w_inherited_tokens needs inherited_channels: a student started by weight selection")
        self.student_view = _TeacherStudentView(student, task, record_norm_inputs=inherited_channels is not None)
        self.num_classes = self._probe_num_classes()
        conditional = self.cfg.conditional and task == "classification"
        self.generator = TransformerGenerator(
            image_size=self.image_size, out_chans=self.in_chans, patch_size=self.cfg.generator_patch_size,
            latent_dim=self.cfg.generator_latent_dim, embed_dim=self.cfg.generator_embed_dim,
            depth=self.cfg.generator_depth, num_heads=self.cfg.generator_heads,
            num_classes=self.num_classes if conditional else 0, upsample=self.cfg.generator_upsample,
            output_gain=self.cfg.generator_output_gain, decoder=self.cfg.generator_decoder,
            output_affine=self.cfg.generator_output_affine, canvas=self.cfg.generator_canvas != "none",
            canvas_residual=self.cfg.canvas_residual,
            layout_chans=self.num_classes if self.layout_conditional else 0).to(self.device)
        self.opt_g = torch.optim.Adam(self.generator.parameters(), lr=self.cfg.lr_generator, betas=(0.5, 0.999))
        self.opt_s = torch.optim.AdamW(self._trainable_student_parameters(), lr=self.cfg.lr_student,
                                       weight_decay=self.cfg.weight_decay)
        self.sched_s = torch.optim.lr_scheduler.LambdaLR(self.opt_s, _budget_factor(self.cfg.steps))
        self.anchor = [p.detach().clone() for p in student.parameters()] if self.cfg.anchor_decay else None
        self.student_ema = {k: v.detach().clone() for k, v in student.state_dict().items()} \
            if self.cfg.student_ema else None
        self.bank = SyntheticMemoryBank(self.cfg.memory_bank_size, (self.in_chans, self.image_size, self.image_size))
        self.stat_targets, self.stats_source = self._stat_targets(stats_images, token_stats)
        self.palette: Optional[ColourTransform] = None     # fitted on first use (procedural_palette)
        self.palette_losses: List[float] = []
        self.teacher_view.norm_inputs = []   # the recording above went through the hooks too
        self.step = 0
        self.warmup_done = 0
        self.history: List[Dict[str, float]] = []
        self.elapsed_s = 0.0
        grid_rng = torch.Generator().manual_seed(self.cfg.seed + 1)
        self._grid_latent = self.generator.sample_latent(64, grid_rng)
        self._grid_labels = (torch.arange(64) % self.num_classes).to(self.device)
        self._grid_canvas = self._sample_canvas(64, grid_rng)
        self._grid_layout, _ = self._sample_layout(64, grid_rng)

    # ---------------------------------------------------------------- setup helpers
    def _trainable_student_parameters(self) -> List[nn.Parameter]:
        """The student's parameters minus those named by ``frozen_student`` (each prefix must match)."""
        named = list(self.student.named_parameters())
        for prefix in self.cfg.frozen_student:
            if not any(name.startswith(prefix) for name, _ in named):
                raise ValueError(f"frozen_student prefix {prefix!r} matches no parameter of the student; "
                                 f"its parameters start with {sorted({n.split('.')[0] for n, _ in named})}")
        return [p for name, p in named if not name.startswith(tuple(self.cfg.frozen_student))]

    @torch.no_grad()
    def _probe_num_classes(self) -> int:
        out, _ = self.teacher_view(torch.full((1, self.in_chans, self.image_size, self.image_size), 0.5,
                                              device=self.device))
        return int(out["heatmap"].shape[1] if self.task == "detection" else out.shape[1])

    def _stat_targets(self, images: Optional[torch.Tensor],
                      stored: Optional[List[Tuple[torch.Tensor, torch.Tensor]]]) -> Tuple[list, str]:
        """``(targets, source)`` of the feature-statistics prior: from ``images`` when given,
        else the teacher's stored statistics (per ``cfg.feature_stats_source``), else smooth
        noise (see the module docstring)."""
        source = self.cfg.feature_stats_source
        if images is not None:
            expected = (self.in_chans, self.image_size, self.image_size)
            if images.ndim != 4 or tuple(images.shape[1:]) != expected:
                raise ValueError(f"stats_images must be (N, {expected[0]}, {expected[1]}, {expected[2]}), "
                                 f"got {tuple(images.shape)}")
            stats, _ = record_token_statistics(self.teacher, images.float().split(64))
            return self._on_device(stats), "images"
        if source == "teacher" and stored is None:
            raise ValueError("feature_stats_source is 'teacher' but the teacher checkpoint holds no token "
                             "statistics (checkpoints from before they were recorded; retrain, or use 'auto')")
        if stored is not None and source != "noise":
            check_fits(stored, self.teacher)
            return self._on_device(stored), "teacher"
        noise_rng = torch.Generator().manual_seed(self.cfg.seed + 2)

        def smooth_noise():
            for i in range(max(1, self.cfg.stats_batches)):
                scale = 2 ** (1 + i % 3)          # blobs of 2, 4 and 8 pixels
                side = max(1, self.image_size // scale)
                low = torch.rand(16, self.in_chans, side, side, generator=noise_rng)
                yield F.interpolate(low, size=(self.image_size, self.image_size), mode="bilinear",
                                    align_corners=False)

        stats, _ = record_token_statistics(self.teacher, smooth_noise())
        return self._on_device(stats), "noise"

    def _on_device(self, stats: List[Tuple[torch.Tensor, torch.Tensor]]) -> List[Tuple[torch.Tensor, torch.Tensor]]:
        return [(m.detach().float().to(self.device), s.detach().float().to(self.device)) for m, s in stats]

    # ---------------------------------------------------------------- sampling
    def _sample_canvas(self, count: int, generator: torch.Generator) -> Optional[torch.Tensor]:
        if self.cfg.generator_canvas == "none":
            return None
        return dead_leaves(count, self.image_size, generator, channels=self.in_chans).to(self.device)

    def _sample_layout(self, count: int, generator: torch.Generator) -> Tuple[Optional[torch.Tensor], Optional[list]]:
        """``(masks, layouts)`` for a layout-conditional generator (``detection_prior: layout``), else ``(None, None)``."""
        if not self.layout_conditional:
            return None, None
        layouts = sample_layouts(count, self.image_size, self.num_classes, generator,
                                 objects=self.cfg.layout_objects, sides=self.cfg.layout_sides,
                                 max_aspect=self.cfg.layout_max_aspect)
        return layout_masks(layouts, self.num_classes, self.image_size).to(self.device), layouts

    def _generate(self, count: int) -> Tuple[torch.Tensor, Optional[torch.Tensor], Optional[list]]:
        """``(images, labels, layouts)``: ``count`` fresh images from the generator (labels only
        when conditional, layouts only when layout-conditional)."""
        latent, labels = self._sample_latent(count)
        masks, layouts = self._sample_layout(count, self.rng)
        return self.generator(latent, labels, self._sample_canvas(count, self.rng), masks), labels, layouts

    def _sample_latent(self, count: int) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        latent = self.generator.sample_latent(count, self.rng)
        labels = torch.randint(0, self.num_classes, (count,), generator=self.rng).to(self.device) \
            if self.generator.num_classes else None
        return latent, labels

    def _dead_leaves(self, count: int, generator: torch.Generator) -> torch.Tensor:
        """Procedural images in this config's style, through the fitted palette when asked."""
        images = dead_leaves(count, self.image_size, generator, channels=self.in_chans,
                             textured=self.cfg.procedural_style == "textured")
        if self.cfg.procedural_palette == "teacher":
            with torch.no_grad():
                images = self._fitted_palette()(images.to(self.device))
        return images

    def _fitted_palette(self) -> ColourTransform:
        """The colour map of procedural images, fitted to the teacher's token statistics once
        per run (own random stream, so the run's randomness does not depend on it)."""
        if self.palette is None:
            fit_rng = torch.Generator().manual_seed(self.cfg.seed + 4)
            style = self.cfg.procedural_style == "textured"

            def render(count: int) -> torch.Tensor:
                return dead_leaves(count, self.image_size, fit_rng, channels=self.in_chans,
                                   textured=style).to(self.device)

            def stats_loss(images: torch.Tensor) -> torch.Tensor:
                self.teacher_view(images)
                return feature_stats_loss(self.teacher_view.norm_inputs, self.stat_targets)

            with torch.enable_grad():
                self.palette, self.palette_losses = fit_colour_transform(
                    render, stats_loss, self.in_chans, steps=self.cfg.palette_fit_steps, progress=self.show_progress)
            self.palette.to(self.device)
            self.teacher_view.norm_inputs = []
        return self.palette

    def _with_image_priors(self, images: torch.Tensor, generator: torch.Generator,
                           objects_from: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Colour-jitter synthetic ``images`` and replace the last ``procedural_fraction`` of them
        with dead-leaves images (``image_priors.py``), carrying ``paste_objects`` of the
        teacher's detections in ``objects_from`` (fresh generator images) each."""
        images = colour_jitter(images, self.cfg.colour_jitter, generator)
        procedural = int(round(images.shape[0] * self.cfg.procedural_fraction))
        if procedural:
            leaves = self._dead_leaves(procedural, generator)
            if self.cfg.paste_objects and objects_from is not None:
                leaves = paste_boxes(leaves.to(objects_from.device), objects_from, self._teacher_boxes(objects_from),
                                     self.cfg.paste_objects, generator)
            images = torch.cat([images[:images.shape[0] - procedural], leaves.to(images.device)])
        return images

    @torch.no_grad()
    def _teacher_boxes(self, images: torch.Tensor) -> List[torch.Tensor]:
        """Per image, the teacher's boxes ``(N, 4)`` in pixels scoring above ``paste_threshold``."""
        rows = confident_detections(self.teacher(images), int(self.teacher.stride), self.cfg.paste_threshold)
        return [r[:, :4] for r in rows]

    def _augment(self, images: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        if cfg.mosaic_fraction:
            images = mosaic(images, cfg.mosaic_fraction, self.rng)
        if cfg.augment and cfg.augment_mode == "crop":
            images = random_crop_shift(images, cfg.crop_scale, cfg.max_shift, self.rng,
                                       flip=self.task == "detection")
        elif cfg.augment and cfg.max_shift > 0:
            dx, dy = torch.randint(-cfg.max_shift, cfg.max_shift + 1, (2,), generator=self.rng).tolist()
            images = torch.roll(images, shifts=(dy, dx), dims=(2, 3))
            if self.task == "detection" and bool(torch.rand((), generator=self.rng) < 0.5):
                images = images.flip(3)
        if cfg.cutmix_prob > 0 and bool(torch.rand((), generator=self.rng) < cfg.cutmix_prob):
            # Paste a random box from a shuffled copy; the teacher labels the mixed image itself.
            b, _, h, w = images.shape
            perm = torch.randperm(b, generator=self.rng)
            bh, bw = (torch.randint(h // 4, h // 2 + 1, (1,), generator=self.rng).item(),
                      torch.randint(w // 4, w // 2 + 1, (1,), generator=self.rng).item())
            y0 = torch.randint(0, h - bh + 1, (1,), generator=self.rng).item()
            x0 = torch.randint(0, w - bw + 1, (1,), generator=self.rng).item()
            images = images.clone()
            images[:, :, y0:y0 + bh, x0:x0 + bw] = images[perm.to(images.device), :, y0:y0 + bh, x0:x0 + bw]
        return images

    def _jitter_for_generator(self, images: torch.Tensor) -> torch.Tensor:
        """The generator's images as teacher and student judge them in a generator step."""
        cfg = self.cfg
        flip = self.task == "detection"
        if cfg.generator_jitter == "roll":
            return random_roll(images, cfg.generator_jitter_shift, self.rng, flip=flip)
        if cfg.generator_jitter == "crop":
            return random_crop_shift(images, cfg.crop_scale, cfg.generator_jitter_shift, self.rng, flip=flip)
        return images

    # ---------------------------------------------------------------- losses by task
    def _discrepancy(self, s_out: Any, t_out: Any) -> torch.Tensor:
        """Per-image teacher-student gap the generator maximises."""
        if self.task == "classification":
            return _kl(s_out, t_out, 1.0, reduction="none")
        t_heat, s_heat = torch.sigmoid(t_out["heatmap"]), torch.sigmoid(s_out["heatmap"])
        gap = (t_heat - s_heat).abs().flatten(1).mean(1)
        weight = t_heat.amax(1, keepdim=True)
        box = ((t_out["size"] - s_out["size"]).abs() * weight).flatten(1).mean(1)
        return gap + box

    def _teacher_priors(self, t_out: Any, labels: Optional[torch.Tensor],
                        layouts: Optional[list] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """(confidence loss, class-balance loss) from the teacher's outputs; with a layout, the
        teacher's CenterNet loss against the sampled boxes, whose classes are balanced already."""
        if self.task == "classification":
            probs = F.softmax(t_out, 1)
            if labels is not None:
                confidence = F.cross_entropy(t_out, labels)
            else:
                confidence = -(probs * F.log_softmax(t_out, 1)).sum(1).mean()
            mean = probs.mean(0)
        elif layouts is not None:
            from evit_training.engine.losses import detection_loss
            targets = centernet_targets(layouts, t_out["heatmap"], int(self.teacher.stride))
            return detection_loss(t_out, targets)["total"], torch.zeros((), device=t_out["heatmap"].device)
        elif self.cfg.detection_prior == "peaks":
            confidence, mean = heatmap_peak_priors(t_out["heatmap"], self.cfg.target_objects)
        else:
            heat = torch.sigmoid(t_out["heatmap"]).flatten(2)             # (B, C, HW)
            peaks = heat.amax(2)                                          # (B, C)
            k = min(4, heat.shape[2])
            # Confidence: each image should hold a few clear objects of the classes it shows.
            confidence = -(heat.topk(k, dim=2).values.mean(2).amax(1) + 1e-6).log().mean()
            mean = peaks.mean(0) / peaks.mean(0).sum().clamp(min=1e-6)
        balance = math.log(self.num_classes) + (mean * (mean + 1e-8).log()).sum()
        return confidence, balance

    def _student_loss(self, s_out: Any, t_out: Any) -> Dict[str, torch.Tensor]:
        if self.task == "classification":
            return {"kl": self.cfg.w_kl * _kl(s_out, t_out, self.cfg.temperature)}
        from evit_training.distill.logit_kd import logit_kd_loss
        terms = logit_kd_loss(s_out, t_out, temperature=self.cfg.temperature, box_weight=self.cfg.w_box,
                              focal_gamma=self.cfg.heatmap_focal_gamma)
        out = {"kl": self.cfg.w_kl * terms["heatmap"], "box": terms["box"]}
        if self.cfg.w_pseudo_labels:
            from evit_training.engine.losses import detection_loss
            targets = pseudo_label_targets(t_out, int(self.teacher.stride), self.cfg.pseudo_label_threshold)
            out["pseudo"] = self.cfg.w_pseudo_labels * detection_loss(s_out, targets)["total"]
        return out


    # ---------------------------------------------------------------- steps
    def generator_step(self, adversarial: bool = True) -> Dict[str, float]:
        """One generator update; ``adversarial=False`` uses the teacher priors only (warm-up)."""
        cfg = self.cfg
        self.generator.train()
        images, labels, layouts = self._generate(cfg.batch_size)
        seen = self._jitter_for_generator(images)
        t_out, t_tokens = self.teacher_view(seen)
        norm_inputs = self.teacher_view.norm_inputs
        terms: Dict[str, torch.Tensor] = {}
        if cfg.w_feature_stats:
            terms["stats"] = cfg.w_feature_stats * feature_stats_loss(norm_inputs, self.stat_targets)
        if cfg.w_batchnorm_stats:
            terms["bn_stats"] = cfg.w_batchnorm_stats * batchnorm_stats_loss(self.teacher_view.batchnorm_inputs)
        if cfg.w_patch_similarity:
            entropy = torch.stack([patch_similarity_entropy(x, generator=self.rng) for x in norm_inputs]).mean()
            terms["patch_sim"] = -cfg.w_patch_similarity * entropy
        confidence, balance = self._teacher_priors(t_out, labels, layouts)
        if cfg.w_confidence:
            terms["confidence"] = cfg.w_confidence * confidence
        if cfg.w_class_balance:
            terms["balance"] = cfg.w_class_balance * balance
        if cfg.w_total_variation:
            terms["tv"] = cfg.w_total_variation * total_variation(images)
        if cfg.w_diversity:
            terms["diversity"] = -cfg.w_diversity * batch_diversity(images, t_tokens)
        if adversarial and cfg.w_adversarial:
            s_out, _ = self.student_view(seen)
            gap = self._discrepancy(s_out, t_out).clamp(max=cfg.adversarial_clip).mean()
            terms["adversarial"] = -cfg.w_adversarial * gap
        loss = torch.stack(list(terms.values())).sum()
        self.opt_g.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_g.step()
        self.student.zero_grad(set_to_none=True)   # the generator's backward reached the student
        record = {"g_" + k: float(v.detach()) for k, v in terms.items()}
        if self.task == "detection":
            # Diagnostic only: objects the teacher sees per synthetic image (3x3 peaks above 0.3).
            best = torch.sigmoid(t_out["heatmap"].detach()).amax(1)
            peaks = _local_maxima(best) & (best > 0.3)
            record["g_objects"] = float(peaks.flatten(1).sum(1).float().mean())
        return record

    def student_step(self) -> Dict[str, float]:
        """One student update on fresh synthetic images mixed with the memory bank, colour-jittered,
        with a share of dead-leaves images (``procedural_fraction``), augmented."""
        cfg = self.cfg
        with torch.no_grad():
            fresh, _, _ = self._generate(cfg.batch_size)
            from_bank = int(round(cfg.batch_size * cfg.memory_fraction)) if self.bank.count else 0
            batch = fresh[:cfg.batch_size - from_bank]
            if from_bank:
                batch = torch.cat([batch, self.bank.sample(from_bank, self.rng).to(fresh.device)])
            self.bank.push(fresh)
            batch = self._augment(self._with_image_priors(batch, self.rng, objects_from=fresh))
            t_out, t_tokens = self.teacher_view(batch)
            teacher_norm_inputs = self.teacher_view.norm_inputs
        self.student.train()
        s_out, s_tokens = self.student_view(batch)
        terms = self._student_loss(s_out, t_out)
        if cfg.w_feature:
            terms["feature"] = cfg.w_feature * patch_relation_loss(s_tokens, t_tokens)
        if cfg.w_inherited_tokens:
            terms["inherited"] = cfg.w_inherited_tokens * inherited_token_loss(
                self.student_view.norm_inputs, teacher_norm_inputs, self.inherited_channels)
        loss = torch.stack(list(terms.values())).sum()
        self.student.zero_grad(set_to_none=True)   # frozen parameters too: they are not in opt_s
        loss.backward()
        self.opt_s.step()
        if self.anchor is not None:
            with torch.no_grad():
                pull = self.opt_s.param_groups[0]["lr"] * cfg.anchor_decay
                for param, start in zip(self.student.parameters(), self.anchor):
                    param.sub_(pull * (param - start))
        self.sched_s.step()
        if self.student_ema is not None:
            with torch.no_grad():
                for key, value in self.student.state_dict().items():
                    if value.is_floating_point():
                        self.student_ema[key].lerp_(value, 1.0 - cfg.student_ema)
                    else:
                        self.student_ema[key].copy_(value)
        return {"s_" + k: float(v.detach()) for k, v in terms.items()}

    # ---------------------------------------------------------------- driver
    def fit(self, until_step: Optional[int] = None) -> nn.Module:
        """Run (or resume) until ``until_step`` student steps (default ``cfg.steps``); returns the student
        (with ``fade_fraction``: extracted from the faded copy once the budget is spent, the copy before).

        Writes ``last.pt`` every ``checkpoint_every`` steps and when it stops, a PNG grid every
        ``grid_every`` steps and ``history.json`` at the end.
        """
        cfg = self.cfg
        target = cfg.steps if until_step is None else min(int(until_step), cfg.steps)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if self.resume and (self.out_dir / CHECKPOINT_NAME).is_file():
            self.load_checkpoint(self.out_dir / CHECKPOINT_NAME)
        start = time.perf_counter()
        elapsed_before = self.elapsed_s
        if cfg.procedural_fraction and cfg.procedural_palette == "teacher":
            self._fitted_palette()
        if self.warmup_done < cfg.warmup_generator_steps:
            for _ in tqdm(range(self.warmup_done, cfg.warmup_generator_steps), desc="data-free warm-up",
                          disable=not self.show_progress, leave=False):
                self.generator_step(adversarial=False)
                self.warmup_done += 1
        bar = tqdm(total=target, initial=self.step, desc="data-free KD", disable=not self.show_progress)
        record: Dict[str, float] = {}
        while self.step < target:
            if self.fading is not None:
                self.fading.alpha = self._fade(self.step + 1)
            if self.step % cfg.student_steps == 0:
                for _ in range(cfg.generator_steps):
                    record.update(self.generator_step())
            record.update(self.student_step())
            self.step += 1
            bar.update(1)
            if self.step % cfg.log_every == 0 or self.step == target:
                self.history.append({"step": self.step, **record})
                bar.set_postfix({k: f"{v:.3f}" for k, v in record.items() if k in ("s_kl", "g_adversarial")})
            if self.step % cfg.grid_every == 0:
                self.save_grid()
            self.elapsed_s = elapsed_before + time.perf_counter() - start
            if self.step % cfg.checkpoint_every == 0 and self.step < target:
                self.save_checkpoint(self.out_dir / CHECKPOINT_NAME)
        bar.close()
        self.elapsed_s = elapsed_before + time.perf_counter() - start
        self.save_checkpoint(self.out_dir / CHECKPOINT_NAME)
        (self.out_dir / "history.json").write_text(json.dumps(self.history, indent=1))
        if self.student_ema is not None and self.step >= cfg.steps:
            self.student.load_state_dict(self.student_ema)   # after the checkpoint, which keeps both
        if self.fading is not None and self.step >= cfg.steps:
            self.fading.alpha = 0.0
            return self.fading.extract()
        return self.student

    @torch.no_grad()
    def synthesize(self, count: int, labels: Optional[torch.Tensor] = None,
                   generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """``count`` images from the current generator (eval mode), in [0, 1]."""
        self.generator.eval()
        rng = generator or torch.Generator().manual_seed(0)
        latent = self.generator.sample_latent(count, rng)
        if self.generator.num_classes and labels is None:
            labels = (torch.arange(count) % self.num_classes).to(self.device)
        canvas = self._sample_canvas(count, rng)
        images = self.generator(latent, labels if self.generator.num_classes else None, canvas,
                                self._sample_layout(count, rng)[0])
        self.generator.train()
        return images

    @torch.no_grad()
    def save_grid(self, path: Optional[Path] = None) -> Path:
        """PNG grid of 64 images from fixed latents (and labels 0..C-1 repeating), eval mode."""
        from torchvision.utils import save_image

        path = path or self.out_dir / "samples" / f"step_{self.step:06d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        was_training = self.generator.training
        self.generator.eval()
        images = self.generator(self._grid_latent, self._grid_labels if self.generator.num_classes else None,
                                self._grid_canvas, self._grid_layout)
        self.generator.train(was_training)
        save_image(images, path, nrow=8, padding=1)
        return path

    @torch.no_grad()
    def save_student_view(self, path: Union[str, Path], count: int = 64) -> Path:
        """PNG grid of images as the student's batches mix them: the current generator's, with
        this config's colour jitter and share of dead-leaves images (no bank, no augmentation;
        the run's own random state is left alone)."""
        from torchvision.utils import save_image

        rng = torch.Generator().manual_seed(self.cfg.seed + 3)
        fresh = self.synthesize(count, generator=rng)
        images = self._with_image_priors(fresh, rng, objects_from=fresh)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_image(images, path, nrow=8, padding=1)
        return path

    # ---------------------------------------------------------------- checkpoints
    def state_dict(self) -> Dict[str, Any]:
        """Everything that decides the rest of the run."""
        return {
            "format": "evit-data-free", "version": 1, "task": self.task, "config": asdict(self.cfg),
            "step": self.step, "warmup_done": self.warmup_done, "elapsed_s": self.elapsed_s,
            "generator": self.generator.state_dict(), "student": self.student.state_dict(),
            "opt_g": self.opt_g.state_dict(), "opt_s": self.opt_s.state_dict(), "sched_s": self.sched_s.state_dict(),
            "student_ema": self.student_ema, "anchor": self.anchor,
            "palette": None if self.palette is None else self.palette.state_dict(),
            "palette_losses": self.palette_losses, "bank": self.bank.state_dict(),
            "rng": self.rng.get_state(), "torch_rng": torch.get_rng_state(),
            "numpy_rng": np.random.get_state(), "python_rng": random.getstate(), "history": self.history,
        }

    def save_checkpoint(self, path: Union[str, Path]) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(self.state_dict(), tmp)
        tmp.replace(path)   # never leave a half-written checkpoint behind
        return path

    def load_checkpoint(self, path: Union[str, Path]) -> None:
        """Restore a state written by :meth:`save_checkpoint` (same task and architectures)."""
        state = torch.load(Path(path), map_location="cpu", weights_only=False)
        if state.get("format") != "evit-data-free":
            raise ValueError(f"{path} is not a data-free KD checkpoint")
        if state["task"] != self.task:
            raise ValueError(f"{path} was written for task {state['task']!r}, not {self.task!r}")
        self.generator.load_state_dict(state["generator"])
        self.student.load_state_dict(state["student"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_s.load_state_dict(state["opt_s"])
        self.sched_s.load_state_dict(state["sched_s"])
        if state.get("palette") is not None:
            self.palette = ColourTransform(self.in_chans).requires_grad_(False).eval()
            self.palette.load_state_dict(state["palette"])
            self.palette.to(self.device)
            self.palette_losses = list(state.get("palette_losses", []))
        if self.anchor is not None:
            if state.get("anchor") is None:
                raise ValueError(f"{path} was written without anchor_decay; resume it with anchor_decay: 0")
            self.anchor = [p.clone() for p in state["anchor"]]
        if self.student_ema is not None:
            if state.get("student_ema") is None:
                raise ValueError(f"{path} was written without student_ema; resume it with student_ema: 0")
            self.student_ema = {k: v.clone() for k, v in state["student_ema"].items()}
        self.bank.load_state_dict(state["bank"])
        self.rng.set_state(state["rng"])
        torch.set_rng_state(state["torch_rng"])
        np.random.set_state(state["numpy_rng"])
        random.setstate(state["python_rng"])
        self.step, self.warmup_done = int(state["step"]), int(state["warmup_done"])
        self.elapsed_s = float(state.get("elapsed_s", 0.0))
        self.history = list(state["history"])

    def close(self) -> None:
        """Remove the forward hooks placed on teacher and student."""
        self.teacher_view.close()
        self.student_view.close()


def _budget_factor(steps: int, warmup_fraction: float = 0.05) -> Callable[[int], float]:
    """Warm-up then cosine decay, both tied to the step budget."""
    warmup = max(1, int(steps * warmup_fraction))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, steps - warmup))))

    return factor


# ----------------------------------------------------------------------------- config entry point
def _load_model(spec: Any, task: str, role: str) -> nn.Module:
    """A model from a checkpoint path or a named config."""
    if isinstance(spec, nn.Module):
        return spec
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"{role} must be a checkpoint path or a named config, got {spec!r}")
    is_file = Path(spec).is_file()
    if task == "classification":
        from evit_training.classification.models import CLASSIFIER_CONFIGS, create_classifier, load_classifier
        if is_file:
            return load_classifier(spec)
        if spec in CLASSIFIER_CONFIGS:
            return create_classifier(spec)
        raise ValueError(f"{role} {spec!r} is neither a file nor one of {sorted(CLASSIFIER_CONFIGS)}")
    from evit_training.models import config_names, create_detector
    if is_file:
        from evit_training.models.checkpoint import load_model
        return load_model(spec)
    if spec in config_names():
        return create_detector(spec)
    raise ValueError(f"{role} {spec!r} is neither a file nor one of {config_names()}")


def teacher_layer_moments(teacher: nn.Module, stored: Optional[Mapping[str, Any]], source: str = "auto",
                          images: int = 256, seed: int = 0) -> Tuple[Mapping[str, Any], str]:
    """``(moments, source used)``: the teacher's layer-input moments for compensated selection.

    ``stored`` is what its checkpoint carries (``layer_moments.from_checkpoint``; ``None`` for
    a teacher trained elsewhere). ``source``: "teacher" insists on them, "procedural" measures
    them on ``images`` textured dead-leaves images instead (no data at all; a weaker start,
    mAP@0.5 0.13 against 0.21 for the benchmark's student, which after data-free KD ends where
    a plain cut ends), "auto" takes the stored ones when there are any.
    """
    from evit_training.models.layer_moments import record_layer_moments

    if source not in MOMENT_SOURCES:
        raise ValueError(f"compensation moments source must be one of {MOMENT_SOURCES}, got {source!r}")
    if source in ("auto", "teacher") and stored is not None:
        return stored, "teacher"
    if source == "teacher":
        raise ValueError("compensation_moments 'teacher': the teacher checkpoint carries no layer_moments "
                         "(train it with the project's trainer, or use 'procedural')")
    size, channels = _model_geometry(teacher)
    rng = torch.Generator().manual_seed(seed)
    batches = (dead_leaves(min(32, images - start), size, rng, channels=channels, textured=True)
               for start in range(0, images, 32))
    return record_layer_moments(teacher, batches)[0], "procedural"


def run_from_config(config: Mapping[str, Any], out_dir: Optional[Union[str, Path]] = None,
                    resume: bool = True, show_progress: bool = True,
                    device: Optional[str] = None) -> Dict[str, Any]:
    """Run data-free KD described by a config mapping (as loaded from ``data_free_*.yaml``).

    Keys: ``task`` ("classification"|"detection"), ``teacher`` (checkpoint path; a teacher
    must be trained - a named config would be random), ``student`` (named config or
    checkpoint to start from), ``student_init`` ("random"; "weight_selection": a named
    student starts from a consistent subset of the teacher's weights, see
    :mod:`evit_training.models.weight_selection`; "compensated_selection" (detection): the
    same, then every layer that lost inputs refit in closed form from the teacher's
    layer-input moments, see :mod:`evit_training.models.compensation`),
    ``compensation_moments`` ("auto": the teacher checkpoint's ``layer_moments``, else
    measured on procedural images; "teacher"; "procedural"), ``out_dir``, ``data_free``
    (:class:`DataFreeConfig` fields),
    optional ``evaluate`` ("digits": accuracy on the digits test split, for the study only).
    ``device``: "cpu", "cuda", "cuda:N" or "auto"/None (CUDA when available).
    Returns ``{"student": path of the saved student, "out_dir", "steps", "elapsed_s", ...}``.
    """
    allowed = {"task", "teacher", "student", "student_init", "compensation_moments", "out_dir", "data_free",
               "evaluate"}
    unknown = sorted(set(config) - allowed)
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in data-free config; allowed: {sorted(allowed)}")
    task = config.get("task", "classification")
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    if "teacher" not in config:
        raise ValueError("data-free config needs 'teacher': a trained teacher checkpoint")
    if isinstance(config["teacher"], str) and not Path(config["teacher"]).is_file():
        raise FileNotFoundError(f"teacher checkpoint not found: {config['teacher']} (data-free KD needs a "
                                "trained teacher; train one with `evit train` first)")
    student_init = config.get("student_init", "random")
    if student_init not in STUDENT_INITS:
        raise ValueError(f"student_init must be one of {STUDENT_INITS}, got {student_init!r}")
    moments_source = config.get("compensation_moments", "auto")
    if moments_source not in MOMENT_SOURCES:
        raise ValueError(f"compensation_moments must be one of {MOMENT_SOURCES}, got {moments_source!r}")
    if student_init == "compensated_selection" and task != "detection":
        raise ValueError("student_init 'compensated_selection' refits detectors; use 'weight_selection' "
                         f"for task {task!r}")
    out = Path(out_dir or config.get("out_dir") or "runs/data_free")
    cfg = DataFreeConfig.from_dict(config.get("data_free") or {})
    teacher = _load_model(config["teacher"], task, "teacher")
    # What the teacher file carries besides its weights: token statistics, layer moments.
    teacher_doc = torch.load(config["teacher"], map_location="cpu", weights_only=False) \
        if isinstance(config["teacher"], str) else {}
    from evit_training.distill.token_statistics import from_checkpoint
    token_stats = from_checkpoint(teacher_doc)
    student_spec = config.get("student", "digits_student" if task == "classification" else "student_tiny")
    student = _load_model(student_spec, task, "student")
    inherited = None
    if cfg.fade_fraction and student_init != "weight_selection":
        raise ValueError("data_free.fade_fraction is weight selection done gradually: it needs "
                         f"student_init: weight_selection, got {student_init!r}")
    if student_init in ("weight_selection", "compensated_selection"):
        if isinstance(student_spec, str) and Path(student_spec).is_file():
            raise ValueError(f"student_init {student_init!r} initialises a named student config; "
                             f"{student_spec} is a checkpoint with weights of its own")
    if student_init == "weight_selection":
        from evit_training.models.weight_selection import select_weights
        inherited = select_weights(teacher, student)["residual"]
    elif student_init == "compensated_selection":
        from evit_training.models.compensation import compensated_selection
        from evit_training.models.layer_moments import from_checkpoint as moments_from_checkpoint
        moments, moments_source = teacher_layer_moments(teacher, moments_from_checkpoint(teacher_doc), moments_source)
        inherited = compensated_selection(teacher, student, moments)["residual"]
    if device in (None, "auto"):
        device = "cuda" if torch.cuda.is_available() else "cpu"
    distiller = DataFreeDistiller(teacher, student, cfg, out, task=task, resume=resume,
                                  show_progress=show_progress, token_stats=token_stats,
                                  inherited_channels=inherited, device=device)
    student = distiller.fit()
    distiller.save_grid(out / "samples" / "final.png")
    if cfg.procedural_fraction or cfg.colour_jitter:   # the student saw more than the generator's grid shows
        distiller.save_student_view(out / "samples" / "student_view.png")
    distiller.close()
    result: Dict[str, Any] = {"out_dir": str(out), "steps": distiller.step, "elapsed_s": round(distiller.elapsed_s, 2),
                              "feature_stats_source": distiller.stats_source, "student_init": student_init}
    if student_init == "compensated_selection":
        result["compensation_moments"] = moments_source
    if task == "classification":
        from evit_training.classification.models import save_classifier
        result["student"] = str(save_classifier(student, out / "student.pt", data_free=asdict(cfg)))
        if config.get("evaluate") == "digits":
            from evit_training.classification import evaluate_accuracy, load_digits_split
            _, test = load_digits_split(image_size=distiller.image_size)
            result["accuracy"] = evaluate_accuracy(student.cpu(), test)
        elif config.get("evaluate") is not None:
            raise ValueError(f"evaluate must be 'digits' or absent, got {config.get('evaluate')!r}")
    else:
        from evit_training.models.checkpoint import save_checkpoint
        result["student"] = str(save_checkpoint(student, out / "student.pt", stage="data_free_kd",
                                                data_free=asdict(cfg)))
    (out / "result.json").write_text(json.dumps(result, indent=1))
    return result
