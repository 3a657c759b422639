"""Replay a bag into a live ROS 2 graph and record what the graph answers.

Messages go out as the bag's own CDR bytes (``publisher.publish(raw)``), paced by their
recorded receive times divided by ``rate``, each preceded by /clock at that time so nodes
with ``use_sim_time`` see the flight's clock. Answers are recorded with raw subscriptions and
stamped with the wall time of arrival, which makes transport part of the measured latency.
"""
from __future__ import annotations

import importlib
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence

from evit_perception.evaluation.bag_io import (
    CLOCK_TYPE, DETECTIONS_TYPE, BagError, BagReader, ns_to_stamp, stamp_to_ns)


@dataclass
class PublishedFrame:
    """One image sent into the graph."""

    stamp_ns: int
    log_time_ns: int
    wall_s: float


@dataclass
class LiveRecording:
    """What went out and what came back."""

    published: List[PublishedFrame] = field(default_factory=list)
    #: header stamp (ns) -> (arrival wall time, raw Detection2DArray CDR)
    answers: Dict[int, Any] = field(default_factory=dict)
    #: answers whose stamp matched no published frame
    unmatched_answers: int = 0
    wall_s: float = 0.0


def message_class(msgtype: str) -> Any:
    """``pkg/msg/Name`` -> the rclpy message class (ImportError names the missing package)."""
    package, _, name = msgtype.split("/")
    try:
        return getattr(importlib.import_module(f"{package}.msg"), name)
    except (ImportError, AttributeError) as exc:
        raise BagError(f"message type {msgtype!r} is not installed for rclpy ({exc})") from exc


