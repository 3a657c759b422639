"""backends: real ONNX Runtime sessions on reference models, and every way a model file is bad."""
import json

import numpy as np
import pytest
from support.reference_model import (build_reference_model, reference_contract,
                                     write_model_with_broken_contract, write_model_with_metadata,
                                     write_model_without_metadata, write_reference_model,
                                     write_truncated_model)

from evit_perception.backends import BackendContractError, BackendError, open_backend
from evit_perception.backends.onnxruntime_backend import OnnxRuntimeBackend, default_providers
from evit_perception.backends.tensorrt_backend import tensorrt_unavailable_reason
from evit_perception.model_contract import METADATA_KEY, ModelContractError


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return write_reference_model(str(tmp_path_factory.mktemp("models") / "ref.onnx"))


def open_ort(path, **options):
    return open_backend(path, backend="onnxruntime", intra_op_num_threads=1, **options)


def test_auto_opens_onnx_with_onnxruntime_on_cpu(model_path):
    if tensorrt_unavailable_reason() is None:
        pytest.skip("TensorRT is usable here, so auto picks TensorRT (covered in test_tensorrt.py)")
    with open_backend(model_path, intra_op_num_threads=1) as backend:
        assert isinstance(backend, OnnxRuntimeBackend) and backend.name == "onnxruntime"
        assert "CPUExecutionProvider" in backend.providers
        assert backend.contract.class_names == ("person", "vehicle", "obstacle")
        assert backend.input_shape == (1, 3, 320, 320)
        out = backend.infer(np.zeros(backend.input_shape, np.float32))
        assert out.shape == (1, 100, 7) and out.dtype == np.float32


def test_reference_model_scores_colour_per_cell(model_path):
    backend = open_ort(model_path)
    tensor = np.zeros((1, 3, 320, 320), np.float32)
    tensor[0, 0, 32:64, 64:96] = 1.0  # red in cell (row 1, col 2)
    tensor[0, 2, 0:32, 0:32] = 0.5    # half-bright blue in cell 0
    out = backend.infer(tensor)[0]
    assert out[12, 4] == pytest.approx(1.0) and out[12, 5:].max() == 0.0
    np.testing.assert_allclose(out[12, :4], [80, 48, 32, 32])
    assert out[0, 6] == pytest.approx(0.5)
    assert out[:, 4:].sum() == pytest.approx(1.5)


def test_missing_file(tmp_path):
    with pytest.raises(BackendError, match="model file not found: .*nope.onnx"):
        open_backend(str(tmp_path / "nope.onnx"))


def test_truncated_model_is_a_clear_error_naming_the_file(tmp_path):
    path = write_truncated_model(str(tmp_path / "cut.onnx"))
    with pytest.raises(BackendError, match=r"cut.onnx: ONNX Runtime cannot load this model"):
        open_ort(path)


def test_file_that_is_not_onnx(tmp_path):
    path = tmp_path / "photo.onnx"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    with pytest.raises(BackendError, match="photo.onnx: ONNX Runtime cannot load"):
        open_ort(str(path))


def test_model_without_metadata(tmp_path):
    path = write_model_without_metadata(str(tmp_path / "bare.onnx"))
    with pytest.raises(BackendContractError, match=f"bare.onnx: no '{METADATA_KEY}' metadata") as err:
        open_ort(path)
    assert isinstance(err.value, ModelContractError) and isinstance(err.value, BackendError)


@pytest.mark.parametrize("change,message", [
    ({"format_version": 99}, "format_version 99 is not supported"),
    ({"format": "yolo"}, "metadata format is 'yolo'"),
    ({"colour": "red"}, r"unknown contract key\(s\) colour"),
    ({"class_names": []}, "class_names is empty"),
])
def test_broken_contracts_are_refused(tmp_path, change, message):
    path = write_model_with_broken_contract(str(tmp_path / "broken.onnx"), change)
    with pytest.raises(BackendContractError, match=message):
        open_ort(path)


@pytest.mark.parametrize("key,value,message", [
    ("height", "320", "input.height '320' is not an integer"),
    ("scale", "1/255", "input.scale '1/255' is not a number"),
])
def test_contract_values_of_the_wrong_type(tmp_path, key, value, message):
    doc = json.loads(reference_contract().to_json())
    doc["input"][key] = value
    path = write_model_with_metadata(str(tmp_path / "typed.onnx"), {METADATA_KEY: json.dumps(doc)})
    with pytest.raises(BackendContractError, match=message):
        open_ort(path)


def test_class_names_must_be_a_list(tmp_path):
    path = write_model_with_broken_contract(str(tmp_path / "names.onnx"), {"class_names": "person"})
    with pytest.raises(BackendContractError, match="class_names must be a list of strings"):
        open_ort(path)


def test_contract_that_is_not_json(tmp_path):
    path = write_model_with_metadata(str(tmp_path / "text.onnx"), {METADATA_KEY: "person,vehicle"})
    with pytest.raises(BackendContractError, match="not valid JSON"):
        open_ort(path)


