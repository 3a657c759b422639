"""rosbag2 files (mcap and sqlite3) read and written with the pure-Python ``rosbags`` library.

No ROS install is needed: the type store is ROS 2 Jazzy's plus vision_msgs, registered from
the .msg text below (equal to interfaces/vision_msgs and to vision_msgs 4.1.x, so bags carry
the same RIHS01 hashes a real ROS 2 peer computes). Reading is forgiving: problems that do
not stop evaluation (frames without stamps, a truncated storage file) are collected in
:attr:`BagReader.problems`, each said once; problems that do (a missing topic, a wrong
message type, an empty bag) raise :class:`BagError` naming the topic or file.

rosbags itself needs Python 3.10+; this module stays 3.8-compatible so the package imports
on a Jetson and only bag tools need a newer Python.
"""
from __future__ import annotations

import shutil
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

IMAGE_TYPE = "sensor_msgs/msg/Image"
COMPRESSED_IMAGE_TYPE = "sensor_msgs/msg/CompressedImage"
CAMERA_INFO_TYPE = "sensor_msgs/msg/CameraInfo"
DETECTIONS_TYPE = "vision_msgs/msg/Detection2DArray"
CLOCK_TYPE = "rosgraph_msgs/msg/Clock"
IMAGE_TYPES = (IMAGE_TYPE, COMPRESSED_IMAGE_TYPE)
STORAGES = ("mcap", "sqlite3")

#: The vision_msgs 4.1.x definitions Detection2DArray needs, verbatim from
#: interfaces/vision_msgs/msg (test_bags checks both the text and the RIHS01 hashes).
VISION_MSGS_DEFINITIONS: Dict[str, str] = {
    "vision_msgs/msg/Point2D": "float64 x\nfloat64 y\n",
    "vision_msgs/msg/Pose2D": "vision_msgs/Point2D position\nfloat64 theta\n",
    "vision_msgs/msg/BoundingBox2D": (
        "# Axis-aligned 2D box in pixels, centred on center.position; theta is the rotation.\n"
        "vision_msgs/Pose2D center\nfloat64 size_x\nfloat64 size_y\n"),
    "vision_msgs/msg/ObjectHypothesis": "string class_id\nfloat64 score\n",
    "vision_msgs/msg/ObjectHypothesisWithPose": (
        "ObjectHypothesis hypothesis\ngeometry_msgs/PoseWithCovariance pose\n"),
    "vision_msgs/msg/Detection2D": (
        "# One detected object in an image.\nstd_msgs/Header header\n"
        "ObjectHypothesisWithPose[] results\nBoundingBox2D bbox\nstring id\n"),
    "vision_msgs/msg/Detection2DArray": "std_msgs/Header header\nDetection2D[] detections\n",
}

_MCAP_MAGIC = b"\x89MCAP0\r\n"


class BagError(ValueError):
    """A bag cannot be used as asked; the message names the bag, topic or file."""


def make_typestore() -> Any:
    """ROS 2 Jazzy message types plus vision_msgs, for (de)serialising CDR."""
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    store = get_typestore(Stores.ROS2_JAZZY)
    types: Dict[str, Any] = {}
    for name, text in VISION_MSGS_DEFINITIONS.items():
        types.update(get_types_from_msg(text, name))
    store.register(types)
    return store


