"""Token statistics, the data-free prior a teacher checkpoint carries: streamed figures equal
the batch formula, the trainer stores them in model.pt, data-free KD picks them up."""
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("timm")

from evit_training.distill import token_statistics as ts  # noqa: E402
from evit_training.distill.data_free import DataFreeConfig, DataFreeDistiller, run_from_config  # noqa: E402
from evit_training.models import create_detector  # noqa: E402
from evit_training.models.checkpoint import load_checkpoint  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _tiny_df(**overrides) -> DataFreeConfig:
    base = dict(steps=2, batch_size=4, generator_patch_size=16, generator_latent_dim=8, generator_embed_dim=16,
                generator_depth=1, generator_heads=2, memory_bank_size=8, grid_every=2, checkpoint_every=2,
                log_every=1, stats_batches=1, warmup_generator_steps=0)
    base.update(overrides)
    return DataFreeConfig(**base)


def test_streamed_statistics_equal_the_batch_formula():
    torch.manual_seed(0)
    model = create_detector("test_micro").eval()
    images = torch.rand(7, 3, 64, 64)
    with ts.capture_norm_inputs(model) as captured:
        with torch.no_grad():
            model(images)
        expected = ts.token_statistics(captured)
    streamed, count = ts.record_token_statistics(model, images.split(3))   # batches of 3, 3, 1
    assert count == 7 and len(streamed) == len(model.backbone.blocks)
    for (mean, std), (e_mean, e_std) in zip(streamed, expected):
        assert torch.allclose(mean, e_mean, atol=1e-5) and torch.allclose(std, e_std, atol=1e-5)
    assert not any(b.norm1._forward_pre_hooks for b in model.backbone.blocks), "hooks must be removed"


def test_trainer_stores_statistics_of_its_training_images(trained_micro_teacher):
    path, dataset = trained_micro_teacher
    doc = load_checkpoint(path)
    stats = ts.from_checkpoint(doc)
    assert doc[ts.CHECKPOINT_KEY]["images"] == 6
    model = create_detector("test_micro")
    model.load_state_dict(doc["model"])
    ts.check_fits(stats, model)
    again, _ = ts.record_token_statistics(model, ts.dataset_batches(dataset, 6))
    for (mean, std), (a_mean, a_std) in zip(stats, again):
        assert torch.allclose(mean, a_mean, atol=1e-5) and torch.allclose(std, a_std, atol=1e-5)
    # ...and they are not what smooth noise gives: a real prior, not a placeholder.
    noise, _ = ts.record_token_statistics(model, [torch.rand(6, 3, 64, 64)])
    assert not torch.allclose(stats[-1][1], noise[-1][1], rtol=0.05)


def test_data_free_uses_the_teachers_statistics_unless_told_not_to(trained_micro_teacher, tmp_path):
    from evit_training.models.checkpoint import load_model

    path, _ = trained_micro_teacher
    stored = ts.from_checkpoint(load_checkpoint(path))
    teacher = load_model(path)

    def distiller(name, source, stats):
        return DataFreeDistiller(teacher, create_detector("test_micro", embed_dim=16), _tiny_df(feature_stats_source=source),
                                 tmp_path / name, task="detection", show_progress=False, token_stats=stats)

    auto = distiller("auto", "auto", stored)
    assert auto.stats_source == "teacher"
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(auto.stat_targets, stored))
    assert distiller("noise", "noise", stored).stats_source == "noise"
    assert distiller("fallback", "auto", None).stats_source == "noise"
    with pytest.raises(ValueError, match="holds no token statistics"):
        distiller("strict", "teacher", None)
    with pytest.raises(ValueError, match="blocks"):
        distiller("short", "auto", stored[:1])
    with pytest.raises(ValueError, match="channels"):
        distiller("narrow", "auto", [(m[:4], s[:4]) for m, s in stored])
    with pytest.raises(ValueError, match="feature_stats_source"):
        DataFreeConfig.from_dict({"feature_stats_source": "data"})


def test_run_from_config_reads_statistics_from_the_teacher_file(trained_micro_teacher, tmp_path):
    path, _ = trained_micro_teacher
    cfg = {"task": "detection", "teacher": str(path), "student": "test_micro", "out_dir": str(tmp_path),
           "data_free": {k: v for k, v in vars(_tiny_df()).items()}}
    result = run_from_config(cfg, show_progress=False, device="cpu")
    assert result["feature_stats_source"] == "teacher"
    assert Path(result["student"]).is_file()
