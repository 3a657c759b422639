"""``evit prune`` / ``evit quantize`` / ``evit build-engine`` / ``evit compress`` / ``evit report``."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer


def _fail(message: str, hint: str) -> None:
    raise typer.BadParameter(message, param_hint=hint)


def register(app: typer.Typer) -> None:
    """Add the compression commands to the ``evit`` app."""

    @app.command("compress")
    def compress_cmd(
        config: Path = typer.Argument(..., help="compress config YAML (training/configs/compress_*.yaml)"),
        out_dir: Optional[Path] = typer.Option(None, help="override out_dir"),
        stages: Optional[str] = typer.Option(None, help="comma-separated subset of stages to run: "
                                             "teacher,student,prune,finetune,quantize,report"),
        force: bool = typer.Option(False, "--force", help="redo stages whose outputs already exist"),
    ) -> None:
        """Teacher -> KD student -> prune -> KD fine-tune -> INT8/FP16 -> report (cached per stage)."""
        from evit_training.config import ConfigError
        from evit_training.pipeline import Pipeline, load_compress_config
        try:
            cfg = load_compress_config(str(config))
            if out_dir:
                cfg.out_dir = str(out_dir)
            if stages:
                cfg.stages = [s.strip() for s in stages.split(",") if s.strip()]
                cfg.validate()
        except (ConfigError, ValueError) as exc:
            _fail(str(exc), "CONFIG")
        try:
            Pipeline(cfg, force=force).run()
        except ConfigError as exc:
            typer.secho(f"evit compress: {exc}", fg=typer.colors.RED, err=True)
            raise typer.Exit(2)
        typer.echo(f"report: {Path(cfg.out_dir) / 'report.md'}")

    @app.command("prune")
    def prune_cmd(
        checkpoint: Path = typer.Argument(..., help="detector checkpoint (.pt) to prune"),
        output: Path = typer.Argument(..., help="pruned checkpoint to write (reloads without the original config)"),
        macs_ratio: Optional[float] = typer.Option(None, help="keep this fraction of the MACs (e.g. 0.5)"),
        params_ratio: Optional[float] = typer.Option(None, help="keep this fraction of the parameters"),
        importance: str = typer.Option("magnitude", help="magnitude | taylor | group_norm"),
        max_steps: int = typer.Option(20, help="iterative pruning steps at most"),
        max_head_ratio: float = typer.Option(0.5, help="largest fraction of each block's heads removed"),
        data: Optional[Path] = typer.Option(None, help="COCO annotations.json for Taylor gradients"),
        onnx: Optional[Path] = typer.Option(None, help="also export the pruned model to this ONNX file"),
    ) -> None:
        """Prune attention heads and MLP width (Torch-Pruning) to a MACs or params target.

        Fine-tune afterwards with `evit distill` (model.init: the pruned checkpoint).
        """
        import torch

        from evit_training.models.checkpoint import CheckpointError, load_model, save_checkpoint
        from evit_training.prune import prune_vit

        if (macs_ratio is None) == (params_ratio is None):
            _fail("give exactly one of --macs-ratio / --params-ratio", "--macs-ratio")
        try:
            model = load_model(checkpoint)
        except CheckpointError as exc:
            _fail(str(exc), "CHECKPOINT")
        size = int(model.config["input_size"])
        loss_fn = None
        if importance == "taylor":
            if data is None:
                _fail("Taylor importance needs --data (COCO annotations) for gradients", "--data")
            from evit_training.data.datasets import load_detection_dataset
            from evit_training.engine.losses import detection_loss, encode_targets

            dataset = load_detection_dataset(data, input_size=size)
            items = [dataset[i] for i in range(min(len(dataset), 16))]
            if not items:
                _fail(f"{data} has no images", "--data")
            images = torch.stack([im for im, _ in items])
            stride = int(model.config["output_stride"])
            encoded = encode_targets([t for _, t in items], len(model.config["class_names"]), size // stride, stride)

            def loss_fn(net):  # noqa: ANN001
                return detection_loss(net(images), encoded)["total"]
        try:
            result = prune_vit(model, torch.zeros(1, 3, size, size), target_macs_ratio=macs_ratio,
                               target_params_ratio=params_ratio, importance=importance, max_steps=max_steps,
                               max_head_ratio=max_head_ratio, loss_fn=loss_fn)
        except ValueError as exc:
            _fail(str(exc), "--importance")
        save_checkpoint(model, output, stage="prune")
        if onnx:
            from evit_training.export import export_onnx

            export_onnx(model, onnx, extra={"stage": "prune"})
        typer.echo(json.dumps({"checkpoint": str(output), "blocks": result.arch,
                               "params": [result.params_before, result.params_after],
                               "macs": [result.macs_before, result.macs_after], "steps": result.steps}, indent=1))

    @app.command("quantize")
    def quantize_cmd(
        onnx_path: Path = typer.Argument(..., help="FP32 ONNX exported by evit export"),
        output: Path = typer.Argument(..., help="INT8 (or FP16 with --fp16) ONNX to write"),
        calib_dir: Optional[Path] = typer.Option(None, help="folder of training images for INT8 calibration"),
        calib_images: int = typer.Option(64, help="calibration images used (spread over the folder)"),
        method: str = typer.Option("minmax", help="calibration: minmax | entropy | percentile"),
        target: str = typer.Option("cpu", help="cpu (U8S8, asymmetric activations) | tensorrt (symmetric)"),
        val: Optional[Path] = typer.Option(None, help="COCO annotations.json: measure mAP and keep sensitive "
                                           "layers in float until the drop is within --max-drop"),
        max_drop: float = typer.Option(0.02, help="largest accepted relative mAP@0.5 drop (with --val)"),
        val_images: Optional[int] = typer.Option(64, help="validation images scored per candidate"),
        fp16: bool = typer.Option(False, "--fp16", help="write an FP16 model (LayerNorm/Softmax in FP32) instead"),
    ) -> None:
        """INT8 static QDQ quantization (ONNX Runtime) with sensitivity analysis, or FP16."""
        if not onnx_path.is_file():
            _fail(f"ONNX file not found: {onnx_path}", "ONNX_PATH")
        if fp16:
            from evit_training.quantize.fp16 import convert_fp16

            typer.echo(convert_fp16(str(onnx_path), str(output)))
            return
        if calib_dir is None:
            _fail("INT8 needs --calib-dir (training images)", "--calib-dir")
        from evit_training.quantize.calibration import (TensorListReader, list_images, preprocess_images,
                                                        read_contract)
        from evit_training.quantize.int8 import Int8Settings, quantize_int8
        from evit_training.quantize.sensitivity import quantize_within_budget

        try:
            settings = Int8Settings(calibration=method, target=target)
            contract = read_contract(str(onnx_path))
            images = list_images(str(calib_dir), calib_images)
        except (ValueError, FileNotFoundError) as exc:
            _fail(str(exc), "--calib-dir")
        reader = TensorListReader(contract.input.name, preprocess_images(images, contract))
        if val is None:
            quantize_int8(str(onnx_path), str(output), reader, settings)
            typer.echo(json.dumps({"int8": str(output), "note": "accuracy not measured (no --val)"}))
            return
        from evit_training.report.stage_metrics import load_coco, onnx_map

        try:
            load_coco(str(val))
        except (ValueError, FileNotFoundError) as exc:
            _fail(str(exc), "--val")
        images_dir = str(val.parent / "images")

        def score(path: str) -> float:
            return onnx_map(path, str(val), images_dir, max_images=val_images, progress=False)["map50"]

        report = quantize_within_budget(str(onnx_path), str(output), reader, settings, score_fn=score,
                                        max_drop=max_drop)
        typer.echo(json.dumps(dict(report.to_dict(), int8=str(output)), indent=1))

    @app.command("build-engine")
    def build_engine_cmd(
        onnx_path: Path = typer.Argument(..., help="ONNX model with the evit contract"),
        engine: Optional[Path] = typer.Option(None, help="engine file (default: <onnx>.engine)"),
        fp16: bool = typer.Option(True, "--fp16/--no-fp16", help="allow FP16 kernels"),
        int8: bool = typer.Option(False, "--int8", help="INT8 (QDQ ONNX, or calibrate with --calib-dir)"),
        calib_dir: Optional[Path] = typer.Option(None, help="training images for TensorRT INT8 calibration"),
        calib_images: int = typer.Option(64, help="calibration images used"),
        workspace_mb: int = typer.Option(1024, help="builder workspace in MB"),
        timing_cache: Optional[Path] = typer.Option(None, help="TensorRT timing cache file (reused between builds)"),
        device_id: int = typer.Option(0, help="CUDA device"),
    ) -> None:
        """Build a TensorRT engine on the Jetson (TensorRT Python API), contract sidecar alongside."""
        from evit_perception.backends.base import BackendError
        from evit_perception.backends.tensorrt_build import build_engine

        if not onnx_path.is_file():
            _fail(f"ONNX file not found: {onnx_path}", "ONNX_PATH")
        batches = None
        if int8 and calib_dir is not None:
            from evit_training.quantize.calibration import list_images, preprocess_images, read_contract

            batches = preprocess_images(list_images(str(calib_dir), calib_images), read_contract(str(onnx_path)))
        engine_path = str(engine or onnx_path.with_suffix(".engine"))
        try:
            out = build_engine(str(onnx_path), engine_path, fp16=fp16, int8=int8, calibration_batches=batches,
                               workspace_mb=workspace_mb,
                               timing_cache_path=str(timing_cache) if timing_cache else None,
                               device_id=device_id)
        except BackendError as exc:
            typer.secho(f"evit build-engine: {exc}", fg=typer.colors.RED, err=True)
            raise typer.Exit(1)
        typer.echo(out)

    @app.command("report")
    def report_cmd(
        run_dir: Path = typer.Argument(..., help="compress run folder (holds report.json)"),
        remeasure: Optional[Path] = typer.Option(None, help="compress config: re-measure every stage first"),
    ) -> None:
        """Print a run's report table (and rewrite report.md/.png), or re-measure with --remeasure."""
        from evit_training.report.report import load_report, write_report

        if remeasure is not None:
            from evit_training.pipeline import Pipeline, load_compress_config

            cfg = load_compress_config(str(remeasure))
            cfg.out_dir = str(run_dir)
            Pipeline(cfg).stage_report()
            return
        try:
            doc = load_report(str(run_dir))
        except (FileNotFoundError, ValueError) as exc:
            _fail(str(exc), "RUN_DIR")
        write_report(str(run_dir), [], reference=doc.get("reference"), show=True)
