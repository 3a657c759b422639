"""evit_detector as its own process, answering frames over real DDS.

Image in and CompressedImage in, Detection2DArray out: the header comes back unchanged and
the detections equal what the same backend returns for that frame in this process. Large
best-effort frames from a camera process carrying the shipped Fast DDS profile are answered
one by one, with the node in its default ``auto`` QoS mode.
"""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from evit_perception.backends import open_backend
from evit_perception.detection_messages import from_detection2d_array
from evit_perception.detector import Detector
from evit_perception.image_conversion import compressed_to_bgr
from support.reference_model import write_reference_model
from support.ros_processes import (NodeProcess, RosPeer, camera_process, frame_header, image_message,
                                   installed_executable, stamp_key, synthetic_frame)

pytestmark = pytest.mark.timeout(300)

SCORE, IOU, MAX_DET = 0.3, 0.5, 50


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> str:
    return write_reference_model(str(tmp_path_factory.mktemp("models") / "reference.onnx"))


@pytest.fixture(scope="module")
def local_detector(model_path):
    detector = Detector(open_backend(model_path, "onnxruntime", intra_op_num_threads=1),
                        SCORE, IOU, MAX_DET)
    yield detector
    detector.backend.close()


@pytest.fixture(scope="module")
def peer():
    p = RosPeer("evit_dds_test_peer")
    yield p
    p.close()


def _node_params(model_path: str, **extra) -> dict:
    params = {"model_path": model_path, "score_threshold": SCORE, "iou_threshold": IOU,
              "max_detections": MAX_DET, "inference_threads": 1}
    params.update(extra)
    return params


@pytest.fixture(scope="module")
def raw_node(model_path, ros_env):
    node = NodeProcess(_node_params(model_path),
                       {"image_raw": "/dds/cam/image_raw", "detections": "/dds/detections"},
                       env=ros_env).start()
    yield node
    code = node.stop()
    assert code == 0, f"node exited with {code}:\n{node.output()}"


def _collect(peer: RosPeer, topic: str) -> dict:
    from vision_msgs.msg import Detection2DArray
    received: dict = {}
    peer.node.create_subscription(
        Detection2DArray, topic, lambda m: received.setdefault(stamp_key(m.header.stamp), m), 10)
    return received


def _assert_same_detections(msg, expected, class_names) -> None:
    got = from_detection2d_array(msg, class_names)
    assert len(expected) > 0, "test frame should produce detections"
    assert len(got) == len(expected)
    np.testing.assert_array_equal(got.class_ids, expected.class_ids)
    np.testing.assert_allclose(got.scores, expected.scores, atol=1e-6)
    np.testing.assert_allclose(got.boxes, expected.boxes, atol=1e-3)


def test_reliable_camera_frames_come_back_with_header_and_backend_detections(
        raw_node, peer, local_detector):
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    received = _collect(peer, "/dds/detections")
    pub = peer.node.create_publisher(Image, "/dds/cam/image_raw",
                                     QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE))
    try:
        assert peer.wait_for_subscribers(pub, 60), raw_node.output()
        # auto mode sees a reliable camera and resubscribes reliably
        assert raw_node.wait_for_output("subscribing reliable", 30), raw_node.output()
        assert peer.wait_for_subscribers(pub, 30)
        for i in range(4):
            frame = synthetic_frame(i, 640, 480)
            header = frame_header(i)
            pub.publish(image_message(frame, header, "bgr8" if i % 2 == 0 else "rgb8"))
            key = stamp_key(header.stamp)
            assert peer.spin_until(lambda: key in received, 30), \
                f"no detections for frame {i}\n{raw_node.output()}"
            msg = received[key]
            assert msg.header.frame_id == header.frame_id
            assert (msg.header.stamp.sec, msg.header.stamp.nanosec) == key
            for det in msg.detections:
                assert det.header.frame_id == header.frame_id
            _assert_same_detections(msg, local_detector.detect(frame), local_detector.class_names)
    finally:
        peer.node.destroy_publisher(pub)


