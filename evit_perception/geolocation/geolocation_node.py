"""ROS 2 node ``evit_geolocation``: detections + camera model + drone pose -> ground positions
of persons and bearings of obstacles.

Inputs (relative names, remapped by the launch file; docs/geolocation.md):
  ``detections`` vision_msgs/Detection2DArray, ``camera_info`` sensor_msgs/CameraInfo,
  ``pose`` geometry_msgs/PoseStamped (MAVROS ``/mavros/local_position/pose``) or
  nav_msgs/Odometry (``pose_type: odometry``), optionally ``altitude_agl`` std_msgs/Float64 or
  sensor_msgs/Range for the ground height.
Outputs: ``geolocation/detections`` vision_msgs/Detection3DArray and ``geolocation/poses``
  geometry_msgs/PoseArray in the world frame (ENU), ``obstacle_bearings``
  vision_msgs/Detection3DArray in ``base_link`` (unit vectors), ``geolocation/markers``
  visualization_msgs/MarkerArray, ``/diagnostics``.

Geometry lives in the sibling modules; this file only turns messages into arrays and back.
"""
from __future__ import annotations

import math
import time
from collections import deque
from typing import Any, Deque, List, Optional, Tuple

import numpy as np
import rclpy
import rclpy.logging
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import Point, Pose, PoseArray, PoseStamped, Quaternion
from nav_msgs.msg import Odometry
from rclpy.node import Node
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.time import Time
from sensor_msgs.msg import CameraInfo, Range
from std_msgs.msg import Float64, Header
from vision_msgs.msg import (BoundingBox3D, Detection2DArray, Detection3D, Detection3DArray,
                             ObjectHypothesis, ObjectHypothesisWithPose)
from visualization_msgs.msg import Marker, MarkerArray

from .bearings import bearing_matrix, box_bearings
from .camera_model import CameraModel, CameraModelError
from .frames import (CameraMount, RigidTransform, ENU_NED, matrix_to_quaternion,
                     ned_frd_to_enu_flu_rotation, quaternion_to_matrix)
from .ground_projection import (agl_from_range, ground_contact_pixels, horizontal_covariance,
                                project_pixels_to_ground)
from .stamp_matching import PoseBuffer, StampedBuffer, stamp_to_ns
from .warning_throttle import ThrottledWarnings
from ..shutdown import spin_until_shutdown

POSE_TYPES = ("pose_stamped", "odometry")
POSE_CONVENTIONS = ("enu_flu", "ned_frd")
GROUND_SOURCES = ("flat", "agl", "range")
#: Orientation of a ground fix is unknown; a huge variance says so (REP-145 style).
UNKNOWN_VARIANCE = 1e6
CLASS_COLOURS = {"person": (1.0, 0.2, 0.2), "vehicle": (0.2, 0.5, 1.0), "obstacle": (1.0, 0.8, 0.1)}

_BEST_EFFORT = QoSProfile(reliability=ReliabilityPolicy.BEST_EFFORT, history=HistoryPolicy.KEEP_LAST, depth=50)


def _position(p: Any) -> np.ndarray:
    return np.array([p.x, p.y, p.z], dtype=np.float64)


def _quaternion(q: Any) -> np.ndarray:
    return np.array([q.x, q.y, q.z, q.w], dtype=np.float64)


def _to_quaternion_msg(q: np.ndarray) -> Quaternion:
    return Quaternion(x=float(q[0]), y=float(q[1]), z=float(q[2]), w=float(q[3]))


def _pose_msg(position: np.ndarray, quaternion: np.ndarray) -> Pose:
    return Pose(position=Point(x=float(position[0]), y=float(position[1]), z=float(position[2])),
                orientation=_to_quaternion_msg(quaternion))


def _hypothesis(result: Any) -> Tuple[str, float]:
    """(class_id, score) of an ObjectHypothesisWithPose: 4.x/3.x ``hypothesis``, 2.x flat."""
    h = result.hypothesis if hasattr(result, "hypothesis") else result
    return str(h.class_id if hasattr(h, "class_id") else h.id), float(h.score)


