"""ONNX export with decoding inside the graph and the node's model contract embedded.

The exported graph takes ``images`` float32 ``[1, 3, S, S]`` RGB in ``[0, 1]`` (the model
normalises inside) and returns ``detections`` ``[1, K, 6]`` (x1, y1, x2, y2 in input pixels,
score, class; sorted by score) - no NMS needed. Default opset 16: TensorRT 8.2 (JetPack 4.6
on the Nano) cannot parse LayerNormalization, which exporters emit from opset 17, so the
export asserts the graph has none at opset <= 16.
"""
from __future__ import annotations

import copy
import logging
import os
import warnings
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from evit_perception.model_contract import (LAYOUT_XYXY_SCORE_CLASS, METADATA_KEY, InputSpec, ModelContract,
                                            OutputSpec)

from evit_training.models.checkpoint import unwrap
from evit_training.models.decode import decode_detections

log = logging.getLogger(__name__)

DEFAULT_OPSET = 16
#: Opsets whose graphs TensorRT 8.2 parses only if LayerNormalization was decomposed.
_NO_LAYERNORM_MAX_OPSET = 16


class ExportError(RuntimeError):
    """The exported graph failed a check (opset ops, ONNX checker, numerical mismatch)."""


class DecodedDetector(nn.Module):
    """``images -> detections [B, K, 6]``: the detector plus in-graph peak decoding."""

    def __init__(self, model: nn.Module, max_detections: int = 100) -> None:
        super().__init__()
        self.model = model
        self.max_detections = int(max_detections)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return decode_detections(self.model(images), self.model.stride, self.max_detections)


def detector_contract(model: nn.Module, input_size: int, class_names: Sequence[str], name: str,
                      extra: Optional[Mapping[str, Any]] = None) -> ModelContract:
    """The contract describing what :class:`DecodedDetector` expects and returns."""
    contract = ModelContract(
        class_names=tuple(class_names),
        input=InputSpec(name="images", height=input_size, width=input_size, layout="NCHW", channel_order="RGB",
                        dtype="float32", resize="letterbox", pad_value=114, scale=1.0 / 255.0,
                        mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)),
        output=OutputSpec(name="detections", layout=LAYOUT_XYXY_SCORE_CLASS, needs_nms=False),
        name=name, extra=dict(extra or {}))
    contract.validate(name)
    return contract


def embed_contract(onnx_path: Union[str, os.PathLike], contract: ModelContract) -> None:
    """Write the contract JSON into the model's ``metadata_props`` (replacing any old one)."""
    import onnx

    proto = onnx.load(str(onnx_path))
    kept = [p for p in proto.metadata_props if p.key != METADATA_KEY]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, contract.to_json()
    onnx.save(proto, str(onnx_path))


def graph_op_types(onnx_path: Union[str, os.PathLike]) -> Dict[str, int]:
    """Op type -> count over the main graph and its subgraphs."""
    import onnx

    counts: Dict[str, int] = {}

    def visit(graph) -> None:
        for node in graph.node:
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
            for attr in node.attribute:
                if attr.g is not None and attr.g.node:
                    visit(attr.g)
                for g in attr.graphs:
                    visit(g)

    visit(onnx.load(str(onnx_path)).graph)
    return counts


def compare_with_onnxruntime(module: nn.Module, onnx_path: Union[str, os.PathLike], inputs: torch.Tensor,
                             tie_margin: float = 1e-4) -> float:
    """Max abs difference between torch and ONNX Runtime detections on ``inputs``.

    Order-invariant: an untrained or uncertain head has many near-equal scores that TopK may
    order differently in two runtimes. So the sorted score vectors are compared, and each
    torch row scoring clearly above the K-th score (by ``tie_margin``, i.e. surely selected
    by both) is matched to its closest ONNX Runtime row.
    """
    import onnxruntime as ort

    with torch.no_grad():
        expected = module(inputs).float().numpy()
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: inputs.numpy()})[0]
    if got.shape != expected.shape:
        raise ExportError(f"ONNX Runtime output shape {got.shape} differs from torch {expected.shape}")
    diff = 0.0
    for want, have in zip(expected, got):
        diff = max(diff, float(np.abs(np.sort(want[:, 4]) - np.sort(have[:, 4])).max()))
        sure = want[want[:, 4] > want[:, 4].min() + tie_margin]
        if len(sure):
            pairwise = np.abs(sure[:, None, :] - have[None, :, :]).max(axis=2)
            diff = max(diff, float(pairwise.min(axis=1).max()))
    return diff


