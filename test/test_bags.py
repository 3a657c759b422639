"""rosbag2 files: round trips in mcap and sqlite3, ROS 2 type identity, and bad bags."""
from __future__ import annotations

import json
import sqlite3
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import yaml

from evit_perception.evaluation.bag_io import (
    CAMERA_INFO_TYPE, DETECTIONS_TYPE, IMAGE_TYPE, VISION_MSGS_DEFINITIONS, BagError, BagReader,
    make_typestore, ns_to_stamp, open_writer)
from evit_perception.evaluation.bag_writer import DEFAULT_START_NS, FlightTopics, write_flight_bag

REPO = Path(__file__).resolve().parents[1]
CLASS_NAMES = ("person", "vehicle", "obstacle")
SIZE = 320
CELL = 32


def square_frames(count: int, with_obstacle_truth: bool = False, fps: float = 10.0):
    """Frames the reference model answers exactly: a red (person) and a green (vehicle)
    square, each exactly one 32 px cell, on grey. ``with_obstacle_truth`` adds a ground-truth
    obstacle on a grey cell the model can never see (a known miss)."""
    frames = []
    for i in range(count):
        bgr = np.full((SIZE, SIZE, 3), 90, np.uint8)
        red = (CELL * (i % 8), CELL * 2)
        green = (CELL * ((i + 3) % 8), CELL * 6)
        bgr[red[1]:red[1] + CELL, red[0]:red[0] + CELL] = (0, 0, 255)
        bgr[green[1]:green[1] + CELL, green[0]:green[0] + CELL] = (0, 255, 0)
        boxes = [[red[0], red[1], red[0] + CELL, red[1] + CELL],
                 [green[0], green[1], green[0] + CELL, green[1] + CELL]]
        labels = [0, 1]
        if with_obstacle_truth:
            boxes.append([CELL * 4, CELL * 9, CELL * 5, CELL * 10])
            labels.append(2)
        frames.append(types.SimpleNamespace(
            index=i, stamp_s=i / fps, bgr=bgr, boxes=np.array(boxes, np.float32), labels=labels,
            camera={"fx": 300.0, "fy": 300.0, "cx": 160.0, "cy": 160.0, "width": SIZE, "height": SIZE}))
    return frames


def write_squares_bag(path: Path, count: int = 4, storage: str = "mcap", compressed: bool = False,
                      with_obstacle_truth: bool = False) -> str:
    write_flight_bag(str(path), square_frames(count, with_obstacle_truth), CLASS_NAMES,
                     storage=storage, compressed=compressed)
    return str(path)


# -- type identity with real ROS 2 -----------------------------------------------------------
def test_embedded_vision_msgs_text_equals_interface_package():
    for name, text in VISION_MSGS_DEFINITIONS.items():
        msg_file = REPO / "interfaces" / "vision_msgs" / "msg" / (name.split("/")[-1] + ".msg")
        assert msg_file.read_text() == text, f"{name} differs from {msg_file}"


def _built_hash(package: str, name: str) -> str:
    json_file = Path(sys.prefix) / "share" / package / "msg" / f"{name}.json"
    if not json_file.is_file():
        pytest.skip(f"{json_file} is absent: {package} is not built into this environment")
    doc = json.loads(json_file.read_text())
    full = f"{package}/msg/{name}"
    return next(h["hash_string"] for h in doc["type_hashes"] if h["type_name"] == full)


@pytest.mark.parametrize("full_name", sorted(VISION_MSGS_DEFINITIONS) + [IMAGE_TYPE, CAMERA_INFO_TYPE,
                                                                         "sensor_msgs/msg/CompressedImage"])
def test_rihs01_hashes_equal_those_of_built_ros2_packages(full_name):
    package, _, name = full_name.split("/")
    assert make_typestore().hash_rihs01(full_name) == _built_hash(package, name)


