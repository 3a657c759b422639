"""Build a TensorRT engine from a contract-carrying ONNX, and write the contract sidecar.

Works with TensorRT 8.2 (``max_workspace_size``, ``build_engine``) through 10.x
(``set_memory_pool_limit``, ``build_serialized_network``). FP16 by default; INT8 either from
Q/DQ nodes already in the ONNX (``evit quantize`` output) or calibrated here from
``calibration_batches`` with an entropy calibrator whose cache is kept beside the engine.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Iterable, Iterator, Optional

import numpy as np

from evit_perception.backends.base import BackendContractError, BackendError
from evit_perception.backends.tensorrt_backend import (current_gpu_name, engine_info,
                                                       parse_version, tensorrt_unavailable_reason)
from evit_perception.model_contract import (ModelContract, ModelContractError,
                                            contract_from_metadata, sidecar_path)

_log = logging.getLogger(__name__)


def read_onnx_contract(onnx_path: str) -> ModelContract:
    """The contract embedded in an ONNX file (read with ``onnx``, else ONNX Runtime)."""
    if not os.path.isfile(onnx_path):
        raise BackendError(f"model file not found: {onnx_path}")
    try:
        import onnx
    except ImportError:
        onnx = None
    try:
        if onnx is not None:
            model = onnx.load(onnx_path, load_external_data=False)
            metadata = {p.key: p.value for p in model.metadata_props}
        else:
            import onnxruntime as ort

            session = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
            metadata = session.get_modelmeta().custom_metadata_map
    except Exception as exc:
        raise BackendError(f"{onnx_path}: cannot read this ONNX file ({type(exc).__name__}: "
                           f"{str(exc).strip()[:300]})") from exc
    try:
        return contract_from_metadata(metadata, onnx_path)
    except ModelContractError as exc:
        raise BackendContractError(str(exc)) from exc


def write_sidecar(engine_path: str, contract: ModelContract) -> str:
    """Write ``contract`` as the engine's sidecar JSON; returns its path."""
    path = sidecar_path(engine_path)
    _atomic_write(path, contract.to_json().encode("utf-8"))
    return path


def build_engine(onnx_path: str, engine_path: str, fp16: bool = True, int8: bool = False,
                 calibration_batches: Optional[Iterable[np.ndarray]] = None,
                 workspace_mb: int = 1024, timing_cache_path: Optional[str] = None,
                 device_id: int = 0, calibration_cache_path: Optional[str] = None) -> str:
    """Build and save an engine for ``onnx_path`` at ``engine_path`` (+ contract sidecar).

    ``int8`` with ``calibration_batches`` (an iterable of input tensors shaped as the
    contract says) calibrates with ``IInt8EntropyCalibrator2`` and caches the scales in
    ``calibration_cache_path`` (default ``<engine>.calib``); ``int8`` without batches needs
    Q/DQ nodes in the ONNX. ``timing_cache_path`` keeps TensorRT's kernel timings between
    builds (much faster rebuilds on a Jetson). Returns ``engine_path``.
    """
    reason = tensorrt_unavailable_reason()
    if reason:
        raise BackendError(f"cannot build a TensorRT engine from {onnx_path}: {reason}")
    import pycuda.driver as cuda
    import tensorrt as trt

    contract = read_onnx_contract(onnx_path)
    cuda.init()
    cuda_context = cuda.Device(device_id).retain_primary_context()
    cuda_context.push()
    try:
        plan = _build_plan(trt, onnx_path, contract, fp16, int8, calibration_batches,
                           workspace_mb, timing_cache_path,
                           calibration_cache_path or engine_path + ".calib")
    finally:
        cuda_context.pop()
        cuda_context.detach()
    precision = "int8" if int8 else ("fp16" if fp16 else "fp32")
    info = engine_info(onnx_path, trt.__version__, current_gpu_name(device_id), precision)
    extra = dict(contract.extra)
    extra["engine"] = info
    _atomic_write(engine_path, bytes(plan))
    write_sidecar(engine_path, dataclasses.replace(contract, extra=extra))
    _log.info("built %s engine %s from %s", precision, engine_path, onnx_path)
    return engine_path


