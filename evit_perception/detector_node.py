"""The ROS 2 node ``evit_detector``: camera frames in, vision_msgs/Detection2DArray out.

Threads and their jobs:

* the executor thread runs the subscription callback, which only drops the message into a
  one-slot :class:`~evit_perception.frame_slot.FrameSlot` (newest frame wins, overwritten
  frames are counted as dropped), plus timers and parameter requests;
* one worker thread converts, runs the :class:`~evit_perception.detector.Detector` and
  publishes (rclpy publishers are thread-safe), so a slow model never blocks the executor
  and never builds a backlog.

Nothing here stops the node for bad input: a model that fails to load, a bad frame or a
bad parameter value is reported once with what was wrong (and counted in /diagnostics),
and the node goes on with the next good thing.
"""
from __future__ import annotations

import os
import threading
import time
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple

import rclpy
import rclpy.subscription
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import SetParametersResult
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header
from vision_msgs.msg import Detection2DArray

from evit_perception.backends import BackendError, open_backend
from evit_perception.debug_image import bgr_to_image_msg, draw_detections
from evit_perception.detection_messages import label_info, to_detection2d_array
from evit_perception.detector import Detector
from evit_perception.diagnostics import DetectorHealth
from evit_perception.frame_slot import FrameSlot
from evit_perception.image_conversion import ImageConversionError, compressed_to_bgr, image_to_bgr
from evit_perception.model_contract import ModelContractError, class_index
from evit_perception.node_parameters import SPECS, check_parameter, declare_parameters
from evit_perception.qos import (camera_qos, describe_qos, incompatibility_reason,
                                 reliability_for_publishers)
from evit_perception.shutdown import spin_until_shutdown

try:  # rclpy >= Iron
    from rclpy.event_handler import SubscriptionEventCallbacks
except ImportError:  # Foxy, Humble
    from rclpy.qos_event import SubscriptionEventCallbacks

# rclpy >= Iron hands subscription callbacks the message info (sequence numbers) on request.
_MESSAGE_INFO = hasattr(getattr(rclpy.subscription, "Subscription", None), "CallbackType")
GRAPH_CHECK_PERIOD_S = 1.0
STALL_WARNING_REPEAT_S = 30.0
STALL_CAUSES = (
    "likely causes: (1) QoS - a reliable subscription never hears a best-effort camera "
    "(qos_reliability auto or best_effort fixes it); (2) large frames over best effort - "
    "Fast DDS drops camera-sized best-effort samples unless the CAMERA process uses a big "
    "shared-memory segment (give it FASTRTPS_DEFAULT_PROFILES_FILE=<share>/evit_perception/"
    "config/fastdds_large_frames.xml); (3) ROS_DOMAIN_ID differs between camera and detector; "
    "(4) discovery range - ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST on one side only")


