"""TensorRT backend: pure-Python pieces everywhere, engine build and inference where CUDA exists.

The GPU tests skip with the reason (no tensorrt/pycuda package, no CUDA device) on machines
like the development container; run them on a Jetson or a CUDA workstation. The backend's
control flow for the binding API (< 8.5) and the tensor-name API (8.5 to 10.x) is also run
against a stand-in for the TensorRT runtime and CUDA device, which cannot exist here.
"""
import dataclasses
import os

import numpy as np
import pytest
from support.reference_model import (colour_square, write_model_without_metadata,
                                     write_reference_model)

from evit_perception.backends import BackendContractError, BackendError, open_backend
from evit_perception.backends.tensorrt_backend import (cached_engine_is_fresh, engine_cache_path,
                                                       engine_info, parse_version,
                                                       read_sidecar_contract,
                                                       sanitize_device_name,
                                                       tensorrt_unavailable_reason,
                                                       uses_tensor_api)
from evit_perception.backends.tensorrt_build import (build_engine, read_onnx_contract,
                                                     write_sidecar)
from evit_perception.model_contract import sidecar_path

UNAVAILABLE = tensorrt_unavailable_reason()
needs_gpu = pytest.mark.skipif(UNAVAILABLE is not None,
                               reason=f"TensorRT tests need tensorrt, pycuda and a CUDA device: {UNAVAILABLE}")


@pytest.mark.parametrize("version,tensor_api", [
    ("8.2.1.8", False),   # JetPack 4.6 (Jetson Nano): bindings + execute_async_v2
    ("8.4.3.1", False),
    ("8.5.2.2", True),    # JetPack 5.1: tensor names + execute_async_v3
    ("8.6.1.post1", True),
    ("10.3.0", True),     # JetPack 6: bindings API removed
    ("10.0.0b6", True),
])
def test_api_dispatch_by_version(version, tensor_api):
    assert uses_tensor_api(version) is tensor_api


def test_parse_version():
    assert parse_version("8.6.1.post1") == (8, 6, 1)
    with pytest.raises(ValueError, match="not a TensorRT version"):
        parse_version("unknown")


def test_engine_cache_path_is_keyed_by_version_gpu_and_precision(tmp_path, monkeypatch):
    model = str(tmp_path / "det.onnx")
    path = engine_cache_path(model, trt_version="8.2.1.8",
                             gpu_name="NVIDIA Tegra X1 (nvgpu)/integrated")
    assert path == str(tmp_path / "det.8.2.1.8.nvidia_tegra_x1_nvgpu_integrated.fp16.engine")
    monkeypatch.chdir(tmp_path)
    assert engine_cache_path("m.ONNX", "10.3.0", "Orin", "int8") == \
        str(tmp_path / "m.10.3.0.orin.int8.engine")
    assert sanitize_device_name("  ") == "gpu"


def test_user_cache_dir_follows_xdg(monkeypatch, tmp_path):
    from evit_perception.backends.tensorrt_backend import user_cache_dir

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert user_cache_dir() == str(tmp_path / "evit_perception")


def test_onnx_contract_is_read_for_the_sidecar(tmp_path):
    onnx_path = write_reference_model(str(tmp_path / "det.onnx"))
    assert read_onnx_contract(onnx_path).class_names == ("person", "vehicle", "obstacle")
    bare = write_model_without_metadata(str(tmp_path / "bare.onnx"))
    with pytest.raises(BackendContractError, match="no 'evit.model' metadata"):
        read_onnx_contract(bare)
    with pytest.raises(BackendError, match="not found"):
        read_onnx_contract(str(tmp_path / "missing.onnx"))


