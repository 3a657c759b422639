"""TensorRT backend over pycuda: page-locked host buffers, async copies and execution on one
CUDA stream.

Two TensorRT APIs are in the field: the binding-index API of TensorRT < 8.5 (JetPack 4.6 on
the Jetson Nano ships 8.2: ``execute_async_v2`` with a bindings list) and the tensor-name API
of 8.5 to 10.x (``set_tensor_address`` + ``execute_async_v3``; 10.x removed bindings).
:func:`uses_tensor_api` picks one from the version. ``tensorrt`` and ``pycuda`` are imported
only inside functions, so this module imports everywhere.

An engine's contract travels in its sidecar ``<engine>.json``
(:func:`~evit_perception.model_contract.sidecar_path`). Given an ONNX, :func:`open_tensorrt`
builds an FP16 engine on first start and caches it beside the model as
``<model>.<tensorrt version>.<gpu>.fp16.engine``; the sidecar records the ONNX's SHA-256 so
a replaced model is rebuilt rather than served stale.
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import re
import threading
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from evit_perception.backends.base import BackendContractError, BackendError, InferenceBackend
from evit_perception.model_contract import ModelContract, ModelContractError, sidecar_path

#: First TensorRT version with the tensor-name API (``execute_async_v3``).
TENSOR_API_SINCE = (8, 5)
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")

_log = logging.getLogger(__name__)


def parse_version(version: str) -> Tuple[int, ...]:
    """``"8.2.1.8"`` -> ``(8, 2, 1, 8)``; non-numeric tails (``"10.3.0.post1"``) are dropped."""
    parts: List[int] = []
    for piece in str(version).split("."):
        digits = re.match(r"\d+", piece)
        if not digits:
            break
        parts.append(int(digits.group()))
    if not parts:
        raise ValueError(f"not a TensorRT version: {version!r}")
    return tuple(parts)


def uses_tensor_api(version: str) -> bool:
    """Whether TensorRT ``version`` is run through the tensor-name API (8.5 and later)."""
    return parse_version(version)[:2] >= TENSOR_API_SINCE


def sanitize_device_name(name: str) -> str:
    """A GPU name fit for a file name.

    ``"NVIDIA Jetson Orin (8GB)"`` -> ``"nvidia_jetson_orin_8gb"``.
    """
    return re.sub(r"[^a-z0-9]+", "_", str(name).lower()).strip("_") or "gpu"


def user_cache_dir() -> str:
    """``$XDG_CACHE_HOME/evit_perception`` (default ``~/.cache/evit_perception``)."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "evit_perception")


def engine_cache_dir(model_path: str) -> str:
    """The model's own folder when writable (the usual case), else :func:`user_cache_dir`
    (models installed read-only, e.g. in a container image)."""
    folder = os.path.dirname(os.path.abspath(model_path))
    return folder if os.access(folder, os.W_OK) else user_cache_dir()


def engine_cache_path(onnx_path: str, trt_version: Optional[str] = None,
                      gpu_name: Optional[str] = None, precision: str = "fp16") -> str:
    """Where the engine built from ``onnx_path`` is cached:
    ``<model>.<trt version>.<gpu name sanitised>.<precision>.engine`` beside the model
    (in :func:`user_cache_dir` when the model's folder is read-only).

    An engine only runs on the TensorRT version and GPU model that built it, hence the key.
    ``trt_version`` and ``gpu_name`` default to the installed TensorRT and CUDA device 0.
    """
    base = os.path.basename(str(onnx_path))
    if base.lower().endswith(".onnx"):
        base = base[:-5]
    base = os.path.join(engine_cache_dir(onnx_path), base)
    if trt_version is None:
        import tensorrt as trt

        trt_version = trt.__version__
    if gpu_name is None:
        gpu_name = current_gpu_name()
    return f"{base}.{trt_version}.{sanitize_device_name(gpu_name)}.{precision}.engine"


def current_gpu_name(device_id: int = 0) -> str:
    """The CUDA device's name as the driver reports it."""
    import pycuda.driver as cuda

    cuda.init()
    return str(cuda.Device(device_id).name())


@functools.lru_cache(maxsize=1)
def tensorrt_unavailable_reason() -> Optional[str]:
    """``None`` when TensorRT, pycuda and a CUDA device are all present, else why not."""
    try:
        import tensorrt  # noqa: F401
    except Exception as exc:  # ImportError, or a broken install raising OSError
        return f"the tensorrt Python package is not importable ({exc})"
    try:
        import pycuda.driver as cuda
    except Exception as exc:
        return f"pycuda is not importable ({exc})"
    try:
        cuda.init()
        count = cuda.Device.count()
    except Exception as exc:
        return f"the CUDA driver is not usable ({exc})"
    if count == 0:
        return "no CUDA device found"
    return None


