"""Per-layer INT8 sensitivity, and keeping the most harmful layers in float.

1. Rank: quantize one candidate node at a time and measure how far the network's last dense
   maps (the outputs of the final MatMul/Conv layers, before the decode tail) move from FP32
   on a few images (normalised MSE). One node at a time isolates each layer's damage.
2. Budget: quantize everything, score it (mAP@0.5 on the validation set via ``score_fn``,
   or the same output error when no scorer is given), and exclude the worst-ranked nodes
   in growing batches until the drop is within budget. Accuracy is measured, never assumed.
"""
from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from evit_training.quantize.calibration import TensorListReader
from evit_training.quantize.int8 import (Int8Settings, prepare_for_quantization, quantizable_nodes,
                                         quantize_int8)

log = logging.getLogger(__name__)


@dataclass
class SensitivityReport:
    """What the sensitivity search measured and decided."""

    node_error: Dict[str, float]
    excluded: List[str]
    score_fp32: float
    score_int8_all: float
    score_final: float
    higher_is_better: bool
    trials: List[Dict[str, float]] = field(default_factory=list)

    def to_dict(self) -> dict:
        ranked = sorted(self.node_error.items(), key=lambda kv: -kv[1])
        return {"excluded": self.excluded, "score_fp32": self.score_fp32,
                "score_int8_all": self.score_int8_all, "score_final": self.score_final,
                "higher_is_better": self.higher_is_better, "trials": self.trials,
                "most_sensitive": [{"node": n, "error": e} for n, e in ranked[:10]]}