def test_cached_engine_freshness_follows_the_onnx_bytes(tmp_path):
    onnx_path = write_reference_model(str(tmp_path / "det.onnx"))
    engine = engine_cache_path(onnx_path, "10.3.0", "Orin")
    assert not cached_engine_is_fresh(engine, onnx_path)  # nothing cached yet
    with open(engine, "wb") as f:
        f.write(b"engine bytes")
    assert not cached_engine_is_fresh(engine, onnx_path)  # no sidecar
    contract = read_onnx_contract(onnx_path)
    extra = {"engine": engine_info(onnx_path, "10.3.0", "Orin", "fp16")}
    write_sidecar(engine, dataclasses.replace(contract, extra=extra))
    assert cached_engine_is_fresh(engine, onnx_path)
    assert read_sidecar_contract(engine).extra["engine"]["gpu"] == "Orin"
    write_reference_model(onnx_path, input_size=(256, 256))  # the model was replaced
    assert not cached_engine_is_fresh(engine, onnx_path)


def test_engine_without_sidecar_or_with_bad_sidecar(tmp_path):
    engine = str(tmp_path / "det.engine")
    with pytest.raises(BackendContractError, match=r"no contract sidecar .*det.engine.json"):
        read_sidecar_contract(engine)
    with open(sidecar_path(engine), "w") as f:
        f.write('{"format": "evit-detector", "format_version": 2}')
    with pytest.raises(BackendContractError, match="format_version 2 is not supported"):
        read_sidecar_contract(engine)


@pytest.mark.skipif(UNAVAILABLE is None, reason="TensorRT is usable here")
def test_without_tensorrt_the_errors_say_why(tmp_path):
    onnx_path = write_reference_model(str(tmp_path / "det.onnx"))
    with pytest.raises(BackendError, match="TensorRT backend unavailable.*" + UNAVAILABLE.split("(")[0]):
        open_backend(onnx_path, backend="tensorrt")
    with pytest.raises(BackendError, match="cannot build a TensorRT engine"):
        build_engine(onnx_path, str(tmp_path / "det.engine"))


# -- on a CUDA device ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory):
    return write_reference_model(str(tmp_path_factory.mktemp("trt") / "det.onnx"))


@needs_gpu
def test_onnx_builds_a_cached_fp16_engine_that_matches_onnxruntime(onnx_model):
    import tensorrt as trt

    from evit_perception.backends.tensorrt_backend import current_gpu_name

    backend = open_backend(onnx_model, backend="tensorrt")
    expected = engine_cache_path(onnx_model, trt.__version__, current_gpu_name(), "fp16")
    assert backend.model_path == expected and os.path.isfile(sidecar_path(expected))
    reference = open_backend(onnx_model, backend="onnxruntime",
                             providers=["CPUExecutionProvider"])
    tensor = np.random.default_rng(0).uniform(0, 1, (1, 3, 320, 320)).astype(np.float32)
    np.testing.assert_allclose(backend.infer(tensor), reference.infer(tensor), atol=2e-2)
    built_at = os.path.getmtime(expected)
    backend.close()
    again = open_backend(onnx_model, backend="tensorrt")  # served from the cache
    assert os.path.getmtime(expected) == built_at
    again.close()


@needs_gpu
def test_detector_on_tensorrt_finds_the_red_square(onnx_model):
    from evit_perception.detector import Detector

    backend = open_backend(onnx_model, backend="tensorrt")
    det = Detector(backend).detect(colour_square(480, 640, (128, 48, 192, 112)))
    np.testing.assert_allclose(det.boxes, [[128, 48, 192, 112]], atol=0.5)
    backend.close()


@needs_gpu
def test_corrupt_engine_is_refused(onnx_model, tmp_path):
    engine = str(tmp_path / "bad.engine")
    with open(engine, "wb") as f:
        f.write(b"\x00" * 1024)
    write_sidecar(engine, read_onnx_contract(onnx_model))
    with pytest.raises(BackendError, match="cannot deserialize this engine"):
        open_backend(engine)


@needs_gpu
def test_int8_engine_with_calibration_batches(onnx_model, tmp_path):
    engine = str(tmp_path / "det.int8.engine")
    batches = (np.random.default_rng(i).uniform(0, 1, (1, 3, 320, 320)).astype(np.float32)
               for i in range(4))
    build_engine(onnx_model, engine, fp16=True, int8=True, calibration_batches=batches,
                 timing_cache_path=str(tmp_path / "timing.cache"))
    assert os.path.isfile(engine + ".calib") and os.path.isfile(str(tmp_path / "timing.cache"))
    backend = open_backend(engine)
    assert backend.contract.extra["engine"]["precision"] == "int8"
    backend.close()


