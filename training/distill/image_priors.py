"""Task-agnostic image priors for data-free KD: procedural images and colour jitter.

A generator trained against one teacher drifts towards a narrow family of images (on the
detection teacher: grey-green blobs with dark spots), and a student that only ever sees
that family learns little about colour, sharp edges or small parts. Two generic remedies,
neither of which looks at any real data:

* :func:`dead_leaves`: occluding discs and rectangles of random colour whose sizes follow a
  power law, the "dead leaves" model of natural-image statistics (Lee, Mumford & Huang,
  2001), which Baradad et al. ("Learning to See by Looking at Noise", NeurIPS 2021) found
  among the best procedural images to learn visual features from. The teacher labels them
  like any synthetic image.
* :func:`spectral_noise`: random-phase noise with a natural image's ``1/f^alpha`` power
  spectrum in a two-colour palette, terrain-like texture at every scale; with
  ``dead_leaves(..., textured=True)`` it becomes the ground the shapes lie on and the surface
  texture of every shape.
* :func:`paste_boxes`: crops of given boxes pasted at random places, so procedural ground
  can carry the objects a teacher found in other images (small objects on textured ground,
  as in aerial scenes).
* :func:`colour_jitter`: per-image brightness, contrast, saturation and hue rotation, so the
  student sees the generator's layouts in colours the generator never settled on.
"""
from __future__ import annotations

import math
from typing import Sequence, Tuple

import torch


def spectral_noise(count: int, size: int, generator: torch.Generator, alpha: Tuple[float, float] = (2.0, 3.5),
                   channels: int = 3) -> torch.Tensor:
    """``count`` images ``(count, channels, size, size)`` in [0, 1] of random-phase noise whose
    power spectrum falls as ``1/f^a``, ``a`` uniform in ``alpha`` per image (natural images
    lie around 2; larger is smoother), coloured per image by a random base colour and two
    random colour directions."""
    if count < 0 or size < 1:
        raise ValueError(f"spectral_noise needs count >= 0 and size >= 1; got {count}, {size}")
    if not 0.0 <= alpha[0] <= alpha[1]:
        raise ValueError(f"alpha must be a range (lo, hi) with 0 <= lo <= hi, got {alpha}")
    fy = torch.fft.fftfreq(size).view(1, 1, -1, 1)
    fx = torch.fft.rfftfreq(size).view(1, 1, 1, -1)
    exponent = alpha[0] + (alpha[1] - alpha[0]) * torch.rand(count, 1, 1, 1, generator=generator)
    amplitude = (fx * fx + fy * fy).clamp(min=1.0 / size ** 2).pow(-exponent / 4)
    amplitude[..., 0, 0] = 0.0                                     # zero mean
    phase = 2 * math.pi * torch.rand(count, 2, size, size // 2 + 1, generator=generator)
    fields = torch.fft.irfft2(amplitude * torch.polar(torch.ones_like(phase), phase), s=(size, size))
    fields = fields / fields.flatten(2).std(2).clamp(min=1e-8).view(count, 2, 1, 1)   # unit std each
    base = torch.rand(count, channels, 1, 1, generator=generator)
    directions = 0.25 * (2 * torch.rand(count, 2, channels, generator=generator) - 1)
    images = base + torch.einsum("bkc,bkhw->bchw", directions, fields)
    return images.clamp(0.0, 1.0)


def dead_leaves(count: int, size: int, generator: torch.Generator, shapes: int = 96,
                min_radius: float = 1.5, max_radius: float = 48.0, alpha: float = 3.0,
                texture: float = 0.06, channels: int = 3, textured: bool = False) -> torch.Tensor:
    """``count`` dead-leaves images ``(count, channels, size, size)`` in [0, 1].

    Each image is painted back to front with ``shapes`` discs or axis-aligned rectangles
    (half each) of uniform random colour; radii follow ``p(r) ~ r^-alpha`` on
    ``[min_radius, max_radius]`` pixels, the scale-invariant law of the model, so a few
    shapes cover the background and many small ones sit on top. ``texture`` adds per-pixel
    noise of that amplitude (real surfaces are not flat colour). ``textured``: the ground is
    :func:`spectral_noise` instead of one colour, and every shape carries a spectral texture
    (shapes on textured ground rather than flat patches).
    """
    if count < 0 or size < 1 or shapes < 1:
        raise ValueError(f"dead_leaves needs count >= 0, size >= 1, shapes >= 1; got {count}, {size}, {shapes}")
    if not 0 < min_radius <= max_radius:
        raise ValueError(f"need 0 < min_radius <= max_radius, got {min_radius}, {max_radius}")
    # Inverse-CDF sampling of the truncated power law.
    u = torch.rand(count, shapes, generator=generator)
    if math.isclose(alpha, 1.0):
        radius = min_radius * (max_radius / min_radius) ** u
    else:
        lo, hi = min_radius ** (1 - alpha), max_radius ** (1 - alpha)
        radius = (lo + u * (hi - lo)) ** (1 / (1 - alpha))
    # Paint the largest first so small shapes are not hidden under big ones (the painter's
    # order of the model is random, but big-last would leave most images one colour).
    radius = radius.sort(dim=1, descending=True).values
    centre = torch.rand(count, shapes, 2, generator=generator) * size
    aspect = torch.exp((torch.rand(count, shapes, generator=generator) - 0.5) * 1.4)   # 0.5 .. 2
    is_disc = torch.rand(count, shapes, generator=generator) < 0.5
    colour = torch.rand(count, shapes, channels, generator=generator)
    if textured:
        images = spectral_noise(count, size, generator, channels=channels)
        surface = spectral_noise(count, size, generator, channels=1) - 0.5 if count else None
    else:
        images = torch.rand(count, channels, 1, 1, generator=generator).expand(count, channels, size, size).clone()
    coords = torch.arange(size, dtype=torch.float32) + 0.5
    yy, xx = coords.view(1, size, 1), coords.view(1, 1, size)
    for k in range(shapes):
        cx, cy = centre[:, k, 0].view(-1, 1, 1), centre[:, k, 1].view(-1, 1, 1)
        rx = (radius[:, k] * aspect[:, k].sqrt()).view(-1, 1, 1)
        ry = (radius[:, k] / aspect[:, k].sqrt()).view(-1, 1, 1)
        dx, dy = (xx - cx) / rx, (yy - cy) / ry
        inside = torch.where(is_disc[:, k].view(-1, 1, 1), dx * dx + dy * dy <= 1.0,
                             (dx.abs() <= 1.0) & (dy.abs() <= 1.0))
        paint = colour[:, k].view(-1, channels, 1, 1)
        if textured:
            paint = paint + 0.5 * surface
        images = torch.where(inside.unsqueeze(1), paint, images)
    if texture > 0:
        images = images + texture * torch.randn(images.shape, generator=generator)
    return images.clamp(0.0, 1.0)


def colour_jitter(images: torch.Tensor, strength: float, generator: torch.Generator) -> torch.Tensor:
    """Per-image random brightness, contrast, saturation and hue of RGB ``images`` in [0, 1].

    ``strength`` in [0, 1] scales every range: at 1, brightness and contrast vary by up to
    x0.6..x1.4, saturation by x0.5..x2.0 and the hue rotates by up to +-180 degrees (a
    rotation of the colour cube about its grey axis, which keeps each pixel's channel mean). 0 returns the
    input unchanged.
    """
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"colour jitter strength must be in [0, 1], got {strength}")
    if strength == 0.0:
        return images
    if images.shape[1] != 3:
        raise ValueError(f"colour jitter needs RGB images (B, 3, H, W), got {tuple(images.shape)}")
    b = images.shape[0]
    device, dtype = images.device, images.dtype

    def uniform(span: float) -> torch.Tensor:   # factors in [1 - span, 1 + span]
        return 1.0 + span * strength * (2 * torch.rand(b, 1, 1, 1, generator=generator) - 1)

    brightness, contrast = uniform(0.4), uniform(0.4)
    saturation = torch.exp(strength * math.log(2.0) * (2 * torch.rand(b, 1, 1, 1, generator=generator) - 1))
    angle = strength * math.pi * (2 * torch.rand(b, generator=generator) - 1)
    # Rodrigues rotation about the unit grey axis (1, 1, 1) / sqrt(3).
    axis = torch.full((3,), 1.0 / math.sqrt(3.0))
    cross = torch.tensor([[0.0, -axis[2], axis[1]], [axis[2], 0.0, -axis[0]], [-axis[1], axis[0], 0.0]])
    outer = torch.outer(axis, axis)
    cos, sin = angle.cos().view(-1, 1, 1), angle.sin().view(-1, 1, 1)
    rotation = cos * torch.eye(3) + sin * cross + (1 - cos) * outer                 # (B, 3, 3)

    out = torch.einsum("bij,bjhw->bihw", rotation.to(device, dtype), images)
    grey = out.mean(1, keepdim=True)
    out = grey + saturation.to(device, dtype) * (out - grey)
    mean = out.mean((1, 2, 3), keepdim=True)
    out = mean + contrast.to(device, dtype) * (out - mean)
    return (out * brightness.to(device, dtype)).clamp(0.0, 1.0)


