"""The geolocation node over real DDS: detections + pose + camera_info -> Detection3DArray.

The node runs as its own process (``python -m evit_perception.geolocation.geolocation_node``)
in a namespace, with MAVROS-style remappings; this process publishes synthetic inputs and
checks the outputs against the synthetic geometry (1 cm on the ground at 40 m altitude with an
oblique, distorted camera; 1e-4 rad for bearings). Bad inputs must produce no output, one
throttled warning per cause, and leave the node answering the next good message.
"""
import ast
import math

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
from builtin_interfaces.msg import Time  # noqa: E402
from geometry_msgs.msg import PoseArray, PoseStamped  # noqa: E402
from nav_msgs.msg import Odometry  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import CameraInfo, Range  # noqa: E402
from vision_msgs.msg import (BoundingBox2D, Detection2D, Detection2DArray, Detection3DArray,  # noqa: E402
                             ObjectHypothesis, ObjectHypothesisWithPose)

from evit_perception.geolocation.camera_model import CameraModel  # noqa: E402
from evit_perception.geolocation.frames import (CameraMount, RigidTransform, enu_flu_to_ned_frd_rotation,  # noqa: E402
                                                enu_to_ned_position, matrix_to_quaternion, rpy_to_matrix)
from evit_perception.geolocation.stamp_matching import stamp_to_ns  # noqa: E402
from evit_perception.geolocation.warning_throttle import ThrottledWarnings  # noqa: E402
from support.ros_processes import REPO_ROOT, NodeProcess, RosPeer  # noqa: E402

NS = "/uav1"
K = [800.0, 0.0, 320.0, 0.0, 810.0, 240.0, 0.0, 0.0, 1.0]
D = [-0.21, 0.05, 0.0005, -0.0007, 0.0]
MOUNT = CameraMount((0.1, 0.0, -0.1), (0.0, 1.1, 0.05))  # oblique, slightly yawed
GROUND_TOLERANCE_M = 0.01
BEARING_TOLERANCE_RAD = 1e-4


def stamp(sec: float) -> Time:
    return Time(sec=int(sec), nanosec=int(round((sec - int(sec)) * 1e9)))


def camera_info(k=K) -> CameraInfo:
    msg = CameraInfo(width=640, height=480, distortion_model="plumb_bob")
    msg.header.frame_id = "camera_optical_frame"
    msg.k, msg.d = list(k), list(D)
    return msg


def pose_msg(sec, xyz, rpy) -> PoseStamped:
    q = RigidTransform(rpy_to_matrix(*rpy)).quaternion()
    msg = PoseStamped()
    msg.header.stamp, msg.header.frame_id = stamp(sec), "map"
    msg.pose.position.x, msg.pose.position.y, msg.pose.position.z = map(float, xyz)
    o = msg.pose.orientation
    o.x, o.y, o.z, o.w = map(float, q)
    return msg


def detections_msg(sec, boxes, classes, scores) -> Detection2DArray:
    msg = Detection2DArray()
    msg.header.stamp, msg.header.frame_id = stamp(sec), "camera_optical_frame"
    for n, (box, cls, score) in enumerate(zip(boxes, classes, scores)):
        det = Detection2D(header=msg.header, id="det%d" % n)
        det.bbox = BoundingBox2D(size_x=float(box[2] - box[0]), size_y=float(box[3] - box[1]))
        det.bbox.center.position.x = float(box[0] + box[2]) / 2.0
        det.bbox.center.position.y = float(box[1] + box[3]) / 2.0
        det.results.append(ObjectHypothesisWithPose(hypothesis=ObjectHypothesis(class_id=cls, score=score)))
        msg.detections.append(det)
    return msg