class DetectorNode(Node):
    """Runs a detector model on a camera topic; see docs/node.md for every parameter."""

    def __init__(self, node_name: str = "evit_detector", **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        log = self.get_logger()
        self._settings, problems = declare_parameters(self)
        for problem in problems:
            log.error(problem)
        self._health = DetectorHealth()
        self._slot: FrameSlot[Tuple[Any, float]] = FrameSlot()
        # Held while the worker uses the detector and while parameters change it.
        self._detector_lock = threading.Lock()
        self._detector: Optional[Detector] = None
        self._reported_qos: Set[str] = set()
        self._publisher_seen_since: Optional[float] = None
        self._last_stall_log = -1e9
        self._stalled = False

        s = self._settings
        self._detections_pub = self.create_publisher(Detection2DArray, s["detections_topic"], 10)
        self._debug_pub = (self.create_publisher(Image, s["debug_image_topic"], 1)
                           if s["publish_debug_image"] else None)
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self._label_pub = self._create_label_publisher(s["label_info_topic"], latched)
        self._diagnostics_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)

        try:
            self._install_detector(self._open_detector(s["model_path"], s["backend"], s,
                                                       strict_classes=False))
        except (BackendError, ValueError) as exc:  # ModelContractError is a ValueError
            self._health.model_failed(str(exc))
            log.error(f"no model loaded: {exc}. The node keeps running without detections; "
                      "set the parameter 'model_path' to a valid model to start detecting.")

        self._input_type = s["input_type"]
        self._subscription: Any = None
        self._single_publisher = False
        self._last_sequence: Optional[int] = None
        self._subscription_qos: Optional[QoSProfile] = None
        self._reliability_mode = s["qos_reliability"]
        self._subscribe("best_effort" if self._reliability_mode == "auto" else self._reliability_mode)
        self._image_topic = self._subscription.topic_name
        self._check_graph()  # auto: switch to reliable right away if the camera is reliable

        self.add_on_set_parameters_callback(self._on_set_parameters)
        self._graph_timer = self.create_timer(GRAPH_CHECK_PERIOD_S, self._check_graph)
        self._diagnostics_timer = self.create_timer(s["diagnostics_period_s"], self._publish_diagnostics)

        self._stop = threading.Event()
        self._worker = threading.Thread(target=self._work, name="evit_detector_inference", daemon=True)
        self._worker.start()
        log.info(f"listening on {self._image_topic} ({self._input_type}, "
                 f"{describe_qos(self._subscription_qos)}), publishing {self._detections_pub.topic_name}")

    # -- model -----------------------------------------------------------------------------
    def _open_detector(self, model_path: str, backend: str, settings: Dict[str, Any],
                       strict_classes: bool = True) -> Detector:
        """Open ``model_path`` and wrap it in a Detector with the current thresholds.

        A class filter naming classes the model lacks fails the load when ``strict_classes``;
        otherwise (start-up) the filter is dropped with an error so detection still starts.
        """
        if not model_path:
            raise BackendError("parameter 'model_path' is empty; set it to an .onnx model or a "
                               "TensorRT .engine")
        path = _resolve_model_path(model_path)
        options: Dict[str, Any] = {}
        if settings["inference_threads"] > 0 and backend != "tensorrt":
            options["intra_op_num_threads"] = settings["inference_threads"]
        engine = open_backend(path, backend, **options)
        try:
            detector = Detector(engine, settings["score_threshold"], settings["iou_threshold"],
                                settings["max_detections"])
        except (ModelContractError, ValueError):
            engine.close()
            raise
        try:
            detector.classes = settings["classes"] or None
        except ModelContractError as exc:
            if strict_classes:
                engine.close()
                raise
            self.get_logger().error(f"parameter 'classes': {exc}; keeping all classes")
            settings["classes"] = []
            self.set_parameters([Parameter("classes", value=[])])
        return detector

    def _install_detector(self, detector: Detector) -> None:
        with self._detector_lock:
            old, self._detector = self._detector, detector
        if old is not None:
            old.backend.close()
        contract = detector.contract
        self._health.model_loaded(contract.name, detector.backend.name)
        if self._label_pub is not None:
            msg = label_info(contract.class_names, self._stamped_header(), detector.score_threshold)
            if msg is not None:
                self._label_pub.publish(msg)
        self.get_logger().info(f"model '{contract.name}' loaded on {detector.backend.name}: "
                               f"classes {list(contract.class_names)}")

    def _create_label_publisher(self, topic: str, qos: QoSProfile) -> Any:
        try:
            from vision_msgs.msg import LabelInfo
        except ImportError:  # vision_msgs < 4.1
            return None
        return self.create_publisher(LabelInfo, topic, qos)

    # -- camera subscription ---------------------------------------------------------------
    def _subscribe(self, reliability: str) -> None:
        """(Re)create the camera subscription with ``reliability``."""
        if self._subscription is not None:
            self.destroy_subscription(self._subscription)
        qos = camera_qos(reliability, self._settings["qos_depth"])
        topic = self._settings["image_topic"]
        if self._input_type == "compressed":
            msg_type: Any = CompressedImage
            if not topic.endswith("/compressed"):
                # image_transport naming: remap the base topic, then add the transport name
                resolve = getattr(self, "resolve_topic_name", None)  # rclpy >= Iron
                topic = (resolve(topic) if resolve else topic).rstrip("/") + "/compressed"
        else:
            msg_type = Image
        events = SubscriptionEventCallbacks(incompatible_qos=self._on_incompatible_qos)
        self._subscription = self.create_subscription(
            msg_type, topic, self._on_frame_with_info if _MESSAGE_INFO else self._on_frame, qos,
            event_callbacks=events)
        self._subscription_qos = qos
        self._publisher_seen_since = None
        self._last_sequence = None

    def _on_frame_with_info(self, msg: Any, info: Any) -> None:
        """Executor thread (rclpy >= Iron): count frames lost before they reached us, then hand on.

        The camera numbers its samples; a gap means frames it published never reached this
        callback (best-effort loss, or the depth-1 queue overwritten while we were busy).
        Only counted while the topic has exactly one publisher: sequences are per publisher.
        """
        sequence = info.get("publication_sequence_number") if isinstance(info, dict) else None
        if sequence is not None and self._single_publisher:
            last, self._last_sequence = self._last_sequence, sequence
            if last is not None and sequence > last + 1:
                self._health.frames_lost_before_callback(sequence - last - 1)
        else:
            self._last_sequence = None
        self._on_frame(msg)

    def _on_frame(self, msg: Any) -> None:
        """Executor thread: hand the frame to the worker; never convert or infer here."""
        now = time.monotonic()
        dropped = self._slot.put((msg, now))
        self._health.frame_received(dropped, now)
        if self._stalled:
            self._stalled = False
            self.get_logger().info(f"frames are arriving on {self._image_topic} again")

    def _on_incompatible_qos(self, event: Any) -> None:
        # The event says a mismatch happened; the graph says with whom. auto resubscribes,
        # explicit modes report it (once per distinct pair of policies).
        self._check_graph()

    def _report_incompatible(self, infos: Sequence[Any]) -> None:
        """Name both sides' policies, once per distinct mismatch."""
        ours = self._subscription_qos
        sides = []
        for info in infos:
            reason = incompatibility_reason(info.qos_profile, ours)
            if reason is None:
                continue
            who = (f"{info.node_namespace.rstrip('/')}/{info.node_name}"
                   if "UNKNOWN" not in info.node_name else "a publisher")
            sides.append((describe_qos(info.qos_profile), who, reason))
        if not sides:
            return
        text = (f"QoS mismatch on {self._image_topic}: "
                + "; ".join(f"{who} offers {qos} ({reason})" for qos, who, reason in sides)
                + f", but this subscription requests {describe_qos(ours)}; no frames will arrive "
                "from it. Set qos_reliability to 'auto' or 'best_effort'.")
        self._health.set_qos_problem(text)
        key = "|".join(sorted(qos for qos, _, _ in sides)) + "->" + describe_qos(ours)
        if key not in self._reported_qos:
            self._reported_qos.add(key)
            self.get_logger().error(text)

    def _check_graph(self) -> None:
        """Timer: follow the camera's QoS (auto), spot mismatches, run the no-frame watchdog."""
        infos = self.get_publishers_info_by_topic(self._image_topic)
        profiles = [info.qos_profile for info in infos]
        now = time.monotonic()
        if self._reliability_mode == "auto" and profiles:
            wanted = reliability_for_publishers(profiles)
            current = ("reliable" if self._subscription_qos.reliability == ReliabilityPolicy.RELIABLE
                       else "best_effort")
            if wanted != current:
                self._subscribe(wanted)
                self.get_logger().info(
                    f"camera publishers on {self._image_topic} offer "
                    f"{', '.join(sorted(set(describe_qos(p) for p in profiles)))}: "
                    f"subscribing {wanted}")
        if any(incompatibility_reason(p, self._subscription_qos) for p in profiles):
            self._report_incompatible(infos)
        else:
            self._health.set_qos_problem(None)
        self._health.set_subscription(describe_qos(self._subscription_qos), len(profiles))
        if len(profiles) != 1 or not self._single_publisher:
            self._last_sequence = None  # another or a restarted camera: a new numbering
        self._single_publisher = len(profiles) == 1

        if not profiles:
            self._publisher_seen_since = None
            self._health.set_stall_warning(None)
            return
        if self._publisher_seen_since is None:
            self._publisher_seen_since = now
        since_frame = self._health.seconds_since_frame(now)
        waited = now - self._publisher_seen_since
        silent = waited if since_frame is None else min(since_frame, waited)
        limit = self._settings["no_frame_warning_s"]
        if silent < limit:
            return
        warning = (f"{len(profiles)} publisher(s) on {self._image_topic} but no frame for "
                   f"{silent:.0f} s")
        self._health.set_stall_warning(warning)
        self._stalled = True
        if now - self._last_stall_log >= STALL_WARNING_REPEAT_S:
            self._last_stall_log = now
            self.get_logger().warning(
                f"{warning} (subscription: {describe_qos(self._subscription_qos)}; publishers: "
                f"{', '.join(sorted(set(describe_qos(p) for p in profiles)))}); {STALL_CAUSES}")

    # -- inference worker ------------------------------------------------------------------
    def _work(self) -> None:
        while not self._stop.is_set():
            item = self._slot.take(timeout=0.5)
            if item is not None:
                self._process(*item)

    def _process(self, msg: Any, received: float) -> None:
        log = self.get_logger()
        try:
            if self._input_type == "compressed":
                bgr = compressed_to_bgr(msg)
            else:
                bgr = image_to_bgr(msg)
        except ImageConversionError as exc:
            if self._health.frame_rejected(str(exc)):
                log.error(f"frame rejected: {exc} (said once per distinct problem; "
                          "frames_rejected in /diagnostics counts them)")
            return
        with self._detector_lock:
            detector = self._detector
            if detector is None:
                if self._health.frame_without_model():
                    log.warning("frames arrive but no model is loaded; set 'model_path'")
                return
            try:
                detections = detector.detect(bgr)
            except Exception as exc:  # ORT raises non-RuntimeError types; the worker must live
                if self._health.frame_rejected(f"inference failed: {exc}"):
                    log.error(f"inference failed on a {bgr.shape[1]}x{bgr.shape[0]} frame: {exc}")
                return
            class_names = detector.class_names
            inference_ms = sum(detector.last_timing.values())
        self._detections_pub.publish(to_detection2d_array(detections, msg.header, class_names))
        self._health.frame_processed(inference_ms, (time.monotonic() - received) * 1e3)
        if self._debug_pub is not None and self._debug_pub.get_subscription_count() > 0:
            self._debug_pub.publish(
                bgr_to_image_msg(draw_detections(bgr, detections, class_names), msg.header))

    # -- parameters ------------------------------------------------------------------------
    def _on_set_parameters(self, params: List[Any]) -> SetParametersResult:
        """Validate a run-time change; apply thresholds/classes, or reload the model."""
        updates: Dict[str, Any] = {}
        try:
            for param in params:
                if param.name not in SPECS:
                    continue  # use_sim_time and friends
                value = check_parameter(param.name, param.value)
                if SPECS[param.name].startup_only and value != self._settings[param.name]:
                    raise ValueError(f"parameter '{param.name}' is read at start-up only; "
                                     "restart the node to change it")
                updates[param.name] = value
            settings = dict(self._settings)
            settings.update(updates)
            if "model_path" in updates or "backend" in updates:
                try:
                    detector = self._open_detector(settings["model_path"], settings["backend"], settings)
                except (BackendError, ValueError) as exc:
                    raise ValueError(f"model not loaded, keeping the current one: {exc}")
                self._install_detector(detector)
            else:
                self._apply_to_detector(settings, updates)
        except ValueError as exc:
            self.get_logger().warning(f"parameter change rejected: {exc}")
            return SetParametersResult(successful=False, reason=str(exc))
        self._settings = settings
        return SetParametersResult(successful=True)

    def _apply_to_detector(self, settings: Dict[str, Any], updates: Dict[str, Any]) -> None:
        with self._detector_lock:
            detector = self._detector
            if detector is None:
                return
            if "classes" in updates and updates["classes"]:
                class_index(detector.contract, updates["classes"])  # raises naming unknown ones
            detector.score_threshold = settings["score_threshold"]
            detector.iou_threshold = settings["iou_threshold"]
            detector.max_detections = settings["max_detections"]
            detector.classes = settings["classes"] or None

    # -- diagnostics -----------------------------------------------------------------------
    def _publish_diagnostics(self) -> None:
        array = DiagnosticArray()
        array.header = self._stamped_header()
        array.status = [self._health.to_status(f"{self.get_name()}: detector",
                                               self.get_fully_qualified_name())]
        self._diagnostics_pub.publish(array)

    @property
    def health(self) -> DetectorHealth:
        """Counters and latencies behind /diagnostics."""
        return self._health

    def _stamped_header(self) -> Header:
        return Header(stamp=self.get_clock().now().to_msg())

    def destroy_node(self) -> None:
        """Stop the worker and free the model before the node goes."""
        self._stop.set()
        self._slot.close()
        self._worker.join(timeout=5.0)
        with self._detector_lock:
            detector, self._detector = self._detector, None
        if detector is not None:
            detector.backend.close()
        super().destroy_node()


def _resolve_model_path(model_path: str) -> str:
    """Absolute or existing paths as given; a bare name may live in share/evit_perception/models.

    Raises BackendError naming every place looked in when the file is nowhere.
    """
    path = os.path.expanduser(model_path)
    if os.path.exists(path):
        return path
    looked = [os.path.abspath(path)]
    if not os.path.isabs(path):
        try:
            from ament_index_python.packages import get_package_share_directory
            candidate = os.path.join(get_package_share_directory("evit_perception"), "models", path)
        except (ImportError, LookupError, ValueError, OSError):  # not installed in an ament prefix
            candidate = None
        if candidate is not None:
            if os.path.exists(candidate):
                return candidate
            looked.append(candidate)
    raise BackendError(f"model file not found: {model_path} (looked for {' and '.join(looked)})")


def main(args: Optional[Sequence[str]] = None) -> None:
    """``ros2 run evit_perception evit_detector``."""
    rclpy.init(args=args)
    node: Optional[DetectorNode] = None
    try:
        node = DetectorNode()
        spin_until_shutdown(node)
    except KeyboardInterrupt:   # Ctrl-C while the node was still starting
        pass
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    main()
