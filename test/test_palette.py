"""The procedural palette: a colour map fitted to token statistics, and its use in data-free KD."""
from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from evit_training.distill.palette import ColourTransform, fit_colour_transform  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_colour_transform_starts_as_identity():
    images = torch.rand(2, 3, 8, 8)
    assert torch.allclose(ColourTransform(3)(images), images)


def test_fit_reaches_a_target_colour_statistic():
    # A statistic the map can meet exactly: the mean colour of uniform-noise images.
    gen = torch.Generator().manual_seed(0)
    target = torch.tensor([0.2, 0.6, 0.3])

    def mean_colour_gap(images: torch.Tensor) -> torch.Tensor:
        return (images.mean((0, 2, 3)) - target).abs().sum()

    transform, losses = fit_colour_transform(lambda n: torch.rand(n, 3, 16, 16, generator=gen), mean_colour_gap,
                                             steps=150, batch_size=8, lr=0.02)
    fitted = transform(torch.rand(64, 3, 16, 16, generator=gen)).mean((0, 2, 3))
    assert torch.allclose(fitted, target, atol=0.03), fitted
    assert losses[-1] < 0.1 * losses[0]
    assert not any(p.requires_grad for p in transform.parameters())
    with pytest.raises(ValueError, match="steps"):
        fit_colour_transform(lambda n: torch.rand(n, 3, 4, 4), mean_colour_gap, steps=0)


def test_data_free_palette_lowers_the_teachers_statistics_gap(tmp_path):
    from test_data_free import _micro_detection_distiller

    distiller = _micro_detection_distiller(tmp_path, procedural_fraction=0.5, procedural_palette="teacher",
                                           palette_fit_steps=40)
    distiller.fit()
    losses = distiller.palette_losses
    assert len(losses) == 40
    assert sum(losses[-10:]) / 10 < 0.7 * sum(losses[:5]) / 5, losses
    # The checkpoint carries the fitted map, so a resumed run does not refit it.
    state = torch.load(Path(tmp_path) / "last.pt", weights_only=False)
    assert torch.equal(state["palette"]["matrix"], distiller.palette.matrix)