class ParsedDetections:
    """Boxes (N, 4) xyxy, best-scoring class name, score and id of each detection of a
    Detection2DArray (vision_msgs 4.x, and the 3.x/2.x layouts)."""

    def __init__(self, msg: Any, class_names: List[str]) -> None:
        boxes, self.scores, self.classes, self.ids = [], [], [], []
        for index, det in enumerate(msg.detections):
            centre = det.bbox.center
            cx, cy = (centre.position.x, centre.position.y) if hasattr(centre, "position") else (centre.x, centre.y)
            w, h = det.bbox.size_x, det.bbox.size_y
            boxes.append((cx - w / 2.0, cy - h / 2.0, cx + w / 2.0, cy + h / 2.0))
            hypotheses = [_hypothesis(r) for r in det.results]
            label, score = max(hypotheses, key=lambda h: h[1], default=("", 0.0))
            if label.isdigit() and int(label) < len(class_names):  # detectors that send indices
                label = class_names[int(label)]
            self.classes.append(label)
            self.scores.append(score)
            self.ids.append(det.id or str(index))
        self.boxes = np.array(boxes, dtype=np.float64).reshape(-1, 4)

    def select(self, wanted: List[str], min_score: float) -> List[int]:
        """Indices of detections whose class is in ``wanted`` ("*" = all) and score >= min_score."""
        return [i for i, (c, s) in enumerate(zip(self.classes, self.scores))
                if ("*" in wanted or c in wanted) and s >= min_score]


