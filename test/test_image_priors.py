"""Generic image priors of data-free KD: dead-leaves images and colour jitter."""
from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from evit_training.distill.image_priors import colour_jitter, dead_leaves, paste_boxes, spectral_noise  # noqa: E402


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


def _power_slope(images: torch.Tensor) -> float:
    """Least-squares slope of log power against log frequency, averaged over images."""
    grey = images.mean(1) - images.mean((1, 2, 3)).view(-1, 1, 1)
    power = torch.fft.rfft2(grey).abs().pow(2).mean(0)
    fy = torch.fft.fftfreq(grey.shape[-2]).view(-1, 1)
    fx = torch.fft.rfftfreq(grey.shape[-1]).view(1, -1)
    f = (fx * fx + fy * fy).sqrt()
    band = (f > 0.02) & (f < 0.25)
    x, y = f[band].log(), power[band].clamp(min=1e-12).log()
    return float(((x - x.mean()) * (y - y.mean())).sum() / ((x - x.mean()) ** 2).sum())


def test_spectral_noise_has_the_requested_power_law():
    gen = torch.Generator().manual_seed(0)
    rough = spectral_noise(16, 64, gen, alpha=(2.0, 2.0))
    smooth = spectral_noise(16, 64, gen, alpha=(3.0, 3.0))
    assert rough.shape == (16, 3, 64, 64) and rough.min() >= 0.0 and rough.max() <= 1.0
    # Clamping to [0, 1] bends the spectrum a little; the slopes stay near -alpha and ordered.
    assert -2.6 < _power_slope(rough) < -1.5
    assert _power_slope(smooth) < _power_slope(rough) - 0.5
    assert spectral_noise(2, 16, gen, channels=1).shape == (2, 1, 16, 16)
    with pytest.raises(ValueError, match="alpha"):
        spectral_noise(1, 16, gen, alpha=(3.0, 2.0))


def test_textured_dead_leaves_have_textured_ground_and_shapes():
    flat = dead_leaves(2, 64, torch.Generator().manual_seed(0), shapes=60, texture=0.0)
    textured = dead_leaves(2, 64, torch.Generator().manual_seed(0), shapes=60, texture=0.0, textured=True)
    assert textured.shape == flat.shape and textured.min() >= 0.0 and textured.max() <= 1.0
    equal_neighbours = (textured[:, :, :, 1:] == textured[:, :, :, :-1]).all(1).float().mean()
    assert equal_neighbours < 0.3                       # no longer piecewise flat
    # Shape edges stay sharp: the largest neighbour jumps are far above the texture's.
    jumps = (textured[:, :, :, 1:] - textured[:, :, :, :-1]).abs().amax(1).flatten()
    assert float(jumps.quantile(0.995)) > 4 * float(jumps.median())


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


def test_paste_boxes_copies_widened_box_crops_onto_the_canvas():
    canvas = torch.zeros(3, 3, 32, 32)
    sources = torch.zeros(2, 3, 32, 32)
    sources[1, :, 10:14, 20:24] = 1.0                      # one 4x4 "object" in source 1
    boxes = [torch.zeros(0, 4), torch.tensor([[20.0, 10.0, 24.0, 14.0]])]
    out = paste_boxes(canvas, sources, boxes, per_image=2, generator=torch.Generator().manual_seed(0), margin=2.0)
    assert canvas.abs().sum() == 0                           # the input is left alone
    for image in out:
        # Every pasted crop is the 8x8 window around the object: the object itself, 16 pixels.
        assert 16 <= int(image[0].sum()) <= 32
        ys, xs = torch.nonzero(image[0], as_tuple=True)
        assert int(ys.max() - ys.min()) >= 3 and int(xs.max() - xs.min()) >= 3
    empty = paste_boxes(canvas, sources, [torch.zeros(0, 4)] * 2, 3, torch.Generator().manual_seed(0))
    assert torch.equal(empty, canvas)
    with pytest.raises(ValueError, match="box sets"):
        paste_boxes(canvas, sources, boxes[:1], 1, torch.Generator())
    with pytest.raises(ValueError, match="differ in image shape"):
        paste_boxes(canvas, sources[:, :, :16], boxes, 1, torch.Generator())