def test_debug_image_while_subscribed_and_latched_label_info(raw_node, peer):
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image
    from vision_msgs.msg import LabelInfo

    labels = []
    peer.node.create_subscription(  # a late subscriber still gets the latched class map
        LabelInfo, "/label_info", labels.append,
        QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                   durability=DurabilityPolicy.TRANSIENT_LOCAL))
    assert peer.spin_until(lambda: labels, 30), raw_node.output()
    assert [c.class_name for c in labels[0].class_map] == ["person", "vehicle", "obstacle"]

    debug = {}
    peer.node.create_subscription(Image, "/detections/image",
                                  lambda m: debug.setdefault(stamp_key(m.header.stamp), m), 1)
    camera = peer.node.create_publisher(Image, "/dds/cam/image_raw",
                                        QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE))
    try:
        assert peer.wait_for_subscribers(camera, 30)
        peer.spin_for(1.5)  # the node sees the debug subscriber (and re-checks the camera QoS)
        frame = synthetic_frame(50, 640, 480)
        header = frame_header(50)
        key = stamp_key(header.stamp)
        for _ in range(3):  # the node may be resubscribing to the camera right now
            camera.publish(image_message(frame, header))
            if peer.spin_until(lambda: key in debug, 10):
                break
        assert key in debug, raw_node.output()
        msg = debug[key]
        assert msg.header.frame_id == header.frame_id
        assert (msg.height, msg.width, msg.encoding) == (480, 640, "bgr8")
        drawn = np.frombuffer(bytes(msg.data), np.uint8).reshape(480, 640, 3)
        changed = np.any(drawn != frame, axis=2)
        assert 0 < changed.mean() < 0.2  # boxes and labels drawn, the image otherwise intact
    finally:
        peer.node.destroy_publisher(camera)


def test_best_effort_1080p_camera_with_profile_is_answered_frame_by_frame(raw_node, peer, ros_env):
    received = _collect(peer, "/dds/detections")
    count = 6
    camera = camera_process(["--topic", "/dds/cam/image_raw", "--width", "1920", "--height", "1080",
                             "--count", str(count), "--rate", "2", "--reliability", "best_effort",
                             "--settle", "2.0"], ros_env, profile=True)
    try:
        out, _ = camera.communicate(timeout=180)
    finally:
        if camera.poll() is None:
            camera.kill()
    assert f"sent frame {count - 1}" in out, out
    wanted = {stamp_key(frame_header(i).stamp) for i in range(count)}
    peer.spin_until(lambda: wanted <= set(received), 30)
    missing = sorted(wanted - set(received))
    assert not missing, f"no detections for stamps {missing}\ncamera:\n{out}\nnode:\n{raw_node.output()}"
    # the node followed the best-effort camera (auto mode)
    assert "subscribing best_effort" in raw_node.output()
    assert "QoS mismatch" not in raw_node.output()
    for key in wanted:
        assert received[key].detections, "every synthetic frame has an object"


def test_installed_node_answers_compressed_frames(model_path, peer, local_detector, ros_env):
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CompressedImage

    executable = installed_executable("evit_detector")
    if executable is None:
        pytest.skip("the package is not pip-installed here: no evit_detector console script")
    received = _collect(peer, "/cmp/detections")
    # the installed console script this time (what `ros2 run evit_perception evit_detector` runs)
    node = NodeProcess(_node_params(model_path, input_type="compressed"),
                       {"image_raw": "/cmp/cam/image_raw", "detections": "/cmp/detections"},
                       env=ros_env, executable=executable, node_name="evit_compressed").start()
    pub = peer.node.create_publisher(CompressedImage, "/cmp/cam/image_raw/compressed",
                                     QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE))
    try:
        assert peer.wait_for_subscribers(pub, 60), node.output()
        assert node.wait_for_output("subscribing reliable", 30), node.output()
        assert peer.wait_for_subscribers(pub, 30)
        for i in range(2):  # a corrupt JPEG: said once, and the node goes on
            broken = CompressedImage(header=frame_header(90 + i), format="jpeg")
            broken.data = b"\xff\xd8\xff\xe0 not really a jpeg"
            pub.publish(broken)
            peer.spin_for(0.3)
        assert node.wait_for_output("could not be decoded", 15), node.output()
        for i in range(3):
            ok, jpeg = cv2.imencode(".jpg", synthetic_frame(i, 640, 480), [cv2.IMWRITE_JPEG_QUALITY, 95])
            assert ok
            msg = CompressedImage(header=frame_header(i), format="jpeg")
            msg.data = jpeg.tobytes()
            pub.publish(msg)
            key = stamp_key(msg.header.stamp)
            assert peer.spin_until(lambda: key in received, 30), node.output()
            assert received[key].header.frame_id == msg.header.frame_id
            expected = local_detector.detect(compressed_to_bgr(msg))
            _assert_same_detections(received[key], expected, local_detector.class_names)
    finally:
        peer.node.destroy_publisher(pub)
        code = node.stop()
    assert code == 0, node.output()
    assert node.count("could not be decoded") == 1, node.output()


