"""The detector node's parameters: one table with defaults, descriptions and checks.

Each parameter is declared with ``dynamic_typing`` so that *every* bad value - wrong type
or out of range, at start-up or at run time - reaches :func:`check_parameter` and gets the
same clear reason, instead of an rclpy exception that would kill the node. Start-up values
that fail the check are replaced by the default (the node says so once); run-time values
that fail are rejected with the reason and the node keeps its current value.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Sequence, Tuple

from rcl_interfaces.msg import ParameterDescriptor
from rclpy.parameter import Parameter

from evit_perception.qos import RELIABILITY_MODES

BACKENDS = ("auto", "onnxruntime", "tensorrt")
INPUT_TYPES = ("raw", "compressed")


@dataclass(frozen=True)
class ParameterSpec:
    """One node parameter: ``check`` returns the normalised value or raises ValueError."""

    name: str
    default: Any
    description: str
    check: Callable[[Any], Any]
    #: Read at start-up only (topics, QoS); run-time changes are rejected with a reason.
    startup_only: bool = False


def _number(lo: float, hi: float, lo_open: bool = False) -> Callable[[Any], float]:
    def check(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
            raise ValueError(f"must be a number, got {value!r}")
        if value < lo or (lo_open and value == lo) or value > hi:
            raise ValueError(f"must be in {'(' if lo_open else '['}{lo}, {hi}], got {value!r}")
        return float(value)
    return check


def _integer(lo: int, hi: int) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"must be an integer, got {value!r}")
        if not lo <= value <= hi:
            raise ValueError(f"must be in [{lo}, {hi}], got {value}")
        return int(value)
    return check


def _choice(options: Sequence[str]) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if value not in options:
            raise ValueError(f"must be one of {list(options)}, got {value!r}")
        return str(value)
    return check


def _string(allow_empty: bool) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if not isinstance(value, str):
            raise ValueError(f"must be a string, got {value!r}")
        if not allow_empty and not value.strip():
            raise ValueError("must not be empty")
        return value
    return check


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"must be true or false, got {value!r}")
    return value


def _topic(value: Any) -> str:
    value = _string(allow_empty=False)(value)
    from rclpy.validate_topic_name import validate_topic_name
    try:
        validate_topic_name(value)
    except Exception as exc:  # rclpy raises InvalidTopicNameException with the reason
        raise ValueError(f"is not a valid topic name ({exc})")
    return value


def _string_list(value: Any) -> List[str]:
    # An empty list arrives as an empty byte array or integer array from YAML/CLI.
    if isinstance(value, (list, tuple)) and len(value) == 0:
        return []
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        # YAML params files cannot hold an empty list, so [""] also means "all classes"
        return [v for v in value if v.strip()]
    raise ValueError(f"must be a list of class names, got {value!r}")


PARAMETERS: Tuple[ParameterSpec, ...] = (
    ParameterSpec("model_path", "",
                  "Model file: .onnx carrying the evit contract, or a TensorRT .engine with its "
                  ".json sidecar. A bare file name is looked up in share/evit_perception/models. "
                  "Setting it at run time loads the new model; a model that fails to load is "
                  "rejected and the current one keeps running.", _string(allow_empty=True)),
    ParameterSpec("backend", "auto", "Inference backend: auto, onnxruntime or tensorrt.",
                  _choice(BACKENDS)),
    ParameterSpec("inference_threads", 0,
                  "CPU threads for ONNX Runtime (0: its default). Ignored by TensorRT.",
                  _integer(0, 256), startup_only=True),
    ParameterSpec("score_threshold", 0.3, "Minimum detection score, [0, 1].", _number(0.0, 1.0)),
    ParameterSpec("iou_threshold", 0.5, "NMS IoU threshold, (0, 1].", _number(0.0, 1.0, lo_open=True)),
    ParameterSpec("max_detections", 100, "Most detections per frame, [1, 10000].", _integer(1, 10000)),
    ParameterSpec("classes", [], "Class names to keep; empty keeps all.", _string_list),
    ParameterSpec("input_type", "raw",
                  "raw: sensor_msgs/Image on image_topic; compressed: sensor_msgs/CompressedImage "
                  "on <image_topic>/compressed (image_transport naming).",
                  _choice(INPUT_TYPES), startup_only=True),
    ParameterSpec("image_topic", "image_raw", "Camera topic (relative names follow the namespace).",
                  _topic, startup_only=True),
    ParameterSpec("detections_topic", "detections", "vision_msgs/Detection2DArray output topic.",
                  _topic, startup_only=True),
    ParameterSpec("debug_image_topic", "detections/image",
                  "Image with boxes drawn; rendered only while someone subscribes.",
                  _topic, startup_only=True),
    ParameterSpec("publish_debug_image", True, "Offer the debug image topic at all.",
                  _boolean, startup_only=True),
    ParameterSpec("label_info_topic", "label_info",
                  "vision_msgs/LabelInfo (transient local): class index -> name.",
                  _topic, startup_only=True),
    ParameterSpec("qos_reliability", "auto",
                  "Camera subscription reliability: auto (match the camera's publishers, "
                  "re-checked as they change), reliable or best_effort.",
                  _choice(RELIABILITY_MODES), startup_only=True),
    ParameterSpec("qos_depth", 1, "Camera subscription queue depth; 1 = newest frame wins.",
                  _integer(1, 100), startup_only=True),
    ParameterSpec("no_frame_warning_s", 5.0,
                  "Warn when the camera topic has a publisher but no frame arrived for this long.",
                  _number(0.5, 3600.0)),
    ParameterSpec("diagnostics_period_s", 1.0, "Period of the /diagnostics report.",
                  _number(0.1, 60.0), startup_only=True),
)

SPECS: Dict[str, ParameterSpec] = {spec.name: spec for spec in PARAMETERS}


def check_parameter(name: str, value: Any) -> Any:
    """Normalised ``value`` for parameter ``name``; ValueError('<name> <reason>') if invalid."""
    spec = SPECS.get(name)
    if spec is None:
        raise ValueError(f"unknown parameter {name!r}")
    try:
        return spec.check(value)
    except ValueError as exc:
        raise ValueError(f"parameter '{name}' {exc}")


def declare_parameters(node: Any) -> Tuple[Dict[str, Any], List[str]]:
    """Declare every parameter on ``node``; return (settings, problems).

    ``settings`` maps names to checked values. An invalid start-up value is replaced by the
    default (also on the node, so ``ros2 param get`` tells the truth) and described in
    ``problems``.
    """
    settings: Dict[str, Any] = {}
    problems: List[str] = []
    for spec in PARAMETERS:
        descriptor = ParameterDescriptor(description=spec.description, dynamic_typing=True)
        value = node.declare_parameter(spec.name, spec.default, descriptor).value
        try:
            settings[spec.name] = check_parameter(spec.name, value)
        except ValueError as exc:
            problems.append(f"{exc}; using the default {spec.default!r}")
            settings[spec.name] = spec.default
            node.set_parameters([Parameter(spec.name, value=spec.default)])
    return settings, problems