@pytest.mark.skipif(UNAVAILABLE is None, reason="TensorRT is usable here")
def test_build_engine_is_reachable_from_the_backend_module(tmp_path):
    from evit_perception.backends import tensorrt_backend

    onnx_path = write_reference_model(str(tmp_path / "det.onnx"))
    with pytest.raises(BackendError, match="cannot build a TensorRT engine from .*det.onnx"):
        tensorrt_backend.build_engine(onnx_path, str(tmp_path / "det.engine"), workspace_mb=64)


# -- TensorRTBackend's control flow on both TensorRT APIs, without a GPU ---------------------
# A CUDA device cannot exist here, so the TensorRT runtime and pycuda are replaced by a small
# stand-in: "device memory" is numpy buffers keyed by fake pointers, and the "engine" writes
# one detection row whose score is the input's maximum. Everything of ours (I/O discovery,
# dynamic-shape resolution, page-locked buffers, copies, execute call, context push/pop,
# freeing) runs for real against it.

class _FakeCuda:
    def __init__(self):
        self.memory, self.context_depth, self.freed = {}, 0, 0
        test = self

        class Allocation:
            def __init__(self, nbytes):
                self.ptr = 0x1000 + len(test.memory)
                test.memory[self.ptr] = np.zeros(nbytes, np.uint8)

            def __int__(self):
                return self.ptr

            def free(self):
                test.freed += 1

        class Context:
            def push(self):
                test.context_depth += 1

            def pop(self):
                test.context_depth -= 1

            def detach(self):
                pass

        class Device:
            def __init__(self, index):
                pass

            @staticmethod
            def count():
                return 1

            def name(self):
                return "Stand-in GPU"

            def retain_primary_context(self):
                return Context()

        class Stream:
            handle = 7

            def synchronize(self):
                pass

        self.Device, self.Stream, self.mem_alloc = Device, Stream, Allocation

    def init(self):
        pass

    def pagelocked_empty(self, size, dtype):
        return np.empty(size, dtype)

    def memcpy_htod_async(self, device, host, stream):
        self.memory[int(device)][:] = host.view(np.uint8)

    def memcpy_dtoh_async(self, host, device, stream):
        host.view(np.uint8)[:] = self.memory[int(device)]


def _fake_tensorrt(version, cuda, input_shape=(-1, 3, 320, 320)):
    import types

    trt = types.SimpleNamespace(__version__=version)
    trt.TensorIOMode = types.SimpleNamespace(INPUT="in", OUTPUT="out")
    trt.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, level: None})
    trt.nptype = lambda dtype: dtype
    tensors = [("images", True, input_shape), ("detections", False, (1, 2, 6))]

    class Context:
        def __init__(self):
            self.shapes = {name: shape for name, _, shape in tensors}
            self.addresses = {}

        # tensor-name API (8.5+)
        def set_input_shape(self, name, shape):
            self.shapes[name] = tuple(shape)

        def get_tensor_shape(self, name):
            return self.shapes[name]

        def set_tensor_address(self, name, ptr):
            self.addresses[name] = ptr

        def execute_async_v3(self, stream_handle):
            return self._run(self.addresses["images"], self.addresses["detections"])

        # binding API (< 8.5)
        def set_binding_shape(self, index, shape):
            self.shapes[tensors[index][0]] = tuple(shape)

        def get_binding_shape(self, index):
            return self.shapes[tensors[index][0]]

        def execute_async_v2(self, bindings, stream_handle):
            return self._run(bindings[0], bindings[1])

        def _run(self, in_ptr, out_ptr):
            image = cuda.memory[in_ptr].view(np.float32)
            out = cuda.memory[out_ptr].view(np.float32).reshape(2, 6)
            out[:] = 0
            out[0] = [10, 20, 30, 40, image.max(), 1]
            return True

    class Engine:
        def create_execution_context(self):
            return Context()

    if uses_tensor_api(version):
        Engine.num_io_tensors = len(tensors)
        Engine.get_tensor_name = lambda self, i: tensors[i][0]
        Engine.get_tensor_mode = lambda self, name: "in" if name == "images" else "out"
        Engine.get_tensor_dtype = lambda self, name: np.float32
        Engine.get_tensor_shape = lambda self, name: dict((n, s) for n, _, s in tensors)[name]
    else:
        Engine.num_bindings = len(tensors)
        Engine.get_binding_name = lambda self, i: tensors[i][0]
        Engine.binding_is_input = lambda self, i: tensors[i][1]
        Engine.get_binding_dtype = lambda self, i: np.float32
        Engine.get_binding_shape = lambda self, i: tensors[i][2]

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, data):
            return Engine() if data == b"stand-in engine" else None

    trt.Runtime = Runtime
    return trt


