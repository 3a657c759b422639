"""Object layouts of data-free detection KD: sampled boxes and their per-class masks."""
from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from evit_training.distill.layout import layout_masks, layout_range, sample_layouts  # noqa: E402


def test_layouts_follow_the_requested_counts_sides_aspects_and_classes():
    layouts = sample_layouts(400, 160, 3, torch.Generator().manual_seed(0), objects=(2, 5), sides=(8, 64),
                             max_aspect=2.0)
    counts = torch.tensor([len(l["labels"]) for l in layouts])
    assert counts.min() == 2 and counts.max() == 5                      # both ends reached, inclusive
    assert abs(float(counts.float().mean()) - 3.5) < 0.2
    boxes = torch.cat([l["boxes"] for l in layouts])
    labels = torch.cat([l["labels"] for l in layouts])
    assert boxes.shape == (int(counts.sum()), 4) and labels.dtype == torch.long
    assert float(boxes.min()) >= 0 and float(boxes.max()) <= 160
    assert bool((boxes[:, 2:] >= boxes[:, :2]).all())
    # On a large image almost no box touches the border, so side and aspect show their laws unclipped.
    far = torch.cat([l["boxes"] for l in sample_layouts(400, 100_000, 3, torch.Generator().manual_seed(1),
                                                        objects=(2, 5), sides=(8, 64), max_aspect=2.0)])
    wh = far[:, 2:] - far[:, :2]
    side, aspect = (wh[:, 0] * wh[:, 1]).sqrt(), wh[:, 0] / wh[:, 1]
    assert float(side.min()) >= 8 - 1e-3 and float(side.max()) <= 64 + 1e-3
    assert float(aspect.min()) >= 0.5 - 1e-4 and float(aspect.max()) <= 2.0 + 1e-4
    # Log-uniform sides: the median side is the geometric mean of the range, 8 * 64 -> 22.6 px.
    assert abs(float(side.median()) - math.sqrt(8 * 64)) < 2.0
    share = torch.bincount(labels, minlength=3).float() / len(labels)
    assert float((share - 1 / 3).abs().max()) < 0.05                   # classes balanced by construction
    again = sample_layouts(400, 160, 3, torch.Generator().manual_seed(0), objects=(2, 5), sides=(8, 64))
    assert all(torch.equal(a["boxes"], b["boxes"]) for a, b in zip(layouts, again))


def test_layout_masks_mark_each_box_in_its_class_channel():
    layouts = [{"boxes": torch.tensor([[2.0, 3.0, 6.0, 5.0], [0.0, 0.0, 2.0, 2.0]]), "labels": torch.tensor([1, 1])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)},
               {"boxes": torch.tensor([[4.0, 4.0, 8.0, 8.0]]), "labels": torch.tensor([0])}]
    masks = layout_masks(layouts, 2, 8)
    assert masks.shape == (3, 2, 8, 8)
    expected = torch.zeros(8, 8)
    expected[3:5, 2:6] = 1.0                 # rows y 3..4, columns x 2..5
    expected[0:2, 0:2] = 1.0
    assert torch.equal(masks[0, 1], expected) and masks[0, 0].sum() == 0
    assert masks[1].sum() == 0               # an empty layout is an empty scene
    assert masks[2, 0, 4:, 4:].sum() == 16 and masks[2, 1].sum() == 0
    overlapping = [{"boxes": torch.tensor([[0.0, 0.0, 4.0, 4.0], [2.0, 2.0, 6.0, 6.0]]), "labels": torch.tensor([0, 0])}]
    assert float(layout_masks(overlapping, 1, 8).max()) == 1.0   # overlaps stay masks, not counts


@pytest.mark.parametrize("kwargs,match", [({"objects": (5, 2)}, "objects"), ({"objects": (-1, 2)}, "objects"),
                                          ({"sides": (0.5, 8)}, "sides"), ({"sides": (16, 8)}, "sides"),
                                          ({"max_aspect": 0.5}, "max_aspect")])
def test_bad_layout_arguments_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        sample_layouts(2, 64, 3, torch.Generator(), **kwargs)


def test_config_ranges_must_be_ordered_pairs():
    with pytest.raises(ValueError, match="layout_sides"):
        layout_range([8], "layout_sides")
    with pytest.raises(ValueError, match="lo <= hi"):
        layout_range([8, 4], "layout_sides")