def stamp_to_ns(stamp: Any) -> int:
    """builtin_interfaces/Time -> integer nanoseconds."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def ns_to_stamp(store: Any, ns: int) -> Any:
    """Integer nanoseconds -> builtin_interfaces/Time of ``store``."""
    time_cls = store.types["builtin_interfaces/msg/Time"]
    return time_cls(sec=int(ns // 1_000_000_000), nanosec=int(ns % 1_000_000_000))


@dataclass
class BagFrame:
    """One decoded image from a bag."""

    index: int
    #: The frame's header stamp, or the bag's receive time when the header has none.
    stamp_ns: int
    log_time_ns: int
    bgr: np.ndarray
    frame_id: str
    stamp_from_header: bool


@dataclass
class BoxesAtStamp:
    """Boxes of one Detection2DArray, in source pixels."""

    stamp_ns: int
    boxes: np.ndarray  # (N, 4) float32 xyxy
    class_ids: List[str]
    scores: np.ndarray  # (N,) float32


class BagReader:
    """Opens a rosbag2 directory (or a bare .mcap/.db3 file) for evaluation and replay.

    Use as a context manager. A truncated mcap file is salvaged: the complete records before
    the damage are read and the loss is noted in :attr:`problems`.
    """

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.problems: List[str] = []
        self.store = make_typestore()
        self._tmpdir: Optional[tempfile.TemporaryDirectory] = None
        self._reader = self._open(self.path)

    # -- opening ------------------------------------------------------------------------
    def _open(self, path: Path) -> Any:
        from rosbags.rosbag2 import Reader, ReaderError

        if not path.exists():
            raise BagError(f"bag {path} does not exist")
        if path.is_dir() and not (path / "metadata.yaml").exists():
            # A bag folder that lost its metadata.yaml: its single storage file still reads.
            files = sorted(path.glob("*.mcap")) + sorted(path.glob("*.db3"))
            if len(files) != 1:
                raise BagError(f"bag {path} has no metadata.yaml and {len(files)} storage files "
                               "(.mcap/.db3); give the storage file itself")
            self.problems.append(f"bag {path} has no metadata.yaml; read {files[0].name} directly")
            path = files[0]
        try:
            reader = Reader(path)
            reader.open()
            return reader
        except (ReaderError, FileNotFoundError, KeyError, ValueError, OSError) as exc:
            salvaged = self._salvage_mcap(path, exc)
            if salvaged is None:
                raise BagError(f"bag {path} cannot be opened: {exc}") from exc
            return salvaged
        except Exception as exc:  # apsw raises its own classes for damaged sqlite files
            raise BagError(f"bag {path} cannot be opened (corrupt storage file?): "
                           f"{type(exc).__name__}: {exc}") from exc

    def _salvage_mcap(self, path: Path, error: Exception) -> Any:
        """Read the complete records of a truncated mcap file; None when not applicable."""
        from rosbags.rosbag2 import Reader

        files = [path] if path.suffix == ".mcap" else sorted(path.glob("*.mcap")) if path.is_dir() else []
        if len(files) != 1:
            return None
        data = files[0].read_bytes()
        if not data.startswith(_MCAP_MAGIC) or data.endswith(_MCAP_MAGIC):
            return None
        # Walk op(1) + length(u64) records; keep those that end before the file does.
        end = pos = len(_MCAP_MAGIC)
        while pos + 9 <= len(data):
            op, size = data[pos], struct.unpack_from("<Q", data, pos + 1)[0]
            if pos + 9 + size > len(data):
                break
            pos += 9 + size
            if op in (0x01, 0x03, 0x04, 0x05, 0x06):  # header, schema, channel, message, chunk
                end = pos
        footer = b"\x02" + struct.pack("<Q", 20) + struct.pack("<QQI", 0, 0, 0)
        self._tmpdir = tempfile.TemporaryDirectory(prefix="evit-salvage-")
        repaired = Path(self._tmpdir.name) / "salvaged.mcap"
        repaired.write_bytes(data[:end] + footer + _MCAP_MAGIC)
        try:
            reader = Reader(repaired)
            reader.open()
        except Exception:
            return None
        self.problems.append(
            f"storage file {files[0]} is truncated or corrupt ({error}); read the "
            f"{end} of {len(data)} bytes that were complete")
        return reader

    def close(self) -> None:
        """Close the bag (and drop a salvaged copy)."""
        if self._reader is not None and self._reader.is_open:
            self._reader.close()
        if self._tmpdir is not None:
            self._tmpdir.cleanup()
            self._tmpdir = None

    def __enter__(self) -> "BagReader":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- what is inside -----------------------------------------------------------------
    @property
    def connections(self) -> List[Any]:
        """rosbags Connection objects (topic, msgtype, msgdef, digest, ...)."""
        return list(self._reader.connections)

    def topics(self) -> Dict[str, Tuple[str, int]]:
        """Topic name -> (message type, message count)."""
        return {name: (info.msgtype or "?", info.msgcount) for name, info in self._reader.topics.items()}

    @property
    def message_count(self) -> int:
        return int(self._reader.message_count)

    def describe_topics(self) -> str:
        """One line per topic, for error messages."""
        topics = self.topics()
        if not topics:
            return "(no topics)"
        return ", ".join(f"{n} [{t}, {c} msgs]" for n, (t, c) in sorted(topics.items()))

    def require_topic(self, topic: str, allowed_types: Sequence[str]) -> str:
        """The type of ``topic``; raises naming what the bag has when absent or mistyped."""
        topics = self.topics()
        if topic not in topics:
            raise BagError(f"bag {self.path} has no topic {topic!r}; it has: {self.describe_topics()}")
        msgtype = topics[topic][0]
        if msgtype not in allowed_types:
            raise BagError(f"topic {topic!r} in bag {self.path} carries {msgtype!r}, "
                           f"expected {' or '.join(allowed_types)}")
        return msgtype

    def find_topic(self, requested: Optional[str], allowed_types: Sequence[str], what: str) -> Optional[str]:
        """``requested`` if valid; else the one topic of an allowed type (None if none)."""
        if requested:
            self.require_topic(requested, allowed_types)
            return requested
        candidates = sorted(n for n, (t, _) in self.topics().items() if t in allowed_types)
        if len(candidates) > 1:
            raise BagError(f"bag {self.path} has several {what} topics {candidates}; choose one")
        return candidates[0] if candidates else None

    def image_topic(self, requested: Optional[str] = None) -> str:
        """The camera topic to evaluate; raises when there is none or it is ambiguous."""
        if self.message_count == 0:
            raise BagError(f"bag {self.path} is empty (0 messages)")
        topic = self.find_topic(requested, IMAGE_TYPES, "image")
        if topic is None:
            raise BagError(f"bag {self.path} has no sensor_msgs Image or CompressedImage topic; "
                           f"it has: {self.describe_topics()}")
        if self.topics()[topic][1] == 0:
            raise BagError(f"topic {topic!r} in bag {self.path} has no messages")
        return topic

    # -- reading ------------------------------------------------------------------------
    def raw_messages(self, topics: Optional[Sequence[str]] = None) -> Iterator[Tuple[Any, int, bytes]]:
        """(connection, receive time ns, CDR bytes) in time order; stops at damaged data."""
        conns = [c for c in self._reader.connections if topics is None or c.topic in topics]
        if not conns:
            return
        count = 0
        try:
            for conn, log_ns, raw in self._reader.messages(connections=conns):
                count += 1
                yield conn, log_ns, raw
        except Exception as exc:  # any storage failure mid-file: keep what was read
            self.note(f"storage of bag {self.path} is damaged after {count} messages "
                       f"({type(exc).__name__}: {exc}); results cover what was read")

    def deserialize(self, raw: bytes, msgtype: str) -> Any:
        """CDR bytes -> rosbags message object; raises naming the type when unknown."""
        try:
            return self.store.deserialize_cdr(raw, msgtype)
        except KeyError as exc:
            raise BagError(f"message type {msgtype!r} is unknown to the type store") from exc

    def iter_frames(self, topic: str, max_frames: Optional[int] = None) -> Iterator[BagFrame]:
        """Decode the images of ``topic`` to BGR; undecodable frames are skipped and noted."""
        from evit_perception.image_conversion import ImageConversionError, compressed_to_bgr, image_to_bgr

        msgtype = self.require_topic(topic, IMAGE_TYPES)
        decode = compressed_to_bgr if msgtype == COMPRESSED_IMAGE_TYPE else image_to_bgr
        index = 0
        unstamped = 0
        undecodable = 0
        for _, log_ns, raw in self.raw_messages([topic]):
            if max_frames is not None and index >= max_frames:
                break
            try:
                msg = self.deserialize(raw, msgtype)
                bgr = decode(msg)
            except (ImageConversionError, ValueError, IndexError, struct.error) as exc:
                undecodable += 1
                if undecodable == 1:
                    self.note(f"topic {topic!r}: frame at {log_ns} ns cannot be decoded ({exc})")
                continue
            stamp = stamp_to_ns(msg.header.stamp)
            if stamp == 0:
                unstamped += 1
            yield BagFrame(index=index, stamp_ns=stamp or log_ns, log_time_ns=log_ns, bgr=bgr,
                           frame_id=str(msg.header.frame_id), stamp_from_header=stamp != 0)
            index += 1
        if unstamped:
            self.note(f"topic {topic!r}: {unstamped} frame(s) have no header stamp (0); "
                       "used the bag's receive time instead")
        if undecodable > 1:
            self.note(f"topic {topic!r}: {undecodable} frames could not be decoded in all")

    def read_detections(self, topic: str) -> Dict[int, BoxesAtStamp]:
        """Detection2DArray messages of ``topic`` keyed by header stamp (receive time if 0)."""
        self.require_topic(topic, (DETECTIONS_TYPE,))
        out: Dict[int, BoxesAtStamp] = {}
        for _, log_ns, raw in self.raw_messages([topic]):
            msg = self.deserialize(raw, DETECTIONS_TYPE)
            boxes = detections_to_boxes(msg)
            boxes.stamp_ns = boxes.stamp_ns or log_ns
            out[boxes.stamp_ns] = boxes
        return out

    def note(self, problem: str) -> None:
        """Add a problem to :attr:`problems` (once)."""
        if problem not in self.problems:
            self.problems.append(problem)


def detections_to_boxes(msg: Any) -> BoxesAtStamp:
    """A (rosbags) Detection2DArray -> xyxy boxes, class_id strings and best scores."""
    boxes: List[List[float]] = []
    class_ids: List[str] = []
    scores: List[float] = []
    for det in msg.detections:
        cx, cy = det.bbox.center.position.x, det.bbox.center.position.y
        w, h = det.bbox.size_x, det.bbox.size_y
        boxes.append([cx - w / 2.0, cy - h / 2.0, cx + w / 2.0, cy + h / 2.0])
        best = max(det.results, key=lambda r: r.hypothesis.score) if len(det.results) else None
        class_ids.append(str(best.hypothesis.class_id) if best is not None else "")
        scores.append(float(best.hypothesis.score) if best is not None else 1.0)
    return BoxesAtStamp(stamp_ns=stamp_to_ns(msg.header.stamp),
                        boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
                        class_ids=class_ids, scores=np.asarray(scores, dtype=np.float32))


def boxes_to_detections(store: Any, header: Any, boxes: np.ndarray, class_ids: Sequence[str],
                        scores: Sequence[float]) -> Any:
    """xyxy boxes -> a rosbags Detection2DArray (vision_msgs 4.x layout)."""
    t = store.types
    pose_cov = t["geometry_msgs/msg/PoseWithCovariance"](
        pose=t["geometry_msgs/msg/Pose"](
            position=t["geometry_msgs/msg/Point"](x=0.0, y=0.0, z=0.0),
            orientation=t["geometry_msgs/msg/Quaternion"](x=0.0, y=0.0, z=0.0, w=1.0)),
        covariance=np.zeros(36, dtype=np.float64))
    detections = []
    for box, cid, score in zip(np.asarray(boxes, dtype=np.float64).reshape(-1, 4), class_ids, scores):
        x1, y1, x2, y2 = (float(v) for v in box)
        detections.append(t["vision_msgs/msg/Detection2D"](
            header=header,
            results=[t["vision_msgs/msg/ObjectHypothesisWithPose"](
                hypothesis=t["vision_msgs/msg/ObjectHypothesis"](class_id=str(cid), score=float(score)),
                pose=pose_cov)],
            bbox=t["vision_msgs/msg/BoundingBox2D"](
                center=t["vision_msgs/msg/Pose2D"](
                    position=t["vision_msgs/msg/Point2D"](x=(x1 + x2) / 2.0, y=(y1 + y2) / 2.0),
                    theta=0.0),
                size_x=x2 - x1, size_y=y2 - y1),
            id=""))
    return t["vision_msgs/msg/Detection2DArray"](header=header, detections=detections)


def open_writer(path: str, storage: str = "mcap", overwrite: bool = False) -> Any:
    """An open rosbags Writer (rosbag2 version 9, as Jazzy writes) for ``storage``."""
    from rosbags.rosbag2 import StoragePlugin, Writer

    if storage not in STORAGES:
        raise BagError(f"storage {storage!r} is not one of {STORAGES}")
    target = Path(path)
    if target.exists():
        if not overwrite:
            raise BagError(f"{target} exists already; choose another path or remove it")
        shutil.rmtree(target)
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    writer = Writer(target, version=9, storage_plugin=plugin)
    writer.open()
    return writer


def copy_connection(writer: Any, store: Any, conn: Any) -> Optional[Any]:
    """Add a connection to ``writer`` like ``conn`` of another bag (None if its type is unknown)."""
    kwargs: Dict[str, Any] = {}
    if conn.msgtype in store.types:
        kwargs["typestore"] = store
    elif conn.msgdef.data and conn.digest:
        kwargs.update(msgdef=conn.msgdef.data, rihs01=conn.digest)
    else:
        return None
    qos = getattr(conn.ext, "offered_qos_profiles", ())
    return writer.add_connection(conn.topic, conn.msgtype, offered_qos_profiles=qos, **kwargs)
