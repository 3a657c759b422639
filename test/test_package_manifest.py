"""The ament_python package as colcon and rosdep see it: package.xml parsed by catkin_pkg,
executables installed into lib/<package>, launch/config/models shipped as data files."""
from __future__ import annotations

import configparser
import os
import runpy
from pathlib import Path

import pytest
import setuptools

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "evit_perception"


@pytest.fixture(scope="module")
def setup_kwargs():
    """The keyword arguments setup.py hands to setuptools.setup (nothing is installed)."""
    captured = {}
    original = setuptools.setup
    setuptools.setup = lambda **kwargs: captured.update(kwargs)
    try:
        cwd = os.getcwd()
        os.chdir(ROOT)  # setup.py globs relative paths, as colcon runs it
        try:
            runpy.run_path(str(ROOT / "setup.py"), run_name="__main__")
        finally:
            os.chdir(cwd)
    finally:
        setuptools.setup = original
    return captured


def test_package_xml_is_format_3_and_parses_with_catkin_pkg():
    from catkin_pkg.package import parse_package

    package = parse_package(str(ROOT / "package.xml"))
    package.validate()
    assert package.name == PACKAGE and package.package_format == 3
    assert package.get_build_type() == "ament_python"
    exec_deps = {d.name for d in package.exec_depends}
    for needed in ("rclpy", "sensor_msgs", "std_msgs", "vision_msgs", "diagnostic_msgs",
                   "launch", "launch_ros", "python3-numpy", "python3-opencv"):
        assert needed in exec_deps, needed


def test_setup_cfg_installs_executables_where_ros2_run_looks():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    assert cfg["develop"]["script_dir"] == f"$base/lib/{PACKAGE}"
    assert cfg["install"]["install_scripts"] == f"$base/lib/{PACKAGE}"


def test_entry_point_names_the_node_main(setup_kwargs):
    scripts = setup_kwargs["entry_points"]["console_scripts"]
    assert f"evit_detector = {PACKAGE}.detector_node:main" in scripts
    from evit_perception import detector_node
    assert callable(detector_node.main)


def test_data_files_ship_launch_config_and_models(setup_kwargs):
    shipped = {dest: set(files) for dest, files in setup_kwargs["data_files"]}
    assert f"resource/{PACKAGE}" in shipped["share/ament_index/resource_index/packages"]
    assert "package.xml" in shipped[f"share/{PACKAGE}"]
    assert "launch/uav.launch.py" in shipped[f"share/{PACKAGE}/launch"]
    assert {"config/detector.yaml", "config/fastdds_large_frames.xml"} <= shipped[f"share/{PACKAGE}/config"]
    assert f"share/{PACKAGE}/models" in shipped
    for files in shipped.values():
        for name in files:
            assert (ROOT / name).is_file(), name
