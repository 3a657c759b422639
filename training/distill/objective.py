"""KDConfig and the combined distillation objective the trainer optimises.

``total = gt_weight * supervised + logit_weight * (heatmap KD + box KD)
+ feature_weight * feature KD``; the feature projector is part of this module so its
weights train (and synchronise under DDP) with the student.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Mapping, Optional

import torch
from torch import nn

from .feature_kd import FEATURE_LOSSES, FeatureProjector, feature_kd_loss
from .logit_kd import logit_kd_loss

CACHE_MODES = ("auto", "always", "never")


@dataclass
class KDConfig:
    """Distillation weights. ``teacher`` is a checkpoint path (used by the CLI/YAML)."""

    teacher: Optional[str] = None
    gt_weight: float = 1.0
    logit_weight: float = 1.0
    box_weight: float = 1.0
    temperature: float = 1.0
    feature_weight: float = 0.0
    feature_loss: str = "mse"
    #: Precompute teacher outputs once for a non-augmented training set ("auto": when the
    #: dataset does not augment); live teacher inference costs ~2/3 of a CPU step.
    cache_teacher: str = "auto"

    def validate(self) -> None:
        if self.feature_loss not in FEATURE_LOSSES:
            raise ValueError(f"kd.feature_loss {self.feature_loss!r} not in {FEATURE_LOSSES}")
        if self.cache_teacher not in CACHE_MODES:
            raise ValueError(f"kd.cache_teacher {self.cache_teacher!r} not in {CACHE_MODES}")
        if self.temperature <= 0:
            raise ValueError(f"kd.temperature must be positive, got {self.temperature}")
        for name in ("gt_weight", "logit_weight", "box_weight", "feature_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"kd.{name} must be >= 0, got {getattr(self, name)}")


class DistillationObjective(nn.Module):
    """KD terms for one batch given student outputs and (live or cached) teacher outputs."""

    def __init__(self, kd: KDConfig, student_dim: int, teacher_dim: int) -> None:
        super().__init__()
        kd.validate()
        self.kd = kd
        self.projector = FeatureProjector(student_dim, teacher_dim) if kd.feature_weight > 0 else None

    def forward(self, student: Mapping[str, torch.Tensor],
                teacher: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        kd = self.kd
        terms: Dict[str, torch.Tensor] = {}
        if kd.logit_weight > 0:
            logit = logit_kd_loss(student, teacher, kd.temperature, kd.box_weight)
            terms["kd_heatmap"] = kd.logit_weight * logit["heatmap"]
            terms["kd_box"] = kd.logit_weight * logit["box"]
        if self.projector is not None:
            projected = self.projector(student["tokens"], teacher["tokens"])
            terms["kd_feature"] = kd.feature_weight * feature_kd_loss(projected, teacher["tokens"], kd.feature_loss)
        return terms
