"""Named detector architectures, kept as plain data.

A config is a dict that fully describes a :class:`~evit_training.models.detector.ViTDetector`;
the same dict travels inside checkpoints, so a pruned model (whose ``blocks`` list records
per-block head counts and MLP widths) reloads without the config it started from.
"""
from __future__ import annotations

import copy
from typing import Any, Dict, Mapping, Union

#: Classes of the synthetic world (same order as evit_training.data.synthetic.CLASS_NAMES; not
#: imported so that building a model never pulls in the data stack).
DEFAULT_CLASS_NAMES = ("person", "vehicle", "obstacle")
#: ImageNet statistics: timm ViT/DeiT checkpoints expect them, the model applies them inside
#: its forward so exported graphs take plain RGB in [0, 1].
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_BASE: Dict[str, Any] = {
    "patch_size": 16,
    "input_size": 320,
    "embed_dim": 192,
    "depth": 12,
    "num_heads": 3,
    "mlp_ratio": 4.0,
    "head_channels": 64,
    "output_stride": 4,
    "class_names": list(DEFAULT_CLASS_NAMES),
    "mean": list(IMAGENET_MEAN),
    "std": list(IMAGENET_STD),
    "drop_path_rate": 0.0,
    #: Per-block structure after pruning: [{"num_heads", "head_dim", "mlp_hidden"}, ...];
    #: None means uniform blocks derived from embed_dim/num_heads/mlp_ratio.
    "blocks": None,
}

CONFIGS: Dict[str, Dict[str, Any]] = {
    # ViT-S/16 class teacher and ViT-Ti/16 class student for GPU runs.
    "teacher": {"patch_size": 16, "input_size": 320, "embed_dim": 384, "depth": 12,
                "num_heads": 6, "head_channels": 128, "drop_path_rate": 0.1},
    "student": {"patch_size": 16, "input_size": 320, "embed_dim": 192, "depth": 12,
                "num_heads": 3, "head_channels": 64, "drop_path_rate": 0.05},
    # Patch-8 variants at 160 px that learn something in minutes on a laptop CPU.
    "teacher_tiny": {"patch_size": 8, "input_size": 160, "embed_dim": 192, "depth": 4,
                     "num_heads": 3, "head_channels": 64},
    "student_tiny": {"patch_size": 8, "input_size": 160, "embed_dim": 128, "depth": 3,
                     "num_heads": 2, "head_channels": 48},
    # Seconds-long unit tests.
    "test_micro": {"patch_size": 8, "input_size": 64, "embed_dim": 32, "depth": 2,
                   "num_heads": 2, "head_channels": 16},
}


def config_names() -> list:
    """Names accepted by :func:`resolve_config`."""
    return sorted(CONFIGS)


def resolve_config(name_or_cfg: Union[str, Mapping[str, Any]], **overrides: Any) -> Dict[str, Any]:
    """A complete architecture dict from a config name or a (partial) dict plus overrides."""
    if isinstance(name_or_cfg, str):
        if name_or_cfg not in CONFIGS:
            raise KeyError(f"unknown detector config {name_or_cfg!r}; known: {', '.join(config_names())}")
        cfg = dict(CONFIGS[name_or_cfg], name=name_or_cfg)
    else:
        cfg = dict(name_or_cfg)
    cfg.update(overrides)
    allowed = set(_BASE) | {"name"}
    unknown = sorted(set(cfg) - allowed)
    if unknown:
        raise KeyError(f"unknown detector config key(s) {unknown}; allowed: {sorted(allowed)}")
    full = copy.deepcopy(_BASE)
    full.update(copy.deepcopy(cfg))
    full.setdefault("name", "custom")
    full["class_names"] = list(full["class_names"])
    if full["input_size"] % full["patch_size"]:
        raise ValueError(f"input_size {full['input_size']} is not a multiple of patch_size {full['patch_size']}")
    if full["patch_size"] % full["output_stride"]:
        raise ValueError(f"patch_size {full['patch_size']} is not a multiple of output_stride {full['output_stride']}")
    if full["blocks"] is not None and len(full["blocks"]) != full["depth"]:
        raise ValueError(f"blocks lists {len(full['blocks'])} entries but depth is {full['depth']}")
    return full
