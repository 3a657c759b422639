"""Small contract-honouring ONNX detectors built with onnx.helper (no torch, no weights).

The reference detector looks at an image as a grid of ``cell x cell`` squares (in input
pixels). Each cell is one candidate box, the cell itself. A cell's score for class 0, 1, 2
is how much its average red, green, blue (in that order) exceeds the other two channels:
``score_r = relu(mean_r - max(mean_g, mean_b))`` on 0..1 pixels. So a pure red square
covering one cell scores 1.0 for class 0 there and 0 elsewhere; grey, white or the
letterbox padding score 0. Classes beyond the third never score.

Used by tests and by the demo before a trained model exists.
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from evit_perception.model_contract import (LAYOUT_CXCYWH_CLASS_SCORES, LAYOUT_XYXY_SCORE_CLASS,
                                            METADATA_KEY, InputSpec, ModelContract, OutputSpec)

OPSET = 17
IR_VERSION = 8  # readable by the ONNX Runtime and TensorRT versions on Jetsons too
CLASS_NAMES = ("person", "vehicle", "obstacle")


def reference_contract(input_size: Tuple[int, int] = (320, 320),
                       class_names: Sequence[str] = CLASS_NAMES,
                       layout: str = LAYOUT_CXCYWH_CLASS_SCORES, transposed: bool = False,
                       input_layout: str = "NCHW", resize: str = "letterbox",
                       name: str = "reference-colour-grid") -> ModelContract:
    """The contract the reference model embeds (input_size is height, width)."""
    height, width = input_size
    return ModelContract(
        class_names=tuple(class_names),
        input=InputSpec(name="images", height=height, width=width, layout=input_layout,
                        channel_order="RGB", dtype="float32", resize=resize),
        output=OutputSpec(name="detections", layout=layout, transposed=transposed,
                          needs_nms=True),
        name=name,
        extra={"source": "test/support/reference_model.py"},
    )


def build_reference_model(input_size: Tuple[int, int] = (320, 320),
                          class_names: Sequence[str] = CLASS_NAMES,
                          layout: str = LAYOUT_CXCYWH_CLASS_SCORES, transposed: bool = False,
                          cell: int = 32, top_k: int = 100, input_layout: str = "NCHW",
                          resize: str = "letterbox",
                          contract: Optional[ModelContract] = None) -> onnx.ModelProto:
    """The reference detector as an ONNX model with the contract in its metadata.

    ``contract`` replaces the embedded contract (to build models whose metadata disagrees
    with their graph).
    """
    height, width = input_size
    if height % cell or width % cell:
        raise ValueError(f"input size {height}x{width} is not a multiple of the cell {cell}")
    rows, cols = height // cell, width // cell
    cells = rows * cols
    num_classes = len(class_names)
    contract = contract or reference_contract(input_size, class_names, layout, transposed,
                                              input_layout, resize)

    ys, xs = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    x1, y1 = (xs * cell).reshape(-1), (ys * cell).reshape(-1)
    xyxy = np.stack([x1, y1, x1 + cell, y1 + cell], axis=1).astype(np.float32)  # [cells, 4]
    cxcywh = np.stack([x1 + cell / 2, y1 + cell / 2, np.full(cells, cell), np.full(cells, cell)],
                      axis=1).astype(np.float32)

    init = [
        numpy_helper.from_array(np.array([1, 3, cells], np.int64), "pooled_shape"),
        numpy_helper.from_array(np.zeros((1, max(num_classes - 3, 0), cells), np.float32)
                                if num_classes > 3 else np.zeros((1, 0, cells), np.float32),
                                "silent_classes"),
    ]
    image_shape = [1, 3, height, width] if input_layout == "NCHW" else [1, height, width, 3]
    nodes = []
    pixels = "images"
    if input_layout == "NHWC":
        nodes.append(helper.make_node("Transpose", ["images"], ["images_nchw"], perm=[0, 3, 1, 2]))
        pixels = "images_nchw"
    nodes += [
        helper.make_node("AveragePool", [pixels], ["pooled"], kernel_shape=[cell, cell],
                         strides=[cell, cell]),
        helper.make_node("Reshape", ["pooled", "pooled_shape"], ["means"]),  # [1, 3, cells]
        helper.make_node("Split", ["means"], ["r", "g", "b"], axis=1),
        helper.make_node("Max", ["g", "b"], ["max_gb"]),
        helper.make_node("Max", ["r", "b"], ["max_rb"]),
        helper.make_node("Max", ["r", "g"], ["max_rg"]),
        helper.make_node("Sub", ["r", "max_gb"], ["r_excess"]),
        helper.make_node("Sub", ["g", "max_rb"], ["g_excess"]),
        helper.make_node("Sub", ["b", "max_rg"], ["b_excess"]),
        helper.make_node("Concat", ["r_excess", "g_excess", "b_excess"], ["excess"], axis=1),
        helper.make_node("Relu", ["excess"], ["colour_scores"]),  # [1, 3, cells]
    ]
    if num_classes < 3:
        init.append(numpy_helper.from_array(np.array([0], np.int64), "zero"))
        init.append(numpy_helper.from_array(np.array([num_classes], np.int64), "num_classes"))
        init.append(numpy_helper.from_array(np.array([1], np.int64), "axis_one"))
        nodes.append(helper.make_node("Slice", ["colour_scores", "zero", "num_classes", "axis_one"],
                                      ["class_scores_cf"]))
    else:
        nodes.append(helper.make_node("Concat", ["colour_scores", "silent_classes"],
                                      ["class_scores_cf"], axis=1))  # [1, C, cells]

    if layout == LAYOUT_CXCYWH_CLASS_SCORES:
        init.append(numpy_helper.from_array(cxcywh.T[None], "boxes_cf"))  # [1, 4, cells]
        nodes.append(helper.make_node("Concat", ["boxes_cf", "class_scores_cf"],
                                      ["rows_cf"], axis=1))  # [1, 4 + C, cells]
        if transposed:
            nodes.append(helper.make_node("Identity", ["rows_cf"], ["detections"]))
            out_shape = [1, 4 + num_classes, cells]
        else:
            nodes.append(helper.make_node("Transpose", ["rows_cf"], ["detections"], perm=[0, 2, 1]))
            out_shape = [1, cells, 4 + num_classes]
    elif layout == LAYOUT_XYXY_SCORE_CLASS:
        k = min(top_k, cells)
        init += [numpy_helper.from_array(xyxy, "cell_boxes"),
                 numpy_helper.from_array(np.array([k], np.int64), "k"),
                 numpy_helper.from_array(np.array([2], np.int64), "axis_two")]
        nodes += [
            helper.make_node("ReduceMax", ["class_scores_cf"], ["best_score"], axes=[1],
                             keepdims=0),  # [1, cells]
            helper.make_node("ArgMax", ["class_scores_cf"], ["best_class"], axis=1, keepdims=0),
            helper.make_node("TopK", ["best_score", "k"], ["top_scores", "top_cells"], axis=1),
            helper.make_node("Gather", ["cell_boxes", "top_cells"], ["top_boxes"], axis=0),
            helper.make_node("GatherElements", ["best_class", "top_cells"], ["top_class_i"], axis=1),
            helper.make_node("Cast", ["top_class_i"], ["top_class"], to=TensorProto.FLOAT),
            helper.make_node("Unsqueeze", ["top_scores", "axis_two"], ["top_scores_3d"]),
            helper.make_node("Unsqueeze", ["top_class", "axis_two"], ["top_class_3d"]),
            helper.make_node("Concat", ["top_boxes", "top_scores_3d", "top_class_3d"],
                             ["detections"], axis=2),
        ]
        out_shape = [1, k, 6]
    else:
        raise ValueError(f"unknown layout {layout!r}")

    graph = helper.make_graph(
        nodes, "reference_colour_grid",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, image_shape)],
        [helper.make_tensor_value_info("detections", TensorProto.FLOAT, out_shape)],
        initializer=init)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="evit_perception-test")
    model.ir_version = IR_VERSION
    helper.set_model_props(model, {METADATA_KEY: contract.to_json()})
    onnx.checker.check_model(model)
    return model


def write_reference_model(path: str, input_size: Tuple[int, int] = (320, 320),
                          class_names: Sequence[str] = CLASS_NAMES,
                          layout: str = LAYOUT_CXCYWH_CLASS_SCORES, **kwargs: Any) -> str:
    """Write the reference detector to ``path`` (see :func:`build_reference_model`)."""
    model = build_reference_model(input_size, class_names, layout, **kwargs)
    return _save(model, path)


def write_model_without_metadata(path: str, **kwargs: Any) -> str:
    """A working detector graph that carries no contract at all."""
    model = build_reference_model(**kwargs)
    del model.metadata_props[:]
    return _save(model, path)


def write_model_with_metadata(path: str, metadata: Dict[str, str], **kwargs: Any) -> str:
    """The reference graph with ``metadata`` as its whole metadata_props (broken contracts)."""
    model = build_reference_model(**kwargs)
    del model.metadata_props[:]
    helper.set_model_props(model, metadata)
    return _save(model, path)


def write_model_with_broken_contract(path: str, change: Dict[str, Any], **kwargs: Any) -> str:
    """The reference model whose contract JSON has the top-level keys in ``change`` replaced
    (``None`` deletes a key)."""
    doc = json.loads(reference_contract().to_json())
    for key, value in change.items():
        if value is None:
            doc.pop(key, None)
        else:
            doc[key] = value
    return write_model_with_metadata(path, {METADATA_KEY: json.dumps(doc)}, **kwargs)


def write_truncated_model(path: str, keep_fraction: float = 0.5, **kwargs: Any) -> str:
    """A reference model cut short, as a broken download or a full disk leaves it."""
    data = build_reference_model(**kwargs).SerializeToString()
    with open(path, "wb") as f:
        f.write(data[:max(1, int(len(data) * keep_fraction))])
    return path


def colour_square(height: int, width: int, box_xyxy: Tuple[int, int, int, int],
                  bgr: Tuple[int, int, int] = (0, 0, 255),
                  background: Tuple[int, int, int] = (90, 90, 90)) -> np.ndarray:
    """A grey HxWx3 uint8 BGR frame with a filled square (default pure red) at ``box_xyxy``."""
    frame = np.empty((height, width, 3), np.uint8)
    frame[...] = background
    x1, y1, x2, y2 = box_xyxy
    frame[y1:y2, x1:x2] = bgr
    return frame


def _save(model: onnx.ModelProto, path: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    onnx.save(model, path)
    return path
