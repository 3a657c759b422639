"""Fading selection: a teacher-shaped copy that is the teacher at alpha 1 and exactly the
weight-selected student at alpha 0, trainable in between; named errors."""
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("timm")

from evit_training.classification import create_classifier  # noqa: E402
from evit_training.models import create_detector  # noqa: E402
from evit_training.models.fading_selection import FadingSelection, cosine_fade  # noqa: E402
from evit_training.models.weight_selection import select_weights  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _outputs(model, x):
    out = model(x)
    return [out[k] for k in ("heatmap", "size", "offset")] if isinstance(out, dict) else [out]


def _trained_like(model):
    # Random non-trivial norms and head statistics, so every faded part carries signal.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.3 * torch.randn_like(p))
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    return model


@pytest.mark.parametrize("make", [
    lambda: (create_detector("test_micro", depth=3), create_detector("test_micro", embed_dim=16, depth=2,
                                                                     num_heads=1, head_channels=8)),
    lambda: (create_classifier("digits_micro", embed_dim=32, depth=2), create_classifier("digits_micro", embed_dim=16,
                                                                                        num_heads=1)),
])
def test_alpha_one_is_the_teacher_and_alpha_zero_the_selected_student(make):
    torch.manual_seed(0)
    teacher, student = make()
    teacher = _trained_like(teacher).eval()
    size = teacher.backbone.patch_embed.img_size[0]
    x = torch.rand(2, teacher.backbone.patch_embed.proj.in_channels, size, size)
    fading = FadingSelection(teacher, student)
    fading.model.eval()
    with torch.no_grad():
        for a, b in zip(_outputs(teacher, x), _outputs(fading.model, x)):
            assert torch.allclose(a, b, atol=1e-5)
        fading.alpha = 0.4
        between = _outputs(fading.model, x)
        fading.alpha = 0.0
        faded = _outputs(fading.model, x)
        extracted = fading.extract().eval()
        for a, b in zip(faded, _outputs(extracted, x)):
            assert torch.allclose(a, b, atol=1e-5)
        # in between it is neither: the path is continuous, not a switch
        assert not torch.allclose(between[0], faded[0], atol=1e-3)
        assert not torch.allclose(between[0], _outputs(teacher, x)[0], atol=1e-3)
    # untrained, the fade extracts what one-shot selection cuts (same heads: those of largest norm)
    one_shot = make()[1]
    select_weights(teacher, one_shot)
    for key, value in one_shot.state_dict().items():
        assert torch.equal(value, extracted.state_dict()[key]), key


def test_the_faded_model_trains_and_its_dropped_parts_stop_mattering():
    torch.manual_seed(0)
    teacher = create_detector("test_micro", depth=3).train()
    fading = FadingSelection(teacher, create_detector("test_micro", embed_dim=16, depth=2, num_heads=1,
                                                      head_channels=8))
    fading.alpha = 0.0
    out = fading.model(torch.rand(2, 3, 64, 64))
    out["heatmap"].sum().backward()
    last_block = fading.model.backbone.blocks[2]
    assert last_block.mlp.fc1.weight.grad is None or float(last_block.mlp.fc1.weight.grad.abs().sum()) == 0.0
    kept = fading.model.backbone.blocks[0].mlp.fc1.weight.grad
    assert kept is not None and float(kept.abs().sum()) > 0


def test_cosine_fade_and_named_errors():
    fade = cosine_fade(10)
    assert fade(0) == 1.0 and fade(10) == 0.0 and fade(20) == 0.0 and 0.0 < fade(5) < 1.0
    assert all(fade(i) >= fade(i + 1) for i in range(12))
    with pytest.raises(ValueError, match="at least one step"):
        cosine_fade(0)
    fading = FadingSelection(create_detector("test_micro"), create_detector("test_micro", embed_dim=16, num_heads=1))
    with pytest.raises(ValueError, match="alpha must be in"):
        fading.alpha = 1.5
    with pytest.raises(ValueError, match="needs alpha == 0"):
        fading.extract()
    with pytest.raises(ValueError, match="heads"):
        select_weights(create_detector("test_micro"), create_detector("test_micro", embed_dim=16, num_heads=1),
                       heads=[[5], [0]])
