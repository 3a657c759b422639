"""COCO JSON and YOLO-txt loaders: item format, letterbox geometry, exact augmentation, errors."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from evit_perception.evaluation.coco_metrics import evaluate_detections
from evit_perception.preprocess import letterbox
from evit_training.data.datasets import (DetectionDataset, YoloDataset, augment, collate,
                                         load_detection_dataset)

torch.set_num_threads(1)
CLASSES = ("person", "vehicle", "obstacle")
COLORS = ((0, 0, 255), (255, 0, 0), (0, 255, 255))  # one pure colour per class, BGR
# boxes xyxy in a 200x120 image, pixel-edge coordinates
BOXES = {1: [([20, 30, 50, 60], 0), ([120, 10, 180, 40], 1)], 2: [([0, 70, 40, 120], 2)], 3: []}


def _write_images(folder: Path):
    folder.mkdir(parents=True, exist_ok=True)
    for image_id, objs in BOXES.items():
        img = np.full((120, 200, 3), 90, np.uint8)
        for (x0, y0, x1, y1), lab in objs:
            img[y0:y1, x0:x1] = COLORS[lab]
        cv2.imwrite(str(folder / f"im{image_id}.png"), img)


@pytest.fixture
def coco_dir(tmp_path):
    tmp_path = tmp_path / "coco"
    _write_images(tmp_path / "images")
    doc = {"images": [{"id": i, "file_name": f"im{i}.png", "width": 200, "height": 120} for i in BOXES],
           "annotations": [], "categories": [{"id": 7 + k, "name": n} for k, n in enumerate(CLASSES)]}
    for image_id, objs in BOXES.items():
        for (x0, y0, x1, y1), lab in objs:
            doc["annotations"].append({"id": len(doc["annotations"]) + 1, "image_id": image_id,
                                       "category_id": 7 + lab, "bbox": [x0, y0, x1 - x0, y1 - y0],
                                       "area": (x1 - x0) * (y1 - y0), "iscrowd": 0})
    (tmp_path / "annotations.json").write_text(json.dumps(doc))
    return tmp_path


@pytest.fixture
def yolo_dir(tmp_path):
    tmp_path = tmp_path / "yolo"
    _write_images(tmp_path / "images")
    (tmp_path / "labels").mkdir()
    for image_id, objs in BOXES.items():
        if not objs and image_id == 3:
            continue  # no label file: a negative image
        lines = [f"{lab} {(x0 + x1) / 400} {(y0 + y1) / 240} {(x1 - x0) / 200} {(y1 - y0) / 120}"
                 for (x0, y0, x1, y1), lab in objs]
        (tmp_path / "labels" / f"im{image_id}.txt").write_text("\n".join(lines) + "\n")
    return tmp_path


def test_coco_item_is_letterboxed_like_the_node(coco_dir):
    ds = DetectionDataset(coco_dir / "annotations.json", input_size=160)
    assert len(ds) == 3 and ds.class_names == CLASSES
    image, target = ds[0]
    assert image.shape == (3, 160, 160) and image.dtype == torch.float32
    assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    bgr = cv2.imread(str(coco_dir / "images" / "im1.png"))
    expected, transform = letterbox(bgr, 160, 160, 114)
    assert np.allclose(image.numpy(), expected[..., ::-1].transpose(2, 0, 1) / 255.0, atol=1e-6)
    assert target["labels"].tolist() == [0, 1]
    src = np.array([b for b, _ in BOXES[1]], np.float32)
    assert target["boxes"].numpy() == pytest.approx(transform.to_input(src))
    assert target["image_id"] == 1 and target["orig_size"] == (120, 200)
    # the red person box really is red in the tensor (RGB order)
    x0, y0, x1, y1 = target["boxes"][0].round().int().tolist()
    patch = image[:, y0 + 1:y1 - 1, x0 + 1:x1 - 1]
    assert float(patch[0].mean()) > 0.95 and float(patch[2].mean()) < 0.05


def test_predictions_map_back_to_original_pixels(coco_dir):
    ds = DetectionDataset(coco_dir / "annotations.json", input_size=128)
    gt = ds.coco_gt()
    assert [c["name"] for c in gt["categories"]] == list(CLASSES)
    assert {a["category_id"] for a in gt["annotations"]} == {1, 2, 3}
    preds = []
    for i in range(len(ds)):
        _, target = ds[i]
        scores = torch.full((len(target["labels"]),), 0.9)
        preds += ds.to_coco_predictions(target, target["boxes"], scores, target["labels"])
    for p, a in zip(preds, gt["annotations"]):
        assert p["bbox"] == pytest.approx(a["bbox"], abs=1e-3)
    result = evaluate_detections(gt, preds)
    assert result["map50_95"] == pytest.approx(1.0)


def test_file_names_relative_to_the_json_folder(coco_dir):
    doc = json.loads((coco_dir / "annotations.json").read_text())
    for im in doc["images"]:
        im["file_name"] = "images/" + im["file_name"]
    (coco_dir / "nested.json").write_text(json.dumps(doc))
    image, target = DetectionDataset(coco_dir / "nested.json")[0]
    assert target["labels"].tolist() == [0, 1]


def test_class_names_select_and_reorder(coco_dir):
    ds = DetectionDataset(coco_dir / "annotations.json", class_names=("vehicle", "person"))
    _, target = ds[0]
    assert sorted(target["labels"].tolist()) == [0, 1]
    _, target = ds[1]
    assert target["labels"].tolist() == []  # obstacle dropped
    with pytest.raises(ValueError, match="none of the classes"):
        DetectionDataset(coco_dir / "annotations.json", class_names=("boat",))


@pytest.mark.parametrize("seed", range(6))
def test_augmentation_keeps_boxes_exact(coco_dir, seed):
    ds = DetectionDataset(coco_dir / "annotations.json", input_size=160, train=True)
    torch.manual_seed(seed)
    for i in range(len(ds)):
        image, target = ds[i]
        rgb = (image.numpy().transpose(1, 2, 0) * 255).round()
        for box, lab in zip(target["boxes"].tolist(), target["labels"].tolist()):
            x0, y0, x1, y1 = box
            assert 0 <= x0 < x1 <= 160 and 0 <= y0 < y1 <= 160
            # pixels well inside the box carry the class colour (hue survives HSV jitter) ...
            inner = rgb[int(np.ceil(y0)) + 1:int(y1) - 1, int(np.ceil(x0)) + 1:int(x1) - 1]
            if inner.size:
                r, g, b = inner.reshape(-1, 3).mean(0)
                if lab == 0:  # red person
                    assert r > max(g, b) + 50
                elif lab == 1:  # blue vehicle
                    assert b > max(r, g) + 50
                else:  # yellow obstacle
                    assert min(r, g) > b + 50
            # ... and the box edge sits on the colour boundary: a pixel ring outside is background
            ring = []
            if x0 >= 2:
                ring.append(rgb[int(y0 + 1):int(y1 - 1), int(x0) - 2])
            if x1 <= 158:
                ring.append(rgb[int(y0 + 1):int(y1 - 1), int(np.ceil(x1)) + 1])
            for col in ring:
                if len(col):
                    assert np.ptp(col, axis=1).mean() < 40  # grey (or pad), not the saturated box colour


def test_augment_drops_boxes_cut_by_the_crop():
    rng = np.random.default_rng(0)
    img = np.zeros((100, 100, 3), np.uint8)
    boxes = np.array([[0, 0, 10, 10], [45, 45, 55, 55]], np.float32)
    labels = np.array([0, 1])
    kept_corner = 0
    for _ in range(50):
        _, b, lab = augment(rng, img, boxes, labels, zoom=(1.8, 1.8))
        assert 1 in lab.tolist() or len(lab) < 2
        assert np.all(b >= 0) and np.all(b <= 100)
        kept_corner += int(0 in lab.tolist())
    assert kept_corner < 50  # the corner box is often zoomed out of view and dropped


def test_yolo_matches_coco(coco_dir, yolo_dir):
    coco = DetectionDataset(coco_dir / "annotations.json", input_size=96)
    yolo = YoloDataset(yolo_dir, CLASSES, input_size=96)
    assert len(yolo) == 3
    for i in range(3):
        (ic, tc), (iy, ty) = coco[i], yolo[i]
        assert torch.equal(ic, iy)
        assert ty["boxes"].numpy() == pytest.approx(tc["boxes"].numpy(), abs=1e-3)
        assert ty["labels"].tolist() == tc["labels"].tolist()
    g = yolo.coco_gt()
    assert np.allclose([a["bbox"] for a in g["annotations"]], [a["bbox"] for a in coco.coco_gt()["annotations"]],
                       atol=1e-3)
    listed = yolo_dir / "list.txt"
    listed.write_text("images/im2.png\nimages/im1.png\n")
    assert len(YoloDataset(listed, CLASSES)) == 2
    assert isinstance(load_detection_dataset(yolo_dir, class_names=CLASSES), YoloDataset)
    assert isinstance(load_detection_dataset(coco_dir), DetectionDataset)


def test_yolo_bad_labels_are_named(yolo_dir):
    bad = yolo_dir / "labels" / "im1.txt"
    bad.write_text("0 0.5 0.5 0.1\n")
    with pytest.raises(ValueError, match=r"im1\.txt:1: expected"):
        YoloDataset(yolo_dir, CLASSES)
    bad.write_text("0 0.5 0.5 0.1 0.1\n5 0.5 0.5 0.1 0.1\n")
    with pytest.raises(ValueError, match=r"im1\.txt:2: class 5"):
        YoloDataset(yolo_dir, CLASSES)
    bad.write_text("0 50 60 10 10\n")
    with pytest.raises(ValueError, match="normalised"):
        YoloDataset(yolo_dir, CLASSES)


def test_clear_errors(tmp_path, coco_dir):
    with pytest.raises(FileNotFoundError, match="missing.json"):
        DetectionDataset(tmp_path / "missing.json")
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ValueError, match="broken.json is not valid JSON"):
        DetectionDataset(tmp_path / "broken.json")
    (tmp_path / "other.json").write_text(json.dumps({"images": []}))
    with pytest.raises(ValueError, match="no 'annotations' list"):
        DetectionDataset(tmp_path / "other.json")
    (tmp_path / "empty.json").write_text(json.dumps({"images": [], "annotations": [],
                                                     "categories": [{"id": 1, "name": "person"}]}))
    with pytest.raises(ValueError, match="empty.json: the dataset is empty"):
        DetectionDataset(tmp_path / "empty.json")
    (tmp_path / "noimg").mkdir()
    with pytest.raises(ValueError, match="empty"):
        YoloDataset(tmp_path / "noimg", CLASSES)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        YoloDataset(tmp_path / "nowhere", CLASSES)
    ds = DetectionDataset(coco_dir / "annotations.json", images_dir=tmp_path / "noimg")
    with pytest.raises(FileNotFoundError, match="im1.png does not exist"):
        ds[0]


def test_dataloader_collates_batches(coco_dir):
    ds = DetectionDataset(coco_dir / "annotations.json", input_size=64, train=True)
    images, targets = next(iter(DataLoader(ds, batch_size=3, collate_fn=collate)))
    assert images.shape == (3, 3, 64, 64) and len(targets) == 3
    assert all(t["boxes"].shape[1:] == (4,) and t["boxes"].dtype == torch.float32 for t in targets)
    assert all(t["labels"].dtype == torch.int64 for t in targets)


def test_synthetic_dataset_round_trip(tmp_path):
    from evit_training.data.synthetic import CLASS_NAMES, generate_dataset

    paths = generate_dataset(tmp_path, 6, image_size=128, seed=2, progress=False)
    ds = DetectionDataset(paths["train"]["annotations"], input_size=96, class_names=CLASS_NAMES)
    gt = ds.coco_gt()
    assert len(gt["images"]) == len(ds) == 5 and gt["annotations"]
    preds = []
    for i in range(len(ds)):
        _, target = ds[i]
        preds += ds.to_coco_predictions(target, target["boxes"], torch.ones(len(target["boxes"])), target["labels"])
    assert evaluate_detections(gt, preds)["map50"] == pytest.approx(1.0)
