"""Detection datasets for training and evaluation: COCO JSON and YOLO-txt.

Every item is ``(image, target)``: ``image`` a float32 tensor ``3xSxS`` RGB in [0, 1] (the
model normalises inside itself), letterboxed with :func:`evit_perception.preprocess.letterbox`
so training sees exactly the geometry the node feeds the model; ``target`` a dict with
``boxes`` (FloatTensor ``(n, 4)`` xyxy input pixels), ``labels`` (LongTensor ``(n,)``,
0-based into ``class_names``), ``image_id`` (int), ``orig_size`` ``(h, w)`` and
``transform`` (the :class:`~evit_perception.preprocess.ImageTransform` of the letterbox; with
``train=False`` it maps predictions back to the original image).

Train-time augmentation (``train=True``): random zoom in/out with a random crop, horizontal
flip (vertical flip optional, for nadir-only data), HSV/exposure jitter. Boxes stay exact:
they are transformed with the image, clipped, and dropped when less than 30 % of the box
stays inside the crop or a side falls under 2 input pixels.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from evit_perception.preprocess import ImageTransform, letterbox

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
PAD_VALUE = 114
#: Boxes keeping less than this fraction of their area after a crop are dropped.
MIN_KEPT_AREA = 0.3
MIN_BOX_SIDE = 2.0

PathLike = Union[str, os.PathLike]


@dataclass
class ImageRecord:
    """One image of a dataset: where it is and its ground truth in original pixels."""

    image_id: int
    path: Path
    width: Optional[int]
    height: Optional[int]
    boxes: np.ndarray  # (n, 4) float32 xyxy
    labels: np.ndarray  # (n,) int64
    #: True while ``boxes`` are still normalised to [0, 1] (YOLO); pixels once the size is known.
    normalized: bool = False


class BaseDetectionDataset(Dataset):
    """Shared item pipeline: read, augment, letterbox, to tensors. Subclasses fill ``records``."""

    def __init__(self, records: List[ImageRecord], class_names: Sequence[str], input_size: int,
                 train: bool, source: str, vertical_flip: bool = False) -> None:
        if not records:
            raise ValueError(f"{source}: the dataset is empty (no images)")
        if int(input_size) < 16:
            raise ValueError(f"input_size must be at least 16, got {input_size}")
        self.records = records
        self.class_names = tuple(str(c) for c in class_names)
        self.input_size = int(input_size)
        self.train = bool(train)
        self.vertical_flip = bool(vertical_flip)
        self.source = source

    def __len__(self) -> int:
        return len(self.records)

    # -- reading -----------------------------------------------------------------------------
    def load_image(self, index: int) -> np.ndarray:
        """The original BGR image of item ``index``; a clear error if it cannot be read."""
        rec = self.records[index]
        bgr = cv2.imread(str(rec.path), cv2.IMREAD_COLOR)
        if bgr is None:
            if not rec.path.exists():
                raise FileNotFoundError(f"{self.source}: image file {rec.path} does not exist")
            raise ValueError(f"{self.source}: image file {rec.path} could not be decoded")
        return bgr

    def image_size(self, index: int) -> Tuple[int, int]:
        """``(height, width)`` of the original image (read from disk when the index lacks it)."""
        rec = self.records[index]
        if rec.width is None or rec.height is None:
            h, w = self.load_image(index).shape[:2]
            self._set_size(rec, w, h)
        return int(rec.height), int(rec.width)

    @staticmethod
    def _set_size(rec: ImageRecord, w: int, h: int) -> None:
        rec.width, rec.height = int(w), int(h)
        if rec.normalized:
            b = rec.boxes.astype(np.float32) * np.array([w, h, w, h], np.float32)
            np.clip(b[:, 0::2], 0, w, out=b[:, 0::2])
            np.clip(b[:, 1::2], 0, h, out=b[:, 1::2])
            keep = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
            rec.boxes, rec.labels, rec.normalized = b[keep], rec.labels[keep], False

    def __getitem__(self, index: int):
        rec = self.records[index]
        bgr = self.load_image(index)
        h, w = bgr.shape[:2]
        self._set_size(rec, w, h)
        boxes = rec.boxes.astype(np.float32).copy()
        labels = rec.labels.copy()
        if self.train:
            seed = int(torch.randint(0, 2 ** 31 - 1, ()).item())  # follows torch seeding/workers
            bgr, boxes, labels = augment(np.random.default_rng(seed), bgr, boxes, labels,
                                         vertical_flip=self.vertical_flip)
        canvas, transform = letterbox(bgr, self.input_size, self.input_size, PAD_VALUE)
        boxes_in = transform.to_input(boxes)
        s = float(self.input_size)
        boxes_in = np.clip(boxes_in, 0.0, s)
        # augmentation may shrink boxes below the minimum; evaluation keeps every non-empty box
        min_side = MIN_BOX_SIDE if self.train else 1e-6
        keep = ((boxes_in[:, 2] - boxes_in[:, 0]) >= min_side) & ((boxes_in[:, 3] - boxes_in[:, 1]) >= min_side)
        rgb = np.ascontiguousarray(canvas[..., ::-1].transpose(2, 0, 1))
        image = torch.from_numpy(rgb).float().div_(255.0)
        target = {"boxes": torch.from_numpy(boxes_in[keep].astype(np.float32)).reshape(-1, 4),
                  "labels": torch.from_numpy(labels[keep].astype(np.int64)),
                  "image_id": int(rec.image_id), "orig_size": (int(rec.height), int(rec.width)),
                  "transform": transform}
        return image, target

    # -- evaluation --------------------------------------------------------------------------
    def coco_gt(self) -> dict:
        """COCO ground-truth dict in ORIGINAL image pixels; category ids ``1..C`` in class order."""
        images, annotations = [], []
        for i, rec in enumerate(self.records):
            h, w = self.image_size(i)
            images.append({"id": int(rec.image_id), "width": w, "height": h, "file_name": rec.path.name})
            for box, label in zip(rec.boxes.tolist(), rec.labels.tolist()):
                bw, bh = box[2] - box[0], box[3] - box[1]
                annotations.append({"id": len(annotations) + 1, "image_id": int(rec.image_id),
                                    "category_id": int(label) + 1, "bbox": [box[0], box[1], bw, bh],
                                    "area": bw * bh, "iscrowd": 0})
        categories = [{"id": i + 1, "name": n} for i, n in enumerate(self.class_names)]
        return {"images": images, "annotations": annotations, "categories": categories}

    def to_coco_predictions(self, target: dict, boxes: np.ndarray, scores: np.ndarray,
                            labels: np.ndarray) -> List[dict]:
        """Model outputs for one item (xyxy INPUT pixels, 0-based labels) -> COCO predictions
        in original pixels, matching :meth:`coco_gt` (use with ``train=False`` items)."""
        return predictions_to_coco(target["transform"], int(target["image_id"]), boxes, scores, labels)


def predictions_to_coco(transform: ImageTransform, image_id: int, boxes: np.ndarray, scores: np.ndarray,
                        labels: np.ndarray) -> List[dict]:
    """Boxes xyxy in input pixels -> ``[{"image_id", "category_id" (label + 1), "bbox" xywh, "score"}]``
    in source pixels (via the letterbox transform, clipped to the image)."""
    boxes = _to_numpy(boxes).reshape(-1, 4)
    src = transform.to_source(boxes)
    out = []
    for box, score, label in zip(src.tolist(), _to_numpy(scores).reshape(-1).tolist(),
                                 _to_numpy(labels).reshape(-1).tolist()):
        out.append({"image_id": int(image_id), "category_id": int(label) + 1,
                    "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]], "score": float(score)})
    return out


def _to_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def collate(batch):
    """``[(image, target)] -> (images (B, 3, S, S), [target, ...])``."""
    images = torch.stack([item[0] for item in batch], dim=0)
    return images, [item[1] for item in batch]


# -- augmentation --------------------------------------------------------------------------------

def augment(rng: np.random.Generator, bgr: np.ndarray, boxes: np.ndarray, labels: np.ndarray,
            zoom: Tuple[float, float] = (0.7, 1.5), vertical_flip: bool = False
            ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random zoom and crop (same output size), flips and HSV jitter, boxes kept exact."""
    h, w = bgr.shape[:2]
    z = float(math.exp(rng.uniform(math.log(zoom[0]), math.log(zoom[1]))))
    win_w, win_h = w / z, h / z
    x0 = rng.uniform(min(0.0, w - win_w), max(0.0, w - win_w))
    y0 = rng.uniform(min(0.0, h - win_h), max(0.0, h - win_h))
    flip_x = rng.random() < 0.5
    flip_y = vertical_flip and rng.random() < 0.5
    sx = -z if flip_x else z
    sy = -z if flip_y else z
    tx = (w + x0 * z) if flip_x else -x0 * z
    ty = (h + y0 * z) if flip_y else -y0 * z
    m = np.array([[sx, 0.0, tx], [0.0, sy, ty]], np.float64)
    out = cv2.warpAffine(bgr, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                         borderValue=(PAD_VALUE,) * 3)
    if len(boxes):
        xs = boxes[:, [0, 2]] * sx + tx
        ys = boxes[:, [1, 3]] * sy + ty
        nb = np.stack([xs.min(1), ys.min(1), xs.max(1), ys.max(1)], axis=1)
        area = (nb[:, 2] - nb[:, 0]) * (nb[:, 3] - nb[:, 1])
        clipped = nb.copy()
        np.clip(clipped[:, 0::2], 0, w, out=clipped[:, 0::2])
        np.clip(clipped[:, 1::2], 0, h, out=clipped[:, 1::2])
        carea = (clipped[:, 2] - clipped[:, 0]) * (clipped[:, 3] - clipped[:, 1])
        keep = (carea >= MIN_KEPT_AREA * np.maximum(area, 1e-9)) & (clipped[:, 2] - clipped[:, 0] > 0) \
            & (clipped[:, 3] - clipped[:, 1] > 0)
        boxes, labels = clipped[keep].astype(np.float32), labels[keep]
    return hsv_jitter(rng, out), boxes, labels


