"""Detector end to end: ROS image message -> BGR -> reference ONNX model -> boxes in source pixels."""
import cv2
import numpy as np
import pytest
from sensor_msgs.msg import CompressedImage, Image
from support.reference_model import colour_square, write_reference_model

from evit_perception.backends import open_backend
from evit_perception.detector import Detector
from evit_perception.image_conversion import compressed_to_bgr, image_to_bgr
from evit_perception.model_contract import ModelContractError

RED, GREEN, BLUE = (0, 0, 255), (0, 255, 0), (255, 0, 0)
# 640x480 letterboxed to 320x320: scale 0.5, 40 rows of padding on top. The reference model's
# 32-px cells are 64x64 source pixels starting at source y = -80 + 64k, i.e. y = 48, 112, ...
PERSON_BOX = (128, 48, 192, 112)


@pytest.fixture(scope="module", params=["cxcywh_class_scores", "xyxy_score_class"])
def detector(request, tmp_path_factory):
    path = write_reference_model(str(tmp_path_factory.mktemp("m") / f"{request.param}.onnx"),
                                 layout=request.param)
    return Detector(open_backend(path, backend="onnxruntime", intra_op_num_threads=1))


@pytest.fixture(autouse=True)
def reset(detector):
    detector.score_threshold, detector.iou_threshold, detector.classes = 0.3, 0.5, None
    detector.max_detections = 100


def test_red_square_is_a_person_at_its_source_pixels(detector):
    det = detector.detect(colour_square(480, 640, PERSON_BOX, RED))
    assert len(det) == 1
    assert detector.class_names[det.class_ids[0]] == "person"
    np.testing.assert_allclose(det.boxes[0], PERSON_BOX, atol=0.01)
    assert det.scores[0] == pytest.approx(1.0, abs=0.02)


def test_each_colour_is_its_class_and_grey_is_nothing(detector):
    frame = colour_square(480, 640, PERSON_BOX, RED)
    frame[176:240, 320:384] = GREEN
    frame[304:368, 512:576] = BLUE
    det = detector.detect(frame)
    found = {detector.class_names[c]: tuple(b) for c, b in zip(det.class_ids, det.boxes.round())}
    assert found == {"person": PERSON_BOX, "vehicle": (320, 176, 384, 240),
                     "obstacle": (512, 304, 576, 368)}
    assert len(detector.detect(np.full((480, 640, 3), 128, np.uint8))) == 0


def test_class_filter_and_thresholds_at_run_time(detector):
    frame = colour_square(480, 640, PERSON_BOX, RED)
    frame[176:240, 320:352] = GREEN  # half a cell green: vehicle score about 0.5
    assert len(detector.detect(frame)) == 2
    detector.classes = ["vehicle"]
    det = detector.detect(frame)
    assert det.class_ids.tolist() == [1] and det.scores[0] == pytest.approx(0.5, abs=0.03)
    detector.classes = None
    detector.score_threshold = 0.6
    assert detector.detect(frame).class_ids.tolist() == [0]
    detector.score_threshold, detector.max_detections = 0.3, 1
    assert detector.detect(frame).class_ids.tolist() == [0]


def test_unknown_class_name_lists_the_model_classes(detector):
    with pytest.raises(ModelContractError, match=r"unknown class name\(s\) \['tank'\].*'person'"):
        detector.classes = ["person", "tank"]


def test_full_hd_frame_boxes_map_back(detector):
    # 1920x1080 -> 320x320: scale 1/6, 70 rows of padding; cell (row 3, col 5) is
    # input x 160..192, y 96..128 -> source x 960..1152, y 156..348.
    frame = colour_square(1080, 1920, (960, 156, 1152, 348), RED)
    det = detector.detect(frame)
    np.testing.assert_allclose(det.boxes, [[960, 156, 1152, 348]], atol=0.01)


def test_from_ros_image_messages(detector):
    frame = colour_square(480, 640, PERSON_BOX, RED)
    rgb = np.ascontiguousarray(frame[..., ::-1])
    msg = Image(height=480, width=640, encoding="rgb8", is_bigendian=0, step=640 * 3 + 64)
    padded = np.zeros((480, 640 * 3 + 64), np.uint8)
    padded[:, :640 * 3] = rgb.reshape(480, -1)
    msg.data = padded.tobytes()
    det = detector.detect(image_to_bgr(msg))
    np.testing.assert_allclose(det.boxes, [PERSON_BOX], atol=0.01)

    ok, png = cv2.imencode(".png", frame)
    det = detector.detect(compressed_to_bgr(CompressedImage(format="png", data=png.tobytes())))
    np.testing.assert_allclose(det.boxes, [PERSON_BOX], atol=0.01)


def test_stretch_contract_maps_boxes_per_axis(tmp_path):
    path = write_reference_model(str(tmp_path / "stretch.onnx"), input_size=(160, 320),
                                 resize="stretch")
    det = Detector(open_backend(path, backend="onnxruntime", intra_op_num_threads=1))
    # 640x480 -> 320x160: x / 2, y / 3; input cell x 64..96, y 32..64 -> source 128..192, 96..192.
    result = det.detect(colour_square(480, 640, (128, 96, 192, 192), RED))
    np.testing.assert_allclose(result.boxes, [[128, 96, 192, 192]], atol=0.01)


def test_timing_and_bad_input(detector):
    detector.detect(np.zeros((48, 64, 3), np.uint8))
    assert set(detector.last_timing) == {"preprocess_ms", "inference_ms", "postprocess_ms"}
    assert all(v >= 0 for v in detector.last_timing.values())
    with pytest.raises(ValueError, match=r"HxWx3 uint8 BGR image, got \(48, 64\) uint8"):
        detector.detect(np.zeros((48, 64), np.uint8))
    with pytest.raises(ValueError, match="float32"):
        detector.detect(np.zeros((48, 64, 3), np.float32))
