"""Supervised and knowledge-distillation training of the small classifiers, and accuracy.

One loop serves three benchmark arms: labels only (``teacher=None``), KD on real images
(``teacher`` given, ``kd_alpha`` mixes KL and cross-entropy), and teacher training itself.
The learning-rate warm-up and cosine decay are tied to the step budget (a warm-up that never
finishes inside a short budget was measured to halve accuracy).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from evit_training.classification.digits import DigitsDataset


def budget_schedule(optimizer: torch.optim.Optimizer, steps: int,
                    warmup_fraction: float = 0.05) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over ``warmup_fraction`` of ``steps``, then cosine decay to zero."""
    warmup = max(1, int(steps * warmup_fraction))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, steps - warmup))))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def kd_kl_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton KD: KL(teacher || student) on softened distributions, scaled by T^2."""
    return F.kl_div(F.log_softmax(student_logits / temperature, dim=1),
                    F.log_softmax(teacher_logits / temperature, dim=1),
                    reduction="batchmean", log_target=True) * temperature ** 2


def train_classifier(model: nn.Module, dataset: DigitsDataset, steps: int, batch_size: int = 64,
                     lr: float = 2e-3, weight_decay: float = 0.05, teacher: Optional[nn.Module] = None,
                     temperature: float = 4.0, kd_alpha: float = 1.0, seed: int = 0,
                     augment: bool = True, desc: str = "train") -> nn.Module:
    """Train ``model`` for exactly ``steps`` optimizer steps; returns it in eval mode.

    With ``teacher`` the loss is ``kd_alpha * KL + (1 - kd_alpha) * CE``; without, plain CE.
    ``augment`` applies small random translations (digits are not flip-invariant).
    """
    if steps <= 0:
        raise ValueError(f"steps must be positive, got {steps}")
    torch.manual_seed(seed)
    rng = torch.Generator().manual_seed(seed)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=len(dataset) > batch_size,
                        generator=rng)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = budget_schedule(optimizer, steps)
    if teacher is not None:
        teacher.eval()
    model.train()
    step = 0
    with tqdm(total=steps, desc=desc, leave=False) as bar:
        while step < steps:
            for images, labels in loader:
                if augment:
                    images = random_translate(images, max_shift=2, generator=rng)
                logits = model(images)
                if teacher is None:
                    loss = F.cross_entropy(logits, labels)
                else:
                    with torch.no_grad():
                        teacher_logits = teacher(images)
                    loss = kd_alpha * kd_kl_loss(logits, teacher_logits, temperature)
                    if kd_alpha < 1.0:
                        loss = loss + (1.0 - kd_alpha) * F.cross_entropy(logits, labels)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.3f}")
                if step >= steps:
                    break
    return model.eval()


def random_translate(images: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Shift each image by up to ``max_shift`` pixels (zero padding), one shift per batch."""
    dx, dy = (torch.randint(-max_shift, max_shift + 1, (2,), generator=generator)).tolist()
    if dx == 0 and dy == 0:
        return images
    padded = F.pad(images, (max_shift, max_shift, max_shift, max_shift))
    h, w = images.shape[-2:]
    return padded[..., max_shift + dy:max_shift + dy + h, max_shift + dx:max_shift + dx + w]


@torch.no_grad()
def evaluate_accuracy(model: nn.Module, dataset: DigitsDataset, batch_size: int = 256) -> float:
    """Top-1 accuracy of ``model`` on ``dataset`` in [0, 1]."""
    was_training = model.training
    model.eval()
    correct = 0
    for start in range(0, len(dataset), batch_size):
        logits = model(dataset.images[start:start + batch_size])
        correct += int((logits.argmax(1) == dataset.labels[start:start + batch_size]).sum())
    model.train(was_training)
    return correct / max(1, len(dataset))
