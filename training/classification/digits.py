"""scikit-learn's bundled handwritten digits (8x8, 16 grey levels) as a 32x32 image dataset.

The set ships inside scikit-learn, so it works offline. Images are upscaled bilinearly to
``image_size`` and scaled to [0, 1]; the split is stratified and seeded so every arm of a
benchmark sees the same train/test images.
"""
from __future__ import annotations

from typing import Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

NUM_CLASSES = 10


class DigitsDataset(Dataset):
    """Tensor-backed digits: ``images`` (N,1,S,S) float in [0,1], ``labels`` (N,) int64."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        if images.ndim != 4 or images.shape[0] != labels.shape[0]:
            raise ValueError(f"images must be (N,C,H,W) matching labels (N,), got {tuple(images.shape)} "
                             f"and {tuple(labels.shape)}")
        self.images = images
        self.labels = labels
        self.num_classes = NUM_CLASSES

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, torch.Tensor]:
        return self.images[index], self.labels[index]

    def subset(self, count: int, seed: int = 0) -> "DigitsDataset":
        """A seeded random subset of ``count`` images (the "tiny real subset" arms)."""
        order = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))[:count]
        return DigitsDataset(self.images[order], self.labels[order])


def load_digits_split(image_size: int = 32, test_fraction: float = 0.2,
                      seed: int = 0) -> Tuple[DigitsDataset, DigitsDataset]:
    """Return ``(train, test)`` digits datasets at ``image_size`` x ``image_size``, one channel."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if image_size < 8:
        raise ValueError(f"image_size must be >= 8 (digits are 8x8), got {image_size}")
    bunch = load_digits()
    images = torch.from_numpy(bunch.images.astype(np.float32) / 16.0).unsqueeze(1)
    images = F.interpolate(images, size=(image_size, image_size), mode="bilinear", align_corners=False)
    images = images.clamp_(0.0, 1.0)
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    train_idx, test_idx = train_test_split(np.arange(len(labels)), test_size=test_fraction,
                                           random_state=seed, stratify=bunch.target)
    train_idx, test_idx = torch.from_numpy(train_idx), torch.from_numpy(test_idx)
    return (DigitsDataset(images[train_idx], labels[train_idx]),
            DigitsDataset(images[test_idx], labels[test_idx]))
