"""The node's data path on the drone's constraints: Python 3.8 with NumPy 1.x.

scripts/bootstrap.sh builds .venv-py38 (Python 3.8, NumPy 1.24, OpenCV 4.10, ONNX Runtime
1.19). The same frames and model go through the data path there and in the main
environment (Python 3.11, NumPy 2.x); detections must agree, and every module of the
package that does not need ROS must import on Python 3.8.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from support.reference_model import colour_square, write_reference_model

REPO = Path(__file__).resolve().parents[1]
COMPAT_PYTHON = REPO / ".venv-py38" / "bin" / "python"
PROBE = REPO / "test" / "support" / "compat_probe.py"


def _probe(python: str, model: Path, frames: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = subprocess.run([python, str(PROBE), str(model), str(frames)], env=env,
                         capture_output=True, text=True, timeout=300, cwd=str(REPO))
    assert out.returncode == 0, f"{python} probe failed:\n{out.stderr[-3000:]}"
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def probe_inputs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("compat")
    model = Path(write_reference_model(str(tmp / "reference.onnx")))
    frames = {
        "red_square_vga": colour_square(480, 640, (200, 150, 300, 260)),
        "green_bar_hd": colour_square(720, 1280, (50, 600, 900, 700), bgr=(0, 255, 0)),
        "blue_small_odd": colour_square(241, 321, (10, 10, 60, 40), bgr=(255, 0, 0)),
    }
    path = tmp / "frames.npz"
    np.savez(path, **frames)
    return model, path


@pytest.mark.skipif(not COMPAT_PYTHON.exists(),
                    reason="no .venv-py38 (bootstrap found no python3.8 on this machine)")
def test_python38_numpy1_matches_main_environment(probe_inputs):
    model, frames = probe_inputs
    compat = _probe(str(COMPAT_PYTHON), model, frames)
    main = _probe(sys.executable, model, frames)
    assert compat["python"].startswith("3.8.")
    assert compat["numpy"].startswith("1."), compat["numpy"]
    assert main["numpy"].startswith("2."), main["numpy"]
    assert compat["results"].keys() == main["results"].keys()
    for name, ours in compat["results"].items():
        theirs = main["results"][name]
        assert ours["conversion_exact"] and theirs["conversion_exact"], name
        assert ours["class_ids"] == theirs["class_ids"], name
        assert len(ours["boxes"]) > 0, f"{name}: no detections on a frame built to have one"
        np.testing.assert_allclose(ours["boxes"], theirs["boxes"], atol=0.05, err_msg=name)
        np.testing.assert_allclose(ours["scores"], theirs["scores"], atol=1e-4, err_msg=name)
    # The data path modules import on 3.8; only ROS-bound ones are left to the ROS install.
    for module in ("evit_perception.image_conversion", "evit_perception.preprocess",
                   "evit_perception.postprocess", "evit_perception.detector",
                   "evit_perception.backends.onnxruntime_backend",
                   "evit_perception.backends.tensorrt_backend",
                   "evit_perception.model_contract"):
        assert module in compat["imported"], f"{module} did not import on Python 3.8"


@pytest.mark.skipif(not COMPAT_PYTHON.exists(),
                    reason="no .venv-py38 (bootstrap found no python3.8 on this machine)")
def test_every_runtime_module_compiles_on_python38():
    """Syntax newer than 3.8 (match, PEP 604 unions evaluated at run time...) anywhere in the package."""
    code = ("import ast, sys\n"
            "bad = []\n"
            "for p in sys.argv[1:]:\n"
            "    try: ast.parse(open(p).read(), p)\n"
            "    except SyntaxError as e: bad.append(f'{p}:{e.lineno}: {e.msg}')\n"
            "print('\\n'.join(bad)); sys.exit(1 if bad else 0)\n")
    files = [str(p) for p in sorted((REPO / "evit_perception").rglob("*.py"))]
    files += [str(p) for p in sorted((REPO / "launch").glob("*.py"))]
    out = subprocess.run([str(COMPAT_PYTHON), "-c", code, *files], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
