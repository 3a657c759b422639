"""Bad input never stops evit_detector: it says what is wrong once and goes on.

One node process is started with a corrupt model and invalid parameter values, then fed
bad models, bad frames and bad parameter changes over DDS; after each, a good thing (model,
frame) still works.
"""
from __future__ import annotations

import pytest

from support.reference_model import (write_model_without_metadata, write_reference_model,
                                     write_truncated_model)
from support.ros_processes import (NodeProcess, RosPeer, frame_header, image_message, stamp_key,
                                   synthetic_frame)

pytestmark = pytest.mark.timeout(300)

NODE = "evit_bad_input"
CAMERA = "/bad/image_raw"


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("bad_models")
    return {
        "good": write_reference_model(str(d / "good.onnx")),
        "corrupt": write_truncated_model(str(d / "corrupt.onnx")),
        "no_metadata": write_model_without_metadata(str(d / "no_metadata.onnx")),
    }


@pytest.fixture(scope="module")
def node(models, ros_env):
    proc = NodeProcess({"model_path": models["corrupt"], "score_threshold": 7.0,
                        "qos_reliability": "sometimes", "max_detections": "many",
                        "inference_threads": 1},
                       {"image_raw": CAMERA, "detections": "/bad/detections"},
                       env=ros_env, node_name=NODE).start()
    yield proc
    code = proc.stop()
    assert code == 0, f"node exited with {code}:\n{proc.output()}"


@pytest.fixture(scope="module")
def peer(node):
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image
    from vision_msgs.msg import Detection2DArray

    p = RosPeer("evit_bad_input_peer")
    p.received = {}
    p.node.create_subscription(Detection2DArray, "/bad/detections",
                               lambda m: p.received.setdefault(stamp_key(m.header.stamp), m), 10)
    p.camera = p.node.create_publisher(Image, CAMERA,
                                       QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE))
    assert p.wait_for_subscribers(p.camera, 60), node.output()
    assert node.wait_for_output("subscribing reliable", 30), node.output()
    assert p.wait_for_subscribers(p.camera, 30)
    yield p
    p.close()


def _send(peer: RosPeer, index: int, **overrides) -> tuple:
    msg = image_message(synthetic_frame(index, 320, 240), frame_header(index))
    for key, value in overrides.items():
        setattr(msg, key, value)
    peer.camera.publish(msg)
    return stamp_key(msg.header.stamp)


def _good_frame_answered(peer: RosPeer, index: int, node: NodeProcess) -> None:
    key = _send(peer, index)
    assert peer.spin_until(lambda: key in peer.received, 30), node.output()
    assert peer.received[key].detections


def test_startup_problems_are_reported_once_and_the_node_stays_up(node, peer):
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus

    statuses = []
    peer.node.create_subscription(
        DiagnosticArray, "/diagnostics",
        lambda m: statuses.extend(s for s in m.status if s.name.startswith(NODE)), 10)
    for i in range(3):
        _send(peer, 900 + i)
        peer.spin_for(0.3)
    assert peer.spin_until(lambda: any(s.level == DiagnosticStatus.ERROR for s in statuses), 15)
    assert node.wait_for_output("no model is loaded", 15), node.output()
    assert node.alive()
    assert not peer.received
    out = node.output()
    assert node.count("no model loaded") == 1, out
    assert "corrupt.onnx" in out
    assert node.count("parameter 'score_threshold' must be in [0.0, 1.0], got 7.0") == 1, out
    assert node.count("parameter 'qos_reliability' must be one of") == 1, out
    assert node.count("parameter 'max_detections' must be an integer, got 'many'") == 1, out
    assert node.count("frames arrive but no model is loaded") == 1, out  # not per frame
    status = [s for s in statuses if s.level == DiagnosticStatus.ERROR][-1]
    assert "corrupt.onnx" in status.message
    values = {kv.key: kv.value for kv in status.values}
    assert int(values["frames_without_model"]) >= 1


def test_a_model_without_metadata_is_rejected_and_a_good_one_is_loaded(node, peer, models):
    result = peer.set_parameters(NODE, {"model_path": models["no_metadata"]})[0]
    assert not result.successful
    assert "no_metadata.onnx" in result.reason and "metadata" in result.reason.lower(), result.reason
    assert node.alive()
    result = peer.set_parameters(NODE, {"model_path": models["good"]})[0]
    assert result.successful, result.reason
    assert node.wait_for_output("model 'reference-colour-grid' loaded", 15)
    _good_frame_answered(peer, 1, node)


@pytest.mark.parametrize("case, overrides, message", [
    ("unknown encoding", {"encoding": "weird16"}, "unsupported image encoding 'weird16'"),
    ("0x0 image", {"height": 0, "width": 0, "step": 0, "data": b""}, "image is 0x0"),
    ("step mismatch", {"step": 100}, "step 100 is shorter than one row"),
])
def test_bad_frames_are_reported_once_each_and_good_frames_still_work(node, peer, case, overrides,
                                                                       message):
    for i in range(3):
        _send(peer, 100 + i, **overrides)
        peer.spin_for(0.2)
    assert node.wait_for_output(message, 15), f"{case}:\n{node.output()}"
    peer.spin_for(0.5)
    assert node.count(message) == 1, node.output()
    assert node.alive()
    _good_frame_answered(peer, 200 + len(case), node)


def test_invalid_parameter_changes_are_rejected_with_a_reason(node, peer):
    cases = {
        "score_threshold": (1.5, "must be in [0.0, 1.0]"),
        "iou_threshold": (0.0, "must be in (0.0, 1.0]"),
        "max_detections": ("lots", "must be an integer"),
        "backend": ("quantum", "must be one of"),
        "classes": (["dragon"], "dragon"),
        "image_topic": ("/elsewhere", "start-up only"),
    }
    for name, (value, needle) in cases.items():
        result = peer.set_parameters(NODE, {name: value})[0]
        assert not result.successful, name
        assert needle in result.reason, (name, result.reason)
    assert node.alive()
    _good_frame_answered(peer, 300, node)


def test_thresholds_and_class_filter_change_at_run_time(node, peer):
    key = _send(peer, 399)  # index % 3 == 0: a red square, class person
    assert peer.spin_until(lambda: key in peer.received, 30)
    before = peer.received[key].detections
    assert any(d.results[0].hypothesis.score < 0.95 for d in before)
    results = peer.set_parameters(NODE, {"score_threshold": 0.95, "classes": ["person"]})
    assert all(r.successful for r in results), [r.reason for r in results]
    key = _send(peer, 402)  # red again, elsewhere
    assert peer.spin_until(lambda: key in peer.received, 30)
    after = peer.received[key].detections
    assert after, node.output()
    assert all(d.results[0].hypothesis.score >= 0.95 for d in after)
    assert {d.results[0].hypothesis.class_id for d in after} == {"person"}
    key = _send(peer, 400)  # green -> vehicle, filtered out
    assert peer.spin_until(lambda: key in peer.received, 30)
    assert not peer.received[key].detections
