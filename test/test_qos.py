"""Camera QoS: the rules of evit_perception.qos, the ROS graph they read, and the node telling
the user about an incompatible camera instead of a silent nothing.
"""
from __future__ import annotations

import pytest
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

from evit_perception.qos import (camera_qos, choose_reliability, describe_qos,
                                 incompatibility_reason, reliability_for_publishers)
from support.reference_model import write_reference_model
from support.ros_processes import (NodeProcess, RosPeer, frame_header, image_message, stamp_key,
                                   synthetic_frame)

RELIABLE = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
BEST_EFFORT = QoSProfile(depth=5, reliability=ReliabilityPolicy.BEST_EFFORT)


def test_camera_qos_keeps_only_the_newest_frame_by_default():
    qos = camera_qos("best_effort")
    assert qos.depth == 1
    assert qos.reliability == ReliabilityPolicy.BEST_EFFORT
    assert qos.durability == DurabilityPolicy.VOLATILE
    assert camera_qos("reliable", depth=3).reliability == ReliabilityPolicy.RELIABLE


@pytest.mark.parametrize("args, needle", [(("auto",), "reliable' or 'best_effort"),
                                          (("reliable", 0), "depth")])
def test_camera_qos_rejects_bad_values_naming_them(args, needle):
    with pytest.raises(ValueError, match=needle):
        camera_qos(*args)


def test_reliability_follows_the_publishers():
    assert reliability_for_publishers([RELIABLE, RELIABLE]) == "reliable"
    assert reliability_for_publishers([RELIABLE, BEST_EFFORT]) == "best_effort"
    assert reliability_for_publishers([]) == "best_effort"  # accepts whoever comes


def test_incompatibility_is_named():
    reason = incompatibility_reason(BEST_EFFORT, camera_qos("reliable"))
    assert reason == "Best effort publisher and reliable subscription"
    assert incompatibility_reason(RELIABLE, camera_qos("best_effort")) is None
    assert incompatibility_reason(BEST_EFFORT, camera_qos("best_effort")) is None
    assert describe_qos(camera_qos("reliable")) == "reliability=reliable, durability=volatile, depth=1"


def test_choose_reliability_reads_the_live_graph():
    from sensor_msgs.msg import Image

    peer = RosPeer("evit_qos_graph_peer")
    try:
        topic = "/qos_graph/image_raw"
        assert choose_reliability(peer.node, topic, "auto") == "best_effort"
        reliable = peer.node.create_publisher(Image, topic, RELIABLE)
        assert peer.spin_until(lambda: choose_reliability(peer.node, topic) == "reliable", 10)
        peer.node.create_publisher(Image, topic, BEST_EFFORT)
        assert peer.spin_until(lambda: choose_reliability(peer.node, topic) == "best_effort", 10)
        assert choose_reliability(peer.node, topic, "reliable") == "reliable"  # explicit wins
        with pytest.raises(ValueError, match="auto"):
            choose_reliability(peer.node, topic, "sometimes")
        peer.node.destroy_publisher(reliable)
    finally:
        peer.close()


@pytest.mark.timeout(240)
def test_explicit_reliable_node_reports_a_best_effort_camera_and_keeps_running(tmp_path, ros_env):
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
    from sensor_msgs.msg import Image
    from vision_msgs.msg import Detection2DArray

    model = write_reference_model(str(tmp_path / "reference.onnx"))
    node = NodeProcess({"model_path": model, "qos_reliability": "reliable", "no_frame_warning_s": 2.0,
                        "inference_threads": 1},
                       {"image_raw": "/qos_bad/image_raw", "detections": "/qos_bad/detections"},
                       env=ros_env, node_name="evit_qos_reliable").start()
    peer = RosPeer("evit_qos_peer")
    statuses = []
    detections = []
    peer.node.create_subscription(
        DiagnosticArray, "/diagnostics",
        lambda m: statuses.extend(s for s in m.status if s.name.startswith("evit_qos_reliable")), 10)
    peer.node.create_subscription(Detection2DArray, "/qos_bad/detections", detections.append, 10)
    try:
        assert peer.spin_until(lambda: node.count("listening on") > 0 or not node.alive(), 60), node.output()
        camera = peer.node.create_publisher(Image, "/qos_bad/image_raw", BEST_EFFORT)
        assert node.wait_for_output("QoS mismatch", 30), node.output()
        assert node.wait_for_output("no frame for", 30), node.output()  # the watchdog
        for i in range(5):  # frames that cannot arrive must not repeat the report
            camera.publish(image_message(synthetic_frame(i, 320, 240), frame_header(i)))
            peer.spin_for(0.3)
        assert peer.spin_until(
            lambda: any(s.level == DiagnosticStatus.WARN and "QoS mismatch" in s.message
                        for s in statuses), 15), statuses[-1:]
        assert not detections
        assert node.alive()
        text = node.output()
        mismatch = [line for line in text.splitlines() if "QoS mismatch" in line]
        assert len(mismatch) == 1, text
        # both sides' policies are named, and what to do about it
        assert "offers reliability=best_effort" in mismatch[0]
        assert "requests reliability=reliable" in mismatch[0]
        assert "qos_reliability" in mismatch[0]
        stall = [line for line in text.splitlines() if "no frame for" in line]
        assert len(stall) == 1 and "likely causes" in stall[0]
        values = {kv.key: kv.value for kv in statuses[-1].values}
        assert "QoS mismatch" in values["qos_problem"]
        assert values["camera_publishers"] == "1"
    finally:
        peer.close()
        code = node.stop()
    assert code == 0, node.output()


@pytest.mark.timeout(240)
def test_explicit_best_effort_node_hears_a_reliable_camera(tmp_path, ros_env):
    from rclpy.qos import QoSProfile
    from sensor_msgs.msg import Image
    from vision_msgs.msg import Detection2DArray

    model = write_reference_model(str(tmp_path / "reference.onnx"))
    node = NodeProcess({"model_path": model, "qos_reliability": "best_effort", "inference_threads": 1},
                       {"image_raw": "/qos_be/image_raw", "detections": "/qos_be/detections"},
                       env=ros_env, node_name="evit_qos_best_effort").start()
    peer = RosPeer("evit_qos_be_peer")
    received = {}
    peer.node.create_subscription(Detection2DArray, "/qos_be/detections",
                                  lambda m: received.setdefault(stamp_key(m.header.stamp), m), 10)
    camera = peer.node.create_publisher(Image, "/qos_be/image_raw",
                                        QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE))
    try:
        assert peer.wait_for_subscribers(camera, 60), node.output()
        peer.spin_for(1.0)
        # 320x240 fits Fast DDS's default shared-memory segment; larger best-effort samples
        # need the large-frames profile on the camera (test_node_dds covers that).
        for i in range(3):
            camera.publish(image_message(synthetic_frame(i, 320, 240), frame_header(i)))
            key = stamp_key(frame_header(i).stamp)
            assert peer.spin_until(lambda: key in received, 30), node.output()
        assert "subscribing" not in node.output()  # explicit mode never resubscribes
        assert "QoS mismatch" not in node.output()
    finally:
        peer.close()
        code = node.stop()
    assert code == 0, node.output()
