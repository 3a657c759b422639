"""The detector's health in numbers: rates, latencies, drops, problems -> DiagnosticArray.

The node's callback thread, its inference worker and its timers all report here, so every
method is thread-safe. :meth:`DetectorHealth.to_status` turns a snapshot into one
diagnostic_msgs/DiagnosticStatus that ``rqt_runtime_monitor`` and aggregators understand.
"""
from __future__ import annotations

import collections
import threading
import time
from typing import Deque, Dict, List, Optional, Tuple

from diagnostic_msgs.msg import DiagnosticStatus, KeyValue


class RateMeter:
    """Events per second over a sliding time window."""

    def __init__(self, window_s: float = 5.0) -> None:
        self._window_s = window_s
        self._times: Deque[float] = collections.deque()

    def tick(self, now: float) -> None:
        """Record one event at monotonic time ``now``."""
        self._times.append(now)
        self._trim(now)

    def rate(self, now: float) -> float:
        """Events per second within the window ending at ``now``."""
        self._trim(now)
        if len(self._times) < 2:
            return 0.0
        # intervals between the first and last event: unbiased by when we are asked
        span = self._times[-1] - self._times[0]
        return (len(self._times) - 1) / span if span > 0 else 0.0

    def _trim(self, now: float) -> None:
        while self._times and now - self._times[0] > self._window_s:
            self._times.popleft()


class LatencyWindow:
    """The last ``size`` latencies in milliseconds, summarised as mean / p95 / max."""

    def __init__(self, size: int = 200) -> None:
        self._values: Deque[float] = collections.deque(maxlen=size)

    def add(self, ms: float) -> None:
        """Record one latency in milliseconds."""
        self._values.append(float(ms))

    def summary(self) -> Tuple[float, float, float]:
        """(mean, p95, max) in ms; zeros when empty."""
        if not self._values:
            return 0.0, 0.0, 0.0
        ordered = sorted(self._values)
        p95 = ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]
        return sum(ordered) / len(ordered), p95, ordered[-1]

    def __len__(self) -> int:
        return len(self._values)


