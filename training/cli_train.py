"""``evit train`` / ``evit distill`` / ``evit export``."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import typer


def _load(config: Path, out_dir: Optional[Path], steps: Optional[int], device: Optional[str]):
    from evit_training.config import ConfigError, load_config
    try:
        return load_config(config, out_dir=str(out_dir) if out_dir else None, train__steps=steps,
                           train__device=device)
    except ConfigError as exc:
        raise typer.BadParameter(str(exc), param_hint="CONFIG")


def _fail(exc: Exception) -> None:
    """One clear line for a user error (missing file, bad checkpoint), no traceback."""
    typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


def _user_errors():
    from evit_training.config import ConfigError
    from evit_training.models.checkpoint import CheckpointError
    return (ConfigError, CheckpointError, FileNotFoundError)


def _echo_result(result: dict) -> None:
    if os.environ.get("RANK", "0") == "0":  # under torchrun only the main process reports
        typer.echo(json.dumps(result, indent=1, default=str))


def register(app: typer.Typer) -> None:
    """Add the training commands to the ``evit`` app."""

    @app.command("train")
    def train_cmd(
        config: Path = typer.Argument(..., help="run config YAML (e.g. training/configs/demo_teacher.yaml)"),
        out_dir: Optional[Path] = typer.Option(None, help="override out_dir"),
        steps: Optional[int] = typer.Option(None, help="override train.steps"),
        device: Optional[str] = typer.Option(None, help="override train.device (cpu, cuda, cuda:1)"),
        resume: bool = typer.Option(False, "--resume", help="continue from <out_dir>/last.pt"),
    ) -> None:
        """Train a detector (multi-GPU: torchrun --nproc_per_node=N -m evit_training.cli train ...)."""
        from evit_training.engine.run import run_training
        cfg = _load(config, out_dir, steps, device)
        try:
            result = run_training(cfg, distill=False, resume=resume)
        except _user_errors() as exc:
            _fail(exc)
        _echo_result(result)

    @app.command("distill")
    def distill_cmd(
        config: Path = typer.Argument(..., help="run config YAML with a kd: section (or a data-free config)"),
        data_free: bool = typer.Option(False, "--data-free", help="data-free KD (generator; no training images)"),
        teacher: Optional[Path] = typer.Option(None, help="override kd.teacher checkpoint"),
        out_dir: Optional[Path] = typer.Option(None, help="override out_dir"),
        steps: Optional[int] = typer.Option(None, help="override train.steps"),
        device: Optional[str] = typer.Option(None, help="override train.device"),
        resume: bool = typer.Option(False, "--resume", help="continue from the last checkpoint"),
    ) -> None:
        """Distil a student from a trained teacher (logit + feature KD), or data-free."""
        if data_free:
            from evit_training.config import read_yaml
            from evit_training.distill.data_free import run_from_config
            raw = read_yaml(config)
            if teacher:
                raw["teacher"] = str(teacher)
            if steps:
                raw.setdefault("data_free", {})["steps"] = steps
            try:
                result = run_from_config(raw, out_dir=out_dir, resume=resume, device=device)
            except _user_errors() as exc:
                _fail(exc)
            _echo_result(result)
            return
        from evit_training.engine.run import run_training
        cfg = _load(config, out_dir, steps, device)
        if teacher:
            from evit_training.distill.objective import KDConfig
            cfg.kd = cfg.kd or KDConfig()
            cfg.kd.teacher = str(teacher)
        try:
            result = run_training(cfg, distill=True, resume=resume)
        except _user_errors() as exc:
            _fail(exc)
        _echo_result(result)

    @app.command("export")
    def export_cmd(
        checkpoint: Path = typer.Argument(..., help="detector checkpoint (.pt from evit train/distill/prune)"),
        output: Path = typer.Argument(..., help="ONNX file to write"),
        opset: int = typer.Option(16, help="ONNX opset (16: TensorRT 8.2 on JetPack 4.6 parses it)"),
        max_detections: int = typer.Option(100, help="rows K of the [1, K, 6] detections output"),
        name: Optional[str] = typer.Option(None, help="model name in the contract"),
    ) -> None:
        """Export a checkpoint to ONNX with in-graph decoding and the model contract."""
        from evit_training.export import export_onnx
        from evit_training.models.checkpoint import CheckpointError, load_checkpoint, load_model
        try:
            model = load_model(checkpoint)
            meta = load_checkpoint(checkpoint)
        except CheckpointError as exc:
            raise typer.BadParameter(str(exc), param_hint="CHECKPOINT")
        extra = {"checkpoint": str(checkpoint)}
        if isinstance(meta.get("metrics"), dict):
            extra["metrics"] = {k: v for k, v in meta["metrics"].items() if isinstance(v, (int, float))}
        path = export_onnx(model, output, opset=opset, max_detections=max_detections, name=name, extra=extra)
        typer.echo(f"wrote {path}")
