"""Real ROS 2 processes for tests: the detector node as its own process, a camera publisher
process, and an rclpy peer in the test process - all talking over DDS.

Run as a script it is a camera (used where the publisher needs its own Fast DDS profile):
    python test/support/ros_processes.py --topic /cam/image_raw --width 1920 --height 1080 \
        --count 8 --rate 2 --reliability best_effort
"""
from __future__ import annotations

import argparse
import atexit
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[2]
LARGE_FRAMES_PROFILE = REPO_ROOT / "config" / "fastdds_large_frames.xml"
CAMERA_SCRIPT = Path(__file__).resolve()
FRAME_ID = "test_camera_optical"
FIRST_STAMP_SEC = 1000

# Node logs live until this process exits (assertion messages read them after stop()).
_LOG_DIR = tempfile.mkdtemp(prefix="evit-node-logs-")
atexit.register(shutil.rmtree, _LOG_DIR, True)

_COLOURS = ((0, 0, 255), (0, 255, 0), (255, 0, 0))  # BGR: red, green, blue -> classes 0, 1, 2


def synthetic_frame(index: int, width: int, height: int) -> np.ndarray:
    """Frame ``index``: grey with one pure-colour square whose place and colour depend on it.

    The reference model scores red/green/blue squares as classes 0/1/2, so every frame has
    detections that differ from its neighbours'.
    """
    frame = np.full((height, width, 3), 90, np.uint8)
    side = max(8, min(width, height) // 4)
    x = (index * side // 2) % max(1, width - side)
    y = (index * side // 3) % max(1, height - side)
    frame[y:y + side, x:x + side] = _COLOURS[index % 3]
    return frame


def frame_stamp(index: int) -> Any:
    """The header stamp frame ``index`` carries (unique per index)."""
    from builtin_interfaces.msg import Time
    return Time(sec=FIRST_STAMP_SEC + index, nanosec=index * 1000)


def frame_header(index: int) -> Any:
    """std_msgs/Header for frame ``index``."""
    from std_msgs.msg import Header
    return Header(stamp=frame_stamp(index), frame_id=FRAME_ID)


def stamp_key(stamp: Any) -> tuple:
    """A hashable key of a builtin_interfaces/Time."""
    return int(stamp.sec), int(stamp.nanosec)


def image_message(bgr: np.ndarray, header: Any, encoding: str = "bgr8") -> Any:
    """sensor_msgs/Image of an HxWx3 BGR frame (``encoding`` bgr8 or rgb8)."""
    from sensor_msgs.msg import Image
    data = bgr if encoding == "bgr8" else bgr[:, :, ::-1]
    msg = Image(header=header, height=bgr.shape[0], width=bgr.shape[1], encoding=encoding,
                is_bigendian=0, step=bgr.shape[1] * 3)
    msg.data = np.ascontiguousarray(data).tobytes()
    return msg


def format_parameter(value: Any) -> str:
    """A value as ``--ros-args -p name:=value`` text."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(format_parameter(v) for v in value) + "]"
    return str(value)


def installed_executable(name: str = "evit_detector") -> Optional[str]:
    """The console script pip installed beside this Python (``ros2 run`` runs the same file)."""
    path = Path(sys.executable).parent / name
    return str(path) if path.is_file() else None


class NodeProcess:
    """The detector node (or any rclpy entry module) run as a child process, output to a file."""

    def __init__(self, parameters: Optional[Dict[str, Any]] = None,
                 remappings: Optional[Dict[str, str]] = None, env: Optional[Dict[str, str]] = None,
                 module: str = "evit_perception.detector_node",
                 node_name: str = "evit_detector", executable: Optional[str] = None) -> None:
        self.parameters = dict(parameters or {})
        self.remappings = dict(remappings or {})
        self.env = dict(os.environ if env is None else env)
        self.env["PYTHONUNBUFFERED"] = "1"
        self.env.setdefault("RCUTILS_COLORIZED_OUTPUT", "0")
        self.module = module
        #: An installed console script (e.g. the venv's ``evit_detector``) instead of ``-m module``.
        self.executable = executable
        self.node_name = node_name
        self._log = tempfile.NamedTemporaryFile(prefix=f"{node_name}-", suffix=".log", dir=_LOG_DIR,
                                                delete=False)
        self.log_path = Path(self._log.name)
        self.process: Optional[subprocess.Popen] = None

    def command(self) -> List[str]:
        """The command line that starts the node."""
        start = [self.executable] if self.executable else [sys.executable, "-m", self.module]
        cmd = start + ["--ros-args", "-r", f"__node:={self.node_name}"]
        for name, value in self.parameters.items():
            cmd += ["-p", f"{name}:={format_parameter(value)}"]
        for src, dst in self.remappings.items():
            cmd += ["-r", f"{src}:={dst}"]
        return cmd

    def start(self) -> "NodeProcess":
        """Start the process (returns at once; wait for its topics with :class:`RosPeer`)."""
        self.process = subprocess.Popen(self.command(), stdout=self._log, stderr=subprocess.STDOUT,
                                        env=self.env, cwd=str(REPO_ROOT))
        return self

    def output(self) -> str:
        """Everything the process printed so far."""
        return self.log_path.read_text(errors="replace")

    def count(self, text: str) -> int:
        """How many output lines contain ``text``."""
        return sum(text in line for line in self.output().splitlines())

    def wait_for_output(self, text: str, timeout: float = 30.0) -> bool:
        """Wait until ``text`` appears in the output (False on timeout or exit)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.output():
                return True
            if not self.alive():
                return text in self.output()
            time.sleep(0.1)
        return False

    def alive(self) -> bool:
        """Whether the process is still running."""
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 15.0) -> Optional[int]:
        """SIGINT (what Ctrl-C sends), then SIGKILL if it hangs; returns the exit code."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)
        self._log.close()
        return self.process.returncode

    def __enter__(self) -> "NodeProcess":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


class RosPeer:
    """An rclpy node in the test process with its own context and executor."""

    def __init__(self, name: str = "evit_test_peer") -> None:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor

        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node(name, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)

    def spin_until(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Spin until ``predicate()`` holds; False after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            self.executor.spin_once(timeout_sec=0.05)
        return predicate()

    def spin_for(self, seconds: float) -> None:
        """Spin for a while (deliver whatever arrives)."""
        self.spin_until(lambda: False, seconds)

    def wait_for_subscribers(self, publisher: Any, timeout: float = 30.0) -> bool:
        """Wait until ``publisher`` is matched with at least one subscription."""
        return self.spin_until(lambda: publisher.get_subscription_count() > 0, timeout)

    def wait_for_publishers(self, topic: str, timeout: float = 30.0) -> bool:
        """Wait until the graph shows a publisher on ``topic``."""
        return self.spin_until(lambda: self.node.count_publishers(topic) > 0, timeout)

    def call_service(self, client: Any, request: Any, timeout: float = 20.0) -> Any:
        """Call a service and spin until the answer (None on timeout)."""
        if not self.spin_until(client.service_is_ready, timeout):
            return None
        future = client.call_async(request)
        self.spin_until(future.done, timeout)
        return future.result() if future.done() else None

    def set_parameters(self, node_name: str, values: Dict[str, Any], timeout: float = 20.0) -> List[Any]:
        """Set parameters on another node through its SetParameters service; returns results."""
        from rcl_interfaces.srv import SetParameters
        from rclpy.parameter import Parameter

        client = self.node.create_client(SetParameters, f"{node_name}/set_parameters")
        try:
            request = SetParameters.Request(
                parameters=[Parameter(k, value=v).to_parameter_msg() for k, v in values.items()])
            response = self.call_service(client, request, timeout)
            if response is None:
                raise TimeoutError(f"{node_name}/set_parameters did not answer in {timeout} s")
            return list(response.results)
        finally:
            self.node.destroy_client(client)

    def close(self) -> None:
        """Destroy the node and shut the context down."""
        self.executor.shutdown()
        self.node.destroy_node()
        self.context.try_shutdown()


def run_camera(topic: str, width: int, height: int, count: int, rate: float, reliability: str,
               settle: float, wait: float, encoding: str = "bgr8") -> int:
    """Publish ``count`` synthetic frames once a subscriber is matched; returns frames sent."""
    import rclpy
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    rclpy.init()
    node = rclpy.create_node("evit_test_camera")
    qos = QoSProfile(depth=1, reliability=(ReliabilityPolicy.RELIABLE if reliability == "reliable"
                                           else ReliabilityPolicy.BEST_EFFORT))
    pub = node.create_publisher(Image, topic, qos)
    sent = 0
    try:
        deadline = time.monotonic() + wait
        while pub.get_subscription_count() == 0 and time.monotonic() < deadline:
            rclpy.spin_once(node, timeout_sec=0.1)
        print(f"camera: {pub.get_subscription_count()} subscriber(s) matched", flush=True)
        end = time.monotonic() + settle
        while time.monotonic() < end:
            rclpy.spin_once(node, timeout_sec=0.05)
        for i in range(count):
            pub.publish(image_message(synthetic_frame(i, width, height), frame_header(i), encoding))
            sent += 1
            print(f"camera: sent frame {i}", flush=True)
            end = time.monotonic() + 1.0 / rate
            while time.monotonic() < end:
                rclpy.spin_once(node, timeout_sec=0.02)
        end = time.monotonic() + 1.0  # keep the endpoint up while the last frame travels
        while time.monotonic() < end:
            rclpy.spin_once(node, timeout_sec=0.05)
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return sent


def camera_process(args: Sequence[str], env: Dict[str, str], profile: bool) -> subprocess.Popen:
    """Start this file as a camera process (``profile``: with the large-frames Fast DDS profile)."""
    env = dict(env)
    env["PYTHONUNBUFFERED"] = "1"
    if profile:
        env["FASTRTPS_DEFAULT_PROFILES_FILE"] = str(LARGE_FRAMES_PROFILE)
        env["FASTDDS_DEFAULT_PROFILES_FILE"] = str(LARGE_FRAMES_PROFILE)
    else:
        env.pop("FASTRTPS_DEFAULT_PROFILES_FILE", None)
        env.pop("FASTDDS_DEFAULT_PROFILES_FILE", None)
    return subprocess.Popen([sys.executable, str(CAMERA_SCRIPT)] + list(args), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=str(REPO_ROOT))


def _main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--count", type=int, default=5)
    parser.add_argument("--rate", type=float, default=2.0)
    parser.add_argument("--reliability", choices=("reliable", "best_effort"), default="best_effort")
    parser.add_argument("--settle", type=float, default=1.0, help="seconds after the match")
    parser.add_argument("--wait", type=float, default=60.0, help="most seconds to wait for a match")
    parser.add_argument("--encoding", default="bgr8")
    a = parser.parse_args()
    sys.path.insert(0, str(REPO_ROOT))
    run_camera(a.topic, a.width, a.height, a.count, a.rate, a.reliability, a.settle, a.wait,
               a.encoding)


if __name__ == "__main__":
    _main()
