"""COCO box metrics: mAP@0.5, mAP@0.5:0.95, per-class AP, P/R at a score threshold, PR curves.

Built on faster-coco-eval (pycocotools when faster-coco-eval is not importable); this module
only prepares inputs and reads the accumulated arrays. Torch-free, Python 3.8+.
"""
from __future__ import annotations

import contextlib
import copy
import io
from typing import Any, Dict, List, Mapping, Sequence, Tuple

import numpy as np

#: Recall grid of the PR curves (COCO's 101 points).
RECALL_POINTS = np.linspace(0.0, 1.0, 101)


def _backend():
    """(COCO class, COCOeval class, backend name)."""
    try:
        from faster_coco_eval import COCO, COCOeval_faster
        return COCO, COCOeval_faster, "faster-coco-eval"
    except ImportError:  # pragma: no cover - depends on the installation
        pass
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError:
        raise ImportError("COCO metrics need faster-coco-eval (pip install faster-coco-eval) "
                          "or pycocotools (pip install pycocotools); neither is installed") from None
    return COCO, COCOeval, "pycocotools"


def _validate_gt(gt: Mapping[str, Any]) -> None:
    if not isinstance(gt, Mapping):
        raise TypeError(f"gt must be a COCO dataset dict, got {type(gt).__name__}")
    for key in ("images", "annotations", "categories"):
        if key not in gt:
            raise ValueError(f"COCO ground truth has no '{key}' list")
    if not gt["categories"]:
        raise ValueError("COCO ground truth has no categories")


