"""Compensated weight selection: layer-input moments equal the batch formulas, the closed-form
refit is exact where the dropped inputs are affine in the kept ones, an uncut student stays an
exact copy, a cut student copies the teacher better than plain selection, the trainer stores the
moments and data-free KD picks them up (or measures them on procedural images)."""
from pathlib import Path

import pytest
import yaml

torch = pytest.importorskip("torch")
pytest.importorskip("timm")
from torch import nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from evit_training.distill.data_free import run_from_config, teacher_layer_moments  # noqa: E402
from evit_training.distill.token_statistics import dataset_batches  # noqa: E402
from evit_training.engine.trainer import TrainConfig, Trainer  # noqa: E402
from evit_training.models import create_detector  # noqa: E402
from evit_training.models import layer_moments as lm  # noqa: E402
from evit_training.models.checkpoint import load_checkpoint, load_model  # noqa: E402
from evit_training.models.compensation import compensated_selection, refit_layer  # noqa: E402
from evit_training.models.weight_selection import select_weights  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REPO = Path(__file__).resolve().parents[1]
SMALL = dict(embed_dim=16, depth=1, num_heads=1, head_channels=8)   # a third-ish of test_micro everywhere


def _affine_inputs(n: int, kept: int, dropped: int, generator: torch.Generator, offset: bool = True) -> torch.Tensor:
    """(n, kept + dropped) samples whose last ``dropped`` channels are affine in the first ``kept``
    (linear without ``offset``)."""
    base = torch.randn(n, kept, generator=generator, dtype=torch.float64) + 0.5
    mix = torch.randn(kept, dropped, generator=generator, dtype=torch.float64)
    shift = torch.randn(dropped, generator=generator, dtype=torch.float64) if offset else 0.0
    return torch.cat([base, base @ mix + shift], 1)


def _moments_of(x: torch.Tensor) -> lm.Moments:
    mean = x.mean(0)
    return lm.Moments(mean.float(), ((x - mean).T @ (x - mean) / len(x)).float())


def test_recorded_moments_equal_the_batch_formulas():
    model = create_detector("test_micro").eval()
    images = torch.rand(6, 3, 64, 64)
    moments, count = lm.record_layer_moments(model, [images[:4], images[4:]])
    assert count == 6
    seen = {}
    hooks = [model.get_submodule(name).register_forward_pre_hook(lambda m, i, name=name: seen.__setitem__(name, i[0]))
             for name in ("backbone.blocks.1.mlp.fc2", "head.neck.3")]
    blocks = []
    hooks.append(model.backbone.blocks[0].register_forward_hook(lambda m, i, o: blocks.append(o)))
    with torch.no_grad():
        model(images)
    for h in hooks:
        h.remove()
    samples = {"backbone.blocks.1.mlp.fc2": seen["backbone.blocks.1.mlp.fc2"].reshape(-1, 128),
               "head.neck.3": seen["head.neck.3"].movedim(1, -1).reshape(-1, 16)}
    for name, x in samples.items():
        x = x.double()
        assert torch.allclose(moments[name].mean.double(), x.mean(0), atol=1e-5), name
        assert torch.allclose(moments[name].cov.double(), torch.cov(x.T, correction=0), atol=1e-4), name
    # depth1: the final norm applied after block 0, against the head's real input.
    norm = model.backbone.norm
    with torch.no_grad():
        source = F.layer_norm(blocks[0], norm.normalized_shape, norm.weight, norm.bias, norm.eps).reshape(-1, 32).double()
        target = model.backbone.forward_features((images - model.pixel_mean) / model.pixel_std).reshape(-1, 32).double()
    entry = moments["depth1"]
    assert torch.allclose(entry.mean.double(), source.mean(0), atol=1e-5)
    cross = (target - target.mean(0)).T @ (source - source.mean(0)) / len(source)
    assert torch.allclose(entry.cross.double(), cross, atol=1e-4)
    assert torch.allclose(entry.target_mean.double(), target.mean(0), atol=1e-5)


def test_regression_recovers_inputs_that_are_affine_in_the_kept_ones():
    x = _affine_inputs(500, 4, 3, torch.Generator().manual_seed(0))
    a, c = _moments_of(x).regression(torch.arange(4), ridge=0.0)
    assert torch.allclose(x[:, :4] @ a.T + c, x, atol=1e-4)


