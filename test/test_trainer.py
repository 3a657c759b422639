"""Trainer on real synthetic scenes: learning, seeded determinism, exact resume, the
encode -> decode -> COCO evaluation chain, YAML configs, and torchrun with 2 gloo processes."""
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from evit_training.config import ConfigError, load_config  # noqa: E402
from evit_training.data.datasets import DetectionDataset  # noqa: E402
from evit_training.data.synthetic import generate_dataset  # noqa: E402
from evit_training.engine.evaluate import evaluate_model, teacher_agreement  # noqa: E402
from evit_training.engine.losses import encode_targets  # noqa: E402
from evit_training.engine.trainer import TrainConfig, Trainer, lr_factor  # noqa: E402
from evit_training.models import create_detector  # noqa: E402
from evit_training.models.checkpoint import load_checkpoint, load_model  # noqa: E402

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("scenes")
    return generate_dataset(root, num_images=10, image_size=128, seed=5, val_fraction=0.2, progress=False)


def _dataset(scenes, split="train", train=False):
    return DetectionDataset(scenes[split]["annotations"], input_size=64, train=train)


def _cfg(**kw):
    base = dict(steps=6, batch_size=4, lr=2e-3, log_every=1, progress=False, threads=1)
    base.update(kw)
    return TrainConfig(**base)


def _weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_lr_schedule_warms_up_and_decays_within_the_budget():
    f = [lr_factor(s, 100, 0.1, 0.02) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and max(f) == pytest.approx(1.0) and f.index(max(f)) == 9
    assert f[-1] < 0.03 and all(a >= b for a, b in zip(f[10:], f[11:]))


def test_ranks_get_disjoint_equal_shards():
    from evit_training.engine.distributed import DistContext
    trainer = Trainer(create_detector("test_micro"), list(range(11)), _cfg(), "unused")
    shards = [trainer._batches(0, DistContext(rank=r, world_size=2), 3) for r in (0, 1)]
    assert len(shards[0]) == len(shards[1]) == 1  # equal step counts, or DDP would hang
    flat = [i for shard in shards for batch in shard for i in batch]
    assert len(flat) == len(set(flat)) == 6


def test_training_lowers_the_loss_and_writes_outputs(scenes, tmp_path):
    torch.manual_seed(0)
    model = create_detector("test_micro")
    Trainer(model, _dataset(scenes), _cfg(steps=25), tmp_path, val_dataset=_dataset(scenes, "val")).fit()
    hist = json.loads((tmp_path / "history.json").read_text())
    first, last = hist["records"][0]["total"], hist["records"][-1]["total"]
    assert last < 0.7 * first, (first, last)
    assert (tmp_path / "loss.png").stat().st_size > 1000
    doc = load_checkpoint(tmp_path / "model.pt")
    assert doc["step"] == 25 and "map50" in doc["metrics"]
    assert hist["evaluations"][-1]["step"] == 25


def test_same_seed_gives_identical_weights(scenes, tmp_path):
    runs = []
    for name in ("a", "b"):
        torch.manual_seed(0)
        model = create_detector("test_micro")  # same init
        Trainer(model, _dataset(scenes, train=True), _cfg(seed=3), tmp_path / name).fit()
        runs.append(_weights(model))
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])


def test_resume_continues_exactly(scenes, tmp_path):
    # Augmented data: resuming must restore RNG states, not only weights and optimizer.
    torch.manual_seed(0)
    init = _weights(create_detector("test_micro"))
    full = create_detector("test_micro")
    full.load_state_dict(init)
    Trainer(full, _dataset(scenes, train=True), _cfg(checkpoint_every=3), tmp_path / "full").fit()
    mid = tmp_path / "full" / "checkpoints" / "step_0000003.pt"
    assert mid.is_file() and load_checkpoint(mid)["step"] == 3

    (tmp_path / "resumed").mkdir()
    shutil.copy(mid, tmp_path / "resumed" / "last.pt")  # as if the run died after step 3
    other = create_detector("test_micro")  # different init: resume must overwrite it
    Trainer(other, _dataset(scenes, train=True), _cfg(checkpoint_every=3), tmp_path / "resumed",
            resume=True).fit()
    want, got = _weights(full), _weights(other)
    assert all(torch.allclose(want[k], got[k], atol=1e-6) for k in want)
    hist = json.loads((tmp_path / "resumed" / "history.json").read_text())
    assert [r["step"] for r in hist["records"]] == [1, 2, 3, 4, 5, 6]


