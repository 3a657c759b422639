"""Inference backends behind one small interface (:class:`InferenceBackend`).

``open_backend(path)`` picks the engine: a TensorRT ``.engine``/``.plan`` runs on TensorRT;
an ``.onnx`` runs on TensorRT (FP16 engine built on first start and cached beside the model)
when TensorRT, pycuda and a CUDA device are present, otherwise on ONNX Runtime.
"""
from __future__ import annotations

import os
from typing import Any

from evit_perception.backends.base import BackendContractError, BackendError, InferenceBackend

BACKENDS = ("auto", "onnxruntime", "tensorrt")
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")
#: Keyword options each backend understands; "auto" drops those of the backend not chosen.
ONNXRUNTIME_OPTIONS = ("providers", "intra_op_num_threads", "inter_op_num_threads")
TENSORRT_OPTIONS = ("device_id", "fp16", "workspace_mb", "engine_path", "rebuild")

__all__ = ["BACKENDS", "BackendContractError", "BackendError", "InferenceBackend", "open_backend",
           "is_engine_file"]


def is_engine_file(model_path: str) -> bool:
    """Whether the path names a serialized TensorRT engine rather than an ONNX model."""
    return str(model_path).lower().endswith(ENGINE_SUFFIXES)


def open_backend(model_path: str, backend: str = "auto", **options: Any) -> InferenceBackend:
    """Open ``model_path`` with the named backend (``"auto"``, ``"onnxruntime"``, ``"tensorrt"``).

    Options: ONNX Runtime takes ``providers``, ``intra_op_num_threads``,
    ``inter_op_num_threads``; TensorRT takes ``device_id``, ``fp16``, ``workspace_mb``,
    ``engine_path`` (where to cache the engine built from an ONNX), ``rebuild``.
    Raises :class:`BackendError` (missing/corrupt file, unknown backend or option, no
    TensorRT) or :class:`BackendContractError` (no or invalid contract, graph disagrees).
    """
    model_path = str(model_path)
    if backend not in BACKENDS:
        raise BackendError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    unknown = sorted(set(options) - set(ONNXRUNTIME_OPTIONS) - set(TENSORRT_OPTIONS))
    if unknown:
        raise BackendError(
            f"unknown backend option(s) {unknown}; ONNX Runtime takes {list(ONNXRUNTIME_OPTIONS)}, "
            f"TensorRT takes {list(TENSORRT_OPTIONS)}")
    if not os.path.isfile(model_path):
        raise BackendError(f"model file not found: {model_path}")

    if backend == "auto":
        from evit_perception.backends.tensorrt_backend import tensorrt_unavailable_reason

        if is_engine_file(model_path):
            backend = "tensorrt"
        else:
            backend = "onnxruntime" if tensorrt_unavailable_reason() else "tensorrt"
        wanted = ONNXRUNTIME_OPTIONS if backend == "onnxruntime" else TENSORRT_OPTIONS
        options = {k: v for k, v in options.items() if k in wanted}

    if backend == "onnxruntime":
        if is_engine_file(model_path):
            raise BackendError(
                f"{model_path} is a TensorRT engine; ONNX Runtime needs the .onnx model")
        _reject(options, ONNXRUNTIME_OPTIONS, backend)
        from evit_perception.backends.onnxruntime_backend import OnnxRuntimeBackend

        return OnnxRuntimeBackend(model_path, **options)

    _reject(options, TENSORRT_OPTIONS, backend)
    from evit_perception.backends.tensorrt_backend import open_tensorrt

    return open_tensorrt(model_path, **options)


def _reject(options: dict, allowed: tuple, backend: str) -> None:
    extra = sorted(set(options) - set(allowed))
    if extra:
        raise BackendError(f"option(s) {extra} do not apply to the {backend} backend "
                           f"(it takes {list(allowed)})")