@pytest.mark.parametrize("kind,offset", [("linear", True), ("conv", True), ("conv_transpose", False),
                                         ("conv_transpose", True)])
def test_refit_layer_is_exact_for_affine_dropped_inputs(kind, offset):
    g = torch.Generator().manual_seed(1)
    keep = torch.tensor([0, 2, 3, 5])
    dropped = torch.tensor([1, 4, 6])
    flat = _affine_inputs(4 * 8 * 8, 4, 3, g, offset)
    order = torch.empty(7, dtype=torch.long)
    order[keep], order[dropped] = torch.arange(4), torch.arange(4, 7)
    flat = flat[:, order]                       # kept and dropped channels interleaved
    a, c = _moments_of(flat).regression(keep, ridge=0.0)
    if kind == "linear":
        teacher, student = nn.Linear(7, 5).double(), nn.Linear(4, 5).double()
        x = flat
        batchnorm = None
    else:
        x = flat.reshape(4, 8, 8, 7).permute(0, 3, 1, 2).contiguous()
        if kind == "conv":
            teacher, student = nn.Conv2d(7, 5, 3, padding=1).double(), nn.Conv2d(4, 5, 3, padding=1).double()
            batchnorm = None
        else:   # no bias: the constant must go into the BatchNorm after it
            teacher = nn.ConvTranspose2d(7, 5, 4, stride=2, padding=1, bias=False).double()
            student = nn.ConvTranspose2d(4, 5, 4, stride=2, padding=1, bias=False).double()
            batchnorm = nn.BatchNorm2d(5).double().eval()
    refit_layer(teacher, student, a, c, None, batchnorm)
    with torch.no_grad():
        want, got = teacher(x), student(x[:, keep])
        if batchnorm is not None:
            reference = nn.BatchNorm2d(5).double().eval()
            want, got = reference(want), batchnorm(got)
    if kind != "linear":    # zero padding breaks the affine relation at the border
        want, got = want[..., 2:-2, 2:-2], got[..., 2:-2, 2:-2]
    if kind == "conv_transpose" and offset:
        # A stride-2 transposed convolution sums a different quarter of its taps at each output
        # phase, so a constant input reaches the output as four constants; one bias (BatchNorm
        # mean) holds their average: exact on the mean of every channel, not pixel by pixel.
        assert torch.allclose(got.mean((0, 2, 3)), want.mean((0, 2, 3)), atol=1e-6)
        assert torch.allclose(got - got.mean((0, 2, 3), keepdim=True), want - want.mean((0, 2, 3), keepdim=True),
                              atol=0.5)
        return
    assert torch.allclose(got, want, atol=1e-6), (got - want).abs().max()


def test_refit_layer_needs_somewhere_to_put_a_constant():
    x = _affine_inputs(200, 3, 2, torch.Generator().manual_seed(2))
    a, c = _moments_of(x).regression(torch.arange(3), ridge=0.0)
    teacher = nn.Conv2d(5, 4, 1, bias=False).double()
    with pytest.raises(ValueError, match="BatchNorm after it"):
        refit_layer(teacher, nn.Conv2d(3, 4, 1, bias=False).double(), a, c, None, None)


def test_an_uncut_student_stays_an_exact_copy(trained_micro_teacher):
    path, _ = trained_micro_teacher
    teacher, moments = load_model(path), lm.from_checkpoint(load_checkpoint(path))
    student = create_detector("test_micro").eval()
    compensated_selection(teacher, student, moments)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        a, b = teacher(x), student(x)
    for key in ("heatmap", "size", "offset"):
        assert torch.equal(a[key], b[key]), key


def _gap(student: nn.Module, teacher: nn.Module, images: torch.Tensor) -> float:
    with torch.no_grad():
        s, t = student.eval()(images), teacher(images)
    return float((torch.sigmoid(s["heatmap"]) - torch.sigmoid(t["heatmap"])).abs().mean()
                 + (s["size"] - t["size"]).abs().mean())


