"""Measure one pipeline stage from its ONNX file: size, params, MACs, latency, COCO mAP.

Every stage is measured the same way, from the file the node would load: params and MACs
are counted on the ONNX graph (so FP32 and INT8 files compare like for like), latency is
ONNX Runtime on a fixed thread count after a warm-up, and mAP goes through
``evit_perception.detector.Detector`` so the node's exact pre- and post-processing is
what gets scored.
"""
from __future__ import annotations

import json
import os
import time
from typing import Any, Dict, List, Mapping, Optional

import numpy as np
import onnx
from onnx import shape_inference

#: Score threshold for mAP: low, so the PR curve is complete (COCO practice).
MAP_SCORE_THRESHOLD = 0.01
_QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


def file_size_mb(path: str) -> float:
    """Size of a file in MB (10^6 bytes)."""
    return os.path.getsize(path) / 1e6


_COUNTED_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16,
                  onnx.TensorProto.INT8, onnx.TensorProto.UINT8, onnx.TensorProto.INT32)


def onnx_params(model: onnx.ModelProto) -> int:
    """Learned parameters in the graph: weight tensors (initializers and Constant nodes, any
    of float/int8/int32), not QDQ scales/zero-points, shapes or scalars. The same network
    counts the same in FP32, FP16 and INT8 files."""
    qdq_side_inputs = {name for node in model.graph.node if node.op_type in _QDQ_OPS
                       for name in node.input[1:]}
    tensors = [(t.name, t) for t in model.graph.initializer]
    for node in model.graph.node:
        if node.op_type == "Constant":
            tensors += [(node.output[0], a.t) for a in node.attribute if a.name == "value"]
    total = 0
    for name, tensor in tensors:
        count = int(np.prod(tensor.dims)) if len(tensor.dims) else 1
        if name in qdq_side_inputs or tensor.data_type not in _COUNTED_TYPES or count < 2:
            continue
        total += count
    return total


def _shape(value_shapes: Mapping[str, List[int]], name: str) -> Optional[List[int]]:
    return value_shapes.get(name) or None


def onnx_macs(model: onnx.ModelProto) -> int:
    """Multiply-accumulates of Conv, ConvTranspose, MatMul and Gemm nodes at batch 1.

    Unlike Torch-Pruning's counter this includes attention's activation x activation
    matmuls (q @ k^T, attn @ v), which are real work at run time.
    """
    inferred = shape_inference.infer_shapes(model)
    shapes: Dict[str, List[int]] = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        # Symbolic dims (the exporter's dynamic batch) count as 1: batch-1 MACs.
        shapes[vi.name] = [d.dim_value if d.dim_value > 0 else 1 for d in vi.type.tensor_type.shape.dim]
    for init in inferred.graph.initializer:
        shapes[init.name] = list(init.dims)
    macs = 0
    for node in inferred.graph.node:
        if node.op_type in ("Conv", "ConvTranspose"):
            w = _shape(shapes, node.input[1])
            src = _shape(shapes, node.input[0])
            out = _shape(shapes, node.output[0])
            if not w or not out or not src:
                continue
            group = next((a.i for a in node.attribute if a.name == "group"), 1) or 1
            kernel = int(np.prod(w[2:]))
            if node.op_type == "Conv":  # w: [Cout, Cin/g, k...]; every output pixel sums Cin/g*k
                macs += int(np.prod(out)) * w[1] * kernel
            else:  # w: [Cin, Cout/g, k...]; every input pixel scatters into Cout/g*k
                macs += int(np.prod(src)) * w[1] * kernel
        elif node.op_type in ("MatMul", "Gemm"):
            a = _shape(shapes, node.input[0])
            out = _shape(shapes, node.output[0])
            if not a or not out:
                continue
            trans_a = next((x.i for x in node.attribute if x.name == "transA"), 0)
            inner = a[-2] if (node.op_type == "Gemm" and trans_a) else a[-1]
            macs += int(np.prod(out)) * inner
    return int(macs)