def test_detection_cdr_round_trips_with_rclpy():
    from rclpy.serialization import deserialize_message, serialize_message
    from vision_msgs.msg import Detection2D, Detection2DArray, ObjectHypothesisWithPose

    msg = Detection2DArray()
    msg.header.stamp.sec, msg.header.stamp.nanosec, msg.header.frame_id = 17, 500, "cam"
    det = Detection2D()
    det.header = msg.header
    hyp = ObjectHypothesisWithPose()
    hyp.hypothesis.class_id, hyp.hypothesis.score = "vehicle", 0.75
    det.results = [hyp]
    det.bbox.center.position.x, det.bbox.center.position.y = 20.0, 30.0
    det.bbox.size_x, det.bbox.size_y = 8.0, 6.0
    msg.detections = [det]

    from evit_perception.evaluation.bag_io import boxes_to_detections

    store = make_typestore()
    header = store.types["std_msgs/msg/Header"](stamp=ns_to_stamp(store, 17 * 10**9 + 500), frame_id="cam")
    ours = boxes_to_detections(store, header, np.array([[16.0, 27.0, 24.0, 33.0]]), ["vehicle"], [0.75])
    our_bytes = bytes(store.serialize_cdr(ours, DETECTIONS_TYPE))
    # rclpy leaves CDR padding bytes uninitialised, so compare through each side's reader.
    assert deserialize_message(our_bytes, Detection2DArray) == msg
    theirs = store.deserialize_cdr(bytes(serialize_message(msg)), DETECTIONS_TYPE)
    assert bytes(store.serialize_cdr(theirs, DETECTIONS_TYPE)) == our_bytes


