"""A RunConfig end to end: data, model, (teacher), Trainer, ONNX export.

Used by ``evit train`` / ``evit distill`` and by anything that wants the same run from
Python (``run_training(load_config("training/configs/tiny.yaml"))``).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch

from evit_training.config import RunConfig, config_to_dict
from evit_training.models import create_detector
from evit_training.models.checkpoint import load_model, load_timm_backbone

from .distributed import setup_distributed
from .trainer import Trainer, seed_everything

log = logging.getLogger(__name__)


def prepare_data(cfg: RunConfig, input_size: int, augment: Optional[bool] = None,
                 progress: bool = True) -> Tuple[Any, Optional[Any]]:
    """Train (and validation) datasets from paths, or synthetic scenes generated once."""
    from evit_training.data.datasets import load_detection_dataset

    data = cfg.data
    augment = data.augment if augment is None else augment
    if data.train:
        train = load_detection_dataset(data.train, input_size=input_size, train=augment)
        val = load_detection_dataset(data.val, input_size=input_size) if data.val else None
        return train, val
    syn = data.synthetic
    root = Path(syn.out_dir or Path(cfg.out_dir) / "data")
    splits = {s: {"annotations": str(root / s / "annotations.json"), "images": str(root / s / "images")}
              for s in ("train", "val")}
    ctx = setup_distributed(cfg.train.device)
    if ctx.is_main and not Path(splits["train"]["annotations"]).is_file():
        from evit_training.data.synthetic import generate_dataset
        generate_dataset(root, syn.num_images, syn.image_size, syn.seed, syn.val_fraction, progress=progress)
    if ctx.enabled:  # everyone waits until rank 0 has the data on disk
        torch.distributed.barrier()
    train = load_detection_dataset(splits["train"]["annotations"], input_size=input_size, train=augment)
    val_path = Path(splits["val"]["annotations"])
    val = None
    if val_path.is_file() and json.loads(val_path.read_text()).get("images"):
        val = load_detection_dataset(val_path, input_size=input_size)
    return train, val


def build_model(cfg: RunConfig) -> torch.nn.Module:
    """The model to train: from ``model.init`` (our checkpoint) or a named config; a timm
    weights file in ``model.backbone_weights`` initialises the backbone."""
    m = cfg.model
    model = load_model(m.init).train() if m.init else create_detector(m.name, **m.overrides)
    if m.backbone_weights:
        report = load_timm_backbone(model, m.backbone_weights, strict=False)
        log.info("backbone weights from %s (missing %d, unexpected %d)", m.backbone_weights,
                 len(report["missing"]), len(report["unexpected"]))
    return model


def run_training(cfg: RunConfig, distill: bool = False, resume: bool = False) -> Dict[str, Any]:
    """Train (or distil, with ``cfg.kd``) and export; returns paths and validation metrics."""
    out_dir = Path(cfg.out_dir)
    teacher = None
    if distill:
        if cfg.kd is None or not cfg.kd.teacher:
            raise ValueError(f"{cfg.name}: distillation needs a 'kd:' section with 'teacher: <checkpoint>'")
        teacher = load_model(cfg.kd.teacher)
    # Seed before the weights are drawn: a stage's result must not depend on what ran earlier
    # in the same process (the pipeline runs every stage in one).
    seed_everything(cfg.train.seed, cfg.train.deterministic)
    model = build_model(cfg)
    size = int(model.config["input_size"])
    if teacher is not None and int(teacher.config["input_size"]) != size:
        raise ValueError(f"teacher input size {teacher.config['input_size']} differs from the student's {size}; "
                         "dense KD compares maps cell by cell")
    train_set, val_set = prepare_data(cfg, size, progress=cfg.train.progress)
    trainer = Trainer(model, train_set, cfg.train, out_dir, teacher=teacher, kd=cfg.kd if distill else None,
                      val_dataset=val_set, resume=resume)
    model = trainer.fit()
    ctx = setup_distributed(cfg.train.device)
    result: Dict[str, Any] = {"checkpoint": str(out_dir / "model.pt"), "metrics": _scalars(trainer.metrics)}
    if trainer.teacher_cache is not None:
        result["teacher_cache_seconds"] = round(trainer.teacher_cache.seconds, 2)
    if ctx.is_main and cfg.export.onnx != "":
        from evit_training.export import export_onnx
        onnx_path = Path(cfg.export.onnx or out_dir / "model.onnx")
        export_onnx(model, onnx_path, opset=cfg.export.opset, max_detections=cfg.export.max_detections,
                    name=cfg.name, extra={"stage": "distill" if distill else "train",
                                          "metrics": result["metrics"], "config": config_to_dict(cfg)})
        result["onnx"] = str(onnx_path)
    if ctx.is_main:
        (out_dir / "result.json").write_text(json.dumps(result, indent=1))
    return result


def _scalars(metrics: Dict[str, Any]) -> Dict[str, float]:
    keep = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    for name, ap in (metrics.get("per_class") or {}).items():
        keep[f"ap50_{name}"] = float(ap.get("ap50", 0.0))
    return keep
