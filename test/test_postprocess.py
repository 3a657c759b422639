"""postprocess: both output layouts, thresholds, class filter, NMS and mapping to source pixels."""
import numpy as np
import pytest

from evit_perception.model_contract import ModelContract, OutputSpec
from evit_perception.postprocess import Detections, OutputShapeError, Postprocessor, box_iou, nms
from evit_perception.preprocess import ImageTransform

CLASSES = ("person", "vehicle", "obstacle")
IDENTITY = ImageTransform(1.0, 1.0, 0.0, 0.0, 1000, 1000)


def contract(layout="xyxy_score_class", transposed=False, needs_nms=True):
    return ModelContract(class_names=CLASSES,
                         output=OutputSpec(layout=layout, transposed=transposed, needs_nms=needs_nms))


def reference_nms(boxes, scores, classes, thr):
    """Textbook greedy NMS, one class at a time, written independently of the module."""
    def iou(a, b):
        w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        inter = w * h
        union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
        return inter / union if union > 0 else 0.0

    keep = []
    for c in sorted(set(classes.tolist())):
        idx = sorted((i for i in range(len(boxes)) if classes[i] == c), key=lambda i: -scores[i])
        while idx:
            best = idx.pop(0)
            keep.append(best)
            idx = [i for i in idx if iou(boxes[best], boxes[i]) <= thr]
    return sorted(keep, key=lambda i: -scores[i])


def test_nms_suppresses_same_class_overlap_only():
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [1, 0, 11, 10], [50, 50, 60, 60]], np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.6], np.float32)
    classes = np.array([0, 0, 1, 0])
    assert nms(boxes, scores, classes, 0.5).tolist() == [0, 2, 3]
    assert nms(boxes, scores, classes, 0.95).tolist() == [0, 1, 2, 3]
    assert nms(boxes, scores, classes, 0.5, max_keep=2).tolist() == [0, 2]


def test_nms_iou_equal_to_threshold_is_kept():
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 5]], np.float32)  # IoU exactly 0.5
    assert box_iou(boxes[0], boxes[1:])[0] == pytest.approx(0.5)
    assert nms(boxes, np.array([0.9, 0.8]), np.array([0, 0]), 0.5).tolist() == [0, 1]
    assert nms(boxes, np.array([0.9, 0.8]), np.array([0, 0]), 0.49).tolist() == [0]


def test_nms_matches_reference_on_random_boxes():
    rng = np.random.default_rng(7)
    xy = rng.uniform(0, 200, (300, 2))
    wh = rng.uniform(5, 60, (300, 2))
    boxes = np.concatenate([xy, xy + wh], axis=1).astype(np.float32)
    scores = rng.uniform(0, 1, 300).astype(np.float32)
    classes = rng.integers(0, 3, 300)
    for thr in (0.3, 0.5, 0.7):
        assert nms(boxes, scores, classes, thr).tolist() == reference_nms(boxes, scores, classes, thr)


def test_nms_of_nothing_is_empty():
    assert nms(np.zeros((0, 4)), np.zeros(0), np.zeros(0), 0.5).shape == (0,)


def xyxy_raw():
    rows = np.zeros((1, 8, 6), np.float32)  # zero rows are padding
    rows[0, 0] = [10, 10, 50, 50, 0.9, 0]
    rows[0, 1] = [12, 10, 52, 50, 0.8, 0]   # overlaps row 0 -> suppressed
    rows[0, 2] = [100, 100, 150, 160, 0.7, 1]
    rows[0, 3] = [300, 300, 320, 320, 0.2, 2]  # below the default threshold
    rows[0, 4] = [400, 400, 420, 420, 0.95, 7]  # class index the model does not have
    return rows


def test_xyxy_layout_threshold_nms_and_sorting():
    post = Postprocessor(contract())
    det = post(xyxy_raw(), IDENTITY)
    assert len(det) == 2
    np.testing.assert_array_equal(det.boxes, [[10, 10, 50, 50], [100, 100, 150, 160]])
    np.testing.assert_allclose(det.scores, [0.9, 0.7])
    assert det.class_ids.tolist() == [0, 1] and det.class_ids.dtype == np.int32


def test_thresholds_and_filters_change_at_run_time():
    post = Postprocessor(contract())
    post.score_threshold = 0.1
    assert sorted(post(xyxy_raw(), IDENTITY).class_ids.tolist()) == [0, 1, 2]
    post.iou_threshold = 0.99
    assert len(post(xyxy_raw(), IDENTITY)) == 4
    post.class_ids = [1, 2]
    assert sorted(post(xyxy_raw(), IDENTITY).class_ids.tolist()) == [1, 2]
    post.class_ids = None
    post.max_detections = 1
    assert post(xyxy_raw(), IDENTITY).scores.tolist() == [pytest.approx(0.9)]
    post.max_detections = 0
    assert len(post(xyxy_raw(), IDENTITY)) == 0


def test_model_side_nms_is_trusted_when_contract_says_so():
    det = Postprocessor(contract(needs_nms=False))(xyxy_raw(), IDENTITY)
    assert len(det) == 3  # the overlapping pair both stay


def cxcywh_candidates():
    """Three candidates: cx, cy, w, h, then person/vehicle/obstacle scores."""
    return np.array([[30, 30, 40, 40, 0.9, 0.1, 0.0],
                     [32, 30, 40, 40, 0.85, 0.0, 0.0],
                     [125, 130, 50, 60, 0.1, 0.2, 0.75]], np.float32)


@pytest.mark.parametrize("transposed", [False, True])
def test_cxcywh_layout_in_both_orientations(transposed):
    cand = cxcywh_candidates()
    raw = (cand.T if transposed else cand)[None]
    det = Postprocessor(contract("cxcywh_class_scores", transposed))(raw, IDENTITY)
    np.testing.assert_allclose(det.boxes, [[10, 10, 50, 50], [100, 100, 150, 160]])
    np.testing.assert_allclose(det.scores, [0.9, 0.75])
    assert det.class_ids.tolist() == [0, 2]


def test_boxes_are_mapped_back_to_source_pixels_and_clipped():
    transform = ImageTransform(0.5, 0.5, 0.0, 40.0, 640, 480)  # 640x480 letterboxed to 320
    raw = np.array([[[32, 72, 64, 104, 0.9, 0], [300, 250, 330, 290, 0.8, 1]]], np.float32)
    det = Postprocessor(contract())(raw, transform)
    np.testing.assert_allclose(det.boxes, [[64, 64, 128, 128], [600, 420, 640, 480]])


@pytest.mark.parametrize("layout,shape,needs", [
    ("xyxy_score_class", (1, 10, 7), r"needs \[batch, K, 6\]"),
    ("cxcywh_class_scores", (1, 10, 8), r"with 3 classes needs \[batch, N, 7\]"),
    ("xyxy_score_class", (1, 2, 3, 6), r"needs \[batch, rows, columns\]"),
])
def test_wrong_output_shapes_say_what_the_layout_needs(layout, shape, needs):
    with pytest.raises(OutputShapeError, match=needs):
        Postprocessor(contract(layout))(np.zeros(shape, np.float32), IDENTITY)


def test_detections_container():
    empty = Detections.empty()
    assert len(empty) == 0 and empty.boxes.shape == (0, 4) and empty.class_ids.dtype == np.int32
    with pytest.raises(ValueError, match="equal lengths"):
        Detections(np.zeros((2, 4)), np.zeros(1), np.zeros(2))
