"""Runs the node's data path and prints the results as JSON.

Executed by test/test_jetson_compat.py twice: in the main environment (Python 3.11, NumPy
2.x) and in .venv-py38 (Python 3.8, NumPy 1.x, OpenCV 4.x, an older ONNX Runtime), the
drone's constraints. Needs only numpy, cv2 and onnxruntime, like the node on a Jetson.

usage: compat_probe.py MODEL.onnx FRAMES.npz
"""
import importlib
import json
import pkgutil
import sys
from types import SimpleNamespace

import numpy as np

import evit_perception
from evit_perception.backends import open_backend
from evit_perception.detector import Detector
from evit_perception.image_conversion import image_to_bgr


def importable_modules():
    """Import every module of the package that does not need ROS; list what was imported."""
    done, needs_ros = [], []
    for info in pkgutil.walk_packages(evit_perception.__path__, "evit_perception."):
        try:
            importlib.import_module(info.name)
            done.append(info.name)
        except ModuleNotFoundError as exc:
            top = (exc.name or "").split(".")[0]
            if top in {"rclpy", "sensor_msgs", "std_msgs", "vision_msgs", "geometry_msgs",
                       "diagnostic_msgs", "visualization_msgs", "nav_msgs", "builtin_interfaces",
                       "rosbags", "faster_coco_eval", "pycocotools", "matplotlib", "cv_bridge",
                       "tensorrt", "pycuda", "launch", "launch_ros", "tf2_ros",
                       "rosidl_runtime_py", "message_filters", "rcl_interfaces", "rclpy_message_converter"}:
                needs_ros.append(info.name)
            else:
                raise
    return done, needs_ros


def main(model_path, frames_path):
    frames = np.load(frames_path)
    detector = Detector(open_backend(model_path, "onnxruntime", intra_op_num_threads=1),
                        score_threshold=0.2)
    results = {}
    for name in sorted(frames.files):
        bgr = frames[name]
        # The camera hands the node rgb8 Image messages with padded rows.
        rgb = np.ascontiguousarray(bgr[:, :, ::-1])
        step = rgb.shape[1] * 3 + 8
        padded = np.zeros((rgb.shape[0], step), np.uint8)
        padded[:, :rgb.shape[1] * 3] = rgb.reshape(rgb.shape[0], -1)
        msg = SimpleNamespace(height=rgb.shape[0], width=rgb.shape[1], encoding="rgb8",
                              is_bigendian=0, step=step, data=padded.tobytes())
        converted = image_to_bgr(msg)
        det = detector.detect(converted)
        results[name] = {
            "conversion_exact": bool(np.array_equal(converted, bgr)),
            "boxes": det.boxes.astype(float).round(3).tolist(),
            "scores": det.scores.astype(float).round(5).tolist(),
            "class_ids": det.class_ids.astype(int).tolist(),
        }
    imported, needs_ros = importable_modules()
    print(json.dumps({"python": sys.version.split()[0], "numpy": np.__version__,
                      "results": results, "imported": imported, "needs_ros": needs_ros}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
