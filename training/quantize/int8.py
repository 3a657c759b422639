"""INT8 static quantization of an exported detector with ONNX Runtime (QDQ format).

Weights are quantized per channel (symmetric int8); activations with ranges calibrated on
training images fed through the node's own preprocessing. For ONNX Runtime on a CPU the
activations are asymmetric uint8 (ORT's U8S8 fast path); for TensorRT they are symmetric
int8, as TensorRT requires. Only the heavy ops (MatMul, Gemm, Conv, ConvTranspose) are
quantized by default: LayerNorm, Softmax and the decode tail stay in float.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

import onnx
from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat,
                                      QuantType, quant_pre_process, quantize_static)

from evit_perception.model_contract import METADATA_KEY, ModelContract

log = logging.getLogger(__name__)

#: Op types quantized unless told otherwise.
DEFAULT_OP_TYPES = ("MatMul", "Gemm", "Conv", "ConvTranspose")
CALIBRATION_METHODS = {
    "minmax": CalibrationMethod.MinMax,
    "entropy": CalibrationMethod.Entropy,
    "percentile": CalibrationMethod.Percentile,
}
TARGETS = ("cpu", "tensorrt")


@dataclasses.dataclass(frozen=True)
class Int8Settings:
    """How to quantize; mirrors the ``quantize`` section of a compress config."""

    calibration: str = "minmax"
    percentile: float = 99.99
    per_channel: bool = True
    target: str = "cpu"
    op_types: Sequence[str] = DEFAULT_OP_TYPES

    def __post_init__(self) -> None:
        if self.calibration not in CALIBRATION_METHODS:
            raise ValueError(f"unknown calibration method {self.calibration!r}; "
                             f"choose one of {sorted(CALIBRATION_METHODS)}")
        if self.target not in TARGETS:
            raise ValueError(f"unknown quantization target {self.target!r}; choose one of {TARGETS}")


def prepare_for_quantization(fp32_path: str, out_path: str) -> str:
    """ORT's ``quant_pre_process`` (shape inference + graph cleanup), metadata kept.

    Falls back to ONNX-only shape inference if symbolic shape inference cannot handle the
    graph, and to the untouched model if both fail (quantization still works, just with
    fewer fusions).
    """
    attempts = ({}, {"skip_symbolic_shape": True})
    for kwargs in attempts:
        try:
            quant_pre_process(fp32_path, out_path, **kwargs)
            break
        except Exception as exc:  # ORT raises assorted errors for graphs it cannot infer
            log.warning("quant_pre_process%s failed on %s: %s", kwargs or "", fp32_path, exc)
    else:
        onnx.save(onnx.load(fp32_path), out_path)
    copy_metadata(fp32_path, out_path)
    return out_path


def quantize_int8(
    fp32_path: str,
    out_path: str,
    calibration: CalibrationDataReader,
    settings: Int8Settings = Int8Settings(),
    nodes_to_exclude: Sequence[str] = (),
    nodes_to_quantize: Optional[Sequence[str]] = None,
    preprocess: bool = True,
    extra: Optional[Mapping[str, Any]] = None,
) -> str:
    """Write a QDQ INT8 model of ``fp32_path`` to ``out_path`` and return the path.

    ``nodes_to_exclude`` stay in float (names as in the pre-processed graph: run
    :func:`prepare_for_quantization` yourself and pass ``preprocess=False`` when you choose
    nodes by name). The model contract is copied with ``extra`` merged in.
    """
    out_dir = os.path.dirname(os.path.abspath(out_path))
    os.makedirs(out_dir, exist_ok=True)
    symmetric = settings.target == "tensorrt"
    options: Dict[str, Any] = {"WeightSymmetric": True, "ActivationSymmetric": symmetric}
    if settings.calibration == "percentile":
        options["CalibPercentile"] = settings.percentile
    if hasattr(calibration, "rewind"):
        calibration.rewind()
    with tempfile.TemporaryDirectory(prefix="evit-int8-") as tmp:
        source = fp32_path
        if preprocess:
            source = prepare_for_quantization(fp32_path, os.path.join(tmp, "prepared.onnx"))
        quantize_static(
            source, out_path, calibration,
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(settings.op_types),
            per_channel=settings.per_channel,
            activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=list(nodes_to_exclude),
            nodes_to_quantize=list(nodes_to_quantize) if nodes_to_quantize else None,
            calibrate_method=CALIBRATION_METHODS[settings.calibration],
            extra_options=options,
        )
    info = {"stage": "int8", "calibration": settings.calibration, "target": settings.target,
            "per_channel": settings.per_channel, "nodes_excluded": list(nodes_to_exclude)}
    info.update(extra or {})
    copy_metadata(fp32_path, out_path, extra=info)
    return out_path


def quantizable_nodes(onnx_path: str, op_types: Sequence[str] = DEFAULT_OP_TYPES) -> List[str]:
    """Names of the nodes of ``op_types`` in graph order (the candidates for INT8)."""
    model = onnx.load(onnx_path, load_external_data=False)
    names = [n.name for n in model.graph.node if n.op_type in op_types]
    if any(not n for n in names):
        raise ValueError(f"{onnx_path} has unnamed {'/'.join(op_types)} nodes; run "
                         "prepare_for_quantization first")
    return names


def copy_metadata(source_path: str, target_path: str,
                  extra: Optional[Mapping[str, Any]] = None) -> None:
    """Copy ``metadata_props`` (the model contract) from source to target, ``extra`` merged
    into the contract's ``extra``."""
    source = onnx.load(source_path, load_external_data=False)
    target = onnx.load(target_path)
    # Keep the target's own keys (e.g. ORT's pre-process marker), the source's win on clashes.
    props = {p.key: p.value for p in target.metadata_props}
    props.update({p.key: p.value for p in source.metadata_props})
    if extra and METADATA_KEY in props:
        contract = ModelContract.from_json(props[METADATA_KEY], source_path)
        merged = dict(contract.extra)
        merged.update(extra)
        props[METADATA_KEY] = dataclasses.replace(contract, extra=merged).to_json()
    del target.metadata_props[:]
    for key, value in props.items():
        entry = target.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(target, target_path)


def file_size_mb(path: str) -> float:
    """Size of a model file in MB (10^6 bytes)."""
    return Path(path).stat().st_size / 1e6