@pytest.fixture
def stand_in_engine(tmp_path, monkeypatch):
    import sys
    import types

    def install(version, input_shape=(-1, 3, 320, 320)):
        cuda = _FakeCuda()
        pycuda = types.ModuleType("pycuda")
        pycuda.driver = cuda
        monkeypatch.setitem(sys.modules, "pycuda", pycuda)
        monkeypatch.setitem(sys.modules, "pycuda.driver", cuda)
        monkeypatch.setitem(sys.modules, "tensorrt", _fake_tensorrt(version, cuda, input_shape))
        onnx_path = write_reference_model(str(tmp_path / "det.onnx"), layout="xyxy_score_class",
                                          top_k=2)
        engine = str(tmp_path / "det.engine")
        with open(engine, "wb") as f:
            f.write(b"stand-in engine")
        write_sidecar(engine, read_onnx_contract(onnx_path))
        return engine, cuda

    return install


@pytest.mark.parametrize("version", ["8.2.1.8", "8.6.1", "10.3.0"])
def test_backend_runs_both_tensorrt_apis(stand_in_engine, version):
    from evit_perception.backends.tensorrt_backend import TensorRTBackend

    engine, cuda = stand_in_engine(version)
    backend = TensorRTBackend(engine)
    assert backend._tensor_api is uses_tensor_api(version)
    assert backend.providers == [f"TensorRT {version} on Stand-in GPU"]
    assert backend._input.shape == (1, 3, 320, 320)  # dynamic batch pinned to 1
    tensor = np.zeros((1, 3, 320, 320), np.float32)
    tensor[0, 1, 5, 5] = 0.8
    out = backend.infer(tensor)
    np.testing.assert_allclose(out[0, 0], [10, 20, 30, 40, 0.8, 1])
    assert out.dtype == np.float32 and cuda.context_depth == 0
    tensor[0, 1, 5, 5] = 0.4
    first = out.copy()
    assert backend.infer(tensor)[0, 0, 4] == pytest.approx(0.4)
    np.testing.assert_array_equal(out, first)  # results are copies, not the pinned buffer
    with pytest.raises(BackendError, match="input tensor shape"):
        backend.infer(np.zeros((1, 3, 32, 32), np.float32))
    backend.close()
    assert cuda.freed == 2 and cuda.context_depth == 0
    backend.close()  # twice is harmless


def test_backend_refuses_engine_the_runtime_rejects(stand_in_engine):
    from evit_perception.backends.tensorrt_backend import TensorRTBackend

    engine, cuda = stand_in_engine("10.3.0")
    with open(engine, "wb") as f:
        f.write(b"\x00" * 64)
    with pytest.raises(BackendError, match="TensorRT 10.3.0 cannot deserialize this engine"):
        TensorRTBackend(engine)
    assert cuda.context_depth == 0


def test_backend_refuses_engine_whose_input_disagrees_with_the_contract(stand_in_engine):
    from evit_perception.backends.tensorrt_backend import TensorRTBackend

    engine, _ = stand_in_engine("8.2.1.8", input_shape=(1, 3, 256, 256))
    with pytest.raises(BackendContractError, match=r"engine input 'images' is \(1, 3, 256, 256\)"):
        TensorRTBackend(engine)
