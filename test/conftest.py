"""Shared fixtures: ROS 2 isolation for every test that touches DDS.

Each pytest run gets its own ROS_DOMAIN_ID (derived from the process id) and keeps
discovery on localhost, so parallel runs on one machine never see each other.
"""
import os
import sys
import tempfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))  # test/support helpers

os.environ.setdefault("ROS_DOMAIN_ID", str(1 + os.getpid() % 100))
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("ROS_LOG_DIR", tempfile.mkdtemp(prefix="evit-roslog-"))


@pytest.fixture(scope="session")
def ros_env() -> dict:
    """Environment for child processes (nodes started with subprocess)."""
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.fixture
def one_torch_thread():
    """Torch on one CPU thread for the test (small models run faster so, and tests running
    side by side do not oversubscribe the cores); the previous count is restored."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def trained_micro_teacher(tmp_path_factory):
    """``(model.pt path, dataset)``: a micro detector trained 30 steps on 16 real synthetic
    scenes by the project's trainer, which stores token statistics (first 6 images) and layer
    moments (all 16) in the checkpoint; a teacher worth compressing, in seconds."""
    import torch

    from evit_training.data.datasets import DetectionDataset
    from evit_training.data.synthetic import generate_dataset
    from evit_training.engine.trainer import TrainConfig, Trainer
    from evit_training.models import create_detector

    root = tmp_path_factory.mktemp("micro_teacher")
    scenes = generate_dataset(root, num_images=16, image_size=96, seed=5, val_fraction=0.0, progress=False)
    dataset = DetectionDataset(scenes["train"]["annotations"], input_size=64, train=False)
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    cfg = TrainConfig(steps=30, batch_size=8, lr=3e-3, progress=False, threads=1, token_stats_images=6,
                      layer_moments_images=16)
    Trainer(create_detector("test_micro"), dataset, cfg, root / "teacher").fit()
    torch.set_num_threads(previous)
    return root / "teacher" / "model.pt", dataset