def _clean_predictions(gt: Mapping[str, Any], predictions: Sequence[Mapping[str, Any]]) -> List[dict]:
    image_ids = {int(im["id"]) for im in gt["images"]}
    cat_ids = {int(c["id"]) for c in gt["categories"]}
    out = []
    for i, p in enumerate(predictions):
        try:
            image_id, cat_id = int(p["image_id"]), int(p["category_id"])
            x, y, w, h = (float(v) for v in p["bbox"])
            score = float(p["score"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"prediction {i} is malformed ({exc!r}); expected image_id, category_id, "
                             f"bbox [x, y, w, h] and score") from None
        if image_id not in image_ids:
            raise ValueError(f"prediction {i} refers to image_id {image_id}, which is not in the ground truth")
        if cat_id not in cat_ids:
            raise ValueError(f"prediction {i} has category_id {cat_id}, not one of {sorted(cat_ids)}")
        out.append({"id": len(out) + 1, "image_id": image_id, "category_id": cat_id,
                    "bbox": [x, y, max(w, 0.0), max(h, 0.0)], "score": score,
                    "area": max(w, 0.0) * max(h, 0.0), "iscrowd": 0})
    return out


def _prepared_gt(gt: Mapping[str, Any]) -> dict:
    doc = {"images": [dict(im) for im in gt["images"]], "categories": [dict(c) for c in gt["categories"]],
           "annotations": []}
    for i, a in enumerate(gt["annotations"]):
        a = dict(a)
        a.setdefault("id", i + 1)
        a.setdefault("iscrowd", 0)
        if "area" not in a:
            a["area"] = float(a["bbox"][2]) * float(a["bbox"][3])
        doc["annotations"].append(a)
    doc["info"] = dict(gt.get("info", {}))
    return doc


def _coco_pair(COCO, gt_doc: dict, dets: List[dict]):
    """Indexed ground-truth and detection COCO objects (copies: the libraries mutate them)."""
    coco_gt = COCO()
    coco_gt.dataset = copy.deepcopy(gt_doc)
    coco_gt.createIndex()
    coco_dt = COCO()
    coco_dt.dataset = {"images": gt_doc["images"], "categories": gt_doc["categories"],
                       "annotations": copy.deepcopy(dets)}
    coco_dt.createIndex()
    return coco_gt, coco_dt


def _run_eval(COCO, COCOeval, gt_doc: dict, dets: List[dict], iou_thrs=None, max_dets=None):
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt, coco_dt = _coco_pair(COCO, gt_doc, dets)
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        if iou_thrs is not None:
            ev.params.iouThrs = np.asarray(iou_thrs, dtype=np.float64)
        if max_dets is not None:
            ev.params.maxDets = list(max_dets)
        ev.evaluate()
        ev.accumulate()
    return ev


def _mean_valid(values: np.ndarray) -> float:
    values = values[values > -1]
    return float(values.mean()) if values.size else 0.0


def _matches_at_threshold(ev, backend: str, score_threshold: float) -> Tuple[int, int]:
    """(true positives, detections) among detections scoring >= threshold, IoU 0.5."""
    if backend == "faster-coco-eval":
        matched = ev.eval.get("matched", {})
        tp_ids = {int(k.split("_", 1)[0]) for k in matched}
        n_tp = n_det = 0
        for dt_id, ann in ev.cocoDt.anns.items():
            if ann["score"] >= score_threshold:
                n_det += 1
                n_tp += int(int(dt_id) in tp_ids)
        return n_tp, n_det
    n_tp = n_det = 0  # pycocotools: per image and class records, area "all" only
    all_area = list(ev.params.areaRng[0])
    for rec in ev.evalImgs:
        if rec is None or list(rec["aRng"]) != all_area:
            continue
        scores = np.asarray(rec["dtScores"])
        keep = (scores >= score_threshold) & ~np.asarray(rec["dtIgnore"][0], bool)
        n_det += int(keep.sum())
        n_tp += int(((np.asarray(rec["dtMatches"][0]) > 0) & keep).sum())
    return n_tp, n_det


def evaluate_detections(gt: Mapping[str, Any], predictions: Sequence[Mapping[str, Any]],
                        score_threshold: float = 0.3) -> Dict[str, Any]:
    """COCO box evaluation of ``predictions`` against the COCO dataset dict ``gt``.

    ``predictions``: ``[{"image_id", "category_id", "bbox": [x, y, w, h], "score"}]`` in the
    ground truth's image coordinates. Returns ``{"map50", "map50_95", "per_class": {name:
    {"ap50", "ap50_95"}}, "precision", "recall", "pr_curves": {name: (recall, precision)},
    "num_images", "num_gt", "num_predictions", "score_threshold", "backend"}``; precision and
    recall are at IoU 0.5 over all classes for detections scoring ``>= score_threshold``.
    Classes without ground truth score AP 0 here (never NaN); no predictions give mAP 0.
    """
    _validate_gt(gt)
    COCO, COCOeval, backend = _backend()
    gt_doc = _prepared_gt(gt)
    dets = _clean_predictions(gt, predictions)
    categories = sorted(gt_doc["categories"], key=lambda c: int(c["id"]))
    names = [str(c["name"]) for c in categories]
    num_gt = sum(1 for a in gt_doc["annotations"] if not a.get("iscrowd", 0))
    result: Dict[str, Any] = {
        "map50": 0.0, "map50_95": 0.0,
        "per_class": {n: {"ap50": 0.0, "ap50_95": 0.0} for n in names},
        "precision": 0.0, "recall": 0.0,
        "pr_curves": {n: (RECALL_POINTS.copy(), np.zeros_like(RECALL_POINTS)) for n in names},
        "num_images": len(gt_doc["images"]), "num_gt": num_gt, "num_predictions": len(dets),
        "score_threshold": float(score_threshold), "backend": backend,
    }
    if not dets or not gt_doc["images"] or num_gt == 0:
        return result  # nothing can match: every AP is 0

    ev = _run_eval(COCO, COCOeval, gt_doc, dets)
    prec = np.asarray(ev.eval["precision"])  # [T, R, K, A, M], -1 where no ground truth
    iou_thrs = np.asarray(ev.params.iouThrs)
    t50 = int(np.argmin(np.abs(iou_thrs - 0.5)))
    cat_order = [int(c) for c in ev.params.catIds]
    ap50s, ap_all = [], []
    for k, cat_id in enumerate(cat_order):
        name = names[[int(c["id"]) for c in categories].index(cat_id)]
        p50 = prec[t50, :, k, 0, -1]
        has_gt = bool(np.any(p50 > -1))
        ap50 = _mean_valid(p50)
        ap = float(np.mean([_mean_valid(prec[t, :, k, 0, -1]) for t in range(prec.shape[0])]))
        result["per_class"][name] = {"ap50": ap50, "ap50_95": ap}
        result["pr_curves"][name] = (RECALL_POINTS.copy(), np.clip(p50, 0.0, 1.0))
        if has_gt:  # COCO averages over classes that have ground truth
            ap50s.append(ap50)
            ap_all.append(ap)
    result["map50"] = float(np.mean(ap50s)) if ap50s else 0.0
    result["map50_95"] = float(np.mean(ap_all)) if ap_all else 0.0

    # P/R at the operating threshold: greedy matching at IoU 0.5 without a per-image cap
    max_det = max(100, max(np.unique([d["image_id"] for d in dets], return_counts=True)[1]))
    if backend == "faster-coco-eval":
        ev50 = _run_eval_extra(gt_doc, dets, int(max_det))
    else:
        ev50 = _run_eval(COCO, COCOeval, gt_doc, dets, iou_thrs=[0.5], max_dets=[int(max_det)])
    n_tp, n_det = _matches_at_threshold(ev50, backend, float(score_threshold))
    result["precision"] = float(n_tp / n_det) if n_det else 0.0
    result["recall"] = float(n_tp / num_gt) if num_gt else 0.0
    return result


def _run_eval_extra(gt_doc: dict, dets: List[dict], max_det: int):
    from faster_coco_eval import COCO, COCOeval_faster

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt, coco_dt = _coco_pair(COCO, gt_doc, dets)
        ev = COCOeval_faster(coco_gt, coco_dt, "bbox", extra_calc=True, print_function=lambda *a, **k: None)
        ev.params.iouThrs = np.asarray([0.5])
        ev.params.maxDets = [max_det]
        ev.params.areaRng = [ev.params.areaRng[0]]
        ev.params.areaRngLbl = [ev.params.areaRngLbl[0]]
        ev.evaluate()
        ev.accumulate()
    return ev


def plot_pr_curves(result: Mapping[str, Any], path: str) -> str:
    """Write the per-class precision-recall curves (IoU 0.5) of ``result`` as a PNG; returns ``path``."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4.5), dpi=120)
    for name, (recall, precision) in result["pr_curves"].items():
        ap = result["per_class"].get(name, {}).get("ap50", 0.0)
        ax.plot(np.asarray(recall), np.asarray(precision), label=f"{name} (AP50 {ap:.3f})")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.set_title(f"PR @ IoU 0.5 - mAP50 {result['map50']:.3f}, mAP50:95 {result['map50_95']:.3f}")
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
