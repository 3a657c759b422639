"""Generic image priors of data-free KD: dead-leaves images and colour jitter."""
from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from evit_training.distill.image_priors import colour_jitter, dead_leaves  # noqa: E402


def test_dead_leaves_shape_range_and_seed():
    images = dead_leaves(4, 48, torch.Generator().manual_seed(0), shapes=40)
    assert images.shape == (4, 3, 48, 48) and images.dtype == torch.float32
    assert images.min() >= 0.0 and images.max() <= 1.0
    again = dead_leaves(4, 48, torch.Generator().manual_seed(0), shapes=40)
    assert torch.equal(images, again)
    other = dead_leaves(4, 48, torch.Generator().manual_seed(1), shapes=40)
    assert not torch.equal(images, other)
    assert dead_leaves(2, 16, torch.Generator().manual_seed(0), channels=1).shape == (2, 1, 16, 16)


def test_dead_leaves_are_piecewise_flat_with_many_colours():
    images = dead_leaves(2, 64, torch.Generator().manual_seed(0), shapes=60, texture=0.0)
    for image in images:
        colours = torch.unique(image.flatten(1).T, dim=0)
        assert 8 <= len(colours) <= 61            # background + shapes still visible
        # Flat regions: most horizontal neighbours are exactly equal.
        assert (image[:, :, 1:] == image[:, :, :-1]).all(0).float().mean() > 0.8
    textured = dead_leaves(2, 64, torch.Generator().manual_seed(0), shapes=60, texture=0.06)
    assert (textured[:, :, :, 1:] == textured[:, :, :, :-1]).float().mean() < 0.2


def test_dead_leaves_one_shape_and_bad_arguments():
    images = dead_leaves(1, 128, torch.Generator().manual_seed(0), shapes=1, min_radius=30, max_radius=30,
                         texture=0.0)
    covered = (images[0] != images[0, :, :1, :1]).any(0).float().mean()
    assert 0.05 < covered < 1.0                    # one 30-px shape covers part of a 128-px image
    with pytest.raises(ValueError, match="min_radius"):
        dead_leaves(1, 16, torch.Generator(), min_radius=5, max_radius=2)
    with pytest.raises(ValueError, match="shapes"):
        dead_leaves(1, 16, torch.Generator(), shapes=0)


def test_colour_jitter_identity_range_and_grey_axis():
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(6, 3, 20, 20, generator=gen)
    assert colour_jitter(images, 0.0, gen) is images
    out = colour_jitter(images, 1.0, gen)
    assert out.shape == images.shape and out.min() >= 0.0 and out.max() <= 1.0
    assert not torch.allclose(out, images)
    # Grey pixels stay grey: hue rotation and saturation act off the grey axis only.
    grey = torch.full((4, 3, 8, 8), 0.5)
    jittered = colour_jitter(grey, 1.0, gen)
    assert torch.allclose(jittered, jittered.mean(1, keepdim=True).expand_as(jittered), atol=1e-5)
    with pytest.raises(ValueError, match="strength"):
        colour_jitter(images, 1.5, gen)
    with pytest.raises(ValueError, match="RGB"):
        colour_jitter(torch.rand(1, 1, 4, 4), 0.5, gen)


def test_colour_jitter_hue_rotation_moves_colour_between_channels():
    # Saturated red: rotating about the grey axis moves its colour into green and blue.
    red = torch.zeros(64, 3, 4, 4)
    red[:, 0] = 0.6
    out = colour_jitter(red, 1.0, torch.Generator().manual_seed(2))
    dominant = out.mean((2, 3)).argmax(1)
    assert len(torch.unique(dominant)) == 3        # across 64 draws, each channel dominates somewhere
    assert math.isfinite(float(out.sum()))