def scene(base_xyz, base_rpy, ground_points, obstacle_dirs_body, mount=MOUNT):
    """Boxes whose bottom-centres image ``ground_points`` and whose centres lie along the body
    directions of obstacles, for the true drone pose; computed with the camera model directly."""
    camera = CameraModel(np.reshape(K, (3, 3)), D, "plumb_bob")
    world_from_optical = RigidTransform(rpy_to_matrix(*base_rpy), np.array(base_xyz, float)).compose(
        mount.base_to_optical())
    feet = camera.project(world_from_optical.inverse().apply(np.asarray(ground_points, float)))
    person_boxes = [(u - 12.0, v - 50.0, u + 12.0, v) for u, v in feet]
    optical_dirs = np.asarray(obstacle_dirs_body, float).reshape(-1, 3) @ mount.base_to_optical().rotation
    centres = camera.project(optical_dirs).reshape(-1, 2)
    obstacle_boxes = [(u - 20.0, v - 30.0, u + 20.0, v + 30.0) for u, v in centres]
    for u, v in np.vstack([feet, centres]):
        assert 0 < u < 640 and 0 < v < 480, "synthetic scene must stay inside the image"
    return person_boxes, obstacle_boxes


class GeolocationProcess(NodeProcess):
    """The node with the shipped config/geolocation.yaml loaded first (``-p`` values win)."""

    def command(self):
        cmd = super().command()
        at = cmd.index("--ros-args") + 1
        return cmd[:at] + ["--params-file", str(REPO_ROOT / "config" / "geolocation.yaml")] + cmd[at:]


class Harness:
    def __init__(self, peer: RosPeer, node: NodeProcess) -> None:
        self.peer, self.node = peer, node
        n = peer.node
        reliable = QoSProfile(depth=20, reliability=ReliabilityPolicy.RELIABLE)
        self.pub_info = n.create_publisher(CameraInfo, NS + "/camera/camera_info", reliable)
        self.pub_pose = n.create_publisher(PoseStamped, "/mavros/local_position/pose", reliable)
        self.pub_det = n.create_publisher(Detection2DArray, NS + "/detections", reliable)
        self.located, self.poses, self.bearings = [], [], []
        n.create_subscription(Detection3DArray, NS + "/geolocation/detections", self.located.append, reliable)
        n.create_subscription(PoseArray, NS + "/geolocation/poses", self.poses.append, reliable)
        n.create_subscription(Detection3DArray, NS + "/obstacle_bearings", self.bearings.append, reliable)

    def publish(self, *msgs) -> None:
        for msg in msgs:
            {CameraInfo: self.pub_info, PoseStamped: self.pub_pose, Detection2DArray: self.pub_det}[type(msg)].publish(msg)
            self.peer.spin_for(0.05)

    def located_at(self, sec):
        return [m for m in self.located if stamp_to_ns(m.header.stamp) == stamp_to_ns(stamp(sec))]

    def wait_located(self, sec, timeout=10.0):
        self.peer.spin_until(lambda: bool(self.located_at(sec)), timeout)
        return self.located_at(sec)


@pytest.fixture(scope="module")
def harness(ros_env):
    node = GeolocationProcess(
        parameters={"camera_mount_xyz": list(MOUNT.xyz), "camera_mount_rpy": list(MOUNT.rpy),
                    "ground_height": 2.0, "stamp_tolerance": 0.05, "pose_wait": 0.3,
                    "warn_period": 60.0, "bearing_classes": ["obstacle"], "ground_classes": ["person"]},
        remappings={"__ns": NS, "pose": "/mavros/local_position/pose", "camera_info": "camera/camera_info"},
        env=ros_env, module="evit_perception.geolocation.geolocation_node", node_name="evit_geolocation")
    node.start()
    peer = RosPeer("evit_geolocation_test_peer")
    h = Harness(peer, node)
    try:
        assert node.wait_for_output("geolocation ready", 60.0), node.output()
        for pub in (h.pub_info, h.pub_pose, h.pub_det):
            assert peer.wait_for_subscribers(pub, 60.0), "node did not subscribe:\n" + node.output()
        assert peer.wait_for_publishers(NS + "/geolocation/detections", 30.0)
        peer.spin_for(0.5)
        yield h
    finally:
        peer.close()
        node.stop()


