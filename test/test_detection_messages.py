"""Detections <-> vision_msgs: the 4.x fields on the real messages, and the 3.x/2.x shim.

vision_msgs 2.x/3.x cannot be installed beside 4.x, so the shim is exercised with small
stand-ins that have exactly those versions' field names.
"""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from builtin_interfaces.msg import Time
from std_msgs.msg import Header
from vision_msgs.msg import Detection2DArray

from evit_perception import detection_messages
from evit_perception.detection_messages import (from_detection2d_array, label_info,
                                                to_detection2d_array)
from evit_perception.postprocess import Detections

NAMES = ("person", "vehicle", "obstacle")


def _detections() -> Detections:
    return Detections(boxes=np.array([[10, 20, 50, 100], [0.5, 1.5, 2.5, 9.5]], np.float32),
                      scores=np.array([0.9, 0.4], np.float32),
                      class_ids=np.array([2, 0], np.int32))


def test_vision_msgs_4x_fields_and_header():
    header = Header(stamp=Time(sec=12, nanosec=345), frame_id="cam_optical")
    msg = to_detection2d_array(_detections(), header, NAMES)
    assert isinstance(msg, Detection2DArray)
    assert msg.header.stamp.sec == 12 and msg.header.stamp.nanosec == 345
    assert msg.header.frame_id == "cam_optical"
    first = msg.detections[0]
    assert first.header.frame_id == "cam_optical"
    assert first.results[0].hypothesis.class_id == "obstacle"
    assert first.results[0].hypothesis.score == pytest.approx(0.9)
    assert (first.bbox.center.position.x, first.bbox.center.position.y) == (30.0, 60.0)
    assert (first.bbox.size_x, first.bbox.size_y) == (40.0, 80.0)
    assert msg.detections[1].results[0].hypothesis.class_id == "person"


def test_round_trip_through_serialised_bytes():
    from rclpy.serialization import deserialize_message, serialize_message

    msg = to_detection2d_array(_detections(), Header(frame_id="c"), NAMES)
    back = from_detection2d_array(deserialize_message(serialize_message(msg), Detection2DArray), NAMES)
    original = _detections()
    np.testing.assert_allclose(back.boxes, original.boxes, atol=1e-5)
    np.testing.assert_allclose(back.scores, original.scores, atol=1e-6)
    np.testing.assert_array_equal(back.class_ids, original.class_ids)


def test_empty_detections_give_an_empty_array_with_the_header():
    msg = to_detection2d_array(Detections.empty(), Header(frame_id="c"), NAMES)
    assert msg.detections == [] and msg.header.frame_id == "c"
    assert len(from_detection2d_array(msg, NAMES)) == 0


def test_unknown_class_id_is_named():
    msg = to_detection2d_array(_detections(), Header(), NAMES)
    with pytest.raises(ValueError, match="'obstacle' is not one of"):
        from_detection2d_array(msg, ("person", "vehicle"))


def test_class_index_beyond_the_names_is_written_as_a_number():
    dets = Detections(np.array([[0, 0, 1, 1]]), np.array([0.5]), np.array([7]))
    msg = to_detection2d_array(dets, Header(), NAMES)
    assert msg.detections[0].results[0].hypothesis.class_id == "7"
    assert from_detection2d_array(msg, NAMES).class_ids.tolist() == [7]


def _galactic_result():  # vision_msgs 3.x: hypothesis object, geometry_msgs/Pose2D centre
    return SimpleNamespace(hypothesis=SimpleNamespace(class_id="", score=0.0))


def _foxy_result():  # vision_msgs 2.x: id/score on the result itself
    return SimpleNamespace(id="", score=0.0)


@pytest.mark.parametrize("make_result", [_galactic_result, _foxy_result])
def test_shim_fills_and_reads_older_field_layouts(make_result):
    result = make_result()
    centre = SimpleNamespace(x=0.0, y=0.0, theta=0.0)  # geometry_msgs/Pose2D
    detection_messages._set_hypothesis(result, "vehicle", 0.75)
    detection_messages._set_center(centre, 3.0, 4.0)
    assert detection_messages._get_hypothesis(result) == ("vehicle", 0.75)
    assert detection_messages._get_center(centre) == (3.0, 4.0)
    assert (centre.x, centre.y) == (3.0, 4.0)
    if hasattr(result, "id"):
        assert (result.id, result.score) == ("vehicle", 0.75)
    else:
        assert result.hypothesis.class_id == "vehicle"


def test_label_info_maps_indices_to_names():
    msg = label_info(NAMES, Header(frame_id="c"), 0.3)
    assert [(c.class_id, c.class_name) for c in msg.class_map] == [(0, "person"), (1, "vehicle"),
                                                                  (2, "obstacle")]
    assert msg.threshold == pytest.approx(0.3)
