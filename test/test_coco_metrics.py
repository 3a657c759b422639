"""COCO metrics: known answers, empty cases, both backends agree with pycocotools."""
from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest

from evit_perception.evaluation import coco_metrics
from evit_perception.evaluation.coco_metrics import evaluate_detections, plot_pr_curves

CATS = [{"id": 1, "name": "person"}, {"id": 2, "name": "vehicle"}, {"id": 3, "name": "obstacle"}]


def _gt(num_images=3, seed=0):
    rng = np.random.default_rng(seed)
    images = [{"id": i + 1, "width": 320, "height": 240, "file_name": f"{i}.jpg"} for i in range(num_images)]
    anns = []
    for im in images:
        for _ in range(int(rng.integers(1, 6))):
            x, y = rng.uniform(0, 250), rng.uniform(0, 180)
            w, h = rng.uniform(6, 60), rng.uniform(6, 50)
            anns.append({"id": len(anns) + 1, "image_id": im["id"], "category_id": int(rng.integers(1, 4)),
                         "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
    return {"images": images, "annotations": anns, "categories": CATS}


def _perfect(gt, score=0.9):
    return [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": list(a["bbox"]), "score": score}
            for a in gt["annotations"]]


def test_perfect_predictions_score_one():
    gt = _gt()
    r = evaluate_detections(gt, _perfect(gt))
    assert r["map50"] == pytest.approx(1.0)
    assert r["map50_95"] == pytest.approx(1.0)
    assert r["precision"] == pytest.approx(1.0) and r["recall"] == pytest.approx(1.0)
    present = {c["name"] for c in CATS if any(a["category_id"] == c["id"] for a in gt["annotations"])}
    for name in present:
        assert r["per_class"][name]["ap50"] == pytest.approx(1.0)
        recall, precision = r["pr_curves"][name]
        assert recall.shape == precision.shape == (101,)
        assert precision[0] == pytest.approx(1.0)


def test_iou_0_6_counts_for_three_of_ten_thresholds():
    gt = {"images": [{"id": 1, "width": 100, "height": 100}], "categories": CATS,
          "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 40, 40]}]}
    # shift right by d: IoU = (40-d)/(40+d) = 0.6 -> d = 10
    r = evaluate_detections(gt, [{"image_id": 1, "category_id": 1, "bbox": [20, 10, 40, 40], "score": 0.8}])
    assert r["map50"] == pytest.approx(1.0)
    assert r["map50_95"] == pytest.approx(0.3)
    assert r["per_class"]["vehicle"]["ap50"] == 0.0  # no ground truth: 0, not NaN


def test_empty_predictions_and_images_without_ground_truth():
    gt = _gt()
    gt["images"].append({"id": 99, "width": 320, "height": 240, "file_name": "empty.jpg"})
    r = evaluate_detections(gt, [])
    assert r["map50"] == 0.0 and r["map50_95"] == 0.0 and r["precision"] == 0.0 and r["recall"] == 0.0
    # a false positive on the empty image lowers precision, not recall
    preds = _perfect(gt) + [{"image_id": 99, "category_id": 1, "bbox": [0, 0, 20, 20], "score": 0.95}]
    r = evaluate_detections(gt, preds)
    n = len(gt["annotations"])
    assert r["recall"] == pytest.approx(1.0)
    assert r["precision"] == pytest.approx(n / (n + 1))
    assert r["map50"] < 1.0


def test_no_ground_truth_at_all_is_zero_not_crash():
    gt = {"images": [{"id": 1, "width": 64, "height": 64}], "annotations": [], "categories": CATS}
    r = evaluate_detections(gt, [{"image_id": 1, "category_id": 2, "bbox": [1, 1, 5, 5], "score": 0.5}])
    assert r["map50"] == 0.0 and r["recall"] == 0.0 and r["num_gt"] == 0


def test_score_threshold_selects_operating_point():
    gt = _gt(seed=3)
    preds = _perfect(gt, score=0.2)
    assert evaluate_detections(gt, preds, score_threshold=0.3)["recall"] == 0.0
    assert evaluate_detections(gt, preds, score_threshold=0.1)["recall"] == pytest.approx(1.0)


def _noisy_predictions(gt, seed=1):
    rng = np.random.default_rng(seed)
    preds = []
    for a in gt["annotations"]:
        if rng.random() < 0.8:
            x, y, w, h = a["bbox"]
            j = rng.normal(0, 0.12, 4) * [w, h, w, h]
            preds.append({"image_id": a["image_id"], "category_id": a["category_id"] if rng.random() < 0.9 else 1,
                          "bbox": [x + j[0], y + j[1], max(w + j[2], 1), max(h + j[3], 1)],
                          "score": float(rng.uniform(0.05, 1.0))})
    for im in gt["images"]:
        for _ in range(3):
            preds.append({"image_id": im["id"], "category_id": int(rng.integers(1, 4)),
                          "bbox": [float(rng.uniform(0, 280)), float(rng.uniform(0, 200)), 20.0, 20.0],
                          "score": float(rng.uniform(0, 0.7))})
    return preds


def test_matches_pycocotools_reference():
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt = _gt(num_images=12, seed=5)
    preds = _noisy_predictions(gt)
    ours = evaluate_detections(gt, preds)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes([dict(p) for p in preds])
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    assert 0.1 < ours["map50"] < 0.99  # a non-trivial case
    assert ours["map50_95"] == pytest.approx(ev.stats[0], abs=1e-3)
    assert ours["map50"] == pytest.approx(ev.stats[1], abs=1e-3)


def test_pycocotools_fallback_gives_same_numbers(monkeypatch):
    gt = _gt(num_images=10, seed=7)
    preds = _noisy_predictions(gt, seed=2)
    fast = evaluate_detections(gt, preds, score_threshold=0.4)

    def pycoco_backend():
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
        return COCO, COCOeval, "pycocotools"

    monkeypatch.setattr(coco_metrics, "_backend", pycoco_backend)
    slow = evaluate_detections(gt, preds, score_threshold=0.4)
    assert slow["backend"] == "pycocotools" and fast["backend"] == "faster-coco-eval"
    for key in ("map50", "map50_95", "precision", "recall"):
        assert slow[key] == pytest.approx(fast[key], abs=1e-3), key


def test_bad_input_is_named():
    gt = _gt()
    with pytest.raises(ValueError, match="image_id 12345"):
        evaluate_detections(gt, [{"image_id": 12345, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 1.0}])
    with pytest.raises(ValueError, match="category_id 9"):
        evaluate_detections(gt, [{"image_id": 1, "category_id": 9, "bbox": [0, 0, 1, 1], "score": 1.0}])
    with pytest.raises(ValueError, match="prediction 0 is malformed"):
        evaluate_detections(gt, [{"image_id": 1, "category_id": 1, "score": 1.0}])
    with pytest.raises(ValueError, match="'categories'"):
        evaluate_detections({"images": [], "annotations": []}, [])


def test_plot_pr_curves_writes_png(tmp_path):
    gt = _gt(num_images=6, seed=9)
    r = evaluate_detections(gt, _noisy_predictions(gt))
    path = plot_pr_curves(r, str(tmp_path / "pr.png"))
    with open(path, "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
