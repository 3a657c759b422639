"""DetectorHealth: the numbers and verdicts the node puts on /diagnostics."""
from __future__ import annotations

import pytest
from diagnostic_msgs.msg import DiagnosticStatus

from evit_perception.diagnostics import DetectorHealth, LatencyWindow, RateMeter


def _values(status: DiagnosticStatus) -> dict:
    return {kv.key: kv.value for kv in status.values}


def test_rate_meter_counts_events_per_second_in_its_window():
    meter = RateMeter(window_s=5.0)
    for i in range(31):
        meter.tick(100.0 + i / 30.0)
    assert meter.rate(101.0) == pytest.approx(30.0, rel=1e-6)
    assert meter.rate(200.0) == 0.0  # window moved past all events


def test_latency_window_summary():
    window = LatencyWindow(size=100)
    assert window.summary() == (0.0, 0.0, 0.0)
    for ms in range(1, 101):
        window.add(ms)
    mean, p95, worst = window.summary()
    assert (mean, worst) == (50.5, 100.0) and 94 <= p95 <= 96


def test_counters_and_latencies_reach_the_status():
    health = DetectorHealth()
    health.model_loaded("student", "onnxruntime")
    for i in range(10):
        health.frame_received(dropped_one=i % 2 == 1, now=10.0 + i * 0.1)
    for _ in range(5):
        health.frame_processed(inference_ms=8.0, end_to_end_ms=10.0, now=11.0)
    status = health.to_status("evit_detector: detector", "/evit_detector", now=11.0)
    values = _values(status)
    assert status.level == DiagnosticStatus.OK and status.message == "running"
    assert values["frames_received"] == "10" and values["frames_dropped"] == "5"
    assert values["frames_processed"] == "5"
    assert values["frames_lost_before_node"] == "0"
    health.frames_lost_before_callback(3)
    assert _values(health.to_status("n", "h", now=11.0))["frames_lost_before_node"] == "3"
    assert float(values["input_rate_hz"]) == pytest.approx(10.0, rel=1e-3)
    assert float(values["inference_latency_ms_mean"]) == 8.0
    assert float(values["end_to_end_latency_ms_p95"]) == 10.0
    assert values["model"] == "student" and values["backend"] == "onnxruntime"


def test_worst_problem_sets_level_and_message():
    health = DetectorHealth()
    health.model_failed("model file not found: /x.onnx")
    health.set_qos_problem("QoS mismatch on /cam")
    status = health.to_status("n", "h", now=0.0)
    assert status.level == DiagnosticStatus.ERROR and "/x.onnx" in status.message
    health.model_loaded("m", "onnxruntime")
    assert health.to_status("n", "h", now=0.0).level == DiagnosticStatus.WARN
    health.set_qos_problem(None)
    assert health.frame_rejected("bad encoding") is True
    assert health.frame_rejected("bad encoding") is False  # same problem: not new
    status = health.to_status("n", "h", now=0.0)
    assert status.level == DiagnosticStatus.WARN and "bad encoding" in status.message
    assert _values(status)["frames_rejected"] == "2"
    health.frame_processed(5.0, 6.0, now=1.0)
    assert health.to_status("n", "h", now=1.0).level == DiagnosticStatus.OK


def test_a_new_frame_clears_the_stall_warning():
    health = DetectorHealth()
    health.model_loaded("m", "onnxruntime")
    health.set_stall_warning("1 publisher(s) on /cam but no frame for 5 s")
    assert health.to_status("n", "h", now=0.0).level == DiagnosticStatus.WARN
    health.frame_received(False, now=1.0)
    assert _values(health.to_status("n", "h", now=1.0))["stall_warning"] == ""
