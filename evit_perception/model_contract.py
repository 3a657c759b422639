"""The model file contract: everything the node needs to know travels with the model.

An ONNX model carries one JSON document in its ``metadata_props`` under the key
:data:`METADATA_KEY`; a TensorRT engine carries the same document in a sidecar file
``<engine>.json`` (see :func:`sidecar_path`). docs/model_contract.md is the prose version.

Kept free of onnx/onnxruntime/torch imports: the node, the training exporter and the
TensorRT builder all share it.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

METADATA_KEY = "evit.model"
FORMAT_NAME = "evit-detector"
FORMAT_VERSION = 1

#: One output ``[B, K, 6]``: x1, y1, x2, y2 (input pixels), score, class index; decoded and
#: top-K selected inside the graph. Rows with score <= 0 are padding.
LAYOUT_XYXY_SCORE_CLASS = "xyxy_score_class"
#: One output ``[B, N, 4 + C]`` of raw candidates: cx, cy, w, h (input pixels) then one score
#: per class (YOLOv8-style exports; ``[B, 4 + C, N]`` is accepted with ``transposed: true``).
LAYOUT_CXCYWH_CLASS_SCORES = "cxcywh_class_scores"
OUTPUT_LAYOUTS = (LAYOUT_XYXY_SCORE_CLASS, LAYOUT_CXCYWH_CLASS_SCORES)
RESIZE_MODES = ("letterbox", "stretch")
CHANNEL_ORDERS = ("RGB", "BGR")


class ModelContractError(ValueError):
    """The model file lacks the contract or carries an invalid one."""


@dataclass(frozen=True)
class InputSpec:
    """How an image becomes the network's input tensor."""

    name: str = "images"
    height: int = 320
    width: int = 320
    layout: str = "NCHW"
    channel_order: str = "RGB"
    dtype: str = "float32"
    resize: str = "letterbox"
    pad_value: int = 114
    #: Pixel values are multiplied by ``scale``, then ``(x - mean) / std`` per channel.
    scale: float = 1.0 / 255.0
    mean: Tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: Tuple[float, float, float] = (1.0, 1.0, 1.0)


@dataclass(frozen=True)
class OutputSpec:
    """Where the detections are and how they are laid out."""

    name: str = "detections"
    layout: str = LAYOUT_XYXY_SCORE_CLASS
    transposed: bool = False
    #: Whether the node should run class-wise NMS on what the graph returns.
    needs_nms: bool = True