def test_zero_intrinsics_give_no_output_and_one_warning(harness):
    h = harness
    h.publish(camera_info(k=[0.0] * 9), pose_msg(100.0, (0, 0, 40), (0, 0, 0)))
    for i in range(3):
        h.publish(detections_msg(100.0, [(300, 200, 320, 260)], ["person"], [0.9]))
    h.peer.spin_for(1.5)
    assert not h.located_at(100.0)
    assert h.node.alive() and h.node.count("[bad_camera_info]") == 1, h.node.output()
    assert "fx=0" in h.node.output()


def test_geolocates_persons_and_bearings_with_out_of_order_poses(harness):
    h = harness
    true_xyz, true_rpy = (20.0, -10.0, 42.0), (0.03, -0.05, 0.6)
    heading = rpy_to_matrix(0.0, 0.0, true_rpy[2])
    # (ahead, left) of the drone on ground 40 m below; the camera looks 63 deg down
    grounds = [tuple(np.array(true_xyz) + heading @ (ahead, left, 0.0) - (0.0, 0.0, 40.0))
               for ahead, left in ((20.0, 3.0), (28.0, -5.0))]
    azimuth, elevation = 0.15, -1.0
    obstacle_dirs = [(math.cos(elevation) * math.cos(azimuth), math.cos(elevation) * math.sin(azimuth),
                      math.sin(elevation))]
    persons, obstacles = scene(true_xyz, true_rpy, grounds, obstacle_dirs)
    # Poses 40 ms either side of the frame, moving linearly and turning about z, published
    # newest first: the node must sort and interpolate them back to the true pose.
    before = pose_msg(199.96, (true_xyz[0] - 0.4, true_xyz[1], true_xyz[2] - 0.2), (0.03, -0.05, 0.55))
    after = pose_msg(200.04, (true_xyz[0] + 0.4, true_xyz[1], true_xyz[2] + 0.2), (0.03, -0.05, 0.65))
    h.publish(camera_info(), pose_msg(50.0, (0, 0, 0), (0, 0, 0)), after, before)
    boxes = persons + obstacles + [(10, 10, 40, 40)]
    h.publish(detections_msg(200.0, boxes, ["person", "person", "obstacle", "vehicle"], [0.9, 0.8, 0.7, 0.6]))
    located = h.wait_located(200.0)
    assert located, "no Detection3DArray for t=200:\n" + h.node.output()
    out = located[0]
    assert out.header.frame_id == "map" and len(out.detections) == 2
    for det, expected, score in zip(out.detections, grounds, (0.9, 0.8)):
        hyp = det.results[0]
        assert hyp.hypothesis.class_id == "person" and hyp.hypothesis.score == pytest.approx(score)
        p = hyp.pose.pose.position
        assert np.linalg.norm(np.array([p.x, p.y, p.z]) - expected) < GROUND_TOLERANCE_M
        assert hyp.pose.covariance[0] > 0.0 and hyp.pose.covariance[7] > 0.0
    h.peer.spin_until(lambda: any(stamp_to_ns(m.header.stamp) == stamp_to_ns(stamp(200.0)) for m in h.poses), 5.0)
    pose_array = [m for m in h.poses if stamp_to_ns(m.header.stamp) == stamp_to_ns(stamp(200.0))][0]
    assert [round(q.position.x, 2) for q in pose_array.poses] == [round(g[0], 2) for g in grounds]
    bearings = [m for m in h.bearings if stamp_to_ns(m.header.stamp) == stamp_to_ns(stamp(200.0))]
    assert bearings and bearings[0].header.frame_id == "base_link" and len(bearings[0].detections) == 1
    b = bearings[0].detections[0]
    d = b.results[0].pose.pose.position
    assert b.results[0].hypothesis.class_id == "obstacle"
    assert math.atan2(d.y, d.x) == pytest.approx(azimuth, abs=BEARING_TOLERANCE_RAD)  # left
    assert math.asin(d.z) == pytest.approx(elevation, abs=BEARING_TOLERANCE_RAD)  # below
    assert b.bbox.size.y > 0.0 and b.bbox.size.z > b.bbox.size.y  # taller than wide (angles)


