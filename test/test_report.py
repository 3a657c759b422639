"""Per-stage metrics from ONNX files and the report files (json, md, png)."""
from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from evit_training.report.report import (REQUIRED_KEYS, add_stages, load_report, markdown,  # noqa: E402
                                         write_report)
from evit_training.report.stage_metrics import (measure_stage, onnx_macs, onnx_params,  # noqa: E402
                                                ort_latency)

torch.set_num_threads(1)


def _row(name, params, latency, map50, **extra):
    row = {"name": name, "params": params, "macs": params * 100, "size_mb": params * 4e-6,
           "latency_ms": latency, "latency_p95_ms": latency * 1.2, "map50": map50,
           "map50_95": None if map50 is None else map50 / 2, "input_size": [320, 320], "threads": 2}
    row.update(extra)
    return row


def test_onnx_macs_and_params_of_a_known_graph():
    # [1,3,16,16] -conv 3x3 (3->8, pad 1)-> [1,8,16,16] -reshape-> [1,8,256]^T -matmul 8x4-> [1,256,4]
    w = numpy_helper.from_array(np.zeros((8, 3, 3, 3), np.float32), "w")
    b = numpy_helper.from_array(np.zeros(8, np.float32), "b")
    m = numpy_helper.from_array(np.zeros((8, 4), np.float32), "m")
    shape = numpy_helper.from_array(np.array([1, 8, 256], np.int64), "shape")
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Reshape", ["c", "shape"], ["r"]),
             helper.make_node("Transpose", ["r"], ["t"], perm=[0, 2, 1]),
             helper.make_node("MatMul", ["t", "m"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w, b, m, shape])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 16)])
    assert onnx_macs(model) == 8 * 16 * 16 * 3 * 9 + 256 * 4 * 8
    assert onnx_params(model) == 8 * 27 + 8 + 32, "int64 shapes are not parameters"


def test_onnx_counts_match_torch_for_a_linear_stack(tmp_path):
    net = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.GELU(), torch.nn.Linear(64, 16)).eval()
    path = tmp_path / "mlp.onnx"
    torch.onnx.export(net, (torch.zeros(1, 10, 32),), str(path), opset_version=16, dynamo=False)
    model = onnx.load(str(path))
    assert onnx_params(model) == sum(p.numel() for p in net.parameters())
    assert onnx_macs(model) == 10 * (32 * 64 + 64 * 16)


def test_latency_is_measured_on_the_file(tmp_path):
    from test_quantize import colour_detector_onnx

    path = colour_detector_onnx(str(tmp_path / "colour.onnx"))
    lat = ort_latency(path, threads=1, warmup=1, runs=5)
    assert 0 < lat["median_ms"] <= lat["p95_ms"] and lat["runs"] == 5


def test_measure_stage_scores_through_the_detector(tmp_path):
    from test_quantize import colour_dataset, colour_detector_onnx

    path = colour_detector_onnx(str(tmp_path / "colour.onnx"))
    val = colour_dataset(str(tmp_path / "val"), 6, seed=3)
    row = measure_stage("colour", path, val["annotations"], val["images"], threads=1, warmup=1, runs=3,
                        progress=False, note="x")
    for key in REQUIRED_KEYS:
        assert key in row
    assert row["map50"] > 0.9 and row["input_size"] == [64, 64] and row["note"] == "x"
    assert row["params"] == 6 * 3 + 6 + 3 * 6 + 3 + 9 + 64 * 4
    no_val = measure_stage("colour", path, threads=1, warmup=0, runs=2)
    assert no_val["map50"] is None
    with pytest.raises(FileNotFoundError, match="ONNX file not found"):
        measure_stage("missing", str(tmp_path / "nope.onnx"))
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
    with pytest.raises(ValueError, match="empty dataset"):
        measure_stage("colour", path, str(empty), str(tmp_path), runs=1, warmup=0)


def test_report_files_ratios_and_extra_stages(tmp_path, capsys):
    rows = [_row("teacher", 3_000_000, 60.0, 0.5), _row("kd_student", 600_000, 12.0, 0.45),
            _row("int8", 300_000, 6.0, 0.49)]
    doc = write_report(str(tmp_path), rows, reference="teacher", info={"config": "unit"})
    printed = capsys.readouterr().out
    assert "kd_student" in printed and "int8" in printed
    on_disk = json.loads((tmp_path / "report.json").read_text())
    assert on_disk == json.loads(json.dumps(doc))
    assert [s["name"] for s in on_disk["stages"]] == ["teacher", "kd_student", "int8"]
    int8 = on_disk["stages"][2]
    assert int8["params_x"] == 10.0 and int8["latency_x"] == 10.0 and int8["map50_rel"] == 0.98
    md = (tmp_path / "report.md").read_text()
    assert "| int8 | 320x320 | 300,000 |" in md and "Ratios against `teacher`" in md
    assert (tmp_path / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # Another tool (data-free KD) adds its stage later; rows are replaced by name, kept otherwise.
    add_stages(str(tmp_path), [_row("datafree_student", 600_000, 12.0, 0.3, source="data-free")])
    add_stages(str(tmp_path), [_row("int8", 300_000, 5.0, 0.48)])
    doc = load_report(str(tmp_path))
    names = [s["name"] for s in doc["stages"]]
    assert names == ["teacher", "kd_student", "int8", "datafree_student"]
    assert doc["stages"][2]["latency_x"] == 12.0 and doc["stages"][3]["source"] == "data-free"
    assert doc["config"] == "unit"
    assert "datafree_student" in (tmp_path / "report.md").read_text()


def test_report_rejects_incomplete_rows_and_missing_reports(tmp_path):
    with pytest.raises(ValueError, match="lacks .*latency_ms"):
        write_report(str(tmp_path), [{"name": "x", "params": 1, "macs": 1, "size_mb": 1.0,
                                      "map50": 0.1, "map50_95": 0.1, "input_size": [1, 1]}], show=False)
    with pytest.raises(FileNotFoundError, match="evit compress"):
        load_report(str(tmp_path / "nothing"))
    text = markdown({"stages": [_row("a", 10, 1.0, None)], "reference": "a"})
    assert "| a |" in text and "| - |" in text