class GeolocationNode(Node):
    """Geolocates persons on the ground and publishes obstacle bearings (module docstring)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__("evit_geolocation", **kwargs)
        p = self._declare_parameters()
        self._warnings = ThrottledWarnings(self.get_logger().warning, p["warn_period"])
        self._counters = {"detection_msgs": 0, "persons_located": 0, "bearings": 0, "pose_msgs": 0}
        self._camera: Optional[CameraModel] = None
        self._camera_error = ""
        self._camera_frame = ""
        self._camera_key: Optional[tuple] = None
        self._poses = PoseBuffer(p["pose_buffer_size"], p["interpolate_pose"])
        self._pose_frame = ""
        self._agl: StampedBuffer[float] = StampedBuffer(p["pose_buffer_size"], lambda a, b, f: a + f * (b - a))
        self._reported_totals: dict = {}
        self._pending: Deque[Tuple[Any, float]] = deque(maxlen=50)
        self._tf_buffer = self._make_tf_buffer() if p["use_tf"] else None

        self._pub_detections = self.create_publisher(Detection3DArray, "geolocation/detections", 10)
        self._pub_poses = self.create_publisher(PoseArray, "geolocation/poses", 10)
        self._pub_markers = self.create_publisher(MarkerArray, "geolocation/markers", 10)
        self._pub_bearings = self.create_publisher(Detection3DArray, "obstacle_bearings", 10)
        self._pub_diagnostics = self.create_publisher(DiagnosticArray, "/diagnostics", 10)

        # Best effort accepts reliable and best-effort writers alike (a reliable reader would
        # silently ignore MAVROS' and most camera drivers' best-effort topics).
        self.create_subscription(CameraInfo, "camera_info", self._on_camera_info, _BEST_EFFORT)
        if p["pose_type"] == "odometry":
            self.create_subscription(Odometry, "pose", self._on_odometry, _BEST_EFFORT)
        else:
            self.create_subscription(PoseStamped, "pose", self._on_pose, _BEST_EFFORT)
        if p["ground_source"] == "agl":
            self.create_subscription(Float64, "altitude_agl", self._on_agl, _BEST_EFFORT)
        elif p["ground_source"] == "range":
            self.create_subscription(Range, "altitude_agl", self._on_range, _BEST_EFFORT)
        self.create_subscription(Detection2DArray, "detections", self._on_detections, _BEST_EFFORT)
        self.create_timer(0.05, self._expire_pending)
        self.create_timer(p["diagnostics_period"], self._publish_diagnostics)
        self.get_logger().info(
            "geolocation ready: pose '%s' (%s, %s), ground %s, mount xyz=%s rpy=%s, tolerance %.3f s"
            % (self.resolve_topic_name("pose"), p["pose_type"], p["pose_convention"], p["ground_source"],
               list(p["camera_mount_xyz"]), list(p["camera_mount_rpy"]), p["stamp_tolerance"]))

    # -- parameters -------------------------------------------------------------------------
    def _declare_parameters(self) -> dict:
        defaults = {
            "pose_type": "pose_stamped", "pose_convention": "enu_flu",
            "world_frame": "", "base_frame": "base_link",
            "ground_source": "flat", "ground_height": 0.0, "agl_tolerance": 0.2,
            "camera_mount_xyz": list(CameraMount().xyz), "camera_mount_rpy": list(CameraMount().rpy),
            "use_tf": False, "rectified": False,
            "stamp_tolerance": 0.05, "interpolate_pose": True, "pose_buffer_size": 400, "pose_wait": 0.25,
            "min_depression_deg": 2.0, "max_range": 1000.0, "pixel_sigma": 2.0, "height_sigma": 1.0,
            "class_names": ["person", "vehicle", "obstacle"], "ground_classes": ["person"],
            "bearing_classes": ["obstacle"], "min_score": 0.0,
            "warn_period": 5.0, "marker_lifetime": 1.0, "bearing_marker_length": 5.0,
            "diagnostics_period": 1.0,
        }
        p = {name: self.declare_parameter(name, value).value for name, value in defaults.items()}
        for name, allowed in (("pose_type", POSE_TYPES), ("pose_convention", POSE_CONVENTIONS),
                              ("ground_source", GROUND_SOURCES)):
            if p[name] not in allowed:
                raise ValueError("parameter %s=%r: expected one of %s" % (name, p[name], ", ".join(allowed)))
        for name in ("stamp_tolerance", "warn_period", "diagnostics_period", "max_range"):
            if not p[name] > 0.0:
                raise ValueError("parameter %s must be > 0, got %r" % (name, p[name]))
        self._mount = CameraMount(tuple(p["camera_mount_xyz"]), tuple(p["camera_mount_rpy"]))
        self._p = p
        return p

    def _make_tf_buffer(self) -> Any:
        try:
            import tf2_ros  # only on real ROS installs; PyPI has no tf2_ros
        except ImportError:
            self.get_logger().warning("use_tf is true but tf2_ros is not importable: using the "
                                      "camera_mount_xyz/rpy parameters instead")
            return None
        buffer = tf2_ros.Buffer()
        self._tf_listener = tf2_ros.TransformListener(buffer, self)
        return buffer

    # -- inputs -----------------------------------------------------------------------------
    def _on_camera_info(self, msg: CameraInfo) -> None:
        key = (tuple(msg.k), tuple(msg.d), msg.distortion_model, tuple(msg.p), msg.binning_x,
               msg.binning_y, msg.roi.x_offset, msg.roi.y_offset)
        self._camera_frame = msg.header.frame_id
        if key == self._camera_key:
            return
        self._camera_key = key
        try:
            self._camera = CameraModel.from_camera_info(msg, rectified=self._p["rectified"])
            self._camera_error = ""
        except CameraModelError as exc:
            self._camera, self._camera_error = None, str(exc)

    def _on_pose(self, msg: PoseStamped) -> None:
        self._add_pose(msg.header, msg.pose)

    def _on_odometry(self, msg: Odometry) -> None:
        self._add_pose(msg.header, msg.pose.pose)

    def _add_pose(self, header: Any, pose: Any) -> None:
        position, q = _position(pose.position), _quaternion(pose.orientation)
        try:
            rotation = quaternion_to_matrix(q)
        except ValueError as exc:
            self._warnings.warn("bad_pose", "pose ignored: %s" % exc)
            return
        if not np.all(np.isfinite(position)):
            self._warnings.warn("bad_pose", "pose ignored: non-finite position %s" % position.tolist())
            return
        if self._p["pose_convention"] == "ned_frd":  # PX4 frames -> ROS ENU/FLU
            position, rotation = ENU_NED @ position, ned_frd_to_enu_flu_rotation(rotation)
        self._counters["pose_msgs"] += 1
        self._pose_frame = header.frame_id
        self._poses.add(stamp_to_ns(header.stamp), RigidTransform(rotation, position))
        self._retry_pending()

    def _on_agl(self, msg: Float64) -> None:
        # std_msgs/Float64 has no stamp: it is the height "now", stamped on arrival.
        if math.isfinite(msg.data) and msg.data > 0.0:
            self._agl.add(self.get_clock().now().nanoseconds, float(msg.data))
        else:
            self._warnings.warn("bad_agl", "altitude above ground %r ignored (must be > 0)" % msg.data)

    def _on_range(self, msg: Range) -> None:
        if math.isfinite(msg.range) and msg.min_range <= msg.range <= msg.max_range and msg.range > 0.0:
            self._agl.add(stamp_to_ns(msg.header.stamp), float(msg.range))
        else:
            self._warnings.warn("bad_agl", "rangefinder reading %.2f m outside [%.2f, %.2f] ignored"
                                % (msg.range, msg.min_range, msg.max_range))

    def _on_detections(self, msg: Any) -> None:
        self._counters["detection_msgs"] += 1
        camera = self._camera
        if camera is None:
            if self._camera_error:
                self._warnings.warn("bad_camera_info", "camera_info unusable, nothing published: %s"
                                    % self._camera_error)
            else:
                self._warnings.warn("no_camera_info", "no camera_info received on '%s' yet, nothing published"
                                    % self.resolve_topic_name("camera_info"))
            return
        parsed = ParsedDetections(msg, list(self._p["class_names"]))
        base_from_optical = self._base_from_optical()
        self._publish_bearings(msg.header, parsed, camera, base_from_optical)
        self._geolocate(msg, parsed, camera, base_from_optical, time.monotonic())

    # -- pose matching ----------------------------------------------------------------------
    def _tolerance_ns(self) -> int:
        return int(self._p["stamp_tolerance"] * 1e9)

    def _may_still_come(self, stamp_ns: int) -> bool:
        newest = self._poses.newest_stamp
        return newest is None or newest < stamp_ns + self._tolerance_ns()

    def _retry_pending(self) -> None:
        for _ in range(len(self._pending)):
            msg, arrived = self._pending.popleft()
            camera = self._camera
            if camera is not None:
                parsed = ParsedDetections(msg, list(self._p["class_names"]))
                self._geolocate(msg, parsed, camera, self._base_from_optical(), arrived)

    def _expire_pending(self) -> None:
        now = time.monotonic()
        while self._pending and now - self._pending[0][1] > self._p["pose_wait"]:
            msg, _ = self._pending.popleft()
            self._warn_no_pose(stamp_to_ns(msg.header.stamp))

    def _warn_no_pose(self, stamp_ns: int) -> None:
        offset = self._poses.nearest_offset(stamp_ns)
        detail = ("no pose received on '%s'" % self.resolve_topic_name("pose") if offset is None
                  else "nearest pose is %+.3f s away" % (offset * 1e-9))
        self._warnings.warn("no_pose_in_tolerance", "detections at t=%.3f dropped: %s (tolerance %.3f s)"
                            % (stamp_ns * 1e-9, detail, self._p["stamp_tolerance"]))

    # -- geometry ---------------------------------------------------------------------------
    def _base_from_optical(self) -> RigidTransform:
        if self._tf_buffer is not None and self._camera_frame:
            try:
                t = self._tf_buffer.lookup_transform(self._p["base_frame"], self._camera_frame, Time())
                tr, rot = t.transform.translation, t.transform.rotation
                return RigidTransform.from_pose(_position(tr), _quaternion(rot))
            except Exception as exc:  # tf2 raises several unrelated exception types
                self._warnings.warn("tf_unavailable", "TF %s <- %s unavailable (%s); using camera_mount "
                                    "parameters" % (self._p["base_frame"], self._camera_frame, exc))
        return self._mount.base_to_optical()

    def _ground_z(self, stamp_ns: int, world_from_base: RigidTransform) -> Optional[float]:
        source = self._p["ground_source"]
        if source == "flat":
            return float(self._p["ground_height"])
        lookup_ns = stamp_ns if source == "range" else self.get_clock().now().nanoseconds
        match = self._agl.lookup(lookup_ns, int(self._p["agl_tolerance"] * 1e9))
        if match is None:
            self._warnings.warn("no_agl", "no altitude above ground within %.2f s on '%s'; nothing published"
                                % (self._p["agl_tolerance"], self.resolve_topic_name("altitude_agl")))
            return None
        agl = match.value if source == "agl" else agl_from_range(match.value, world_from_base.rotation)
        return float(world_from_base.translation[2] - agl)

    def _geolocate(self, msg: Any, parsed: ParsedDetections, camera: CameraModel,
                   base_from_optical: RigidTransform, arrived: float) -> None:
        stamp_ns = stamp_to_ns(msg.header.stamp)
        match = self._poses.lookup(stamp_ns, self._tolerance_ns())
        if match is None:
            # Detections often arrive before the pose of their frame: wait a little for it.
            if self._may_still_come(stamp_ns) and time.monotonic() - arrived <= self._p["pose_wait"]:
                self._pending.append((msg, arrived))
            else:
                self._warn_no_pose(stamp_ns)
            return
        world_from_base = match.value
        ground_z = self._ground_z(stamp_ns, world_from_base)
        if ground_z is None:
            return
        world_from_optical = world_from_base.compose(base_from_optical)
        chosen = parsed.select(list(self._p["ground_classes"]), self._p["min_score"])
        boxes = parsed.boxes[chosen]
        feet = ground_contact_pixels(boxes)
        corners = np.concatenate([np.stack([boxes[:, 0], boxes[:, 3]], 1), np.stack([boxes[:, 2], boxes[:, 3]], 1)])
        projection_args = (ground_z, math.radians(self._p["min_depression_deg"]), self._p["max_range"])
        hits = project_pixels_to_ground(camera, world_from_optical, feet, *projection_args)
        edges = project_pixels_to_ground(camera, world_from_optical, corners, *projection_args)
        for k, reason in enumerate(hits.reasons):
            if reason:
                self._warnings.warn(reason, "%s at pixel (%.0f, %.0f) not located: %s (camera %.1f m above "
                                    "ground, min depression %.1f deg, max range %.0f m)"
                                    % (parsed.classes[chosen[k]], feet[k, 0], feet[k, 1], reason.replace("_", " "),
                                       world_from_optical.translation[2] - ground_z,
                                       self._p["min_depression_deg"], self._p["max_range"]))
        valid = [k for k, reason in enumerate(hits.reasons) if not reason]
        if chosen and not valid:
            return  # persons seen but none could be placed: publish nothing rather than a guess
        header = Header(stamp=msg.header.stamp, frame_id=self._p["world_frame"] or self._pose_frame or "map")
        out = Detection3DArray(header=header)
        poses = PoseArray(header=header)
        angle_sigma = camera.pixel_angle() * self._p["pixel_sigma"]
        origin = world_from_optical.translation
        for k in valid:
            i, point = chosen[k], hits.points[k]
            width = float(np.linalg.norm(edges.points[k] - edges.points[k + len(chosen)]))
            det = Detection3D(header=header, id=parsed.ids[i])
            hyp = ObjectHypothesisWithPose(hypothesis=ObjectHypothesis(class_id=parsed.classes[i],
                                                                       score=parsed.scores[i]))
            hyp.pose.pose = _pose_msg(point, np.array([0.0, 0.0, 0.0, 1.0]))
            cov = np.diag([0.0, 0.0, self._p["height_sigma"] ** 2] + [UNKNOWN_VARIANCE] * 3)
            cov[:2, :2] = horizontal_covariance(origin, point, angle_sigma, self._p["height_sigma"])
            hyp.pose.covariance = [float(v) for v in cov.ravel()]
            det.results.append(hyp)
            det.bbox = BoundingBox3D(center=hyp.pose.pose)
            det.bbox.size.x = det.bbox.size.y = width if math.isfinite(width) else 0.0
            out.detections.append(det)
            poses.poses.append(hyp.pose.pose)
        self._counters["persons_located"] += len(valid)
        self._pub_detections.publish(out)
        self._pub_poses.publish(poses)
        self._pub_markers.publish(self._ground_markers(header, out))

    # -- outputs ----------------------------------------------------------------------------
    def _publish_bearings(self, header: Any, parsed: ParsedDetections, camera: CameraModel,
                          base_from_optical: RigidTransform) -> None:
        chosen = parsed.select(list(self._p["bearing_classes"]), self._p["min_score"])
        out = Detection3DArray()
        out.header.stamp = header.stamp
        out.header.frame_id = self._p["base_frame"]
        bearings = box_bearings(camera, parsed.boxes[chosen], base_from_optical.rotation)
        for k, i in enumerate(chosen):
            det = Detection3D(header=out.header, id=parsed.ids[i])
            hyp = ObjectHypothesisWithPose(hypothesis=ObjectHypothesis(class_id=parsed.classes[i],
                                                                       score=parsed.scores[i]))
            q = matrix_to_quaternion(bearing_matrix(bearings.azimuth[k], bearings.elevation[k]))
            hyp.pose.pose = _pose_msg(bearings.directions[k], q)
            det.results.append(hyp)
            # On the unit sphere an arc in metres equals its angle in radians.
            det.bbox = BoundingBox3D(center=hyp.pose.pose)
            det.bbox.size.y, det.bbox.size.z = float(bearings.width[k]), float(bearings.height[k])
            out.detections.append(det)
        self._counters["bearings"] += len(chosen)
        self._pub_bearings.publish(out)
        if chosen:
            self._pub_markers.publish(self._bearing_markers(out, base_from_optical.translation))

    def _marker(self, header: Any, ns: str, marker_id: int, marker_type: int, label: str) -> Marker:
        m = Marker(header=header, ns=ns, id=marker_id, type=marker_type, action=Marker.ADD)
        r, g, b = CLASS_COLOURS.get(label, (0.8, 0.8, 0.8))
        m.color.r, m.color.g, m.color.b, m.color.a = r, g, b, 0.8
        lifetime = self._p["marker_lifetime"]
        m.lifetime.sec, m.lifetime.nanosec = int(lifetime), int((lifetime % 1.0) * 1e9)
        m.pose.orientation.w = 1.0
        return m

    def _ground_markers(self, header: Any, detections: Detection3DArray) -> MarkerArray:
        markers = MarkerArray()
        for n, det in enumerate(detections.detections):
            hyp = det.results[0]
            body = self._marker(header, "geolocation", 2 * n, Marker.CYLINDER, hyp.hypothesis.class_id)
            body.pose.position = Point(x=hyp.pose.pose.position.x, y=hyp.pose.pose.position.y,
                                       z=hyp.pose.pose.position.z + 0.9)
            body.scale.x = body.scale.y = 0.6
            body.scale.z = 1.8  # a standing person, so the marker reads at a glance
            text = self._marker(header, "geolocation_labels", 2 * n + 1, Marker.TEXT_VIEW_FACING,
                                hyp.hypothesis.class_id)
            text.pose.position = Point(x=body.pose.position.x, y=body.pose.position.y, z=body.pose.position.z + 1.5)
            text.scale.z = 1.0
            text.color.r = text.color.g = text.color.b = 1.0
            text.text = "%s %.2f" % (hyp.hypothesis.class_id, hyp.hypothesis.score)
            markers.markers.extend([body, text])
        return markers

    def _bearing_markers(self, bearings: Detection3DArray, camera_position: np.ndarray) -> MarkerArray:
        markers = MarkerArray()
        length = self._p["bearing_marker_length"]
        for n, det in enumerate(bearings.detections):
            d = det.results[0].pose.pose.position
            arrow = self._marker(bearings.header, "obstacle_bearings", n, Marker.ARROW,
                                 det.results[0].hypothesis.class_id)
            start = Point(x=float(camera_position[0]), y=float(camera_position[1]), z=float(camera_position[2]))
            end = Point(x=start.x + length * d.x, y=start.y + length * d.y, z=start.z + length * d.z)
            arrow.points = [start, end]
            arrow.scale.x, arrow.scale.y, arrow.scale.z = 0.05, 0.15, 0.2
            markers.markers.append(arrow)
        return markers

    def _publish_diagnostics(self) -> None:
        status = DiagnosticStatus(name="evit_geolocation: geolocation", hardware_id=self.get_name())
        totals = dict(self._warnings.totals)
        recent = sorted(k for k, v in totals.items() if v > self._reported_totals.get(k, 0))
        self._reported_totals = totals
        status.level = DiagnosticStatus.WARN if recent else DiagnosticStatus.OK
        status.message = "rejecting input: " + ", ".join(recent) if recent else "ok"
        values = dict(self._counters)
        values.update({"rejected_" + k: v for k, v in totals.items()})
        status.values = [KeyValue(key=k, value=str(v)) for k, v in sorted(values.items())]
        array = DiagnosticArray(status=[status])
        array.header.stamp = self.get_clock().now().to_msg()
        self._pub_diagnostics.publish(array)


def main(args: Optional[List[str]] = None) -> None:
    """Entry point of the ``evit_geolocation`` executable."""
    rclpy.init(args=args)
    node = None
    try:
        node = GeolocationNode()
        spin_until_shutdown(node)
    except KeyboardInterrupt:   # Ctrl-C while the node was still starting
        pass
    except ValueError as exc:  # a configuration error: say which, without a traceback
        rclpy.logging.get_logger("evit_geolocation").fatal("invalid configuration: %s" % exc)
        raise SystemExit(2)
    finally:
        if node is not None:
            node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()


if __name__ == "__main__":
    main()
