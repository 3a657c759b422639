"""FP16 ONNX for GPU runtimes, with the numerically touchy ops left in FP32.

A ViT exported at opset 16 carries LayerNorm decomposed (ReduceMean, Sub, Pow, Sqrt, Div...)
and Softmax in attention; their reductions overflow or lose precision in half floats, so
those nodes stay FP32 (``op_block_list``/``node_block_list`` of ONNX Runtime's float16
converter). Inputs and outputs keep FP32 so the model contract (``dtype: float32``) still
holds. For TensorRT engines the FP16 flag is set at build time on the FP32 ONNX instead
(``evit build-engine --fp16``); this file is for ONNX Runtime's CUDA/TensorRT providers.
"""
from __future__ import annotations

import re
from typing import Any, Mapping, Optional, Sequence

import onnx

from evit_training.quantize.int8 import copy_metadata

#: Op types always kept in FP32 (on top of ORT's default block list: TopK, Range, ...).
FP32_OP_TYPES = ("Softmax", "LayerNormalization", "ReduceMean", "Pow", "Sqrt", "Erf")
#: Node-name pattern of LayerNorm scopes in exported graphs (``/backbone/blocks.0/norm1/...``).
NORM_SCOPE = re.compile(r"(^|/)(norm\d*|.*_norm|ln\w*)(/|$)", re.IGNORECASE)


def norm_nodes(model: onnx.ModelProto) -> list:
    """Names of nodes inside LayerNorm scopes (the decomposed LayerNorm ops)."""
    return [n.name for n in model.graph.node if n.name and NORM_SCOPE.search(n.name)]


def convert_fp16(fp32_path: str, out_path: str, extra_op_block_list: Sequence[str] = (),
                 extra: Optional[Mapping[str, Any]] = None) -> str:
    """Write an FP16 copy of ``fp32_path`` (LayerNorm, Softmax and reductions in FP32)."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    model = onnx.load(fp32_path)
    op_block = sorted(set(DEFAULT_OP_BLOCK_LIST) | set(FP32_OP_TYPES) | set(extra_op_block_list))
    half = convert_float_to_float16(model, keep_io_types=True, op_block_list=op_block,
                                    node_block_list=norm_nodes(model))
    onnx.save(half, out_path)
    info = {"stage": "fp16", "fp32_ops": list(FP32_OP_TYPES)}
    info.update(extra or {})
    copy_metadata(fp32_path, out_path, extra=info)
    return out_path