class DetectorHealth:
    """Everything the diagnostics topic says about one detector node."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.input_rate = RateMeter()
        self.output_rate = RateMeter()
        self.inference_ms = LatencyWindow()
        self.end_to_end_ms = LatencyWindow()
        self.frames_received = 0
        self.frames_processed = 0
        self.frames_dropped = 0
        self.frames_rejected = 0
        self.frames_without_model = 0
        #: Frames the camera published that never reached the callback (sequence gaps).
        self.frames_lost = 0
        self.last_frame_time: Optional[float] = None
        self.model_error: Optional[str] = None
        self.model_name = ""
        self.backend_name = ""
        self.last_frame_error: Optional[str] = None
        #: Distinct problem text -> how often it happened.
        self.frame_problems: Dict[str, int] = {}
        self.qos_problem: Optional[str] = None
        self.stall_warning: Optional[str] = None
        self.subscription_qos = ""
        self.publisher_count = 0

    # -- reports from the node ------------------------------------------------------------
    def frame_received(self, dropped_one: bool, now: Optional[float] = None) -> None:
        """A frame arrived in the subscription callback (``dropped_one``: it overwrote one)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            self.frames_received += 1
            self.frames_dropped += int(dropped_one)
            self.last_frame_time = now
            self.input_rate.tick(now)
            self.stall_warning = None

    def frames_lost_before_callback(self, count: int) -> None:
        """``count`` frames the camera numbered never arrived (transport loss or overwritten)."""
        with self._lock:
            self.frames_lost += int(count)

    def frame_processed(self, inference_ms: float, end_to_end_ms: float,
                        now: Optional[float] = None) -> None:
        """Detections for one frame were published."""
        now = time.monotonic() if now is None else now
        with self._lock:
            self.frames_processed += 1
            self.output_rate.tick(now)
            self.inference_ms.add(inference_ms)
            self.end_to_end_ms.add(end_to_end_ms)
            self.last_frame_error = None

    def frame_rejected(self, problem: str) -> bool:
        """A frame could not be used; returns True the first time this problem is seen."""
        with self._lock:
            self.frames_rejected += 1
            self.last_frame_error = problem
            first = problem not in self.frame_problems
            if first and len(self.frame_problems) >= 50:  # bound memory on endless variety
                self.frame_problems.pop(next(iter(self.frame_problems)))
            self.frame_problems[problem] = self.frame_problems.get(problem, 0) + 1
            return first

    def frame_without_model(self) -> bool:
        """A frame arrived while no model is loaded; True for the first such frame."""
        with self._lock:
            self.frames_without_model += 1
            return self.frames_without_model == 1

    def model_loaded(self, name: str, backend: str) -> None:
        """A model is ready."""
        with self._lock:
            self.model_error = None
            self.model_name = name
            self.backend_name = backend
            self.frames_without_model = 0

    def model_failed(self, error: str) -> None:
        """No usable model (``error`` says why)."""
        with self._lock:
            self.model_error = error

    def set_qos_problem(self, problem: Optional[str]) -> None:
        """An incompatible-QoS report (None clears it)."""
        with self._lock:
            self.qos_problem = problem

    def set_stall_warning(self, warning: Optional[str]) -> None:
        """The no-frames watchdog's verdict (None: frames are flowing or nobody publishes)."""
        with self._lock:
            self.stall_warning = warning

    def set_subscription(self, qos_text: str, publisher_count: int) -> None:
        """What the camera subscription looks like now."""
        with self._lock:
            self.subscription_qos = qos_text
            self.publisher_count = publisher_count

    def seconds_since_frame(self, now: Optional[float] = None) -> Optional[float]:
        """Seconds since the last frame arrived, None if none ever did."""
        now = time.monotonic() if now is None else now
        with self._lock:
            return None if self.last_frame_time is None else now - self.last_frame_time

    # -- the report -----------------------------------------------------------------------
    def to_status(self, name: str, hardware_id: str, now: Optional[float] = None) -> DiagnosticStatus:
        """One DiagnosticStatus: level and message from the worst problem, numbers as values."""
        now = time.monotonic() if now is None else now
        with self._lock:
            level, message = self._verdict()
            inf = self.inference_ms.summary()
            e2e = self.end_to_end_ms.summary()
            age = None if self.last_frame_time is None else now - self.last_frame_time
            values: List[Tuple[str, str]] = [
                ("model", self.model_name or "(none)"),
                ("backend", self.backend_name or "(none)"),
                ("input_rate_hz", f"{self.input_rate.rate(now):.2f}"),
                ("output_rate_hz", f"{self.output_rate.rate(now):.2f}"),
                ("inference_latency_ms_mean", f"{inf[0]:.2f}"),
                ("inference_latency_ms_p95", f"{inf[1]:.2f}"),
                ("end_to_end_latency_ms_mean", f"{e2e[0]:.2f}"),
                ("end_to_end_latency_ms_p95", f"{e2e[1]:.2f}"),
                ("end_to_end_latency_ms_max", f"{e2e[2]:.2f}"),
                ("frames_received", str(self.frames_received)),
                ("frames_processed", str(self.frames_processed)),
                ("frames_dropped", str(self.frames_dropped)),
                ("frames_lost_before_node", str(self.frames_lost)),
                ("frames_rejected", str(self.frames_rejected)),
                ("frames_without_model", str(self.frames_without_model)),
                ("seconds_since_last_frame", "never" if age is None else f"{age:.1f}"),
                ("camera_publishers", str(self.publisher_count)),
                ("subscription_qos", self.subscription_qos),
                ("model_error", self.model_error or ""),
                ("last_frame_error", self.last_frame_error or ""),
                ("qos_problem", self.qos_problem or ""),
                ("stall_warning", self.stall_warning or ""),
            ]
        status = DiagnosticStatus()
        status.level = level
        status.name = name
        status.hardware_id = hardware_id
        status.message = message
        status.values = [KeyValue(key=k, value=v) for k, v in values]
        return status

    def _verdict(self) -> Tuple[bytes, str]:
        if self.model_error:
            return DiagnosticStatus.ERROR, "no model: " + self.model_error
        if self.qos_problem:
            return DiagnosticStatus.WARN, self.qos_problem
        if self.stall_warning:
            return DiagnosticStatus.WARN, self.stall_warning
        if self.last_frame_error:
            return DiagnosticStatus.WARN, "last frame rejected: " + self.last_frame_error
        if self.frames_processed == 0:
            return DiagnosticStatus.OK, "waiting for frames"
        return DiagnosticStatus.OK, "running"