def file_sha256(path: str) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_sidecar_contract(engine_path: str) -> ModelContract:
    """The contract stored beside an engine; :class:`BackendContractError` when absent/invalid."""
    path = sidecar_path(engine_path)
    if not os.path.isfile(path):
        raise BackendContractError(
            f"{engine_path}: no contract sidecar {path}; engines must be built with "
            "`evit build-engine` (or evit_perception.backends.tensorrt_build.build_engine), "
            "which writes it (see docs/model_contract.md)")
    with open(path, "r", encoding="utf-8") as f:
        text = f.read()
    try:
        return ModelContract.from_json(text, path)
    except ModelContractError as exc:
        raise BackendContractError(str(exc)) from exc


def cached_engine_is_fresh(engine_path: str, onnx_path: str) -> bool:
    """Whether a cached engine exists, has its sidecar, and was built from ``onnx_path``'s bytes."""
    if not (os.path.isfile(engine_path) and os.path.isfile(sidecar_path(engine_path))):
        return False
    try:
        with open(sidecar_path(engine_path), "r", encoding="utf-8") as f:
            built_from = json.load(f).get("extra", {}).get("engine", {}).get("source_sha256")
    except (OSError, ValueError, AttributeError):
        return False
    return built_from == file_sha256(onnx_path)


def open_tensorrt(model_path: str, device_id: int = 0, fp16: bool = True,
                  workspace_mb: int = 1024, engine_path: Optional[str] = None,
                  rebuild: bool = False) -> "TensorRTBackend":
    """Open an engine, or an ONNX through its cached (built on first use) engine."""
    reason = tensorrt_unavailable_reason()
    if reason:
        raise BackendError(f"TensorRT backend unavailable for {model_path}: {reason}")
    if str(model_path).lower().endswith(ENGINE_SUFFIXES):
        return TensorRTBackend(model_path, device_id=device_id)
    if engine_path is None:
        engine_path = engine_cache_path(model_path, gpu_name=current_gpu_name(device_id),
                                        precision="fp16" if fp16 else "fp32")
    if rebuild or not cached_engine_is_fresh(engine_path, model_path):
        _log.warning("building a TensorRT engine for %s at %s (first start with this model, "
                     "TensorRT and GPU; this can take minutes)", model_path, engine_path)
        build_engine(model_path, engine_path, fp16=fp16, workspace_mb=workspace_mb,
                     device_id=device_id)
    return TensorRTBackend(engine_path, device_id=device_id)


def build_engine(onnx_path: str, engine_path: str, fp16: bool = True, int8: bool = False,
                 calibration_batches: Optional[Any] = None, workspace_mb: int = 1024,
                 timing_cache_path: Optional[str] = None, device_id: int = 0,
                 calibration_cache_path: Optional[str] = None) -> str:
    """Build an engine plus contract sidecar; see :func:`.tensorrt_build.build_engine`
    (reachable here too because docs/ARCHITECTURE.md lists it with this module)."""
    from evit_perception.backends.tensorrt_build import build_engine as build

    return build(onnx_path, engine_path, fp16=fp16, int8=int8,
                 calibration_batches=calibration_batches, workspace_mb=workspace_mb,
                 timing_cache_path=timing_cache_path, device_id=device_id,
                 calibration_cache_path=calibration_cache_path)


class _IoTensor:
    """One engine input or output: its page-locked host buffer and device buffer."""

    __slots__ = ("name", "index", "is_input", "shape", "dtype", "host", "device")

    def __init__(self, name: str, index: int, is_input: bool, shape: Tuple[int, ...],
                 dtype: np.dtype) -> None:
        self.name, self.index, self.is_input = name, index, is_input
        self.shape, self.dtype = shape, dtype
        self.host: Any = None
        self.device: Any = None