class _Oracle(torch.nn.Module):
    """Outputs the encoded ground truth of whatever image it is shown."""

    def __init__(self, dataset):
        super().__init__()
        self.config = dict(create_detector("test_micro").config)
        self.stride = 4
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.by_key = {}
        for i in range(len(dataset)):
            image, target = dataset[i]
            enc = encode_targets([target], 3, 16, 4)
            heat = enc["heatmap"].clamp(1e-4, 1 - 1e-4)
            self.by_key[round(float(image.sum()), 2)] = {
                "heatmap": torch.log(heat / (1 - heat)), "size": enc["size"], "offset": enc["offset"]}

    def forward(self, images):
        outs = [self.by_key[round(float(im.sum()), 2)] for im in images]
        return {k: torch.cat([o[k] for o in outs]) for k in ("heatmap", "size", "offset")}


def test_target_encoding_decoding_and_coco_evaluation_agree(scenes):
    val = _dataset(scenes, "train")
    metrics = evaluate_model(_Oracle(val), val, progress=False)
    assert metrics["map50"] > 0.9, metrics["map50"]
    assert metrics["map50_95"] > 0.6
    blank = create_detector("test_micro")
    assert evaluate_model(blank, val, progress=False)["map50"] < 0.2


def test_teacher_agreement_is_one_for_a_copy_and_lower_for_another_model():
    torch.manual_seed(0)
    teacher = create_detector("test_micro")
    copy = create_detector("test_micro")
    copy.load_state_dict(teacher.state_dict())
    torch.manual_seed(1)
    other = create_detector("test_micro")
    other.train()
    images = torch.rand(6, 3, *(int(s) for s in teacher.backbone.patch_embed.img_size))
    # An untrained head scores ~0.1 everywhere; its peaks above 0.05 are the teacher's "objects".
    same = teacher_agreement(copy, teacher, images, threshold=0.05, batch_size=4)
    assert same["teacher_objects_per_image"] > 1
    assert same["map50"] > 0.99
    apart = teacher_agreement(other, teacher, images, threshold=0.05)
    assert apart["map50"] < 0.5 * same["map50"]
    # The ground truth is the teacher's alone: the same objects whichever student is judged.
    assert apart["teacher_objects_per_image"] == same["teacher_objects_per_image"]
    assert teacher_agreement(teacher, other, images, threshold=0.05)["teacher_objects_per_image"] \
        != same["teacher_objects_per_image"]
    assert other.training and teacher.training       # modes given back
    with pytest.raises(ValueError, match="differ from the teacher's"):
        teacher_agreement(create_detector("test_micro", class_names=["a", "b"]), teacher, images)


def test_yaml_loader_names_unknown_keys(tmp_path):
    cfg = load_config(REPO / "training/configs/tiny.yaml")
    assert cfg.model.name == "test_micro" and cfg.train.steps == 6 and cfg.kd is None
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ntrain:\n  stpes: 3\n")
    with pytest.raises(ConfigError, match=r"train: unknown key\(s\) 'stpes'; allowed: steps, batch_size"):
        load_config(bad)
    bad.write_text("name: x\ntrain:\n  steps: many\n")
    with pytest.raises(ConfigError, match="train.steps: expected int"):
        load_config(bad)
    for name in ("tiny", "tiny_distill", "demo_teacher", "demo_student", "full_teacher", "full_student"):
        load_config(REPO / "training/configs" / f"{name}.yaml")


def test_torchrun_two_gloo_processes(tmp_path):
    out = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "evit_training.cli", "train", str(REPO / "training/configs/tiny.yaml"),
           "--out-dir", str(out), "--steps", "4"]
    # Own session: on a timeout the whole group (launcher + workers) is killed, no orphans.
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        pytest.fail("torchrun did not finish in 300 s:\n" + stdout[-2000:] + stderr[-2000:])
    assert proc.returncode == 0, stdout[-3000:] + stderr[-3000:]
    doc = load_checkpoint(out / "model.pt")
    assert doc["step"] == 4
    hist = json.loads((out / "history.json").read_text())
    assert [r["step"] for r in hist["records"]][-1] == 4
    load_model(out / "model.pt")
    assert (out / "model.onnx").is_file()
