"""Run configs from YAML, loaded strictly: an unknown key is an error naming the key, where
it sits and the keys allowed there (a typo never silently falls back to a default).

:func:`from_dict` works for any dataclass (nested dataclasses and ``Optional`` ones
included), so other areas reuse it for their own sections.
"""
from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Type, TypeVar, Union

import yaml

from evit_training.distill.objective import KDConfig
from evit_training.engine.trainer import TrainConfig

T = TypeVar("T")
PathLike = Union[str, os.PathLike]


class ConfigError(ValueError):
    """A run config is unreadable or holds an unknown key or a bad value."""


@dataclass
class ModelSection:
    """The network to train: a named config plus overrides, optionally initialised from
    our checkpoint (``init``) or a timm ViT/DeiT weights file on disk (``backbone_weights``)."""

    name: str = "student_tiny"
    overrides: Dict[str, Any] = field(default_factory=dict)
    init: Optional[str] = None
    backbone_weights: Optional[str] = None


@dataclass
class SyntheticSection:
    """Synthetic scenes generated when no dataset path is given (``evit synth`` settings)."""

    num_images: int = 400
    image_size: int = 320
    seed: int = 0
    val_fraction: float = 0.2
    out_dir: Optional[str] = None  # default: <run out_dir>/data


@dataclass
class DataSection:
    """COCO JSON / COCO folder / YOLO folder paths, or synthetic data when ``train`` is null."""

    train: Optional[str] = None
    val: Optional[str] = None
    augment: bool = True
    synthetic: SyntheticSection = field(default_factory=SyntheticSection)


@dataclass
class ExportSection:
    opset: int = 16
    max_detections: int = 100
    onnx: Optional[str] = None  # default: <out_dir>/model.onnx; empty string: no export


@dataclass
class RunConfig:
    """One ``evit train`` / ``evit distill`` run."""

    name: str = "run"
    out_dir: str = "runs/run"
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    train: TrainConfig = field(default_factory=TrainConfig)
    kd: Optional[KDConfig] = None
    export: ExportSection = field(default_factory=ExportSection)


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _unwrap_optional(tp: Any) -> Any:
    if typing.get_origin(tp) is Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check/convert a YAML scalar to the field's type (ints accepted for floats)."""
    tp = _unwrap_optional(tp)
    if value is None:
        return None
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp in (int, str, bool) and not (isinstance(value, tp) and not (tp is int and isinstance(value, bool))):
        raise ConfigError(f"{where}: expected {tp.__name__}, got {type(value).__name__} {value!r}")
    return value


def from_dict(cls: Type[T], doc: Optional[Mapping[str, Any]], where: str = "config") -> T:
    """Build dataclass ``cls`` from ``doc``, rejecting unknown keys with a clear error."""
    if doc is None:
        doc = {}
    if not isinstance(doc, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {type(doc).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(doc) - set(names))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(repr(k) for k in unknown)}; "
                          f"allowed: {', '.join(names)}")
    kwargs: Dict[str, Any] = {}
    for name in names:
        if name not in doc:
            continue
        tp = _unwrap_optional(hints[name])
        sub = f"{where}.{name}"
        if _is_dataclass_type(tp):
            kwargs[name] = None if doc[name] is None else from_dict(tp, doc[name], sub)
        else:
            kwargs[name] = _coerce(doc[name], hints[name], sub)
    try:
        obj = cls(**kwargs)
        if hasattr(obj, "validate"):
            obj.validate()
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from exc
    return obj


def read_yaml(path: PathLike) -> Dict[str, Any]:
    """The YAML mapping in ``path``; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    return doc


def load_config(path: PathLike, **overrides: Any) -> RunConfig:
    """A :class:`RunConfig` from a YAML file; ``overrides`` replace top-level sections' keys
    given as ``section__key=value`` (e.g. ``train__steps=10``) or top-level keys."""
    doc = read_yaml(path)
    for key, value in overrides.items():
        if value is None:
            continue
        section, _, sub = key.partition("__")
        if sub:
            doc.setdefault(section, {})
            if doc[section] is None:
                doc[section] = {}
            doc[section][sub] = value
        else:
            doc[key] = value
    return from_dict(RunConfig, doc, str(path))


def config_to_dict(cfg: Any) -> Dict[str, Any]:
    """Plain dict (for checkpoints and reports)."""
    return dataclasses.asdict(cfg)