def test_no_pose_within_tolerance_then_recovers(harness):
    h = harness
    h.publish(camera_info(), pose_msg(299.0, (0, 0, 40), (0, 0, 0)))
    for _ in range(4):  # pose one second older than the frames: far outside 50 ms
        h.publish(detections_msg(300.0, [(300, 300, 320, 380)], ["person"], [0.9]))
    h.peer.spin_for(1.5)
    assert not h.located_at(300.0)
    assert h.node.alive() and h.node.count("[no_pose_in_tolerance]") == 1, h.node.output()
    assert "nearest pose is -1.000 s away" in h.node.output()
    # Detections first, their pose 100 ms later (within pose_wait): located once it arrives.
    h.publish(detections_msg(310.0, [(300, 300, 320, 380)], ["person"], [0.9]))
    h.peer.spin_for(0.1)
    h.publish(pose_msg(310.0, (0, 0, 40), (0, 0, 0)))
    assert h.wait_located(310.0), h.node.output()


def test_ray_above_horizon_gives_no_output_then_recovers(harness):
    h = harness
    nose_up = (0.0, -1.35, 0.0)  # 77 deg nose up: the camera's image top looks above the horizon
    h.publish(camera_info(), pose_msg(400.0, (0, 0, 30), nose_up))
    h.publish(detections_msg(400.0, [(310, 5, 330, 20)], ["person"], [0.9]))
    h.peer.spin_for(1.5)
    assert not h.located_at(400.0)
    assert h.node.alive() and h.node.count("[ray_above_horizon]") == 1, h.node.output()
    h.publish(pose_msg(410.0, (0, 0, 30), (0, 0, 0)))
    h.publish(detections_msg(410.0, [(310, 200, 330, 260)], ["person"], [0.9]))
    assert h.wait_located(410.0), h.node.output()


def test_throttled_warnings_once_per_cause_per_period():
    lines, now = [], [0.0]
    warnings = ThrottledWarnings(lines.append, period_s=5.0, clock=lambda: now[0])
    assert warnings.warn("no_pose", "a") and not warnings.warn("no_pose", "b")
    assert warnings.warn("above_horizon", "c")
    now[0] = 6.0
    assert warnings.warn("no_pose", "d")
    assert lines == ["[no_pose] a", "[above_horizon] c", "[no_pose] d (1 more since the last warning)"]
    assert warnings.totals == {"no_pose": 3, "above_horizon": 1}


def test_launch_file_declares_mavros_defaults_and_remaps_every_input():
    """Parsed, not run: ``launch``/``launch_ros`` are not on PyPI (a real install runs it)."""
    tree = ast.parse((REPO_ROOT / "launch" / "geolocation.launch.py").read_text())
    arguments = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "ARGUMENTS":
            for item in node.value.elts:
                arguments[item.elts[0].value] = item.elts[1]
    assert arguments["pose_topic"].value == "/mavros/local_position/pose"
    assert {"namespace", "params_file", "detections_topic", "camera_info_topic", "altitude_topic",
            "use_sim_time"} <= set(arguments)
    remapped = {n.elts[0].value for n in ast.walk(tree)
                if isinstance(n, ast.Tuple) and len(n.elts) == 2 and isinstance(n.elts[1], ast.Call)}
    assert remapped == {"detections", "camera_info", "pose", "altitude_agl"}
    source = (REPO_ROOT / "launch" / "geolocation.launch.py").read_text()
    assert 'executable="evit_geolocation"' in source