def _session(path: str, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def ort_latency(path: str, threads: int = 2, warmup: int = 10, runs: int = 50,
                seed: int = 0) -> Dict[str, float]:
    """ONNX Runtime CPU latency of one batch-1 inference: median and p95 in ms."""
    session = _session(path, threads)
    inp = session.get_inputs()[0]
    shape = [d if isinstance(d, int) and d > 0 else 1 for d in inp.shape]
    dtype = np.uint8 if "uint8" in inp.type else (np.float16 if "float16" in inp.type else np.float32)
    rng = np.random.default_rng(seed)
    x = (rng.random(shape) * (255 if dtype == np.uint8 else 1)).astype(dtype)
    feed = {inp.name: x}
    for _ in range(max(warmup, 0)):
        session.run(None, feed)
    times = []
    for _ in range(max(runs, 1)):
        start = time.perf_counter()
        session.run(None, feed)
        times.append((time.perf_counter() - start) * 1e3)
    return {"median_ms": float(np.median(times)), "p95_ms": float(np.percentile(times, 95)),
            "threads": threads, "runs": len(times)}


def load_coco(annotations: str) -> dict:
    """A COCO annotation file; raises naming the file if it is missing or has no images."""
    if not os.path.isfile(annotations):
        raise FileNotFoundError(f"annotation file not found: {annotations}")
    with open(annotations) as fh:
        gt = json.load(fh)
    if not gt.get("images"):
        raise ValueError(f"{annotations} lists no images (empty dataset)")
    return gt


def onnx_map(path: str, annotations: str, images_dir: str, threads: int = 2,
             max_images: Optional[int] = None, progress: bool = True) -> Dict[str, Any]:
    """COCO mAP of the ONNX model on a COCO split, through the node's Detector."""
    import cv2
    from tqdm.auto import tqdm

    from evit_perception.backends import open_backend
    from evit_perception.detector import Detector
    from evit_perception.evaluation.coco_metrics import evaluate_detections

    gt = load_coco(annotations)
    if max_images:
        keep = gt["images"][:max_images]
        ids = {im["id"] for im in keep}
        gt = dict(gt, images=keep, annotations=[a for a in gt["annotations"] if a["image_id"] in ids])
    detector = Detector(open_backend(path, "onnxruntime", intra_op_num_threads=threads),
                        score_threshold=MAP_SCORE_THRESHOLD, max_detections=100)
    cat_by_name = {c["name"]: int(c["id"]) for c in gt["categories"]}
    missing = [n for n in detector.class_names if n not in cat_by_name]
    if missing:
        raise ValueError(f"model classes {missing} are not categories of {annotations}")
    cat_ids = [cat_by_name[n] for n in detector.class_names]
    predictions = []
    for im in tqdm(gt["images"], desc=f"mAP {os.path.basename(path)}", unit="img",
                   disable=not progress, leave=False):
        file = os.path.join(images_dir, im["file_name"])
        bgr = cv2.imread(file, cv2.IMREAD_COLOR)
        if bgr is None:
            raise FileNotFoundError(f"cannot read validation image {file}")
        dets = detector.detect(bgr)
        for (x1, y1, x2, y2), score, cls in zip(dets.boxes.tolist(), dets.scores.tolist(),
                                                dets.class_ids.tolist()):
            predictions.append({"image_id": im["id"], "category_id": cat_ids[int(cls)],
                                "bbox": [x1, y1, x2 - x1, y2 - y1], "score": score})
    detector.backend.close()
    return evaluate_detections(gt, predictions, score_threshold=0.3)


def measure_stage(name: str, onnx_path: str, annotations: Optional[str] = None,
                  images_dir: Optional[str] = None, threads: int = 2, warmup: int = 10,
                  runs: int = 50, max_images: Optional[int] = None, progress: bool = True,
                  **extra: Any) -> Dict[str, Any]:
    """One report row: ``name, params, macs, size_mb, latency_ms, latency_p95_ms, map50,
    map50_95, input_size, onnx`` plus ``extra``. mAP is ``None`` without a validation split."""
    from evit_training.quantize.calibration import read_contract

    if not os.path.isfile(onnx_path):
        raise FileNotFoundError(f"stage {name!r}: ONNX file not found: {onnx_path}")
    model = onnx.load(onnx_path)
    contract = read_contract(onnx_path)
    latency = ort_latency(onnx_path, threads, warmup, runs)
    row: Dict[str, Any] = {
        "name": name,
        "params": onnx_params(model),
        "macs": onnx_macs(model),
        "size_mb": round(file_size_mb(onnx_path), 3),
        "latency_ms": round(latency["median_ms"], 3),
        "latency_p95_ms": round(latency["p95_ms"], 3),
        "threads": threads,
        "map50": None,
        "map50_95": None,
        "input_size": [contract.input.height, contract.input.width],
        "onnx": os.path.abspath(onnx_path),
    }
    if annotations and images_dir:
        metrics = onnx_map(onnx_path, annotations, images_dir, threads, max_images, progress)
        row["map50"] = round(metrics["map50"], 4)
        row["map50_95"] = round(metrics["map50_95"], 4)
        row["ap50_per_class"] = {k: round(v["ap50"], 4) for k, v in metrics["per_class"].items()}
    row.update(extra)
    return row
