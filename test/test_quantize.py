"""INT8 (ONNX Runtime QDQ) and FP16 quantization, measured on a fixed small detection set.

The model under test is a small, hand-weighted conv + matmul detector of coloured cells
(no training needed, so its FP32 mAP is high and stable): every 8x8 cell of a 64x64 image is
one candidate box; 1x1 convs turn pixels into per-class "colour excess" maps, an average
pool per cell and a MatMul mix them into class scores. Quantizing it badly (wrong
calibration inputs, lost metadata) costs mAP, so the bounded-drop test can fail.
"""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
cv2 = pytest.importorskip("cv2")

from evit_perception.model_contract import (LAYOUT_CXCYWH_CLASS_SCORES, METADATA_KEY,  # noqa: E402
                                            InputSpec, ModelContract, OutputSpec)
from evit_training.quantize.calibration import (TensorListReader, list_images,  # noqa: E402
                                                preprocess_images, read_contract)
from evit_training.quantize.fp16 import convert_fp16  # noqa: E402
from evit_training.quantize.int8 import Int8Settings, quantizable_nodes, quantize_int8  # noqa: E402
from evit_training.quantize.sensitivity import probe_tensors, quantize_within_budget  # noqa: E402
from evit_training.report.stage_metrics import onnx_map  # noqa: E402

torch.set_num_threads(1)

SIZE, CELL = 64, 8
CLASSES = ("person", "vehicle", "obstacle")
COLOURS_BGR = ((0, 0, 255), (0, 255, 0), (255, 0, 0))  # red, green, blue per class