def test_px4_ned_odometry_and_rangefinder_ground(ros_env):
    """Odometry in PX4's NED/FRD frames + a tilted downward rangefinder for the ground height:
    the node converts to ENU and places the person on ground it has never been told about."""
    base_xyz, base_rpy, ground_z = np.array([5.0, 8.0, 25.0]), (0.12, -0.08, 1.9), 3.0
    rotation = rpy_to_matrix(*base_rpy)
    slant = (base_xyz[2] - ground_z) / rotation[2, 2]  # what a body-fixed downward sensor reads
    person = base_xyz + rotation @ (6.0, -4.0, 0.0)
    person[2] = ground_z
    nadir = CameraMount()
    (box,), _ = scene(base_xyz, base_rpy, [person], np.zeros((0, 3)), mount=nadir)
    node = GeolocationProcess(
        parameters={"pose_type": "odometry", "pose_convention": "ned_frd", "ground_source": "range",
                    "world_frame": "map", "camera_mount_xyz": list(nadir.xyz), "camera_mount_rpy": list(nadir.rpy)},
        remappings={"pose": "/fmu/odom", "altitude_agl": "/fmu/range"}, env=ros_env,
        module="evit_perception.geolocation.geolocation_node", node_name="evit_geolocation_px4")
    node.start()
    peer = RosPeer("evit_geolocation_px4_peer")
    try:
        reliable = QoSProfile(depth=20, reliability=ReliabilityPolicy.RELIABLE)
        pubs = [peer.node.create_publisher(t, name, reliable) for t, name in (
            (CameraInfo, "/camera_info"), (Odometry, "/fmu/odom"), (Range, "/fmu/range"),
            (Detection2DArray, "/detections"))]
        received = []
        peer.node.create_subscription(Detection3DArray, "/geolocation/detections", received.append, reliable)
        for pub in pubs:
            assert peer.wait_for_subscribers(pub, 60.0), node.output()
        peer.spin_for(0.5)
        odom = Odometry()
        odom.header.stamp, odom.header.frame_id = stamp(500.0), "odom_ned"
        ned = enu_to_ned_position(base_xyz)
        odom.pose.pose.position.x, odom.pose.pose.position.y, odom.pose.pose.position.z = map(float, ned)
        q = matrix_to_quaternion(enu_flu_to_ned_frd_rotation(rotation))
        o = odom.pose.pose.orientation
        o.x, o.y, o.z, o.w = map(float, q)
        rng = Range(range=float(slant), min_range=0.2, max_range=100.0)
        rng.header.stamp = stamp(500.0)
        for pub, msg in zip(pubs, (camera_info(), odom, rng, detections_msg(500.0, [box], ["person"], [0.7]))):
            pub.publish(msg)
            peer.spin_for(0.05)
        assert peer.spin_until(lambda: bool(received), 10.0), node.output()
        out = received[0]
        p = out.detections[0].results[0].pose.pose.position
        assert out.header.frame_id == "map"
        assert np.linalg.norm(np.array([p.x, p.y, p.z]) - person) < GROUND_TOLERANCE_M
    finally:
        peer.close()
        node.stop()


def test_bad_parameters_are_named():
    from rclpy.parameter import Parameter

    from evit_perception.geolocation.geolocation_node import GeolocationNode

    context = rclpy.Context()
    rclpy.init(context=context)
    try:
        for name, value, text in (("pose_type", "gps", "pose_type='gps'"),
                                  ("camera_mount_rpy", [0.0, 1.0], "camera mount rpy must be 3"),
                                  ("stamp_tolerance", 0.0, "stamp_tolerance must be > 0")):
            with pytest.raises(ValueError, match=text):
                GeolocationNode(context=context, parameter_overrides=[Parameter(name, value=value)])
    finally:
        context.try_shutdown()


def test_parsed_detections_best_hypothesis_and_numeric_ids():
    from evit_perception.geolocation.geolocation_node import ParsedDetections

    msg = detections_msg(1.0, [(10, 20, 30, 60), (100, 100, 140, 120)], ["vehicle", "2"], [0.3, 0.5])
    msg.detections[0].results.append(ObjectHypothesisWithPose(hypothesis=ObjectHypothesis(class_id="person", score=0.9)))
    msg.detections[1].id = ""
    parsed = ParsedDetections(msg, ["person", "vehicle", "obstacle"])
    assert parsed.classes == ["person", "obstacle"] and parsed.scores == pytest.approx([0.9, 0.5])
    assert parsed.ids == ["det0", "1"] and np.allclose(parsed.boxes[0], [10, 20, 30, 60])
    assert parsed.select(["person"], 0.0) == [0] and parsed.select(["*"], 0.6) == [0]
