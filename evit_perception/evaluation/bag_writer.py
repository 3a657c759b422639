"""A flight (frames with exact boxes) -> a rosbag2 bag a real ROS 2 install can play.

Topics follow the camera-driver conventions: the image (raw ``bgr8`` or JPEG
``CompressedImage`` on ``.../compressed``), its CameraInfo, and the ground truth as
vision_msgs/Detection2DArray on its own topic, all three carrying the same header stamp and
recorded at that stamp. Frames are duck-typed (``index``, ``stamp_s``, ``bgr``, ``boxes`` xyxy,
``labels`` 0-based, ``camera`` dict with fx, fy, cx, cy, width, height) so this module needs
no training code.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Dict, Iterable, Optional, Sequence

import numpy as np

from evit_perception.evaluation.bag_io import (
    CAMERA_INFO_TYPE, COMPRESSED_IMAGE_TYPE, DETECTIONS_TYPE, IMAGE_TYPE, BagError,
    boxes_to_detections, make_typestore, ns_to_stamp, open_writer)

#: Flights start at a fixed epoch time (2026-01-01T00:00:00Z) so stamps are never zero
#: ("no timestamp") and bags are byte-for-byte reproducible.
DEFAULT_START_NS = 1_767_225_600 * 1_000_000_000


@dataclass(frozen=True)
class FlightTopics:
    """Topic names of a flight bag."""

    image: str = "/camera/image_raw"
    compressed_image: str = "/camera/image_raw/compressed"
    camera_info: str = "/camera/camera_info"
    ground_truth: str = "/ground_truth/detections"
    frame_id: str = "camera_optical_frame"


@dataclass
class BagSummary:
    """What was written."""

    path: str
    storage: str
    frames: int
    image_topic: str
    camera_info_topic: str
    ground_truth_topic: str
    duration_s: float
    topics: Dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def write_flight_bag(path: str, frames: Iterable[Any], class_names: Sequence[str],
                     storage: str = "mcap", compressed: bool = False, jpeg_quality: int = 90,
                     topics: FlightTopics = FlightTopics(), start_ns: int = DEFAULT_START_NS,
                     overwrite: bool = False, progress: bool = False,
                     total: Optional[int] = None) -> BagSummary:
    """Write ``frames`` as a drone flight; returns a :class:`BagSummary`.

    ``class_names`` turn 0-based labels into the ground truth's ``class_id`` strings, the
    same strings the detector node publishes. ``total`` (the frame count, if known) sizes
    the progress bar.
    """
    import cv2

    store = make_typestore()
    writer = open_writer(path, storage, overwrite=overwrite)
    image_topic = topics.compressed_image if compressed else topics.image
    image_type = COMPRESSED_IMAGE_TYPE if compressed else IMAGE_TYPE
    try:
        conn_image = writer.add_connection(image_topic, image_type, typestore=store)
        conn_info = writer.add_connection(topics.camera_info, CAMERA_INFO_TYPE, typestore=store)
        conn_gt = writer.add_connection(topics.ground_truth, DETECTIONS_TYPE, typestore=store)
        count, first_ns, last_ns = 0, None, None
        iterator = frames
        if progress:
            from tqdm import tqdm
            iterator = tqdm(frames, total=total, desc="bag", unit="frame")
        for frame in iterator:
            stamp_ns = start_ns + int(round(float(frame.stamp_s) * 1e9))
            header = store.types["std_msgs/msg/Header"](
                stamp=ns_to_stamp(store, stamp_ns), frame_id=topics.frame_id)
            bgr = np.ascontiguousarray(frame.bgr, dtype=np.uint8)
            if compressed:
                ok, jpeg = cv2.imencode(".jpg", bgr, [int(cv2.IMWRITE_JPEG_QUALITY), int(jpeg_quality)])
                if not ok:
                    raise BagError(f"frame {frame.index}: JPEG encoding failed")
                image = store.types[COMPRESSED_IMAGE_TYPE](
                    header=header, format="bgr8; jpeg compressed bgr8", data=jpeg.reshape(-1))
            else:
                image = store.types[IMAGE_TYPE](
                    header=header, height=bgr.shape[0], width=bgr.shape[1], encoding="bgr8",
                    is_bigendian=0, step=bgr.shape[1] * 3, data=bgr.reshape(-1))
            labels = [int(v) for v in np.asarray(frame.labels).reshape(-1)]
            unknown = [v for v in labels if not 0 <= v < len(class_names)]
            if unknown:
                raise BagError(f"frame {frame.index}: labels {unknown} outside class_names {list(class_names)}")
            gt = boxes_to_detections(store, header, np.asarray(frame.boxes, dtype=np.float64),
                                     [class_names[v] for v in labels], [1.0] * len(labels))
            info = camera_info(store, header, frame.camera, bgr.shape[1], bgr.shape[0])
            writer.write(conn_image, stamp_ns, store.serialize_cdr(image, image_type))
            writer.write(conn_info, stamp_ns, store.serialize_cdr(info, CAMERA_INFO_TYPE))
            writer.write(conn_gt, stamp_ns, store.serialize_cdr(gt, DETECTIONS_TYPE))
            first_ns = stamp_ns if first_ns is None else first_ns
            last_ns = stamp_ns
            count += 1
    finally:
        writer.close()
    if count == 0:
        raise BagError(f"no frames were given; {path} holds an empty bag")
    return BagSummary(path=str(path), storage=storage, frames=count, image_topic=image_topic,
                      camera_info_topic=topics.camera_info, ground_truth_topic=topics.ground_truth,
                      duration_s=((last_ns or 0) - (first_ns or 0)) / 1e9,
                      topics={image_topic: image_type, topics.camera_info: CAMERA_INFO_TYPE,
                              topics.ground_truth: DETECTIONS_TYPE})


def camera_info(store: Any, header: Any, camera: Optional[Dict[str, float]], width: int, height: int) -> Any:
    """A pinhole, distortion-free CameraInfo from ``fx, fy, cx, cy`` (defaults: 60 deg HFOV)."""
    cam = dict(camera or {})
    fx = float(cam.get("fx", width / (2.0 * np.tan(np.radians(30.0)))))
    fy = float(cam.get("fy", fx))
    cx = float(cam.get("cx", width / 2.0))
    cy = float(cam.get("cy", height / 2.0))
    t = store.types
    return t[CAMERA_INFO_TYPE](
        header=header, height=int(cam.get("height", height)), width=int(cam.get("width", width)),
        distortion_model="plumb_bob", d=np.zeros(5, dtype=np.float64),
        k=np.array([fx, 0, cx, 0, fy, cy, 0, 0, 1], dtype=np.float64),
        r=np.eye(3, dtype=np.float64).reshape(-1),
        p=np.array([fx, 0, cx, 0, 0, fy, cy, 0, 0, 0, 1, 0], dtype=np.float64),
        binning_x=0, binning_y=0,
        roi=t["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0,
                                                  do_rectify=False))