@dataclass(frozen=True)
class ModelContract:
    """The metadata document embedded in every model file the node accepts."""

    class_names: Tuple[str, ...]
    input: InputSpec = field(default_factory=InputSpec)
    output: OutputSpec = field(default_factory=OutputSpec)
    name: str = "unnamed"
    format: str = FORMAT_NAME
    format_version: int = FORMAT_VERSION
    #: Free-form provenance (training config, stage, metrics); ignored by the node.
    extra: Mapping[str, Any] = field(default_factory=dict)

    # -- serialisation -------------------------------------------------------------------
    def to_json(self) -> str:
        """The JSON document stored in the model file."""
        doc = asdict(self)
        doc["class_names"] = list(self.class_names)
        doc["input"]["mean"] = list(self.input.mean)
        doc["input"]["std"] = list(self.input.std)
        doc["extra"] = dict(self.extra)
        return json.dumps(doc, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, source: str = "model") -> "ModelContract":
        """Parse and validate; raises :class:`ModelContractError` naming what is wrong."""
        try:
            doc = json.loads(text)
        except (TypeError, ValueError) as exc:
            raise ModelContractError(f"{source}: '{METADATA_KEY}' metadata is not valid JSON ({exc})")
        if not isinstance(doc, dict):
            raise ModelContractError(f"{source}: '{METADATA_KEY}' metadata must be a JSON object")
        return cls.from_dict(doc, source)

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any], source: str = "model") -> "ModelContract":
        """Build from a parsed document, rejecting unknown keys and bad values."""
        doc = dict(doc)
        fmt = doc.get("format")
        if fmt != FORMAT_NAME:
            raise ModelContractError(f"{source}: metadata format is {fmt!r}, expected {FORMAT_NAME!r}")
        version = doc.get("format_version")
        if version != FORMAT_VERSION:
            raise ModelContractError(
                f"{source}: contract format_version {version!r} is not supported "
                f"(this node reads version {FORMAT_VERSION})")
        _reject_unknown(doc, cls, source, "")
        names = doc.get("class_names", ())
        if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
            raise ModelContractError(f"{source}: class_names must be a list of strings, got {names!r}")
        try:
            inp = dict(doc.get("input", {}))
            _reject_unknown(inp, InputSpec, source, "input.")
            for key in ("mean", "std"):
                if key in inp:
                    inp[key] = tuple(float(v) for v in inp[key])
            out = dict(doc.get("output", {}))
            _reject_unknown(out, OutputSpec, source, "output.")
            contract = cls(
                class_names=tuple(str(c) for c in doc.get("class_names", ())),
                input=InputSpec(**inp),
                output=OutputSpec(**out),
                name=str(doc.get("name", "unnamed")),
                format=fmt,
                format_version=version,
                extra=dict(doc.get("extra", {})),
            )
        except (TypeError, ValueError) as exc:
            raise ModelContractError(f"{source}: malformed contract ({exc})")
        contract.validate(source)
        return contract

    def validate(self, source: str = "model") -> None:
        """Raise :class:`ModelContractError` if a value cannot work."""
        i, o = self.input, self.output
        problems: List[str] = []
        wrong_types = [f"input.{key} {getattr(i, key)!r} is not {kind}"
                       for key, kind in (("height", "an integer"), ("width", "an integer"),
                                         ("pad_value", "an integer"), ("scale", "a number"))
                       if isinstance(getattr(i, key), bool) or not isinstance(
                           getattr(i, key), (int, float) if key == "scale" else int)]
        wrong_types += [f"output.{key} {getattr(o, key)!r} is not true/false"
                        for key in ("transposed", "needs_nms") if not isinstance(getattr(o, key), bool)]
        if wrong_types:  # checked first: the comparisons below need numbers
            raise ModelContractError(f"{source}: invalid model contract: " + "; ".join(wrong_types))
        if not self.class_names:
            problems.append("class_names is empty")
        if len(set(self.class_names)) != len(self.class_names):
            problems.append("class_names has duplicates")
        if i.height <= 0 or i.width <= 0:
            problems.append(f"input size {i.height}x{i.width} is not positive")
        if i.layout not in ("NCHW", "NHWC"):
            problems.append(f"input.layout {i.layout!r} is not NCHW or NHWC")
        if i.channel_order not in CHANNEL_ORDERS:
            problems.append(f"input.channel_order {i.channel_order!r} not in {CHANNEL_ORDERS}")
        if i.dtype not in ("float32", "float16", "uint8"):
            problems.append(f"input.dtype {i.dtype!r} not in float32, float16, uint8")
        if i.resize not in RESIZE_MODES:
            problems.append(f"input.resize {i.resize!r} not in {RESIZE_MODES}")
        if len(i.mean) != 3 or len(i.std) != 3 or any(s == 0 for s in i.std):
            problems.append("input.mean and input.std need 3 values each, std non-zero")
        if o.layout not in OUTPUT_LAYOUTS:
            problems.append(f"output.layout {o.layout!r} not in {OUTPUT_LAYOUTS}")
        if problems:
            raise ModelContractError(f"{source}: invalid model contract: " + "; ".join(problems))

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def _reject_unknown(doc: Mapping[str, Any], cls: type, source: str, prefix: str) -> None:
    known = set(cls.__dataclass_fields__)  # type: ignore[attr-defined]
    unknown = sorted(set(doc) - known)
    if unknown:
        raise ModelContractError(
            f"{source}: unknown contract key(s) {', '.join(prefix + k for k in unknown)}; "
            f"known: {', '.join(sorted(known))}")


def contract_from_metadata(metadata: Optional[Mapping[str, str]], source: str) -> ModelContract:
    """Read the contract from an ONNX ``metadata_props`` map (as ONNX Runtime returns it)."""
    if not metadata or METADATA_KEY not in metadata:
        raise ModelContractError(
            f"{source}: no '{METADATA_KEY}' metadata; this file was not exported by "
            "`evit export` (see docs/model_contract.md for what a model must carry)")
    return ModelContract.from_json(metadata[METADATA_KEY], source)


def sidecar_path(engine_path: str) -> str:
    """The JSON file that carries the contract beside a TensorRT engine."""
    return engine_path + ".json"


def class_index(contract: ModelContract, names: Sequence[str]) -> List[int]:
    """Indices of ``names`` in the model's classes; raises naming any unknown class."""
    unknown = [n for n in names if n not in contract.class_names]
    if unknown:
        raise ModelContractError(
            f"unknown class name(s) {unknown}; this model knows {list(contract.class_names)}")
    return [contract.class_names.index(n) for n in names]


def describe(contract: ModelContract) -> Dict[str, Any]:
    """A short summary for logs and diagnostics."""
    return {
        "name": contract.name,
        "input": f"{contract.input.width}x{contract.input.height} {contract.input.channel_order}",
        "layout": contract.output.layout,
        "classes": len(contract.class_names),
    }