class BagReplayer:
    """Publishes a bag's image topic (and companions) into a graph and records answers.

    ``rename`` maps bag topics to the graph topics they are published on. Owns its own rclpy
    context, so it coexists with any other rclpy use in the process.
    """

    def __init__(self, reader: BagReader, image_topic: str, answer_topic: str,
                 companion_topics: Sequence[str] = (), rename: Optional[Dict[str, str]] = None,
                 node_name: str = "evit_bag_replay") -> None:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy

        self.reader = reader
        self.image_topic = image_topic
        self.answer_topic = answer_topic
        self._context = rclpy.Context()
        rclpy.init(context=self._context)
        self.node = rclpy.create_node(node_name, context=self._context)
        # Reliable, deep enough for a burst: the node's "auto" QoS accepts it, and frames that
        # still get lost are the node's own drops (its latest-frame slot), which we measure.
        qos = QoSProfile(depth=10, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE)
        topics = reader.topics()
        self._publishers: Dict[str, Any] = {}
        for topic in [image_topic] + [t for t in companion_topics if t in topics]:
            self._publishers[topic] = self.node.create_publisher(
                message_class(topics[topic][0]), (rename or {}).get(topic, topic), qos)
        self._clock_pub = self.node.create_publisher(message_class(CLOCK_TYPE), "/clock", qos)
        self.recording = LiveRecording()
        self._lock = threading.Lock()
        self._sub = self.node.create_subscription(message_class(DETECTIONS_TYPE), answer_topic,
                                                  self._on_answer, qos, raw=True)
        self._executor = SingleThreadedExecutor(context=self._context)
        self._executor.add_node(self.node)
        self._stop = threading.Event()
        self._spinner = threading.Thread(target=self._spin, daemon=True)
        self._spinner.start()

    def _spin(self) -> None:
        while not self._stop.is_set() and self._context.ok():
            try:
                self._executor.spin_once(timeout_sec=0.05)
            except Exception:  # context shut down under us
                break

    def _on_answer(self, raw: bytes) -> None:
        arrived = time.monotonic()
        msg = self.reader.deserialize(raw, DETECTIONS_TYPE)
        stamp = stamp_to_ns(msg.header.stamp)
        with self._lock:
            if stamp in self.recording.answers:
                return
            self.recording.answers[stamp] = (arrived, raw)

    def wait_for_graph(self, timeout_s: float, alive: Optional[Callable[[], Optional[str]]] = None) -> None:
        """Block until something subscribes to the images and publishes answers.

        ``alive`` returns None while the peer runs, else a reason it died; raises BagError
        on death or timeout, naming which link is missing.
        """
        deadline = time.monotonic() + timeout_s
        image_pub = self._publishers[self.image_topic]
        while time.monotonic() < deadline:
            dead = alive() if alive else None
            if dead:
                raise BagError(dead)
            if image_pub.get_subscription_count() > 0 and self._sub.get_publisher_count() > 0:
                time.sleep(0.3)  # let both matches settle in both directions
                return
            time.sleep(0.1)
        missing = []
        if image_pub.get_subscription_count() == 0:
            missing.append(f"nobody subscribed to {image_pub.topic_name!r}")
        if self._sub.get_publisher_count() == 0:
            missing.append(f"nobody publishes {self.answer_topic!r}")
        raise BagError(f"live graph not ready after {timeout_s:.0f} s: {'; '.join(missing)}")

    def replay(self, rate: float = 1.0, max_frames: Optional[int] = None, drain_s: float = 5.0,
               progress: bool = False) -> LiveRecording:
        """Publish in recorded time order at ``rate`` x speed; wait up to ``drain_s`` for answers."""
        if rate <= 0:
            raise BagError(f"replay rate must be > 0, got {rate}")
        store = self.reader.store
        topics = list(self._publishers)
        image_type = self.reader.topics()[self.image_topic][0]
        restamped = 0
        bar = None
        if progress:
            from tqdm import tqdm
            bar = tqdm(total=max_frames or self.reader.topics()[self.image_topic][1], desc="replay", unit="frame")
        first_log: Optional[int] = None
        start = time.monotonic()
        frames = 0
        for conn, log_ns, raw in self.reader.raw_messages(topics):
            is_image = conn.topic == self.image_topic
            if is_image and max_frames is not None and frames >= max_frames:
                break
            if first_log is None:
                first_log = log_ns
            due = start + (log_ns - first_log) / 1e9 / rate
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            clock = message_class(CLOCK_TYPE)()
            clock.clock.sec, clock.clock.nanosec = divmod(int(log_ns), 1_000_000_000)
            self._clock_pub.publish(clock)
            if is_image:
                msg = self.reader.deserialize(raw, image_type)
                stamp = stamp_to_ns(msg.header.stamp)
                if stamp == 0:
                    # No stamp: answers could not be matched to frames; give it the log time.
                    msg.header.stamp = ns_to_stamp(store, log_ns)
                    raw = bytes(store.serialize_cdr(msg, image_type))
                    stamp = log_ns
                    restamped += 1
                self.recording.published.append(PublishedFrame(stamp, log_ns, time.monotonic()))
                frames += 1
                if bar is not None:
                    bar.update(1)
            self._publishers[conn.topic].publish(bytes(raw))
        if bar is not None:
            bar.close()
        if restamped:
            self.reader.note(f"topic {self.image_topic!r}: {restamped} frame(s) had no header stamp; "
                              "replayed with the bag's receive time as stamp")
        wanted = {p.stamp_ns for p in self.recording.published}
        deadline = time.monotonic() + drain_s
        while time.monotonic() < deadline:
            with self._lock:
                if wanted <= set(self.recording.answers):
                    break
            time.sleep(0.05)
        with self._lock:
            self.recording.unmatched_answers = len(set(self.recording.answers) - wanted)
        self.recording.wall_s = time.monotonic() - start
        return self.recording

    def close(self) -> None:
        """Tear down the node and the private context."""
        self._stop.set()
        self._spinner.join(timeout=2.0)
        self._executor.shutdown(timeout_sec=1.0)
        self.node.destroy_node()
        self._context.try_shutdown()

    def __enter__(self) -> "BagReplayer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