class TensorRTBackend(InferenceBackend):
    """Runs a serialized TensorRT engine whose contract sits in ``<engine>.json``."""

    name = "tensorrt"

    def __init__(self, engine_path: str, device_id: int = 0) -> None:
        import pycuda.driver as cuda
        import tensorrt as trt

        self.model_path = str(engine_path)
        if not os.path.isfile(self.model_path):
            raise BackendError(f"engine file not found: {self.model_path}")
        self.contract = read_sidecar_contract(self.model_path)
        self.trt_version = trt.__version__
        self._tensor_api = uses_tensor_api(trt.__version__)
        self._lock = threading.Lock()
        cuda.init()
        device = cuda.Device(device_id)
        # The primary context is the one TensorRT's CUDA runtime calls use too.
        self._cuda_context = device.retain_primary_context()
        self._cuda_context.push()
        try:
            self._logger = trt.Logger(trt.Logger.WARNING)
            self._runtime = trt.Runtime(self._logger)
            with open(self.model_path, "rb") as f:
                data = f.read()
            try:  # most versions log and return None for bad bytes; some raise
                engine = self._runtime.deserialize_cuda_engine(data)
            except Exception:
                engine = None
            if engine is None:
                raise BackendError(
                    f"{self.model_path}: TensorRT {trt.__version__} cannot deserialize this "
                    "engine (corrupt, or built by another TensorRT version or for another GPU); "
                    "rebuild it from the ONNX")
            self._engine = engine
            self._context = engine.create_execution_context()
            self._stream = cuda.Stream()
            self._io = self._bind_io(trt)
            for io in self._io:
                io.host = cuda.pagelocked_empty(int(np.prod(io.shape)), io.dtype)
                io.device = cuda.mem_alloc(io.host.nbytes)
                if self._tensor_api:
                    self._context.set_tensor_address(io.name, int(io.device))
            self._bindings = [int(io.device) for io in sorted(self._io, key=lambda t: t.index)]
        except Exception:
            self._cuda_context.pop()
            self._cuda_context.detach()
            self._cuda_context = None
            raise
        self._cuda_context.pop()
        by_name = {io.name: io for io in self._io}
        self._input = by_name[self.contract.input.name]
        self._output = by_name[self.contract.output.name]
        self.providers = [f"TensorRT {trt.__version__} on {device.name()}"]

    def _bind_io(self, trt: Any) -> List[_IoTensor]:
        """Engine I/O with shapes resolved for a batch of one; checked against the contract."""
        engine, context = self._engine, self._context
        io: List[_IoTensor] = []
        if self._tensor_api:
            for i in range(engine.num_io_tensors):
                name = engine.get_tensor_name(i)
                is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
                dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
                io.append(_IoTensor(name, i, is_input, tuple(engine.get_tensor_shape(name)), dtype))
        else:
            for i in range(engine.num_bindings):
                dtype = np.dtype(trt.nptype(engine.get_binding_dtype(i)))
                io.append(_IoTensor(engine.get_binding_name(i), i, engine.binding_is_input(i),
                                    tuple(engine.get_binding_shape(i)), dtype))
        names = [t.name for t in io]
        for want in (self.contract.input.name, self.contract.output.name):
            if want not in names:
                raise BackendContractError(
                    f"{self.model_path}: contract names tensor '{want}' but the engine has {names}")
        for t in io:  # inputs first: dynamic output shapes follow from them
            if t.is_input:
                if t.name == self.contract.input.name and -1 in t.shape:
                    if self._tensor_api:
                        context.set_input_shape(t.name, self.input_shape)
                    else:
                        context.set_binding_shape(t.index, self.input_shape)
                t.shape = tuple(context.get_tensor_shape(t.name) if self._tensor_api
                                else context.get_binding_shape(t.index))
        for t in io:
            if not t.is_input:
                t.shape = tuple(context.get_tensor_shape(t.name) if self._tensor_api
                                else context.get_binding_shape(t.index))
        model_input = next(t for t in io if t.name == self.contract.input.name)
        if model_input.shape != self.input_shape:
            raise BackendContractError(
                f"{self.model_path}: engine input '{model_input.name}' is {model_input.shape} "
                f"but the contract says {self.input_shape}")
        unresolved = [t.name for t in io if any(d < 0 for d in t.shape)]
        if unresolved:
            raise BackendError(f"{self.model_path}: tensors {unresolved} keep dynamic shapes")
        return io

    def infer(self, tensor: np.ndarray) -> np.ndarray:
        """Copy in, execute, copy out on one stream; returns a float32 copy of the output."""
        import pycuda.driver as cuda

        self.check_input(tensor)
        with self._lock:
            self._cuda_context.push()
            try:
                np.copyto(self._input.host.reshape(self._input.shape), tensor, casting="unsafe")
                cuda.memcpy_htod_async(self._input.device, self._input.host, self._stream)
                if self._tensor_api:
                    ok = self._context.execute_async_v3(self._stream.handle)
                else:
                    ok = self._context.execute_async_v2(self._bindings, self._stream.handle)
                if not ok:
                    raise BackendError(f"{self.model_path}: TensorRT execution failed")
                cuda.memcpy_dtoh_async(self._output.host, self._output.device, self._stream)
                self._stream.synchronize()
            finally:
                self._cuda_context.pop()
            return self._output.host.reshape(self._output.shape).astype(np.float32)

    def close(self) -> None:
        if getattr(self, "_cuda_context", None) is None:
            return
        with self._lock:
            self._cuda_context.push()
            try:
                for io in self._io:
                    io.device.free()
                self._context = None
                self._engine = None
                self._stream = None
            finally:
                self._cuda_context.pop()
                self._cuda_context.detach()
                self._cuda_context = None


def engine_info(onnx_path: str, trt_version: str, gpu_name: str, precision: str) -> Dict[str, str]:
    """What the sidecar's ``extra.engine`` records about how an engine was built."""
    return {"source_onnx": os.path.basename(onnx_path), "source_sha256": file_sha256(onnx_path),
            "tensorrt": trt_version, "gpu": gpu_name, "precision": precision}
