"""Distillation: logit KD, feature KD (projection, grid resize), teacher caching inside the
Trainer, and DeiT's distillation token on real digits."""
import json

import pytest

torch = pytest.importorskip("torch")

from evit_training.distill import DistillationObjective, FeatureProjector, KDConfig, feature_kd_loss  # noqa: E402
from evit_training.distill.logit_kd import logit_kd_loss  # noqa: E402
from evit_training.distill.teacher_cache import TeacherCache  # noqa: E402
from evit_training.engine.trainer import TrainConfig, Trainer  # noqa: E402
from evit_training.models import create_detector  # noqa: E402

torch.set_num_threads(1)


def _outputs(seed, c=3, s=16):
    g = torch.Generator().manual_seed(seed)
    return {"heatmap": torch.randn(2, c, s, s, generator=g) * 2 - 2, "size": torch.randn(2, 2, s, s, generator=g),
            "offset": torch.rand(2, 2, s, s, generator=g)}


def test_logit_kd_is_zero_for_a_perfect_copy_and_pulls_towards_the_teacher():
    teacher = _outputs(0)
    same = logit_kd_loss(teacher, teacher, temperature=2.0)
    assert abs(float(same["heatmap"])) < 1e-5 and float(same["box"]) == 0.0
    student = {k: v.clone().requires_grad_(True) for k, v in _outputs(1).items()}
    opt = torch.optim.Adam(list(student.values()), lr=0.1)
    losses = []
    for _ in range(60):
        terms = logit_kd_loss(student, teacher)
        loss = terms["heatmap"] + terms["box"]
        losses.append(float(loss.detach()))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert losses[-1] < 0.5 * losses[0]
    with pytest.raises(ValueError, match="heatmap shapes differ"):
        logit_kd_loss(_outputs(0, s=16), _outputs(0, s=8))


@pytest.mark.parametrize("kind", ["mse", "cosine"])
def test_feature_kd_projects_and_resizes_token_grids(kind):
    g = torch.Generator().manual_seed(0)
    student_tokens = torch.randn(2, 64, 32, generator=g)   # 8x8 grid (patch 8), dim 32
    teacher_tokens = torch.randn(2, 16, 48, generator=g)   # 4x4 grid (patch 16), dim 48
    proj = FeatureProjector(32, 48)
    out = proj(student_tokens, teacher_tokens)
    assert out.shape == teacher_tokens.shape
    # The teacher is a linear function of the (pooled) student: the projector can learn it.
    teacher_tokens = torch.nn.functional.avg_pool2d(
        student_tokens.transpose(1, 2).reshape(2, 32, 8, 8), 2).flatten(2).transpose(1, 2) @ torch.randn(32, 48, generator=g)
    opt = torch.optim.Adam(proj.parameters(), lr=1e-2)
    first = None
    for _ in range(150):
        loss = feature_kd_loss(proj(student_tokens, teacher_tokens), teacher_tokens, kind)
        first = float(loss.detach()) if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.2 * first
    with pytest.raises(ValueError, match="not in"):
        feature_kd_loss(teacher_tokens, teacher_tokens, "l1")


def test_objective_weights_and_config_validation():
    obj = DistillationObjective(KDConfig(logit_weight=0.0, feature_weight=2.0), 32, 48)
    s, t = _outputs(0), _outputs(1)
    s["tokens"], t["tokens"] = torch.randn(2, 64, 32), torch.randn(2, 16, 48)
    terms = obj(s, t)
    assert set(terms) == {"kd_feature"}
    with pytest.raises(ValueError, match="cache_teacher"):
        DistillationObjective(KDConfig(cache_teacher="sometimes"), 32, 48)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    from evit_training.data.synthetic import generate_dataset
    return generate_dataset(tmp_path_factory.mktemp("kd_scenes"), num_images=8, image_size=128, seed=9,
                            val_fraction=0.0, progress=False)


def _dataset(scenes, train=False):
    from evit_training.data.datasets import DetectionDataset
    return DetectionDataset(scenes["train"]["annotations"], input_size=64, train=train)


