#!/usr/bin/env python3
"""Benchmark evit_detector as a process against bare inference on the same model and frames.

    .venv/bin/python scripts/benchmark_node.py                     # models/*.onnx or the reference model
    .venv/bin/python scripts/benchmark_node.py --model models/student_int8.onnx --duration 20

Phase 1 runs ``Detector.detect`` in this process on the frames (bare backend). Phase 2 starts
the node as its own process (Fast DDS large-frames profile on both sides, as uav.launch.py
sets it), publishes 640x480 bgr8 frames at 30 Hz and matches each Detection2DArray to its
frame by header stamp: end-to-end latency = publish -> detections received here. It reports
the median ratio node/bare, frames dropped (by the node's newest-frame slot, or never
delivered), and the node's resident memory (peak VmRSS from /proc). Writes
benchmarks/node_benchmark.json, .md and .png.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

REPO_ROOT = Path(__file__).resolve().parents[1]
PROFILE = REPO_ROOT / "config" / "fastdds_large_frames.xml"
# The profile must be in the environment before rclpy creates this process's participant.
os.environ.setdefault("FASTRTPS_DEFAULT_PROFILES_FILE", str(PROFILE))
os.environ.setdefault("FASTDDS_DEFAULT_PROFILES_FILE", str(PROFILE))
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("ROS_DOMAIN_ID", str(150 + os.getpid() % 80))
os.environ.setdefault("ROS_LOG_DIR", tempfile.mkdtemp(prefix="evit-bench-roslog-"))
sys.path.insert(0, str(REPO_ROOT / "test"))  # support.* helpers (reference model, node process)

import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402

GOAL_RATIO = 1.15
GOAL_RSS_MB = 400.0


def _pick_model(requested: Optional[str], workdir: str) -> str:
    if requested:
        return requested
    shipped = sorted(glob.glob(str(REPO_ROOT / "models" / "*.onnx")))
    if shipped:
        return shipped[0]
    from support.reference_model import write_reference_model
    return write_reference_model(os.path.join(workdir, "reference.onnx"))


def _summary(values: List[float]) -> Dict[str, float]:
    if not values:
        return {"n": 0, "mean": float("nan"), "median": float("nan"), "p95": float("nan"),
                "max": float("nan")}
    ordered = sorted(values)
    return {"n": len(values), "mean": statistics.fmean(values), "median": statistics.median(values),
            "p95": ordered[min(len(ordered) - 1, int(0.95 * (len(ordered) - 1) + 0.5))],
            "max": ordered[-1]}


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def bare_inference(model: str, frames: List[np.ndarray], threads: int, repeats: int) -> List[float]:
    """Milliseconds per Detector.detect call (preprocess + inference + postprocess)."""
    from evit_perception.backends import open_backend
    from evit_perception.detector import Detector

    options = {"intra_op_num_threads": threads} if threads > 0 else {}
    detector = Detector(open_backend(model, "onnxruntime", **options))
    try:
        for frame in frames[:5]:  # warm-up
            detector.detect(frame)
        times = []
        for i in tqdm(range(repeats), desc="bare detect", unit="frame"):
            t0 = time.perf_counter()
            detector.detect(frames[i % len(frames)])
            times.append((time.perf_counter() - t0) * 1e3)
        return times
    finally:
        detector.backend.close()


def node_run(model: str, frames: List[np.ndarray], threads: int, rate: float, duration: float,
             reliability: str) -> Dict[str, object]:
    """Publish frames at ``rate`` to the node process; collect latencies, drops and RSS."""
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image
    from vision_msgs.msg import Detection2DArray
    from support.ros_processes import NodeProcess, frame_header, image_message, stamp_key

    node_proc = NodeProcess({"model_path": model, "inference_threads": threads},
                            {"image_raw": "/bench/image_raw", "detections": "/bench/detections"},
                            node_name="evit_bench_detector").start()
    rclpy.init()
    peer = rclpy.create_node("evit_bench_camera")
    executor = SingleThreadedExecutor()
    executor.add_node(peer)
    sent: Dict[tuple, float] = {}
    latencies: Dict[tuple, float] = {}
    diagnostics: Dict[str, str] = {}

    def on_detections(msg: Detection2DArray) -> None:
        key = stamp_key(msg.header.stamp)
        if key in sent and key not in latencies:
            latencies[key] = (time.perf_counter() - sent[key]) * 1e3

    def on_diagnostics(msg: DiagnosticArray) -> None:
        for status in msg.status:
            if status.name.startswith("evit_bench_detector"):
                diagnostics.clear()
                diagnostics.update({kv.key: kv.value for kv in status.values})

    peer.create_subscription(Detection2DArray, "/bench/detections", on_detections, 50)
    peer.create_subscription(DiagnosticArray, "/diagnostics", on_diagnostics, 10)
    qos = QoSProfile(depth=1, reliability=(ReliabilityPolicy.RELIABLE if reliability == "reliable"
                                           else ReliabilityPolicy.BEST_EFFORT))
    camera = peer.create_publisher(Image, "/bench/image_raw", qos)
    rss: List[float] = []
    try:
        deadline = time.monotonic() + 90
        while camera.get_subscription_count() == 0 and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.1)
        if camera.get_subscription_count() == 0:
            raise RuntimeError("the node never subscribed:\n" + node_proc.output())
        settle = time.monotonic() + 3.0  # auto QoS may resubscribe once it sees the camera
        while time.monotonic() < settle:
            executor.spin_once(timeout_sec=0.05)
        # warm-up frames, not counted
        for i in range(10):
            camera.publish(image_message(frames[i % len(frames)], frame_header(100000 + i)))
            end = time.monotonic() + 1.0 / rate
            while time.monotonic() < end:
                executor.spin_once(timeout_sec=max(0.0, end - time.monotonic()))
        total = int(duration * rate)
        period = 1.0 / rate
        start = time.monotonic()
        next_rss = start
        for i in tqdm(range(total), desc=f"node @ {rate:g} Hz", unit="frame"):
            target = start + i * period
            while time.monotonic() < target:
                executor.spin_once(timeout_sec=max(0.0, target - time.monotonic()))
            header = frame_header(i)
            msg = image_message(frames[i % len(frames)], header)
            sent[stamp_key(header.stamp)] = time.perf_counter()
            camera.publish(msg)
            if time.monotonic() >= next_rss:
                rss.append(_rss_mb(node_proc.process.pid))
                next_rss += 1.0
        achieved = total / max(time.monotonic() - start, 1e-9)
        drain = time.monotonic() + 3.0
        while time.monotonic() < drain:
            executor.spin_once(timeout_sec=0.05)
        rss.append(_rss_mb(node_proc.process.pid))
        after = time.monotonic() + 2.5  # one more diagnostics report with the final counters
        while time.monotonic() < after:
            executor.spin_once(timeout_sec=0.05)
    finally:
        executor.shutdown()
        peer.destroy_node()
        rclpy.try_shutdown()
        node_proc.stop()
    received = int(diagnostics.get("frames_received", "-1")) - 10  # minus warm-up
    return {"published": len(sent), "answered": len(latencies), "latencies_ms": list(latencies.values()),
            "node_frames_received": received, "node_frames_dropped": int(diagnostics.get("frames_dropped", "-1")),
            "node_inference_ms_mean": float(diagnostics.get("inference_latency_ms_mean", "nan")),
            "node_internal_e2e_ms_mean": float(diagnostics.get("end_to_end_latency_ms_mean", "nan")),
            "rss_mb_peak": max(rss), "rss_mb_samples": rss, "publish_rate_hz_achieved": achieved}


def _plot(path: Path, bare: List[float], node: List[float], title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    hi = np.percentile(np.concatenate([bare, node]), 99) if node else max(bare)
    bins = np.linspace(0, hi * 1.05, 50)
    ax.hist(bare, bins=bins, alpha=0.6, label=f"bare Detector.detect (median {statistics.median(bare):.1f} ms)")
    if node:
        ax.hist(node, bins=bins, alpha=0.6, label=f"node end-to-end (median {statistics.median(node):.1f} ms)")
    ax.set_xlabel("latency per frame [ms]")
    ax.set_ylabel("frames")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="model file (default: first models/*.onnx, else the reference model)")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--rate", type=float, default=30.0, help="camera rate in Hz")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of publishing")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads (node and bare)")
    parser.add_argument("--reliability", choices=("best_effort", "reliable"), default="best_effort")
    parser.add_argument("--out", default=str(REPO_ROOT / "benchmarks" / "node_benchmark"),
                        help="output path without suffix (.json, .md, .png)")
    args = parser.parse_args()

    from support.ros_processes import synthetic_frame

    workdir = tempfile.mkdtemp(prefix="evit-bench-")
    model = _pick_model(args.model, workdir)
    frames = [synthetic_frame(i, args.width, args.height) for i in range(30)]
    print(f"model: {model}\nframes: {args.width}x{args.height} bgr8 at {args.rate:g} Hz for {args.duration:g} s")

    bare = bare_inference(model, frames, args.threads, repeats=int(args.rate * min(args.duration, 10)))
    node = node_run(model, frames, args.threads, args.rate, args.duration, args.reliability)
    bare_s, node_s = _summary(bare), _summary(node["latencies_ms"])
    ratio = node_s["median"] / bare_s["median"]
    published = node["published"]
    result = {
        "model": os.path.relpath(model, REPO_ROOT) if model.startswith(str(REPO_ROOT)) else os.path.basename(model),
        "frame": f"{args.width}x{args.height} bgr8", "rate_hz": args.rate, "duration_s": args.duration,
        "reliability": args.reliability, "onnxruntime_threads": args.threads,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs shown (shared with other work)",
        "bare_detect_ms": bare_s, "node_end_to_end_ms": node_s,
        "ratio_median": ratio, "goal_ratio": GOAL_RATIO,
        "frames_published": published, "frames_answered": node["answered"],
        "frames_dropped_total": published - node["answered"],
        "frames_dropped_by_node_slot": node["node_frames_dropped"],
        "frames_never_delivered": published - node["node_frames_received"],
        "node_inference_ms_mean": node["node_inference_ms_mean"],
        "node_internal_e2e_ms_mean": node["node_internal_e2e_ms_mean"],
        "publish_rate_hz_achieved": node["publish_rate_hz_achieved"],
        "node_rss_mb_peak": node["rss_mb_peak"], "goal_rss_mb": GOAL_RSS_MB,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    _plot(out.with_suffix(".png"), bare, node["latencies_ms"],
          f"evit_detector vs bare inference, {args.width}x{args.height} @ {args.rate:g} Hz")
    md = [
        "# evit_detector benchmark",
        "",
        f"Produced by `scripts/benchmark_node.py` ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}).",
        f"Model `{result['model']}`, {result['frame']} frames at {args.rate:g} Hz for {args.duration:g} s, "
        f"{args.reliability} camera with the Fast DDS large-frames profile, ONNX Runtime CPU "
        f"with {args.threads} thread(s); machine: {result['machine']}.",
        "",
        "| figure | value | goal |",
        "|---|---|---|",
        f"| bare `Detector.detect` median / p95 | {bare_s['median']:.2f} / {bare_s['p95']:.2f} ms | |",
        f"| node end-to-end (publish -> Detection2DArray received) median / p95 | "
        f"{node_s['median']:.2f} / {node_s['p95']:.2f} ms | |",
        f"| **ratio node / bare (medians)** | **{ratio:.2f}** | <= {GOAL_RATIO} |",
        f"| frames published / answered | {published} / {node['answered']} | |",
        f"| dropped by the newest-frame slot (node diagnostics) | {node['node_frames_dropped']} | |",
        f"| never delivered to the node | {result['frames_never_delivered']} | |",
        f"| node resident memory (peak VmRSS) | {node['rss_mb_peak']:.0f} MB | <= {GOAL_RSS_MB:.0f} MB |",
        f"| publish rate achieved | {node['publish_rate_hz_achieved']:.1f} Hz | {args.rate:g} Hz |",
        "",
        "![latency histogram](node_benchmark.png)",
        "",
    ]
    out.with_suffix(".md").write_text("\n".join(md))
    print("\n".join(md[5:14]))
    print(f"wrote {out.with_suffix('.json')}, .md, .png")


if __name__ == "__main__":
    main()
