"""``evit make-bag``, ``evit eval-bag`` and ``evit demo``: flights as rosbag2 bags, scored.

Heavy imports happen inside the commands so ``evit --help`` stays fast.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    """Add the bag commands to the ``evit`` app."""
    app.command("make-bag")(make_bag)
    app.command("eval-bag")(eval_bag)
    app.command("demo")(demo)


def make_bag(
    out: Path = typer.Argument(..., help="Bag directory to create (must not exist unless --overwrite)."),
    frames: int = typer.Option(120, "--frames", min=1, help="Number of camera frames."),
    storage: str = typer.Option("mcap", "--storage", help="rosbag2 storage: mcap or sqlite3."),
    compressed: bool = typer.Option(False, "--compressed/--raw",
                                    help="JPEG sensor_msgs/CompressedImage or raw bgr8 Image."),
    fps: float = typer.Option(10.0, "--fps", min=0.1, help="Camera rate of the flight."),
    width: int = typer.Option(640, "--width", min=32),
    height: int = typer.Option(480, "--height", min=32),
    seed: int = typer.Option(0, "--seed"),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing bag at OUT."),
) -> None:
    """Write a synthetic drone flight as a rosbag2 bag (image, camera_info, ground truth)."""
    from evit_perception.evaluation.bag_io import STORAGES, BagError
    from evit_perception.evaluation.bag_writer import write_flight_bag
    from evit_training.data.flight import generate_flight
    from evit_training.data.synthetic import CLASS_NAMES

    if storage not in STORAGES:
        raise typer.BadParameter(f"--storage must be one of {', '.join(STORAGES)}, got {storage!r}")
    try:
        summary = write_flight_bag(
            str(out), generate_flight(frames, image_size=(width, height), seed=seed, fps=fps),
            CLASS_NAMES, storage=storage, compressed=compressed, overwrite=overwrite, progress=True,
            total=frames)
    except BagError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2)
    typer.echo(f"wrote {summary.frames} frames ({summary.duration_s:.1f} s, {storage}) to {summary.path}")
    for topic, msgtype in summary.topics.items():
        typer.echo(f"  {topic}  [{msgtype}]")


def eval_bag(
    bag: Path = typer.Argument(..., help="rosbag2 directory (or a bare .mcap / .db3 file)."),
    model: Path = typer.Option(..., "--model", help="ONNX model with the evit contract, or a TensorRT engine."),
    image_topic: Optional[str] = typer.Option(None, "--image-topic", help="Camera topic (default: the only image topic)."),
    gt_topic: Optional[str] = typer.Option(None, "--gt-topic", help="Ground-truth Detection2DArray topic."),
    gt: Optional[Path] = typer.Option(None, "--gt", help="Ground truth as COCO JSON instead of a topic."),
    live: bool = typer.Option(False, "--live", help="Replay into the running node over DDS instead of in-process."),
    rate: float = typer.Option(1.0, "--rate", min=0.01, help="Live replay speed, x recorded rate."),
    out: Path = typer.Option(Path("runs/eval_bag"), "--out", help="Folder for evaluation.json/.md and PNGs."),
    output_bag: Optional[Path] = typer.Option(None, "--output-bag", help="Write a copy of the bag with the detections added."),
    score_threshold: float = typer.Option(0.3, "--score-threshold", min=0.0, max=1.0,
                                          help="Operating threshold for precision/recall and counts."),
    backend: str = typer.Option("auto", "--backend", help="auto, onnxruntime or tensorrt."),
    max_frames: Optional[int] = typer.Option(None, "--max-frames", min=1),
) -> None:
    """Score a model on a bag: mAP, P/R, latency, throughput, drops; JSON, Markdown and PNGs."""
    from evit_perception.evaluation.bag_eval import evaluate_bag
    from evit_perception.evaluation.bag_io import BagError

    try:
        result = evaluate_bag(str(bag), str(model), image_topic=image_topic, gt_topic=gt_topic,
                              gt_coco=str(gt) if gt else None, live=live, rate=rate, out_dir=str(out),
                              output_bag=str(output_bag) if output_bag else None,
                              score_threshold=score_threshold, backend=backend, max_frames=max_frames)
    except (BagError, ValueError, RuntimeError) as exc:
        # BackendError, ModelContractError and ImageConversionError are ValueError/RuntimeError
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2)
    print_evaluation(result)


def print_evaluation(result: dict) -> None:
    """A short rich table of a bag evaluation."""
    from rich.console import Console
    from rich.table import Table

    lat = result["latency_ms"]
    metrics = result.get("metrics") or {}

    def f(v: object, d: int = 3) -> str:
        return "-" if v is None else (f"{v:.{d}f}" if isinstance(v, float) else str(v))

    title = f"bag evaluation ({result['mode']}" + (f", {result['rate']}x" if result.get("rate") else "") + ")"
    table = Table(title=title, show_header=False)
    table.add_column("figure")
    table.add_column("value", justify="right")
    rows = [("frames read / answered / dropped",
             f"{result['frames_read']} / {result['frames_answered']} / {result['dropped_frames']}")]
    if metrics:
        rows += [("mAP@0.5", f(metrics.get("map50"))), ("mAP@0.5:0.95", f(metrics.get("map50_95"))),
                 (f"precision / recall @ {result['score_threshold']}",
                  f"{f(metrics.get('precision'))} / {f(metrics.get('recall'))}")]
        rows += [(f"AP@0.5 {name}", f(v.get("ap50"))) for name, v in (metrics.get("per_class") or {}).items()]
    rows += [("latency p50 / p95 / p99 ms", f"{f(lat['p50'], 1)} / {f(lat['p95'], 1)} / {f(lat['p99'], 1)}"),
             ("throughput fps", f(result["throughput_fps"], 1)),
             (f"detections @ {result['score_threshold']}", ", ".join(
                 f"{n} {c}" for n, c in result["detections"]["by_class"].items()))]
    for row in rows:
        table.add_row(*row)
    console = Console()
    console.print(table)
    for problem in result.get("problems", []):
        console.print(f"[yellow]note:[/yellow] {problem}")
    for name, path in (result.get("files") or {}).items():
        console.print(f"  {name}: {path}")
    if result.get("output_bag"):
        console.print(f"  output bag: {result['output_bag']}")


def demo(
    out: Path = typer.Option(Path("runs/demo"), "--out", help="Folder for everything the demo writes."),
    quick: bool = typer.Option(False, "--quick", help="Smallest budgets: checks the plumbing in a few minutes."),
    frames: Optional[int] = typer.Option(None, "--frames", min=1, help="Frames in the replayed bag."),
    rate: float = typer.Option(1.0, "--rate", min=0.1, help="Replay speed of the bag into the node."),
) -> None:
    """The whole product end to end: data -> teacher -> compressed student -> ONNX -> node on a bag."""
    from evit_training.demo import run_demo

    report = run_demo(str(out), quick=quick, frames=frames, rate=rate)
    raise typer.Exit(0 if report["ok"] else 1)
