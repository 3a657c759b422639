"""ament_python package: the ROS 2 node (evit_perception) and the training pipeline.

training/ installs as ``evit_training`` so it never shadows a generic ``training`` module in
site-packages; the node never imports it.
"""
from glob import glob

from setuptools import find_packages, setup

PACKAGE = "evit_perception"

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(include=[PACKAGE, PACKAGE + ".*"])
    + ["evit_training" + p[len("training"):] for p in find_packages(include=["training", "training.*"])],
    package_dir={"evit_training": "training"},
    package_data={"evit_training": ["configs/*.yaml"]},
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + PACKAGE]),
        ("share/" + PACKAGE, ["package.xml"]),
        ("share/" + PACKAGE + "/launch", glob("launch/*.launch.py")),
        ("share/" + PACKAGE + "/config", glob("config/*.yaml") + glob("config/*.xml")),
        ("share/" + PACKAGE + "/models", glob("models/*.onnx") + glob("models/*.json")),
    ],
    install_requires=["setuptools", "numpy", "pyyaml"],
    extras_require={
        "onnxruntime": ["onnxruntime"],
        "training": ["torch", "torchvision", "timm", "torch-pruning", "onnx", "onnxruntime",
                     "typer", "tqdm", "rich", "matplotlib", "faster-coco-eval", "rosbags",
                     "opencv-python-headless"],
    },
    zip_safe=True,
    maintainer="evit_perception maintainers",
    maintainer_email="maintainers@evit-perception.org",
    description="ViT object detection for UAVs: ROS 2 node and compression pipeline",
    license="Apache-2.0",
    python_requires=">=3.8",
    entry_points={
        "console_scripts": [
            "evit_detector = evit_perception.detector_node:main",
            "evit_geolocation = evit_perception.geolocation.geolocation_node:main",
            "evit = evit_training.cli:main",
        ],
    },
)