def export_onnx(model: nn.Module, path: Union[str, os.PathLike], input_size: Optional[int] = None,
                opset: int = DEFAULT_OPSET, class_names: Optional[Sequence[str]] = None,
                name: Optional[str] = None, extra: Optional[Mapping[str, Any]] = None,
                max_detections: int = 100, verify: bool = True, tolerance: float = 1e-3,
                sample: Optional[torch.Tensor] = None) -> Path:
    """Export a :class:`~evit_training.models.detector.ViTDetector` to an ONNX file the node loads.

    ``input_size``/``class_names`` default to the model's config; ``extra`` goes into the
    contract's free-form provenance (the measured torch-vs-ORT max abs diff is added as
    ``export.max_abs_diff``). ``sample`` (``[1,3,S,S]`` in [0,1]) is the verification input;
    default: a seeded random image. Raises :class:`ExportError` if a check fails.
    """
    import onnx

    net = copy.deepcopy(unwrap(model)).cpu().eval()  # export on CPU without moving the caller's model
    cfg = getattr(net, "config", {})
    size = int(input_size or cfg["input_size"])
    if size != int(cfg.get("input_size", size)):
        raise ValueError(f"input_size {size} differs from the model's fixed input size {cfg['input_size']} "
                         "(ViT position embeddings are fixed; rebuild the model for another size)")
    names = list(class_names or cfg["class_names"])
    if len(names) != len(cfg.get("class_names", names)):
        raise ValueError(f"{len(names)} class names given but the model predicts {len(cfg['class_names'])} classes")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    wrapper = DecodedDetector(net, max_detections).eval()
    dummy = torch.zeros(1, 3, size, size)
    with torch.no_grad(), warnings.catch_warnings():
        # Shapes are fixed (no dynamic axes), so the tracer's "treated as a constant" is intended.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        # dynamo=False on purpose: the TorchScript exporter's opset-16 graphs parse in TRT 8.2.
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        torch.onnx.export(wrapper, (dummy,), str(path), input_names=["images"], output_names=["detections"],
                          opset_version=opset, do_constant_folding=True, dynamo=False)
    onnx.checker.check_model(str(path), full_check=True)
    ops = graph_op_types(path)
    if opset <= _NO_LAYERNORM_MAX_OPSET and "LayerNormalization" in ops:
        raise ExportError(f"{path}: LayerNormalization found at opset {opset}; TensorRT 8.2 cannot parse it")
    info: Dict[str, Any] = {"opset": opset, "max_detections": int(max_detections)}
    if verify:
        if sample is None:
            sample = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
        diff = compare_with_onnxruntime(wrapper, path, sample)
        log.info("%s: torch vs ONNX Runtime max abs diff %.3g", path, diff)
        if not diff <= tolerance:
            raise ExportError(f"{path}: ONNX Runtime output differs from torch by {diff:.3g} (> {tolerance})")
        info["max_abs_diff"] = diff
    merged = dict(extra or {})
    merged["export"] = {**dict(merged.get("export", {})), **info}
    merged.setdefault("architecture", {k: cfg[k] for k in ("name", "patch_size", "embed_dim", "depth", "num_heads")
                                       if k in cfg})
    embed_contract(path, detector_contract(net, size, names, name or str(cfg.get("name", "evit-detector")), merged))
    return path
