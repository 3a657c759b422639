"""Weight selection (a small detector initialised from a large one, no data): identity when
the shapes agree, consistent channel subsets, whole heads chosen by norm, named errors."""
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("timm")

from evit_training.models import create_detector  # noqa: E402
from evit_training.models.weight_selection import select_weights  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def test_same_architecture_is_an_exact_copy():
    teacher, student = create_detector("test_micro").eval(), create_detector("test_micro").eval()
    select_weights(teacher, student)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        a, b = teacher(x), student(x)
    for key in ("heatmap", "size", "offset"):
        assert torch.equal(a[key], b[key]), key


def test_smaller_student_takes_consistent_subsets_and_the_strongest_head():
    teacher = create_detector("test_micro")                       # d32, 2 blocks, 2 heads of 16
    with torch.no_grad():                                        # make head 1 of block 0 the strong one
        teacher.backbone.blocks[0].attn.qkv.weight.view(3, 2, 16, 32)[:, 1] *= 10.0
    student = create_detector("test_micro", embed_dim=16, depth=1, num_heads=1, head_channels=8)
    kept = select_weights(teacher, student)
    keep = torch.linspace(0, 31, 16).round().long()
    assert torch.equal(kept["residual"], keep)
    t_vit, s_vit = teacher.backbone, student.backbone
    assert torch.equal(s_vit.patch_embed.proj.weight, t_vit.patch_embed.proj.weight[keep])
    assert torch.equal(s_vit.pos_embed, t_vit.pos_embed[..., keep])
    assert torch.equal(s_vit.norm.weight, t_vit.norm.weight[keep])
    # The query rows of the student's single head are the teacher's head 1, residual columns `keep`.
    t_q = t_vit.blocks[0].attn.qkv.weight[16:32][:, keep]
    assert torch.equal(s_vit.blocks[0].attn.qkv.weight[:16], t_q)
    assert torch.equal(s_vit.blocks[0].attn.proj.weight, t_vit.blocks[0].attn.proj.weight[keep][:, 16:32])
    # The dense head reads the same residual channels the backbone kept.
    assert torch.equal(student.head.neck[0].weight[:, :, 0, 0],
                       teacher.head.neck[0].weight[:, :, 0, 0][torch.linspace(0, 15, 8).round().long()][:, keep])
    assert torch.isfinite(student(torch.rand(1, 3, 64, 64))["heatmap"]).all()


def test_impossible_selections_are_named():
    teacher = create_detector("test_micro")
    with pytest.raises(ValueError, match="more than the teacher"):
        select_weights(teacher, create_detector("test_micro", depth=3))
    with pytest.raises(ValueError, match="whole heads"):
        select_weights(teacher, create_detector("test_micro", num_heads=4))
    with pytest.raises(ValueError, match="cannot select"):
        select_weights(teacher, create_detector("test_micro", embed_dim=64, num_heads=4))


def test_classifiers_select_too():
    from evit_training.classification import create_classifier

    teacher = create_classifier("digits_micro", embed_dim=32)
    student = create_classifier("digits_micro", embed_dim=16, num_heads=1)
    select_weights(teacher, student)
    assert torch.isfinite(student(torch.rand(2, 1, 32, 32))).all()


def test_data_free_config_starts_the_student_from_the_teacher(tmp_path):
    from evit_training.distill.data_free import run_from_config
    from evit_training.models.checkpoint import save_checkpoint

    teacher = save_checkpoint(create_detector("test_micro"), tmp_path / "teacher.pt")
    small = dict(steps=1, batch_size=2, generator_patch_size=16, generator_latent_dim=8, generator_embed_dim=16,
                 generator_depth=1, generator_heads=2, memory_bank_size=4, stats_batches=1,
                 warmup_generator_steps=0)
    cfg = {"task": "detection", "teacher": str(teacher), "student": "test_micro", "student_init": "weight_selection",
           "data_free": small}
    result = run_from_config(cfg, out_dir=tmp_path / "run", show_progress=False, device="cpu")
    assert result["student_init"] == "weight_selection"
    with pytest.raises(ValueError, match="student_init must be one of"):
        run_from_config({**cfg, "student_init": "teacher"}, out_dir=tmp_path / "bad", device="cpu")
    with pytest.raises(ValueError, match="named student"):
        run_from_config({**cfg, "student": str(teacher)}, out_dir=tmp_path / "bad2", device="cpu")


def test_inherited_token_loss_is_zero_for_an_exact_copy_and_trains_a_selected_student(tmp_path):
    from evit_training.distill.data_free import DataFreeConfig, DataFreeDistiller, inherited_token_loss
    from evit_training.distill.token_statistics import capture_norm_inputs

    teacher = create_detector("test_micro").eval()
    copy = create_detector("test_micro").eval()
    channels = select_weights(teacher, copy)["residual"]
    x = torch.rand(2, 3, 64, 64)
    with capture_norm_inputs(teacher) as t_in, capture_norm_inputs(copy) as s_in, torch.no_grad():
        teacher(x)
        copy(x)
        assert float(inherited_token_loss(s_in, t_in, channels)) < 1e-10
    student = create_detector("test_micro", embed_dim=16, depth=1, num_heads=1, head_channels=8)
    kept = select_weights(teacher, student)
    cfg = DataFreeConfig(steps=2, batch_size=2, generator_patch_size=16, generator_latent_dim=8,
                         generator_embed_dim=16, generator_depth=1, generator_heads=2, memory_bank_size=4,
                         stats_batches=1, warmup_generator_steps=0, w_inherited_tokens=1.0)
    with pytest.raises(ValueError, match="inherited_channels"):
        DataFreeDistiller(teacher, student, cfg, tmp_path / "no", task="detection", show_progress=False)
    distiller = DataFreeDistiller(teacher, student, cfg, tmp_path / "yes", task="detection", show_progress=False,
                                  inherited_channels=kept["residual"])
    distiller.fit()
    assert distiller.history[-1]["s_inherited"] > 0