def hsv_jitter(rng: np.random.Generator, bgr: np.ndarray, hue: float = 6.0, saturation: float = 0.35,
               value: float = 0.35) -> np.ndarray:
    """Random hue shift (OpenCV units), saturation and value (exposure) gains, via lookup tables."""
    hsv = cv2.cvtColor(bgr, cv2.COLOR_BGR2HSV)
    x = np.arange(256, dtype=np.float32)
    lut_h = ((x + rng.uniform(-hue, hue)) % 180).astype(np.uint8)
    lut_s = np.clip(x * rng.uniform(1 - saturation, 1 + saturation), 0, 255).astype(np.uint8)
    lut_v = np.clip(x * rng.uniform(1 - value, 1 + value), 0, 255).astype(np.uint8)
    hsv = cv2.merge([cv2.LUT(hsv[..., 0], lut_h), cv2.LUT(hsv[..., 1], lut_s), cv2.LUT(hsv[..., 2], lut_v)])
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)


# -- COCO JSON -----------------------------------------------------------------------------------

def _read_json(path: Path) -> dict:
    if not path.exists():
        raise FileNotFoundError(f"annotation file {path} does not exist")
    if path.is_dir():
        raise ValueError(f"annotation path {path} is a directory; expected a COCO JSON file")
    try:
        with open(path) as fh:
            doc = json.load(fh)
    except ValueError as exc:
        raise ValueError(f"annotation file {path} is not valid JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise ValueError(f"annotation file {path} must hold a JSON object (COCO dataset dict)")
    for key in ("images", "annotations", "categories"):
        if not isinstance(doc.get(key), list):
            raise ValueError(f"annotation file {path} is not COCO: it has no '{key}' list")
    return doc


class DetectionDataset(BaseDetectionDataset):
    """A COCO JSON detection dataset (boxes only; crowd annotations ignored).

    ``images_dir`` defaults to ``<json folder>/images`` (or the JSON's folder itself when the
    file names already start with their folder). ``class_names`` selects and orders
    categories by name (others are dropped); by default all categories in id order.
    """

    def __init__(self, annotations: PathLike, images_dir: Optional[PathLike] = None, input_size: int = 320,
                 train: bool = False, class_names: Optional[Sequence[str]] = None,
                 vertical_flip: bool = False) -> None:
        ann_path = Path(annotations)
        doc = _read_json(ann_path)
        images_root = Path(images_dir) if images_dir is not None else ann_path.parent / "images"
        first = str(doc["images"][0].get("file_name", "")) if doc["images"] else ""
        if images_dir is None and first and not (images_root / first).exists() and (ann_path.parent / first).exists():
            images_root = ann_path.parent  # file_name already holds the folder ("images/x.jpg")
        cats = sorted(doc["categories"], key=lambda c: int(c["id"]))
        if class_names is None:
            class_names = [str(c["name"]) for c in cats]
            if not class_names:
                raise ValueError(f"annotation file {ann_path} has no categories")
        class_names = tuple(class_names)
        by_name = {n: i for i, n in enumerate(class_names)}
        cat_to_label = {int(c["id"]): by_name[str(c["name"])] for c in cats if str(c["name"]) in by_name}
        missing = [n for n in class_names if n not in {str(c["name"]) for c in cats}]
        if len(missing) == len(class_names):
            raise ValueError(f"annotation file {ann_path}: none of the classes {list(class_names)} is among its "
                             f"categories {[c['name'] for c in cats]}")
        per_image: Dict[int, List[Tuple[List[float], int]]] = {}
        for k, a in enumerate(doc["annotations"]):
            if a.get("iscrowd", 0):
                continue
            try:
                cat = int(a["category_id"])
                x, y, bw, bh = (float(v) for v in a["bbox"])
                image_id = int(a["image_id"])
            except (KeyError, TypeError, ValueError):
                raise ValueError(f"annotation file {ann_path}: annotation #{k} lacks a valid image_id, "
                                 f"category_id or bbox [x, y, w, h]") from None
            if cat not in cat_to_label or bw <= 0 or bh <= 0:
                continue
            per_image.setdefault(image_id, []).append(([x, y, x + bw, y + bh], cat_to_label[cat]))
        records = []
        for k, im in enumerate(doc["images"]):
            try:
                image_id, name = int(im["id"]), str(im["file_name"])
            except (KeyError, TypeError, ValueError):
                raise ValueError(f"annotation file {ann_path}: image #{k} lacks 'id' or 'file_name'") from None
            anns = per_image.get(image_id, [])
            boxes = np.asarray([b for b, _ in anns], np.float32).reshape(-1, 4)
            w, h = im.get("width"), im.get("height")
            labels = np.asarray([lab for _, lab in anns], np.int64)
            if w is not None and h is not None:  # boxes reaching past the image are clipped to it
                np.clip(boxes[:, 0::2], 0, float(w), out=boxes[:, 0::2])
                np.clip(boxes[:, 1::2], 0, float(h), out=boxes[:, 1::2])
                inside = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
                boxes, labels = boxes[inside], labels[inside]
            records.append(ImageRecord(image_id, images_root / name, None if w is None else int(w),
                                       None if h is None else int(h), boxes, labels))
        super().__init__(records, class_names, input_size, train, str(ann_path), vertical_flip)
        self.annotations_path = ann_path
        self.images_dir = images_root


# -- YOLO txt ------------------------------------------------------------------------------------

def _label_path_for(image: Path) -> Path:
    parts = list(image.parts)
    for i in range(len(parts) - 1, -1, -1):  # YOLO convention: .../images/... -> .../labels/...
        if parts[i] == "images":
            parts[i] = "labels"
            return Path(*parts).with_suffix(".txt")
    return image.with_suffix(".txt")


def _list_images(root_or_list: Union[PathLike, Sequence[PathLike]]) -> Tuple[List[Path], str]:
    if isinstance(root_or_list, (list, tuple)):
        return [Path(p) for p in root_or_list], "image list"
    root = Path(root_or_list)
    if not root.exists():
        raise FileNotFoundError(f"YOLO dataset path {root} does not exist")
    if root.is_file():
        if root.suffix.lower() != ".txt":
            raise ValueError(f"YOLO dataset path {root} must be a folder or a .txt list of image paths")
        lines = [ln.strip() for ln in root.read_text().splitlines() if ln.strip()]
        return [(root.parent / ln) if not Path(ln).is_absolute() else Path(ln) for ln in lines], str(root)
    folder = root / "images" if (root / "images").is_dir() else root
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES), str(root)