def paste_boxes(canvas: torch.Tensor, sources: torch.Tensor, boxes: Sequence[torch.Tensor], per_image: int,
                generator: torch.Generator, margin: float = 1.5, min_side: int = 4) -> torch.Tensor:
    """``canvas`` with ``per_image`` crops pasted at uniform random places on every image.

    Each crop is cut from ``sources[i]`` around a box of ``boxes[i]`` (``(N, 4)`` x0, y0, x1,
    y1 in pixels), widened by ``margin`` so the object keeps some of its surroundings, at least
    ``min_side`` and at most half the image on a side; boxes are drawn uniformly from all
    sources' boxes. With no box at all the canvas comes back unchanged (a copy).
    """
    if canvas.shape[1:] != sources.shape[1:]:
        raise ValueError(f"canvas {tuple(canvas.shape)} and sources {tuple(sources.shape)} differ in image shape")
    if len(boxes) != sources.shape[0]:
        raise ValueError(f"{len(boxes)} box sets for {sources.shape[0]} source images")
    out = canvas.clone()
    pool = [(i, box) for i, rows in enumerate(boxes) for box in rows.tolist()]
    if not pool or per_image <= 0:
        return out
    _, _, h, w = canvas.shape
    picks = torch.randint(len(pool), (canvas.shape[0], per_image), generator=generator).tolist()
    for k, row in enumerate(picks):
        for j in row:
            i, (x0, y0, x1, y1) = pool[j]
            bw = int(min(max(round((x1 - x0) * margin), min_side), w // 2))
            bh = int(min(max(round((y1 - y0) * margin), min_side), h // 2))
            sx = int(min(max(round((x0 + x1 - bw) / 2), 0), w - bw))
            sy = int(min(max(round((y0 + y1 - bh) / 2), 0), h - bh))
            tx = int(torch.randint(0, w - bw + 1, (1,), generator=generator))
            ty = int(torch.randint(0, h - bh + 1, (1,), generator=generator))
            out[k, :, ty:ty + bh, tx:tx + bw] = sources[i, :, sy:sy + bh, sx:sx + bw].to(out.device)
    return out
