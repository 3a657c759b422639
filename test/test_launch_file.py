"""launch/uav.launch.py, config/detector.yaml and the Fast DDS profile.

``launch``/``launch_ros`` are not on PyPI, so the launch file is checked as source (its
arguments, the files it points at) and only built with launch's API where launch exists.
The params file is loaded into a real node through rcl's YAML parser.
"""
from __future__ import annotations

import ast
import importlib.util
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from evit_perception.node_parameters import SPECS, check_parameter

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = ROOT / "launch" / "uav.launch.py"
PARAMS = ROOT / "config" / "detector.yaml"
PROFILE = ROOT / "config" / "fastdds_large_frames.xml"
DOCUMENTED = {"namespace", "camera_topic", "detections_topic", "model", "params_file", "backend",
              "use_sim_time", "fastdds_profile", "input_type", "qos_reliability", "bag",
              "geolocation", "camera_info_topic", "pose_topic", "log_level"}


def _declared_arguments() -> dict:
    tree = ast.parse(LAUNCH.read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "ARGUMENTS" for t in node.targets):
            return {ast.literal_eval(entry.elts[0]): entry for entry in node.value.elts}
    raise AssertionError("uav.launch.py has no ARGUMENTS table")


def test_launch_file_declares_the_documented_arguments():
    declared = _declared_arguments()
    assert set(declared) == DOCUMENTED
    defaults = {name: entry.elts[1] for name, entry in declared.items()}
    assert ast.literal_eval(defaults["camera_topic"]) == "camera/image_raw"
    assert ast.literal_eval(defaults["use_sim_time"]) == "false"
    source = LAUNCH.read_text()
    tree = ast.parse(source)
    names = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert "generate_launch_description" in names
    # what the launch file points at is shipped
    for needed in ('"detector.yaml"', '"fastdds_large_frames.xml"', '"geolocation.launch.py"',
                   '"evit_detector"', "FASTRTPS_DEFAULT_PROFILES_FILE"):
        assert needed in source, needed
    assert (ROOT / "launch" / "geolocation.launch.py").is_file()


def test_every_launch_argument_is_in_the_node_docs():
    docs = (ROOT / "docs" / "node.md").read_text()
    for name in _declared_arguments():
        assert f"`{name}`" in docs, name


def test_launch_description_builds_where_launch_is_installed():
    if importlib.util.find_spec("launch") is None or importlib.util.find_spec("launch_ros") is None:
        pytest.skip("launch/launch_ros are not installable from PyPI; on a ROS 2 install this "
                    "test builds the launch description")
    spec = importlib.util.spec_from_file_location("uav_launch", LAUNCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    description = module.generate_launch_description()
    from launch.actions import DeclareLaunchArgument
    names = {a.name for a in description.entities if isinstance(a, DeclareLaunchArgument)}
    assert names == DOCUMENTED


def test_params_file_holds_only_valid_known_parameters():
    doc = yaml.safe_load(PARAMS.read_text())
    params = doc["/**"]["ros__parameters"]
    assert set(params) == set(SPECS), set(params) ^ set(SPECS)
    for name, value in params.items():
        check_parameter(name, value)


def test_params_file_loads_into_a_real_node():
    import rclpy
    from evit_perception.detector_node import DetectorNode

    context = rclpy.Context()
    rclpy.init(args=["--ros-args", "--params-file", str(PARAMS)], context=context)
    node = DetectorNode(node_name="evit_params_file_check", context=context)
    try:
        loaded = {name: node.get_parameter(name).value for name in SPECS}
        expected = yaml.safe_load(PARAMS.read_text())["/**"]["ros__parameters"]
        assert loaded == expected
        assert node.health.model_error and "evit_student_default.onnx" in node.health.model_error
    finally:
        node.destroy_node()
        context.try_shutdown()


def test_fastdds_profile_fits_a_1080p_frame_in_shared_memory():
    ns = {"f": "http://www.eprosima.com/XMLSchemas/fastRTPS_Profiles"}
    root = ET.parse(PROFILE).getroot()
    transport = root.find("f:transport_descriptors/f:transport_descriptor", ns)
    assert transport.find("f:type", ns).text == "SHM"
    frame_1080p = 1920 * 1080 * 3
    assert int(transport.find("f:maxMessageSize", ns).text) > frame_1080p
    assert int(transport.find("f:segment_size", ns).text) >= 2 * int(transport.find("f:maxMessageSize", ns).text)
    participant = root.find("f:participant", ns)
    assert participant.get("is_default_profile") == "true"
    rtps = participant.find("f:rtps", ns)
    assert rtps.find("f:userTransports/f:transport_id", ns).text == transport.find("f:transport_id", ns).text
    assert rtps.find("f:useBuiltinTransports", ns).text == "true"


def test_every_node_parameter_is_in_the_node_docs():
    docs = (ROOT / "docs" / "node.md").read_text()
    for name in SPECS:
        assert f"| `{name}` |" in docs, name