# -- round trips ----------------------------------------------------------------------------
@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
@pytest.mark.parametrize("compressed", [False, True], ids=["raw", "jpeg"])
def test_round_trip(tmp_path, storage, compressed):
    frames = square_frames(5)
    summary = write_flight_bag(str(tmp_path / "bag"), frames, CLASS_NAMES, storage=storage,
                               compressed=compressed)
    assert summary.frames == 5 and summary.duration_s == pytest.approx(0.4)

    meta = yaml.safe_load((tmp_path / "bag" / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    assert meta["storage_identifier"] == storage and meta["message_count"] == 15
    assert (tmp_path / "bag" / meta["relative_file_paths"][0]).is_file()
    listed = {t["topic_metadata"]["name"]: t["topic_metadata"] for t in meta["topics_with_message_count"]}
    assert listed[summary.image_topic]["type"] == ("sensor_msgs/msg/CompressedImage" if compressed else IMAGE_TYPE)
    assert listed["/ground_truth/detections"]["type_description_hash"] == make_typestore().hash_rihs01(DETECTIONS_TYPE)

    with BagReader(str(tmp_path / "bag")) as reader:
        assert reader.image_topic() == summary.image_topic
        decoded = list(reader.iter_frames(summary.image_topic))
        truth = reader.read_detections("/ground_truth/detections")
        infos = [reader.deserialize(raw, CAMERA_INFO_TYPE)
                 for _, _, raw in reader.raw_messages([FlightTopics().camera_info])]
        assert reader.problems == []
    assert [f.index for f in decoded] == list(range(5))
    for frame, original in zip(decoded, frames):
        expected_stamp = DEFAULT_START_NS + int(round(original.stamp_s * 1e9))
        assert frame.stamp_ns == frame.log_time_ns == expected_stamp and frame.stamp_from_header
        assert frame.frame_id == "camera_optical_frame"
        if compressed:
            assert np.abs(frame.bgr.astype(int) - original.bgr).mean() < 3.0
        else:
            np.testing.assert_array_equal(frame.bgr, original.bgr)
        gt = truth[expected_stamp]
        np.testing.assert_allclose(gt.boxes, original.boxes)
        assert gt.class_ids == ["person", "vehicle"]
    assert [int(i.header.stamp.sec * 10**9 + i.header.stamp.nanosec) for i in infos] == sorted(truth)
    assert infos[0].k[0] == 300.0 and infos[0].width == SIZE and infos[0].distortion_model == "plumb_bob"


def test_bare_mcap_file_opens(tmp_path):
    write_squares_bag(tmp_path / "bag", count=2)
    (mcap,) = (tmp_path / "bag").glob("*.mcap")
    with BagReader(str(mcap)) as reader:
        assert len(list(reader.iter_frames(reader.image_topic()))) == 2


def test_bag_folder_without_metadata_reads_its_storage_file(tmp_path):
    write_squares_bag(tmp_path / "bag", count=2, storage="sqlite3")
    (tmp_path / "bag" / "metadata.yaml").unlink()
    with BagReader(str(tmp_path / "bag")) as reader:
        assert len(list(reader.iter_frames(reader.image_topic()))) == 2
        assert reader.problems == [f"bag {tmp_path / 'bag'} has no metadata.yaml; read bag.db3 directly"]


# -- bad bags -------------------------------------------------------------------------------
def test_missing_bag_path(tmp_path):
    with pytest.raises(BagError, match="does not exist"):
        BagReader(str(tmp_path / "nope"))


def test_missing_topic_names_the_topic_and_lists_what_exists(tmp_path):
    with BagReader(write_squares_bag(tmp_path / "bag", count=2)) as reader:
        with pytest.raises(BagError, match=r"no topic '/cam/left'.*/camera/image_raw \[sensor_msgs/msg/Image"):
            reader.image_topic("/cam/left")


def test_wrong_message_type_on_image_topic(tmp_path):
    with BagReader(write_squares_bag(tmp_path / "bag", count=2)) as reader:
        with pytest.raises(BagError, match="carries 'vision_msgs/msg/Detection2DArray', expected sensor_msgs"):
            reader.image_topic("/ground_truth/detections")


def test_unknown_message_type_is_named(tmp_path):
    writer = open_writer(str(tmp_path / "bag"), "mcap")
    conn = writer.add_connection("/lidar/blob", "acme_msgs/msg/Blob", msgdef="uint8[] payload\n",
                                 rihs01="RIHS01_" + "0" * 64)
    writer.write(conn, 1, b"\x00\x01\x00\x00\x00\x00\x00\x00")
    writer.close()
    with BagReader(str(tmp_path / "bag")) as reader:
        with pytest.raises(BagError, match=r"no sensor_msgs Image or CompressedImage topic.*acme_msgs/msg/Blob"):
            reader.image_topic()
        with pytest.raises(BagError, match="carries 'acme_msgs/msg/Blob'"):
            reader.iter_frames("/lidar/blob").__next__()
        with pytest.raises(BagError, match="'acme_msgs/msg/Blob' is unknown"):
            reader.deserialize(b"\x00\x01\x00\x00", "acme_msgs/msg/Blob")


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_empty_bag(tmp_path, storage):
    writer = open_writer(str(tmp_path / "bag"), storage)
    writer.add_connection("/camera/image_raw", IMAGE_TYPE, typestore=make_typestore())
    writer.close()
    with BagReader(str(tmp_path / "bag")) as reader:
        with pytest.raises(BagError, match="is empty"):
            reader.image_topic()


def test_truncated_mcap_is_salvaged_and_says_so(tmp_path):
    write_squares_bag(tmp_path / "bag", count=30)
    (mcap,) = (tmp_path / "bag").glob("*.mcap")
    data = mcap.read_bytes()
    mcap.write_bytes(data[:int(len(data) * 0.6)])
    with BagReader(str(tmp_path / "bag")) as reader:
        frames = list(reader.iter_frames("/camera/image_raw"))
        assert any("truncated or corrupt" in p and str(mcap) in p for p in reader.problems)
    assert 0 < len(frames) < 30
    assert [f.index for f in frames] == list(range(len(frames)))


def test_corrupt_sqlite_is_a_clear_error_or_partial_read(tmp_path):
    write_squares_bag(tmp_path / "bag", count=10, storage="sqlite3")
    (db,) = (tmp_path / "bag").glob("*.db3")
    data = bytearray(db.read_bytes())
    data[len(data) // 3:] = b"\xff" * (len(data) - len(data) // 3)
    db.write_bytes(bytes(data))
    try:
        with BagReader(str(tmp_path / "bag")) as reader:
            frames = list(reader.iter_frames("/camera/image_raw"))
            assert len(frames) < 10 and any("damaged" in p for p in reader.problems)
    except BagError as exc:
        assert str(tmp_path / "bag") in str(exc)


def test_truncated_sqlite_storage_is_named(tmp_path):
    write_squares_bag(tmp_path / "bag", count=4, storage="sqlite3")
    (db,) = (tmp_path / "bag").glob("*.db3")
    db.write_bytes(db.read_bytes()[:100])
    with pytest.raises(BagError, match="cannot be opened"):
        BagReader(str(tmp_path / "bag"))


def test_frames_without_timestamps_use_receive_time_and_say_so(tmp_path):
    store = make_typestore()
    writer = open_writer(str(tmp_path / "bag"), "mcap")
    conn = writer.add_connection("/camera/image_raw", IMAGE_TYPE, typestore=store)
    for i in range(3):
        header = store.types["std_msgs/msg/Header"](stamp=ns_to_stamp(store, 0), frame_id="")
        image = store.types[IMAGE_TYPE](header=header, height=4, width=4, encoding="rgb8", is_bigendian=0,
                                        step=12, data=np.full(48, i, np.uint8))
        writer.write(conn, 1_000 + i * 100, store.serialize_cdr(image, IMAGE_TYPE))
    writer.close()
    with BagReader(str(tmp_path / "bag")) as reader:
        frames = list(reader.iter_frames("/camera/image_raw"))
        assert [f.stamp_ns for f in frames] == [1_000, 1_100, 1_200]
        assert not any(f.stamp_from_header for f in frames)
        assert reader.problems == ["topic '/camera/image_raw': 3 frame(s) have no header stamp (0); "
                                   "used the bag's receive time instead"]


def test_undecodable_frames_are_skipped_and_counted(tmp_path):
    store = make_typestore()
    writer = open_writer(str(tmp_path / "bag"), "sqlite3")
    conn = writer.add_connection("/camera/image_raw", IMAGE_TYPE, typestore=store)
    for i, encoding in enumerate(["rgb8", "weird42", "weird42", "bgr8"]):
        header = store.types["std_msgs/msg/Header"](stamp=ns_to_stamp(store, 10 + i), frame_id="")
        image = store.types[IMAGE_TYPE](header=header, height=2, width=2, encoding=encoding,
                                        is_bigendian=0, step=6, data=np.zeros(12, np.uint8))
        writer.write(conn, 10 + i, store.serialize_cdr(image, IMAGE_TYPE))
    writer.close()
    with BagReader(str(tmp_path / "bag")) as reader:
        frames = list(reader.iter_frames("/camera/image_raw"))
        assert [f.stamp_ns for f in frames] == [10, 13]
        assert any("weird42" in p for p in reader.problems)
        assert any("2 frames could not be decoded" in p for p in reader.problems)


def test_writer_refuses_existing_path_and_bad_labels(tmp_path):
    write_squares_bag(tmp_path / "bag", count=1)
    with pytest.raises(BagError, match="exists already"):
        write_squares_bag(tmp_path / "bag", count=1)
    bad = square_frames(1)
    bad[0].labels = [0, 7]
    with pytest.raises(BagError, match=r"labels \[7\] outside class_names"):
        write_flight_bag(str(tmp_path / "bad"), bad, CLASS_NAMES)
    with pytest.raises(BagError, match="storage 'rosbag1'"):
        open_writer(str(tmp_path / "x"), "rosbag1")


def test_sqlite_bag_is_a_real_rosbag2_database(tmp_path):
    write_squares_bag(tmp_path / "bag", count=2, storage="sqlite3")
    (db,) = (tmp_path / "bag").glob("*.db3")
    with sqlite3.connect(str(db)) as con:
        topics = dict(con.execute("select name, type from topics").fetchall())
        count = con.execute("select count(*) from messages").fetchone()[0]
    assert topics["/ground_truth/detections"] == DETECTIONS_TYPE and count == 6
