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
