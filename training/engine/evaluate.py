"""COCO evaluation of a torch detector on a DetectionDataset (boxes back in source pixels)."""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn
from tqdm.auto import tqdm

from evit_perception.preprocess import ImageTransform, letterbox_transform

from evit_training.models.checkpoint import unwrap
from evit_training.models.decode import decode_detections


def _transform_for(target: Dict[str, Any], input_size: int) -> ImageTransform:
    if isinstance(target.get("transform"), ImageTransform):
        return target["transform"]
    if "orig_size" not in target:
        raise KeyError("dataset targets need 'orig_size' (h, w) or 'transform' to map boxes back")
    h, w = target["orig_size"]
    return letterbox_transform(int(h), int(w), input_size, input_size)


def _category_ids(gt: Dict[str, Any], num_classes: int) -> List[int]:
    cats = sorted(gt["categories"], key=lambda c: int(c["id"]))
    if len(cats) != num_classes:
        raise ValueError(f"dataset has {len(cats)} categories but the model predicts {num_classes} classes")
    return [int(c["id"]) for c in cats]


@torch.no_grad()
def predict_dataset(model: nn.Module, dataset, batch_size: int = 16, max_detections: int = 100,
                    score_threshold: float = 0.001, device: Optional[torch.device] = None,
                    progress: bool = True) -> List[Dict[str, Any]]:
    """COCO-style predictions ``[{"image_id", "category_id", "bbox" xywh source px, "score"}]``."""
    net = unwrap(model)
    device = device or next(net.parameters()).device
    was_training = net.training
    net.eval()
    cat_ids = _category_ids(dataset.coco_gt(), len(net.config["class_names"]))
    input_size = int(net.config["input_size"])
    preds: List[Dict[str, Any]] = []
    n = len(dataset)
    for lo in tqdm(range(0, n, batch_size), desc="evaluate", unit="batch", disable=not progress, leave=False):
        items: List[Tuple[torch.Tensor, Dict[str, Any]]] = [dataset[i] for i in range(lo, min(n, lo + batch_size))]
        images = torch.stack([torch.as_tensor(im) for im, _ in items]).to(device)
        dets = decode_detections(net(images), net.stride, max_detections).float().cpu().numpy()
        for (_, target), rows in zip(items, dets):
            rows = rows[rows[:, 4] >= score_threshold]
            boxes = _transform_for(target, input_size).to_source(rows[:, :4])
            image_id = int(target["image_id"])
            for box, score, cls in zip(boxes, rows[:, 4], rows[:, 5]):
                x1, y1, x2, y2 = (float(v) for v in box)
                if x2 <= x1 or y2 <= y1:
                    continue
                preds.append({"image_id": image_id, "category_id": cat_ids[int(cls)],
                              "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(score)})
    net.train(was_training)
    return preds


def evaluate_model(model: nn.Module, dataset, batch_size: int = 16, max_detections: int = 100,
                   device: Optional[torch.device] = None, progress: bool = True,
                   score_threshold: float = 0.3) -> Dict[str, Any]:
    """Torch inference over ``dataset`` -> ``coco_metrics.evaluate_detections`` dict
    (``map50``, ``map50_95``, per-class AP, P/R at ``score_threshold``)."""
    from evit_perception.evaluation.coco_metrics import evaluate_detections

    preds = predict_dataset(model, dataset, batch_size, max_detections, 0.001, device, progress)
    return evaluate_detections(dataset.coco_gt(), preds, score_threshold=score_threshold)


@torch.no_grad()
def teacher_agreement(student: nn.Module, teacher: nn.Module, images: torch.Tensor, threshold: float = 0.3,
                      batch_size: int = 32, max_detections: int = 100) -> Dict[str, Any]:
    """How well ``student`` copies ``teacher`` on ``images`` (N, C, H, W) in [0, 1], with no
    labels: the teacher's detections scoring above ``threshold`` are the ground truth, the
    student's detections the predictions. Returns the ``coco_metrics.evaluate_detections``
    dict (``map50`` is the agreement) plus ``teacher_objects_per_image``.

    Data-free KD can only be judged this way on its own synthetic images; on a team's
    unlabelled footage it says what the labels would."""
    from evit_perception.evaluation.coco_metrics import evaluate_detections

    nets = unwrap(teacher), unwrap(student)
    modes = [net.training for net in nets]
    for net in nets:
        net.eval()
    device = next(nets[0].parameters()).device
    names = list(nets[0].config["class_names"])
    if list(nets[1].config["class_names"]) != names:
        raise ValueError(f"student classes {list(nets[1].config['class_names'])} differ from the teacher's {names}")
    height, width = int(images.shape[-2]), int(images.shape[-1])
    gt: Dict[str, Any] = {"images": [{"id": i, "width": width, "height": height} for i in range(len(images))],
                          "categories": [{"id": c, "name": name} for c, name in enumerate(names)],
                          "annotations": []}
    preds: List[Dict[str, Any]] = []
    for lo in range(0, len(images), batch_size):
        batch = images[lo:lo + batch_size].to(device)
        rows_t, rows_s = (decode_detections(net(batch), net.stride, max_detections).float().cpu() for net in nets)
        for offset, (t, s) in enumerate(zip(rows_t, rows_s)):
            image_id = lo + offset
            # evaluate_detections fills in annotation ids, areas and iscrowd
            for x1, y1, x2, y2, _, cls in t[t[:, 4] > threshold].tolist():
                gt["annotations"].append({"image_id": image_id, "category_id": int(cls),
                                          "bbox": [x1, y1, x2 - x1, y2 - y1]})
            for x1, y1, x2, y2, score, cls in s.tolist():
                if x2 > x1 and y2 > y1:
                    preds.append({"image_id": image_id, "category_id": int(cls),
                                  "bbox": [x1, y1, x2 - x1, y2 - y1], "score": score})
    for net, mode in zip(nets, modes):
        net.train(mode)
    result = evaluate_detections(gt, preds)
    result["teacher_objects_per_image"] = len(gt["annotations"]) / max(1, len(images))
    return result