class ColourCells(torch.nn.Module):
    """RGB [0,1] image -> [1, cells, 4 + 3] (cx, cy, w, h, class scores)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = torch.nn.Conv2d(3, 6, 1)
        self.excess = torch.nn.Conv2d(6, 3, 1)
        self.mix = torch.nn.Parameter(torch.eye(3) * 1.2)
        with torch.no_grad():
            w = torch.zeros(6, 3)
            for c in range(3):  # +channel and -channel copies: relu keeps both signs' info
                w[c, c], w[3 + c, c] = 1.0, -1.0
            self.features.weight.copy_(w.view(6, 3, 1, 1))
            self.features.bias.zero_()
            e = torch.zeros(3, 6)
            for c in range(3):
                e[c, c] = 1.0
                for o in range(3):
                    if o != c:
                        e[c, o] = -0.6
            self.excess.weight.copy_(e.view(3, 6, 1, 1))
            self.excess.bias.fill_(-0.15)
        ys, xs = np.meshgrid(np.arange(SIZE // CELL), np.arange(SIZE // CELL), indexing="ij")
        boxes = np.stack([xs.ravel() * CELL + CELL / 2, ys.ravel() * CELL + CELL / 2,
                          np.full(xs.size, CELL), np.full(xs.size, CELL)], axis=1)
        self.register_buffer("boxes", torch.tensor(boxes, dtype=torch.float32)[None])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        maps = torch.relu(self.excess(torch.relu(self.features(images))))
        cells = torch.nn.functional.avg_pool2d(maps, CELL).flatten(2).transpose(1, 2)  # [1, N, 3]
        scores = torch.clamp(cells @ self.mix, 0.0, 1.0)
        return torch.cat([self.boxes, scores], dim=2)


def colour_detector_onnx(path: str) -> str:
    """Export the colour-cell detector with an evit model contract."""
    torch.onnx.export(ColourCells().eval(), (torch.zeros(1, 3, SIZE, SIZE),), path, input_names=["images"],
                      output_names=["detections"], opset_version=16, dynamo=False)
    model = onnx.load(path)
    contract = ModelContract(class_names=CLASSES, input=InputSpec(height=SIZE, width=SIZE),
                             output=OutputSpec(layout=LAYOUT_CXCYWH_CLASS_SCORES), name="colour-cells")
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, contract.to_json()
    onnx.save(model, path)
    return path


def colour_dataset(root: str, count: int, seed: int) -> dict:
    """COCO split of noisy 64x64 images with 1-3 coloured, cell-aligned squares."""
    rng = np.random.default_rng(seed)
    images_dir = os.path.join(root, "images")
    os.makedirs(images_dir, exist_ok=True)
    images, annotations = [], []
    for image_id in range(1, count + 1):
        bgr = rng.integers(60, 140, (SIZE, SIZE, 3), dtype=np.uint8)
        cells = rng.choice((SIZE // CELL) ** 2, size=int(rng.integers(1, 4)), replace=False)
        for cell in cells:
            cls = int(rng.integers(0, 3))
            x, y = int(cell % (SIZE // CELL)) * CELL, int(cell // (SIZE // CELL)) * CELL
            strength = rng.uniform(0.55, 1.0)
            colour = np.array(COLOURS_BGR[cls]) * strength + (1 - strength) * 100
            bgr[y:y + CELL, x:x + CELL] = colour.astype(np.uint8)
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": cls + 1,
                                "bbox": [x, y, CELL, CELL], "area": CELL * CELL, "iscrowd": 0})
        name = f"{image_id:04d}.png"
        cv2.imwrite(os.path.join(images_dir, name), bgr)
        images.append({"id": image_id, "file_name": name, "width": SIZE, "height": SIZE})
    doc = {"images": images, "annotations": annotations,
           "categories": [{"id": i + 1, "name": n} for i, n in enumerate(CLASSES)]}
    with open(os.path.join(root, "annotations.json"), "w") as fh:
        json.dump(doc, fh)
    return {"annotations": os.path.join(root, "annotations.json"), "images": images_dir}


@pytest.fixture(scope="module")
def colour_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("colour")
    fp32 = colour_detector_onnx(str(root / "fp32.onnx"))
    train = colour_dataset(str(root / "train"), 12, seed=1)
    val = colour_dataset(str(root / "val"), 16, seed=2)
    contract = read_contract(fp32)
    reader = TensorListReader("images", preprocess_images(list_images(train["images"]), contract, progress=False))
    return {"root": root, "fp32": fp32, "train": train, "val": val, "reader": reader}


def _map50(path: str, val: dict) -> float:
    return onnx_map(path, val["annotations"], val["images"], threads=1, progress=False)["map50"]


def test_int8_map_drop_is_bounded_on_a_fixed_set(colour_setup):
    s = colour_setup
    int8 = quantize_int8(s["fp32"], str(s["root"] / "int8.onnx"), s["reader"])
    fp32_map, int8_map = _map50(s["fp32"], s["val"]), _map50(int8, s["val"])
    assert fp32_map > 0.9, "the reference detector itself must work"
    assert int8_map >= fp32_map - 0.05, f"INT8 mAP@0.5 {int8_map:.3f} vs FP32 {fp32_map:.3f}"
    graph = onnx.load(int8).graph
    ops = {n.op_type for n in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops, "QDQ format"
    contract = read_contract(int8)  # the contract survives quantization, stage recorded
    assert contract.class_names == CLASSES and contract.extra["stage"] == "int8"
    assert os.path.getsize(int8) > 0


def test_calibration_on_unpreprocessed_pixels_hurts(colour_setup):
    """Guards the calibration path: ranges from raw 0..255 pixels wreck the model."""
    s = colour_setup
    raw = TensorListReader("images", [t * 255.0 for t in s["reader"].tensors])
    bad = quantize_int8(s["fp32"], str(s["root"] / "bad.onnx"), raw)
    assert _map50(bad, s["val"]) < _map50(s["fp32"], s["val"]) - 0.2


def test_sensitivity_keeps_harmful_layers_in_float(colour_setup):
    s = colour_setup
    settings = Int8Settings()
    report = quantize_within_budget(s["fp32"], str(s["root"] / "int8_budget.onnx"), s["reader"], settings,
                                    max_drop=0.0, max_excluded_fraction=1.0, progress=False)
    assert report.node_error, "every candidate layer was ranked"
    assert report.excluded, "a zero error budget forces float layers"
    assert report.score_final <= report.score_int8_all
    model = onnx.load(str(s["root"] / "int8_budget.onnx"))
    assert read_contract(str(s["root"] / "int8_budget.onnx")).extra["nodes_excluded"] == report.excluded
    produced_by = {o: n for n in model.graph.node for o in n.output}
    for node in model.graph.node:
        if node.name in report.excluded:  # excluded nodes read float weights, not a DequantizeLinear
            weight_src = produced_by.get(node.input[1])
            assert weight_src is None or weight_src.op_type != "DequantizeLinear"


def test_sensitivity_with_map_budget_meets_it(colour_setup):
    s = colour_setup
    report = quantize_within_budget(s["fp32"], str(s["root"] / "int8_map.onnx"), s["reader"],
                                    score_fn=lambda p: _map50(p, s["val"]), max_drop=0.02, progress=False)
    assert report.higher_is_better
    assert report.score_final >= report.score_fp32 * 0.98
    assert abs(report.score_final - _map50(str(s["root"] / "int8_map.onnx"), s["val"])) < 1e-9


def test_probes_are_the_last_dense_layers(colour_setup):
    s = colour_setup
    probes = probe_tensors(s["fp32"], ("MatMul", "Gemm", "Conv"))
    assert len(probes) == 1
    graph = onnx.load(s["fp32"]).graph
    assert next(n for n in graph.node if n.output[0] == probes[0]).op_type == "MatMul"
    assert len(quantizable_nodes(s["fp32"])) == 3


def test_fp16_keeps_io_float32_and_outputs_close(colour_setup):
    s = colour_setup
    fp16 = convert_fp16(s["fp32"], str(s["root"] / "fp16.onnx"))
    model = onnx.load(fp16)
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer)
    x = s["reader"].tensors[0]
    ref = ort.InferenceSession(s["fp32"], providers=["CPUExecutionProvider"]).run(None, {"images": x})[0]
    out = ort.InferenceSession(fp16, providers=["CPUExecutionProvider"]).run(None, {"images": x})[0]
    assert np.abs(out - ref).max() < 1e-2
    assert read_contract(fp16).extra["stage"] == "fp16"


def test_fp16_blocks_layernorm_and_softmax():
    from onnx import TensorProto, helper

    from evit_training.quantize.fp16 import norm_nodes

    nodes = [helper.make_node("ReduceMean", ["x"], ["m"], name="/backbone/blocks.0/norm1/ReduceMean"),
             helper.make_node("Softmax", ["m"], ["y"], name="/backbone/blocks.0/attn/Softmax")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1])])
    assert norm_nodes(helper.make_model(graph)) == ["/backbone/blocks.0/norm1/ReduceMean"]


def test_calibration_inputs_are_checked(tmp_path):
    with pytest.raises(FileNotFoundError, match="calibration image folder"):
        list_images(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images"):
        list_images(str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="at least one"):
        TensorListReader("images", [])
    with pytest.raises(ValueError, match="calibration method"):
        Int8Settings(calibration="kl")