class YoloDataset(BaseDetectionDataset):
    """A YOLO-txt dataset: one ``<class> <cx> <cy> <w> <h>`` line per box (normalised to [0, 1]).

    ``root_or_list``: a folder with ``images/`` and ``labels/`` (labels found by swapping
    ``images`` for ``labels`` in each path, else next to the image), a folder of images, a
    ``.txt`` list of image paths, or a list of paths. Images without a label file are
    negatives. Image ids are ``1..N`` in sorted path order.
    """

    def __init__(self, root_or_list: Union[PathLike, Sequence[PathLike]], class_names: Sequence[str],
                 input_size: int = 320, train: bool = False, vertical_flip: bool = False) -> None:
        if not class_names:
            raise ValueError("YoloDataset needs class_names (the names of class indices 0..C-1)")
        images, source = _list_images(root_or_list)
        records = []
        for k, img in enumerate(images):
            label_file = _label_path_for(img)
            boxes, labels = self._read_labels(label_file, len(class_names))
            records.append(ImageRecord(k + 1, img, None, None, boxes, labels, normalized=True))
        super().__init__(records, class_names, input_size, train, source, vertical_flip)

    @staticmethod
    def _read_labels(path: Path, num_classes: int) -> Tuple[np.ndarray, np.ndarray]:
        if not path.exists():
            return np.zeros((0, 4), np.float32), np.zeros((0,), np.int64)
        rows = []
        for n, line in enumerate(path.read_text().splitlines(), start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) < 5:
                raise ValueError(f"{path}:{n}: expected '<class> <cx> <cy> <w> <h>', got {line.strip()!r}")
            try:
                cls = int(float(fields[0]))
                cx, cy, bw, bh = (float(v) for v in fields[1:5])
            except ValueError:
                raise ValueError(f"{path}:{n}: non-numeric value in {line.strip()!r}") from None
            if not 0 <= cls < num_classes:
                raise ValueError(f"{path}:{n}: class {cls} is outside 0..{num_classes - 1}")
            if min(cx, cy, bw, bh) < 0 or max(cx, cy) > 1.0 + 1e-6 or max(bw, bh) > 1.0 + 1e-6:
                raise ValueError(f"{path}:{n}: box values must be normalised to [0, 1], got {line.strip()!r}")
            rows.append((cls, cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2))
        arr = np.asarray(rows, np.float64).reshape(-1, 5)
        return arr[:, 1:].astype(np.float32), arr[:, 0].astype(np.int64)


def load_detection_dataset(path: PathLike, input_size: int = 320, train: bool = False,
                           class_names: Optional[Sequence[str]] = None, images_dir: Optional[PathLike] = None
                           ) -> BaseDetectionDataset:
    """COCO if ``path`` is a ``.json`` file, else YOLO (folder or ``.txt`` list; needs ``class_names``)."""
    p = Path(path)
    if p.suffix.lower() == ".json":
        return DetectionDataset(p, images_dir, input_size, train, class_names)
    if p.is_dir() and (p / "annotations.json").exists():
        return DetectionDataset(p / "annotations.json", images_dir, input_size, train, class_names)
    if class_names is None:
        raise ValueError(f"{p}: YOLO datasets need class_names (COCO JSON carries its own)")
    return YoloDataset(p, class_names, input_size, train)