def test_teacher_cache_equals_live_teacher(scenes):
    torch.manual_seed(0)
    teacher = create_detector("test_micro").eval()
    ds = _dataset(scenes)
    cache = TeacherCache(keep_tokens=True)
    cache.fill(teacher, ds, batch_size=3, progress=False)
    assert len(cache) == len(ds) and cache.seconds > 0
    images = torch.stack([ds[i][0] for i in (4, 1)])
    with torch.no_grad():
        live = teacher(images)
    cached = cache.lookup([4, 1], torch.device("cpu"))
    for key in ("heatmap", "size", "offset", "tokens"):
        assert torch.allclose(cached[key], live[key], atol=2e-2 * (1 + live[key].abs().max()))


def test_trainer_distils_a_student_towards_its_teacher(scenes, tmp_path):
    torch.manual_seed(0)
    teacher = create_detector("test_micro").eval()
    with torch.no_grad():  # a teacher with a distinctive heatmap the student must copy
        teacher.head.heatmap[-1].weight.normal_(0, 1.0)
    student = create_detector("test_micro", embed_dim=24, num_heads=2)
    kd = KDConfig(gt_weight=0.0, logit_weight=1.0, feature_weight=1.0)
    cfg = TrainConfig(steps=30, batch_size=4, lr=3e-3, log_every=1, progress=False, threads=1)
    Trainer(student, _dataset(scenes), cfg, tmp_path, teacher=teacher, kd=kd).fit()
    records = json.loads((tmp_path / "history.json").read_text())["records"]
    assert {"kd_heatmap", "kd_box", "kd_feature"} <= set(records[0])
    assert records[-1]["kd_heatmap"] < 0.6 * records[0]["kd_heatmap"]
    assert records[-1]["kd_feature"] < records[0]["kd_feature"]
    meta = torch.load(tmp_path / "model.pt", weights_only=False)
    assert meta["teacher_cache_seconds"] > 0  # non-augmented set: teacher outputs were cached


def test_caching_an_augmented_dataset_is_refused(scenes, tmp_path):
    teacher, student = create_detector("test_micro"), create_detector("test_micro")
    cfg = TrainConfig(steps=1, batch_size=4, progress=False)
    with pytest.raises(ValueError, match="non-augmented"):
        Trainer(student, _dataset(scenes, train=True), cfg, tmp_path, teacher=teacher,
                kd=KDConfig(cache_teacher="always")).fit()


class _PermutedTeacher(torch.nn.Module):
    """A real trained classifier whose classes are relabelled: (c + 3) mod 10."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.register_buffer("perm", torch.tensor([(c - 3) % 10 for c in range(10)]))

    def forward(self, images):
        return self.inner(images)[:, self.perm]


def test_deit_distillation_token_learns_from_the_teacher():
    from evit_training.classification.digits import load_digits_split
    from evit_training.distill.deit import create_deit_student, distill_deit

    train, test = load_digits_split()
    train = train.subset(512, seed=0)
    # Teacher: logistic regression on pixels (~95% on digits, trains in a blink).
    torch.manual_seed(0)
    base = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(32 * 32, 10))
    opt = torch.optim.Adam(base.parameters(), lr=0.05)
    for _ in range(150):
        loss = torch.nn.functional.cross_entropy(base(train.images), train.labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    teacher = _PermutedTeacher(base).eval()
    student = create_deit_student(embed_dim=32, depth=2, num_heads=2)
    distill_deit(student, teacher, train, steps=120, kind="hard", alpha=0.5, batch_size=64, progress=False)
    student.train()
    with torch.no_grad():
        cls_logits, dist_logits = student(test.images)
        teacher_pred = teacher(test.images).argmax(1)
    student.eval()
    with torch.no_grad():
        assert student(test.images).shape == (len(test), 10)  # heads averaged at inference
    dist_pred, cls_pred = dist_logits.argmax(1), cls_logits.argmax(1)
    # The distillation head follows the (relabelled) teacher, the class head the labels.
    assert (dist_pred == teacher_pred).float().mean() > (dist_pred == test.labels).float().mean() + 0.2
    assert (cls_pred == test.labels).float().mean() > (cls_pred == teacher_pred).float().mean() + 0.1
