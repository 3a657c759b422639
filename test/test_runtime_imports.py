"""The drone's import path never pulls in torch (a Jetson's ROS container has none)."""
import subprocess
import sys

RUNTIME_MODULES = (
    "evit_perception.detector_node",
    "evit_perception.geolocation.geolocation_node",
    "evit_perception.evaluation.bag_eval",
    "evit_perception.evaluation.replay",
    "evit_perception.backends.tensorrt_backend",
    "evit_perception.backends.tensorrt_build",
)


def test_node_import_path_never_imports_torch():
    code = ("import sys\n"
            + "".join(f"import {m}\n" for m in RUNTIME_MODULES)
            + "heavy = sorted(m for m in ('torch', 'timm', 'torch_pruning', 'evit_training') "
              "if m in sys.modules)\n"
            + "print(','.join(heavy))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "", f"the runtime imported {out.stdout.strip()}"