def _slow_reference_model(path: str, matmuls: int = 8) -> str:
    """The reference model plus input-dependent busywork (MatMuls whose result is added times
    zero), so inference is slower than the camera without changing the detections."""
    import onnx
    from onnx import helper, numpy_helper
    from support.reference_model import build_reference_model

    model = build_reference_model()
    graph = model.graph
    graph.initializer.extend([
        numpy_helper.from_array(np.array([-1, 320], np.int64), "busy_shape"),
        numpy_helper.from_array(np.random.default_rng(0).random((320, 320), np.float32), "busy_w"),
        numpy_helper.from_array(np.zeros((), np.float32), "busy_zero"),
    ])
    nodes = [helper.make_node("Reshape", ["images", "busy_shape"], ["busy_0"])]
    for i in range(matmuls):
        nodes.append(helper.make_node("MatMul", [f"busy_{i}", "busy_w"], [f"busy_{i + 1}"]))
    nodes += [helper.make_node("ReduceSum", [f"busy_{matmuls}"], ["busy_sum"], keepdims=0),
              helper.make_node("Mul", ["busy_sum", "busy_zero"], ["busy_nothing"])]
    output = graph.output[0].name
    for node in graph.node:  # rename the real output, then add the zero to it
        node.output[:] = [f"{output}_real" if o == output else o for o in node.output]
    nodes.append(helper.make_node("Add", [f"{output}_real", "busy_nothing"], [output]))
    graph.node.extend(nodes)
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def test_a_slow_model_drops_frames_and_answers_the_newest(tmp_path, peer, ros_env):
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    model = _slow_reference_model(str(tmp_path / "slow.onnx"))
    received = _collect(peer, "/slow/detections")
    status = {}
    peer.node.create_subscription(
        DiagnosticArray, "/diagnostics",
        lambda m: status.update({kv.key: kv.value for s in m.status if s.name.startswith("evit_slow")
                                 for kv in s.values}), 10)
    node = NodeProcess(_node_params(model, qos_reliability="reliable"),
                       {"image_raw": "/slow/image_raw", "detections": "/slow/detections"},
                       env=ros_env, node_name="evit_slow").start()
    camera = peer.node.create_publisher(Image, "/slow/image_raw",
                                        QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE))
    try:
        assert peer.wait_for_subscribers(camera, 60), node.output()
        peer.spin_for(1.5)  # the node's graph check has seen this one camera
        camera.publish(image_message(synthetic_frame(0, 320, 240), frame_header(0)))
        assert peer.spin_until(lambda: received, 60), node.output()
        count = 40
        messages = [image_message(synthetic_frame(i, 320, 240), frame_header(i))
                    for i in range(1, count + 1)]
        for msg in messages:  # a burst far faster than the model, then silence
            camera.publish(msg)
        last = stamp_key(frame_header(count).stamp)
        assert peer.spin_until(lambda: last in received, 60), node.output()  # newest frame wins
        peer.spin_for(1.0)  # nothing queued behind the newest frame: no answers trickle in
        status.clear()
        assert peer.spin_until(lambda: bool(status), 10)
        answered = list(received)
        assert 1 < len(answered) < count + 1
        assert answered == sorted(answered)  # answered in publish order
        received_by_node = int(status["frames_received"])
        dropped = int(status["frames_dropped"])
        lost = int(status["frames_lost_before_node"])
        processed = int(status["frames_processed"])
        # every frame is accounted for: answered, dropped in the node's slot, or lost before
        # the callback (counted from the camera's sequence numbers)
        assert dropped + lost > 0, status
        assert processed == len(answered), status
        assert processed + dropped == received_by_node, status
        assert received_by_node + lost == count + 1, status
    finally:
        peer.node.destroy_publisher(camera)
        code = node.stop()
    assert code == 0, node.output()