def test_a_cut_student_copies_the_teacher_better_than_plain_selection(trained_micro_teacher):
    path, dataset = trained_micro_teacher
    teacher, moments = load_model(path), lm.from_checkpoint(load_checkpoint(path))
    images = torch.cat(list(dataset_batches(dataset, 16)))
    plain, compensated = create_detector("test_micro", **SMALL), create_detector("test_micro", **SMALL)
    kept_plain = select_weights(teacher, plain)
    kept = compensated_selection(teacher, compensated, moments)
    assert all(torch.equal(kept[k], kept_plain[k]) for k in kept)   # the same cut, other weights
    assert _gap(compensated, teacher, images) < 0.7 * _gap(plain, teacher, images)


def test_moments_of_another_architecture_are_refused(trained_micro_teacher):
    path, _ = trained_micro_teacher
    teacher = load_model(path)
    other, _ = lm.record_layer_moments(create_detector("test_micro", embed_dim=64, num_heads=4),
                                       [torch.rand(2, 3, 64, 64)])
    with pytest.raises(ValueError, match="channels|another architecture"):
        compensated_selection(teacher, create_detector("test_micro", **SMALL), other)
    with pytest.raises(ValueError, match="not a ViT detector"):
        lm.record_layer_moments(nn.Sequential(nn.Conv2d(3, 4, 3)), [torch.rand(1, 3, 8, 8)])


def test_trainer_stores_moments_and_zero_images_stores_none(trained_micro_teacher, tmp_path):
    path, dataset = trained_micro_teacher
    doc = load_checkpoint(path)
    assert doc[lm.CHECKPOINT_KEY]["images"] == 16
    moments = lm.from_checkpoint(doc)
    assert moments["backbone.blocks.0.mlp.fc2"].cov.shape == (128, 128)
    assert moments["depth1"].cross.shape == (32, 32)
    cfg = TrainConfig(steps=1, batch_size=4, progress=False, threads=1, token_stats_images=0, layer_moments_images=0)
    Trainer(create_detector("test_micro"), dataset, cfg, tmp_path / "none").fit()
    assert lm.from_checkpoint(load_checkpoint(tmp_path / "none" / "model.pt")) is None
    with pytest.raises(ValueError, match="layer_moments_images"):
        TrainConfig(layer_moments_images=-1).validate()


def test_moment_sources(trained_micro_teacher):
    path, _ = trained_micro_teacher
    teacher, stored = load_model(path), lm.from_checkpoint(load_checkpoint(path))
    assert teacher_layer_moments(teacher, stored, "auto")[1] == "teacher"
    measured, source = teacher_layer_moments(teacher, None, "auto", images=8)
    assert source == "procedural" and measured["head.neck.0"].cov.shape == (32, 32)
    with pytest.raises(ValueError, match="carries no layer_moments"):
        teacher_layer_moments(teacher, None, "teacher")
    with pytest.raises(ValueError, match="must be one of"):
        teacher_layer_moments(teacher, stored, "real")


def _config(path, out, **extra):
    """The shipped detection config, shrunk to seconds, on the micro teacher."""
    cfg = yaml.safe_load((REPO / "training" / "configs" / "data_free_detection.yaml").read_text())
    cfg.update(teacher=str(path), student="test_micro", out_dir=str(out))
    cfg["data_free"].update(steps=2, batch_size=4, generator_latent_dim=8, generator_embed_dim=16, generator_depth=1,
                            generator_heads=2, memory_bank_size=8, grid_every=2, checkpoint_every=2, log_every=1,
                            stats_batches=1, warmup_generator_steps=0)
    cfg.update(extra)
    return cfg


def test_the_shipped_detection_config_starts_from_the_compensated_student(trained_micro_teacher, tmp_path):
    path, _ = trained_micro_teacher
    result = run_from_config(_config(path, tmp_path / "df"), show_progress=False)
    assert result["student_init"] == "compensated_selection" and result["compensation_moments"] == "teacher"
    assert load_model(result["student"]).config["embed_dim"] == 32
    with pytest.raises(ValueError, match="compensation_moments must be one of"):
        run_from_config(_config(path, tmp_path / "bad", compensation_moments="images"), show_progress=False)
    with pytest.raises(ValueError, match="refits detectors"):
        run_from_config(_config(path, tmp_path / "cls", task="classification"), show_progress=False)