def write_with_contract(path, contract, **kwargs):
    import onnx

    onnx.save(build_reference_model(contract=contract, **kwargs), path)
    return path


def test_input_size_mismatch_between_contract_and_graph(tmp_path):
    lying = reference_contract(input_size=(256, 256))
    path = write_with_contract(str(tmp_path / "lies.onnx"), lying)
    with pytest.raises(BackendContractError,
                       match=r"input 'images' has shape \[1, 3, 320, 320\] in the graph but the "
                             r"contract says \[1, 3, 256, 256\]"):
        open_ort(path)


def test_layout_mismatch_between_contract_and_graph(tmp_path):
    path = write_with_contract(str(tmp_path / "nhwc.onnx"), reference_contract(input_layout="NHWC"))
    with pytest.raises(BackendContractError, match="NHWC"):
        open_ort(path)


def test_class_count_mismatch_between_contract_and_graph(tmp_path):
    contract = reference_contract(class_names=("person", "vehicle", "obstacle", "boat"))
    path = write_with_contract(str(tmp_path / "classes.onnx"), contract)
    with pytest.raises(BackendContractError, match="with 4 classes needs 8 along axis -1"):
        open_ort(path)


def test_output_name_mismatch(tmp_path):
    doc = json.loads(reference_contract().to_json())
    doc["output"]["name"] = "boxes"
    path = write_model_with_metadata(str(tmp_path / "name.onnx"), {METADATA_KEY: json.dumps(doc)})
    with pytest.raises(BackendContractError, match=r"contract names output 'boxes'.*\['detections'\]"):
        open_ort(path)


def test_nhwc_and_xyxy_models_open(tmp_path):
    path = write_reference_model(str(tmp_path / "nhwc.onnx"), layout="xyxy_score_class",
                                 input_layout="NHWC", input_size=(64, 96))
    backend = open_ort(path)
    assert backend.input_shape == (1, 64, 96, 3)
    assert backend.infer(np.zeros((1, 64, 96, 3), np.float32)).shape == (1, 6, 6)


def test_wrong_input_tensor_shape(model_path):
    backend = open_ort(model_path)
    with pytest.raises(BackendError, match=r"input tensor shape \(1, 3, 160, 160\) does not match"):
        backend.infer(np.zeros((1, 3, 160, 160), np.float32))


def test_bad_backend_names_and_options(model_path):
    with pytest.raises(BackendError, match="unknown backend 'openvino'"):
        open_backend(model_path, backend="openvino")
    with pytest.raises(BackendError, match=r"unknown backend option\(s\) \['threads'\]"):
        open_backend(model_path, threads=2)
    with pytest.raises(BackendError, match=r"\['fp16'\] do not apply to the onnxruntime backend"):
        open_backend(model_path, backend="onnxruntime", fp16=True)
    with pytest.raises(BackendError, match="provider.*'NoSuchExecutionProvider'.*available"):
        open_backend(model_path, backend="onnxruntime", providers=["NoSuchExecutionProvider"])


def test_auto_drops_tensorrt_options_when_falling_back(model_path):
    if tensorrt_unavailable_reason() is None:
        pytest.skip("TensorRT is usable here")
    backend = open_backend(model_path, fp16=True, workspace_mb=256, intra_op_num_threads=1)
    assert backend.name == "onnxruntime"


def test_engine_files_need_tensorrt(tmp_path):
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"not an engine")
    with pytest.raises(BackendError, match="is a TensorRT engine; ONNX Runtime needs the .onnx"):
        open_backend(str(engine), backend="onnxruntime")
    reason = tensorrt_unavailable_reason()
    if reason is None:
        pytest.skip("TensorRT is usable here")
    for backend in ("auto", "tensorrt"):
        with pytest.raises(BackendError, match="TensorRT backend unavailable.*not importable"):
            open_backend(str(engine), backend=backend)


def test_default_providers_prefer_gpu_and_cache_trt_engines_beside_the_model():
    chosen = default_providers(["CPUExecutionProvider", "CUDAExecutionProvider",
                                "TensorrtExecutionProvider"], "/tmp/det.onnx")
    assert chosen[0][0] == "TensorrtExecutionProvider"
    assert chosen[0][1]["trt_engine_cache_path"] == "/tmp"
    assert chosen[1:] == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert default_providers(["CPUExecutionProvider"], "m.onnx") == ["CPUExecutionProvider"]


@pytest.mark.parametrize("names", [("person", "vehicle"), ("a", "b", "c", "d", "e")])
def test_reference_models_with_other_class_counts(tmp_path, names):
    path = write_reference_model(str(tmp_path / "n.onnx"), input_size=(64, 64), class_names=names)
    backend = open_ort(path)
    tensor = np.zeros((1, 3, 64, 64), np.float32)
    tensor[0, 1] = 1.0  # all green: class 1 everywhere
    out = backend.infer(tensor)
    assert out.shape == (1, 4, 4 + len(names))
    np.testing.assert_allclose(out[0, :, 5], 1.0)
    assert np.delete(out[0, :, 4:], 1, axis=1).max() == 0.0
