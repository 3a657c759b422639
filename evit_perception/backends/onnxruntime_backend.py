"""ONNX Runtime backend: CPU here, the CUDA or TensorRT execution providers where present."""
from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from evit_perception.backends.base import BackendContractError, BackendError, InferenceBackend
from evit_perception.model_contract import (LAYOUT_XYXY_SCORE_CLASS, ModelContract,
                                            ModelContractError, contract_from_metadata)

#: Providers tried in this order when the caller names none; only available ones are used.
PREFERRED_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
_ORT_TYPES = {"float32": "tensor(float)", "float16": "tensor(float16)", "uint8": "tensor(uint8)"}

ProviderSpec = Union[str, Tuple[str, Dict[str, Any]]]


class OnnxRuntimeBackend(InferenceBackend):
    """Runs a contract-carrying ONNX model with ONNX Runtime.

    ``providers``: ONNX Runtime provider names (or ``(name, options)`` pairs) in priority
    order; default: TensorRT EP, CUDA EP, CPU, whichever this onnxruntime build has.
    ``intra_op_num_threads``/``inter_op_num_threads``: CPU threads (0 = ONNX Runtime's
    default, one per core).
    """

    name = "onnxruntime"

    def __init__(self, model_path: str, providers: Optional[Sequence[ProviderSpec]] = None,
                 intra_op_num_threads: int = 0, inter_op_num_threads: int = 0) -> None:
        import onnxruntime as ort

        self.model_path = str(model_path)
        if not os.path.isfile(self.model_path):
            raise BackendError(f"model file not found: {self.model_path}")
        available = ort.get_available_providers()
        chosen = list(providers) if providers else default_providers(available, self.model_path)
        missing = [p for p in (_provider_name(p) for p in chosen) if p not in available]
        if missing:
            raise BackendError(
                f"ONNX Runtime provider(s) {missing} not available in this onnxruntime build; "
                f"available: {available}")
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(intra_op_num_threads)
        options.inter_op_num_threads = int(inter_op_num_threads)
        options.log_severity_level = 3  # errors only; warnings about unused initialisers are noise
        try:
            self._session = ort.InferenceSession(self.model_path, sess_options=options,
                                                 providers=chosen)
        except Exception as exc:  # InvalidProtobuf, Fail, NoSuchFile... all from pybind
            raise BackendError(
                f"{self.model_path}: ONNX Runtime cannot load this model "
                f"({type(exc).__name__}: {str(exc).strip()[:300]}); is the file complete and "
                "an ONNX model?") from exc
        try:
            metadata = self._session.get_modelmeta().custom_metadata_map
            self.contract = contract_from_metadata(metadata, self.model_path)
        except ModelContractError as exc:
            raise BackendContractError(str(exc)) from exc
        self.providers = list(self._session.get_providers())
        self._input_name, self._output_name, self._input_dtype = _check_graph(
            self._session, self.contract, self.model_path, self.input_shape)

    def infer(self, tensor: np.ndarray) -> np.ndarray:
        """Run one input tensor (the contract's shape); returns the contract's output."""
        self.check_input(tensor)
        if tensor.dtype != self._input_dtype:
            tensor = tensor.astype(self._input_dtype)
        return self._session.run([self._output_name], {self._input_name: tensor})[0]

    def close(self) -> None:
        self._session = None  # ONNX Runtime frees the session with the last reference


def default_providers(available: Sequence[str], model_path: str) -> List[ProviderSpec]:
    """The preferred providers this build has; TensorRT EP caches FP16 engines beside the model."""
    chosen: List[ProviderSpec] = []
    for name in PREFERRED_PROVIDERS:
        if name not in available:
            continue
        if name == "TensorrtExecutionProvider":
            from evit_perception.backends.tensorrt_backend import engine_cache_dir

            cache_dir = engine_cache_dir(model_path)
            chosen.append((name, {"trt_fp16_enable": True, "trt_engine_cache_enable": True,
                                  "trt_engine_cache_path": cache_dir}))
        else:
            chosen.append(name)
    return chosen


def _provider_name(provider: ProviderSpec) -> str:
    return provider if isinstance(provider, str) else provider[0]


def _check_graph(session: Any, contract: ModelContract, path: str,
                 expected_input: Tuple[int, ...]) -> Tuple[str, str, np.dtype]:
    """Check the graph's input and output against the contract; clear errors when they differ."""
    inputs = session.get_inputs()
    by_name = {i.name: i for i in inputs}
    spec = contract.input
    if spec.name not in by_name:
        raise BackendContractError(
            f"{path}: contract names input '{spec.name}' but the graph's inputs are "
            f"{[i.name for i in inputs]}")
    graph_input = by_name[spec.name]
    if len(inputs) != 1:
        raise BackendContractError(
            f"{path}: the graph has {len(inputs)} inputs {[i.name for i in inputs]}; "
            "the contract allows one image input")
    shape = list(graph_input.shape)
    fixed_mismatch = len(shape) != len(expected_input) or any(
        isinstance(dim, int) and dim > 0 and dim != want
        for dim, want in zip(shape, expected_input))
    if fixed_mismatch:
        raise BackendContractError(
            f"{path}: input '{spec.name}' has shape {shape} in the graph but the contract "
            f"says {list(expected_input)} ({spec.layout}, {spec.height}x{spec.width})")
    if graph_input.type != _ORT_TYPES[spec.dtype]:
        raise BackendContractError(
            f"{path}: input '{spec.name}' is {graph_input.type} in the graph but the contract "
            f"says {spec.dtype}")

    outputs = {o.name: o for o in session.get_outputs()}
    out = contract.output
    if out.name not in outputs:
        raise BackendContractError(
            f"{path}: contract names output '{out.name}' but the graph's outputs are "
            f"{sorted(outputs)}")
    out_shape = list(outputs[out.name].shape)
    if out.layout == LAYOUT_XYXY_SCORE_CLASS:
        axis, want = -1, 6
    else:
        axis, want = (1 if out.transposed else -1), 4 + contract.num_classes
    if len(out_shape) != 3:
        raise BackendContractError(
            f"{path}: output '{out.name}' has rank {len(out_shape)} ({out_shape}); layout "
            f"{out.layout} needs rank 3")
    dim = out_shape[axis]
    if isinstance(dim, int) and dim > 0 and dim != want:
        raise BackendContractError(
            f"{path}: output '{out.name}' has shape {out_shape}; layout {out.layout} with "
            f"{contract.num_classes} classes needs {want} along axis {axis}")
    dtype = np.dtype(spec.dtype)
    return spec.name, out.name, dtype