def _build_plan(trt: Any, onnx_path: str, contract: ModelContract, fp16: bool, int8: bool,
                calibration_batches: Optional[Iterable[np.ndarray]], workspace_mb: int,
                timing_cache_path: Optional[str], calibration_cache_path: str) -> Any:
    version = parse_version(trt.__version__)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if version[0] < 10:  # explicit batch is the only mode in 10.x and the flag is deprecated
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    with open(onnx_path, "rb") as f:
        parsed = parser.parse(f.read())
    if not parsed:
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BackendError(
            f"{onnx_path}: TensorRT {trt.__version__} cannot parse this ONNX: {errors}")

    config = builder.create_builder_config()
    if hasattr(config, "set_memory_pool_limit"):  # 8.4+
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
    else:  # 8.2
        config.max_workspace_size = int(workspace_mb) << 20
    if fp16:
        if not getattr(builder, "platform_has_fast_fp16", True):  # deprecated in 10.x
            _log.warning("this GPU has no fast FP16; the engine will run mostly in FP32")
        config.set_flag(trt.BuilderFlag.FP16)
    calibrator = None
    if int8:
        config.set_flag(trt.BuilderFlag.INT8)
        if calibration_batches is not None:
            calibrator = make_entropy_calibrator(calibration_batches, calibration_cache_path)
            config.int8_calibrator = calibrator
        elif not _has_quantize_layers(trt, network):
            raise BackendError(
                f"{onnx_path}: INT8 needs calibration_batches or Q/DQ nodes in the ONNX "
                "(export a quantized model with `evit quantize`)")

    model_input = network.get_input(0)
    if any(d < 0 for d in model_input.shape):  # dynamic axes: pin them to the contract's size
        spec = contract.input
        if spec.layout == "NCHW":
            shape = (1, 3, spec.height, spec.width)
        else:
            shape = (1, spec.height, spec.width, 3)
        profile = builder.create_optimization_profile()
        profile.set_shape(model_input.name, shape, shape, shape)
        config.add_optimization_profile(profile)
        if calibrator is not None and hasattr(config, "set_calibration_profile"):
            config.set_calibration_profile(profile)

    timing_cache = None
    if timing_cache_path:
        cached = b""
        if os.path.isfile(timing_cache_path):
            with open(timing_cache_path, "rb") as f:
                cached = f.read()
        timing_cache = config.create_timing_cache(cached)
        config.set_timing_cache(timing_cache, ignore_mismatch=False)

    if hasattr(builder, "build_serialized_network"):
        plan = builder.build_serialized_network(network, config)
    else:  # pragma: no cover - TensorRT < 8.0 is not supported, kept for odd 8.x builds
        engine = builder.build_engine(network, config)
        plan = engine.serialize() if engine is not None else None
    if plan is None:
        raise BackendError(f"{onnx_path}: TensorRT {trt.__version__} failed to build an engine "
                           "(see the TensorRT log above)")
    if timing_cache is not None:
        _atomic_write(timing_cache_path, bytes(config.get_timing_cache().serialize()))
    return plan


def _has_quantize_layers(trt: Any, network: Any) -> bool:
    quantize = getattr(trt.LayerType, "QUANTIZE", None)
    return any(network.get_layer(i).type == quantize for i in range(network.num_layers))


def make_entropy_calibrator(batches: Iterable[np.ndarray], cache_path: str) -> Any:
    """An ``IInt8EntropyCalibrator2`` fed from float32 input tensors ``[B, ...]`` shaped as the
    network input, caching the scales to ``cache_path``.

    Built inside a function because the base class exists only where TensorRT is installed.
    """
    import pycuda.driver as cuda
    import tensorrt as trt

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self._batches: Iterator[np.ndarray] = iter(batches)
            # TensorRT asks for the batch size before the first batch: peek at it.
            self._pending: Optional[np.ndarray] = next(self._batches, None)
            self._batch_size = 1 if self._pending is None else int(np.shape(self._pending)[0])
            self._device: Any = None
            self._nbytes = 0
            self.cache_path = cache_path

        def get_batch_size(self) -> int:
            return self._batch_size

        def get_batch(self, names: Any, *args: Any) -> Optional[list]:
            batch, self._pending = self._pending, None
            if batch is None:
                batch = next(self._batches, None)
            if batch is None:
                return None
            batch = np.ascontiguousarray(batch, dtype=np.float32)
            if self._device is None or batch.nbytes != self._nbytes:
                self._device = cuda.mem_alloc(batch.nbytes)
                self._nbytes = batch.nbytes
            cuda.memcpy_htod(self._device, batch)
            return [int(self._device)]

        def read_calibration_cache(self) -> Optional[bytes]:
            if os.path.isfile(self.cache_path):
                with open(self.cache_path, "rb") as f:
                    return f.read()
            return None

        def write_calibration_cache(self, cache: Any) -> None:
            _atomic_write(self.cache_path, bytes(cache))

    return EntropyCalibrator()


def _atomic_write(path: str, data: bytes) -> None:
    """Write via a temporary file so a crash never leaves a half engine that looks cached."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
