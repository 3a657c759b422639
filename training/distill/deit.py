"""DeiT-style distillation for classification: a distillation token learns from the teacher.

The student is timm's ``VisionTransformerDistilled`` (class token + distillation token,
Touvron et al. 2021). In training its class-token head fits the labels and its
distillation-token head fits the teacher - hard (teacher's argmax, DeiT's best) or soft
(tempered KL); at inference both heads are averaged.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from timm.models.deit import VisionTransformerDistilled
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

DISTILLATION_KINDS = ("hard", "soft", "none")


class DeiTClassifier(nn.Module):
    """``VisionTransformerDistilled`` on images in ``[0, 1]`` (normalised inside).

    ``forward`` returns ``(cls_logits, dist_logits)`` in training mode and their mean in
    eval mode.
    """

    def __init__(self, arch: Dict[str, Any], mean: float = 0.5, std: float = 0.5) -> None:
        super().__init__()
        self.arch = dict(arch)
        self.backbone = VisionTransformerDistilled(**self.arch)
        self.backbone.set_distilled_training(True)
        self.register_buffer("pixel_mean", torch.tensor(float(mean)), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(float(std)), persistent=False)

    def forward(self, images: torch.Tensor) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
        return self.backbone((images - self.pixel_mean) / self.pixel_std)


def create_deit_student(img_size: int = 32, patch_size: int = 8, in_chans: int = 1, num_classes: int = 10,
                        embed_dim: int = 48, depth: int = 2, num_heads: int = 2, mlp_ratio: float = 2.0,
                        **kwargs: Any) -> DeiTClassifier:
    """A small DeiT student (defaults fit the 32x32 digits benchmark)."""
    return DeiTClassifier(dict(img_size=img_size, patch_size=patch_size, in_chans=in_chans,
                               num_classes=num_classes, embed_dim=embed_dim, depth=depth,
                               num_heads=num_heads, mlp_ratio=mlp_ratio, **kwargs))


class DeiTDistillationLoss(nn.Module):
    """``(1 - alpha) * CE(cls, labels) + alpha * distill(dist, teacher)``.

    ``hard``: cross-entropy to the teacher's predicted class; ``soft``: KL at temperature
    ``tau`` (times ``tau**2``); ``none``: both heads fit the labels (no teacher).
    """

    def __init__(self, teacher: Optional[nn.Module], kind: str = "hard", alpha: float = 0.5, tau: float = 1.0) -> None:
        super().__init__()
        if kind not in DISTILLATION_KINDS:
            raise ValueError(f"distillation kind {kind!r} not in {DISTILLATION_KINDS}")
        if kind != "none" and teacher is None:
            raise ValueError(f"{kind} distillation needs a teacher model")
        self.teacher, self.kind, self.alpha, self.tau = teacher, kind, float(alpha), float(tau)

    def forward(self, images: torch.Tensor, outputs, labels: torch.Tensor) -> torch.Tensor:
        if not isinstance(outputs, tuple):
            raise ValueError("DeiT distillation needs (cls_logits, dist_logits): call the student in train mode")
        cls_logits, dist_logits = outputs
        base = F.cross_entropy(cls_logits, labels)
        if self.kind == "none":
            return 0.5 * base + 0.5 * F.cross_entropy(dist_logits, labels)
        with torch.no_grad():
            teacher_logits = self.teacher(images)
        if self.kind == "soft":
            t = self.tau
            distill = F.kl_div(F.log_softmax(dist_logits / t, dim=1), F.log_softmax(teacher_logits / t, dim=1),
                               reduction="batchmean", log_target=True) * t * t
        else:
            distill = F.cross_entropy(dist_logits, teacher_logits.argmax(dim=1))
        return (1 - self.alpha) * base + self.alpha * distill


def distill_deit(student: DeiTClassifier, teacher: Optional[nn.Module], dataset: Dataset, steps: int,
                 kind: str = "hard", alpha: float = 0.5, tau: float = 1.0, batch_size: int = 64,
                 lr: float = 2e-3, weight_decay: float = 0.05, seed: int = 0, progress: bool = True) -> DeiTClassifier:
    """Train ``student`` for ``steps`` steps on ``(image, label)`` items; returns it in eval mode."""
    if steps < 1:
        raise ValueError(f"steps must be positive, got {steps}")
    from evit_training.engine.trainer import lr_factor

    torch.manual_seed(seed)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=len(dataset) > batch_size,
                        generator=torch.Generator().manual_seed(seed))
    criterion = DeiTDistillationLoss(teacher, kind, alpha, tau)
    if teacher is not None:
        teacher.eval()
    optimizer = torch.optim.AdamW(student.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, steps, 0.05, 0.02))
    student.train()
    step = 0
    with tqdm(total=steps, desc=f"deit-{kind}", disable=not progress, leave=False) as bar:
        while step < steps:
            for images, labels in loader:
                loss = criterion(images, student(images), labels)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.3f}")
                if step >= steps:
                    break
    return student.eval()