def probe_tensors(onnx_path: str, op_types: Sequence[str]) -> List[str]:
    """Outputs of quantizable nodes with no quantizable node downstream (the last dense maps)."""
    graph = onnx.load(onnx_path, load_external_data=False).graph
    consumers: Dict[str, List[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    memo: Dict[str, bool] = {}

    def feeds_quantizable(tensor: str) -> bool:
        if tensor in memo:
            return memo[tensor]
        memo[tensor] = False  # cycle guard; graphs are DAGs
        hit = any(c.op_type in op_types or any(feeds_quantizable(o) for o in c.output)
                  for c in consumers.get(tensor, []))
        memo[tensor] = hit
        return hit

    probes = [node.output[0] for node in graph.node
              if node.op_type in op_types and not feeds_quantizable(node.output[0])]
    if not probes:
        raise ValueError(f"{onnx_path}: no {'/'.join(op_types)} nodes to probe")
    return probes


def with_outputs(onnx_path: str, tensors: Sequence[str], out_path: str) -> str:
    """A copy of the model that also outputs ``tensors``."""
    model = onnx.load(onnx_path)
    existing = {o.name for o in model.graph.output}
    for name in tensors:
        if name not in existing:
            model.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    onnx.save(model, out_path)
    return out_path


def run_probes(onnx_path: str, tensors: Sequence[str], inputs: Sequence[np.ndarray],
               input_name: str, threads: int = 1) -> List[List[np.ndarray]]:
    """Values of ``tensors`` for every input, from an ORT session on a probed copy."""
    with tempfile.TemporaryDirectory(prefix="evit-probe-") as tmp:
        probed = with_outputs(onnx_path, tensors, os.path.join(tmp, "probed.onnx"))
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.log_severity_level = 3
        session = ort.InferenceSession(probed, opts, providers=["CPUExecutionProvider"])
        return [session.run(list(tensors), {input_name: x}) for x in inputs]


def output_error(reference: List[List[np.ndarray]], candidate: List[List[np.ndarray]]) -> float:
    """Mean normalised squared error over probes and images."""
    errors = []
    for ref_outs, cand_outs in zip(reference, candidate):
        for ref, cand in zip(ref_outs, cand_outs):
            ref64 = ref.astype(np.float64)
            errors.append(float(np.mean((cand.astype(np.float64) - ref64) ** 2)
                                / (np.mean(ref64 ** 2) + 1e-12)))
    return float(np.mean(errors))


def rank_layers(prepared_path: str, calibration: TensorListReader, eval_inputs: Sequence[np.ndarray],
                settings: Int8Settings = Int8Settings(), progress: bool = True) -> Dict[str, float]:
    """Output error caused by quantizing each candidate node alone, by node name."""
    from tqdm.auto import tqdm

    probes = probe_tensors(prepared_path, settings.op_types)
    name = calibration.input_name
    reference = run_probes(prepared_path, probes, eval_inputs, name)
    errors: Dict[str, float] = {}
    nodes = quantizable_nodes(prepared_path, settings.op_types)
    with tempfile.TemporaryDirectory(prefix="evit-sens-") as tmp:
        single = os.path.join(tmp, "single.onnx")
        for node in tqdm(nodes, desc="INT8 sensitivity", unit="layer", disable=not progress):
            quantize_int8(prepared_path, single, calibration, settings, nodes_to_quantize=[node],
                          preprocess=False)
            errors[node] = output_error(reference, run_probes(single, probes, eval_inputs, name))
    return errors


def quantize_within_budget(
    fp32_path: str,
    out_path: str,
    calibration: TensorListReader,
    settings: Int8Settings = Int8Settings(),
    score_fn: Optional[Callable[[str], float]] = None,
    max_drop: float = 0.01,
    relative: bool = True,
    max_excluded_fraction: float = 0.5,
    eval_images: int = 8,
    progress: bool = True,
) -> SensitivityReport:
    """INT8-quantize ``fp32_path`` to ``out_path``, keeping sensitive layers in float.

    ``score_fn(onnx_path) -> float`` (higher is better, e.g. mAP@0.5 on the validation set)
    defines the budget: the INT8 score may fall at most ``max_drop`` below the FP32 score
    (a fraction of it when ``relative``). Without a scorer the probe output error is the
    score (lower is better) and ``max_drop`` is the largest error accepted. Layers are
    excluded in the order :func:`rank_layers` gives, 1, 2, 4, ... at a time, up to
    ``max_excluded_fraction`` of them; if the budget still is not met the best model found
    is written and the report says so.
    """
    eval_inputs = calibration.tensors[:max(eval_images, 1)]
    with tempfile.TemporaryDirectory(prefix="evit-budget-") as tmp:
        prepared = prepare_for_quantization(fp32_path, os.path.join(tmp, "prepared.onnx"))
        probes = probe_tensors(prepared, settings.op_types)
        reference = run_probes(prepared, probes, eval_inputs, calibration.input_name)

        def measure(path: str) -> float:
            if score_fn is not None:
                return float(score_fn(path))
            return output_error(reference, run_probes(path, probes, eval_inputs, calibration.input_name))

        higher_is_better = score_fn is not None
        score_fp32 = measure(prepared) if higher_is_better else 0.0
        floor = score_fp32 * (1 - max_drop) if relative else score_fp32 - max_drop

        def within(score: float) -> bool:
            return score >= floor if higher_is_better else score <= max_drop

        def better(a: float, b: float) -> bool:
            return a > b if higher_is_better else a < b

        candidate = os.path.join(tmp, "candidate.onnx")
        quantize_int8(prepared, candidate, calibration, settings, preprocess=False)
        score_all = measure(candidate)
        trials = [{"excluded": 0, "score": score_all}]
        best_score, best_excluded = score_all, []
        os.replace(candidate, os.path.join(tmp, "best.onnx"))
        node_error: Dict[str, float] = {}
        if not within(score_all):
            node_error = rank_layers(prepared, calibration, eval_inputs, settings, progress)
            ranked = sorted(node_error, key=lambda n: -node_error[n])
            limit = max(1, int(len(ranked) * max_excluded_fraction))
            count = 1
            while count <= limit:
                excluded = ranked[:count]
                quantize_int8(prepared, candidate, calibration, settings,
                              nodes_to_exclude=excluded, preprocess=False)
                score = measure(candidate)
                trials.append({"excluded": count, "score": score})
                log.info("INT8 with %d layer(s) in float: score %.4f", count, score)
                if better(score, best_score):
                    best_score, best_excluded = score, excluded
                    os.replace(candidate, os.path.join(tmp, "best.onnx"))
                if within(score):
                    break
                count = limit if count * 2 > limit and count < limit else count * 2
        if not within(best_score):
            log.warning("INT8 budget not met: best score %.4f with %d layer(s) in float "
                        "(FP32 %.4f, budget drop %s)", best_score, len(best_excluded),
                        score_fp32, max_drop)
        os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
        # Re-stamp the metadata so the file records which layers stayed in float.
        from evit_training.quantize.int8 import copy_metadata

        os.replace(os.path.join(tmp, "best.onnx"), out_path)
        copy_metadata(fp32_path, out_path, extra={
            "stage": "int8", "calibration": settings.calibration, "target": settings.target,
            "per_channel": settings.per_channel, "nodes_excluded": list(best_excluded)})
    return SensitivityReport(node_error=node_error, excluded=list(best_excluded),
                             score_fp32=score_fp32, score_int8_all=score_all,
                             score_final=best_score, higher_is_better=higher_is_better,
                             trials=trials)
