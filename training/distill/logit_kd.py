"""Dense-output (logit) KD for CenterNet heads: the student copies the teacher's maps.

Heatmaps are per-cell binary class probabilities, so the soft target is the teacher's
sigmoid at temperature ``T`` and the loss is binary cross-entropy (scaled by ``T**2`` as in
Hinton et al., normalised by the teacher's probability mass). Size and offset are copied
with L1 where the teacher sees an object (weighted by its peak class probability), since
elsewhere they are meaningless.
"""
from __future__ import annotations

from typing import Dict, Mapping

import torch
import torch.nn.functional as F


def heatmap_kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                    temperature: float = 1.0, focal_gamma: float = 0.0) -> torch.Tensor:
    """BCE between tempered student and teacher heatmap probabilities (mean over cells).

    ``focal_gamma > 0`` weights each cell by ``|p_student - p_teacher|^gamma``, so the many
    background cells the student already copies stop drowning the few where the teacher sees
    objects (used by data-free detection KD, whose synthetic scenes are mostly background).
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"heatmap shapes differ: student {tuple(student_logits.shape)} "
                         f"vs teacher {tuple(teacher_logits.shape)}; logit KD needs the same "
                         "input size and output stride")
    t = float(temperature)
    soft = torch.sigmoid(teacher_logits.float() / t)
    s_logits = student_logits.float() / t
    loss = F.binary_cross_entropy_with_logits(s_logits, soft, reduction="none")
    # BCE of a soft target never reaches 0; subtract the target's entropy so a perfect copy
    # scores 0 and the number reads as a divergence.
    loss = loss - F.binary_cross_entropy(soft, soft, reduction="none")
    if focal_gamma > 0:
        weight = (torch.sigmoid(s_logits) - soft).abs().pow(focal_gamma).detach()
        loss, soft = loss * weight, soft * weight
    # Normalised by the teacher's probability mass, like focal loss by its centre count, so
    # the term keeps its scale whether a scene holds 2 objects or 40.
    return loss.sum() / soft.sum().clamp(min=1.0) * t * t


def box_kd_loss(student: Mapping[str, torch.Tensor], teacher: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """L1 on size and offset maps, weighted by the teacher's per-cell peak probability."""
    weight = torch.sigmoid(teacher["heatmap"].float()).amax(dim=1, keepdim=True)
    total = weight.sum().clamp(min=1.0)
    loss = 0.0
    for key in ("size", "offset"):
        loss = loss + (torch.abs(student[key].float() - teacher[key].float()) * weight).sum() / total
    return loss


def logit_kd_loss(student: Mapping[str, torch.Tensor], teacher: Mapping[str, torch.Tensor],
                  temperature: float = 1.0, box_weight: float = 1.0,
                  focal_gamma: float = 0.0) -> Dict[str, torch.Tensor]:
    """``{"heatmap": ..., "box": ...}`` KD terms for one batch."""
    return {"heatmap": heatmap_kd_loss(student["heatmap"], teacher["heatmap"], temperature, focal_gamma),
            "box": box_weight * box_kd_loss(student, teacher)}
