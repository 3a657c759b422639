"""``evit demo``: the whole product on one machine, in about 15 minutes on 2 CPU cores.

synthetic data -> ViT teacher -> compressed student (KD, pruning, INT8) -> ONNX -> the
detector node fed a replayed synthetic flight bag over DDS -> one printed report (compression
table and bag evaluation) with its files under ``out``.

Every stage runs if its code is there and says why not otherwise: a missing module is a
"skipped" stage with the reason, a stage that breaks is "failed" with the error, and the
stages after it carry on with what exists (a model in ``models/`` stands in for the student).
"""
from __future__ import annotations

import glob
import json
import os
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

DEMO_CONFIG = Path(__file__).resolve().parent / "configs" / "compress_demo.yaml"
#: --quick: seconds-long micro models, to check the plumbing end to end.
QUICK_CONFIG = Path(__file__).resolve().parent / "configs" / "compress_tiny.yaml"
FLIGHT_FRAMES = 120
QUICK_FLIGHT_FRAMES = 40


@dataclass
class StageOutcome:
    """How one demo stage went."""

    name: str
    status: str  # "ran", "skipped" or "failed"
    detail: str
    seconds: float


class _Stages:
    def __init__(self) -> None:
        self.outcomes: List[StageOutcome] = []

    def run(self, name: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Run ``fn``; ImportError of a module not written yet means skipped, any error failed."""
        from rich.console import Console

        console = Console()
        console.rule(f"[bold]{name}")
        start = time.monotonic()
        try:
            value, detail = fn(*args, **kwargs)
            status = "ran" if value is not None else "skipped"
        except _Skip as exc:
            value, status, detail = None, "skipped", str(exc)
        except ImportError as exc:
            value, status, detail = None, "skipped", f"not available yet ({exc})"
        except Exception as exc:  # a demo stage must not take the others down with it
            value, status, detail = None, "failed", f"{type(exc).__name__}: {exc}"
            console.print(traceback.format_exc(limit=6), style="dim")
        outcome = StageOutcome(name, status, detail, round(time.monotonic() - start, 1))
        self.outcomes.append(outcome)
        colour = {"ran": "green", "skipped": "yellow", "failed": "red"}[status]
        console.print(f"[{colour}]{name}: {status}[/{colour}] ({outcome.seconds:.0f} s) {detail}")
        return value


class _Skip(Exception):
    """A stage cannot run for a reason that is not an error."""


def run_demo(out: str, quick: bool = False, frames: Optional[int] = None, rate: float = 1.0) -> Dict[str, Any]:
    """Run every stage; print and write the final report; returns it (``ok`` = nothing failed)."""
    # Keep the demo's DDS traffic on this machine unless the user chose otherwise.
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    stages = _Stages()

    compression = stages.run("compress (teacher -> KD student -> pruning -> INT8 -> ONNX)",
                             _compress, out_dir, quick)
    model = stages.run("choose the model for the node", _choose_model, compression)
    bag = stages.run("flight bag", _make_bag, out_dir,
                     frames or (QUICK_FLIGHT_FRAMES if quick else FLIGHT_FRAMES))
    evaluation = None
    if model and bag:
        evaluation = stages.run("node on the replayed bag (live, DDS)", _evaluate, out_dir, bag, model, rate)
    else:
        stages.outcomes.append(StageOutcome("node on the replayed bag (live, DDS)", "skipped",
                                            "needs both a model and a bag", 0.0))

    report = {
        "ok": not any(o.status == "failed" for o in stages.outcomes),
        "out": str(out_dir), "quick": quick, "wall_s": round(time.monotonic() - started, 1),
        "stages": [asdict(o) for o in stages.outcomes],
        "model": model, "bag": bag,
        "compression": compression, "bag_evaluation": evaluation,
    }
    _print_report(report)
    with open(out_dir / "demo_report.json", "w") as fh:
        from evit_perception.evaluation.bag_eval import to_jsonable
        json.dump(to_jsonable(report), fh, indent=2, default=str)
    with open(out_dir / "demo_report.md", "w") as fh:
        fh.write(_markdown(report))
    return report


# -- stages ------------------------------------------------------------------------------
def _compress(out_dir: Path, quick: bool):
    from evit_training.pipeline import compress, load_compress_config

    config_path = QUICK_CONFIG if quick and QUICK_CONFIG.is_file() else DEMO_CONFIG
    if not config_path.is_file():
        raise _Skip(f"{config_path} is not written yet")
    config = load_compress_config(str(config_path))
    config.out_dir = str(out_dir / "compress")  # resumes: finished stages are not redone
    report = compress(config)
    return report, f"{config_path.name}: {len(_stage_rows(report))} stage(s) measured -> {config.out_dir}"


def _stage_rows(report: Any) -> List[Dict[str, Any]]:
    """The compression report's stages as a list of dicts (it may hold a list or a mapping)."""
    stages = (report or {}).get("stages", []) if isinstance(report, dict) else []
    if isinstance(stages, dict):
        return [dict(v, name=v.get("name", k)) if isinstance(v, dict) else {"name": k, "value": v}
                for k, v in stages.items()]
    return [s for s in stages if isinstance(s, dict)]


def _onnx_of(stage: Dict[str, Any]) -> Optional[str]:
    for key in ("onnx", "onnx_path", "model_path", "path", "model", "artifact"):
        value = stage.get(key)
        if isinstance(value, str) and value.endswith(".onnx") and os.path.isfile(value):
            return value
    return None


def _choose_model(compression: Any):
    rows = [r for r in _stage_rows(compression) if _onnx_of(r)]
    if rows:
        # The last stage is the most compressed; prefer INT8 when stages are unordered.
        int8 = [r for r in rows if "int8" in str(r.get("name", "")).lower()]
        pick = (int8 or rows)[-1]
        return _onnx_of(pick), f"stage {pick.get('name')!r}: {_onnx_of(pick)}"
    fallback = sorted(glob.glob(os.path.join("models", "*.onnx")))
    if fallback:
        return fallback[0], f"no compressed student; using {fallback[0]} from models/"
    raise _Skip("no compressed student and no models/*.onnx; nothing for the node to run")


def _make_bag(out_dir: Path, frames: int):
    from evit_perception.evaluation.bag_writer import write_flight_bag
    from evit_training.data.flight import generate_flight
    from evit_training.data.synthetic import CLASS_NAMES

    path = out_dir / "flight_bag"
    # 320x240: the demo model sees 160x160, so a VGA flight would shrink persons below its 7 px
    summary = write_flight_bag(str(path), generate_flight(frames, image_size=(320, 240), seed=7, fps=10.0),
                               CLASS_NAMES, storage="mcap", compressed=True, overwrite=True, progress=True,
                               total=frames)
    return summary.path, f"{summary.frames} frames, {summary.duration_s:.1f} s of flight -> {summary.path}"


def _evaluate(out_dir: Path, bag: str, model: str, rate: float):
    from evit_perception.evaluation.bag_eval import evaluate_bag
    from evit_training.cli_bags import print_evaluation

    result = evaluate_bag(bag, model, live=True, rate=rate, out_dir=str(out_dir / "bag_eval"),
                          output_bag=str(out_dir / "flight_with_detections"))
    print_evaluation(result)
    metrics = result.get("metrics") or {}
    return result, (f"{result['frames_answered']}/{result['frames_read']} frames answered, "
                    f"mAP@0.5 {metrics.get('map50', float('nan')):.3f}" if metrics else
                    f"{result['frames_answered']}/{result['frames_read']} frames answered")


# -- report ------------------------------------------------------------------------------
def _print_report(report: Dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.rule("[bold]evit demo report")
    stages = Table(title="stages")
    for col in ("stage", "status", "s", "detail"):
        stages.add_column(col)
    for o in report["stages"]:
        stages.add_row(o["name"], o["status"], f"{o['seconds']:.0f}", o["detail"][:120])
    console.print(stages)
    if _stage_rows(report.get("compression")):
        from evit_training.report.report import print_table
        print_table(report["compression"])
    if report.get("bag_evaluation"):
        from evit_training.cli_bags import print_evaluation
        print_evaluation(report["bag_evaluation"])
    console.print(f"demo {'finished' if report['ok'] else 'finished with failures'} in "
                  f"{report['wall_s']:.0f} s; files under {report['out']} (demo_report.md)")


def _markdown(report: Dict[str, Any]) -> str:
    lines = ["# evit demo report", "", f"Wall time {report['wall_s']:.0f} s" + (" (quick)" if report["quick"] else ""),
             "", "| stage | status | s | detail |", "|---|---|---|---|"]
    lines += [f"| {o['name']} | {o['status']} | {o['seconds']:.0f} | {o['detail']} |" for o in report["stages"]]
    if _stage_rows(report.get("compression")):
        from evit_training.report.report import markdown
        lines += [""] + ["#" + line if line.startswith("# ") else line
                         for line in markdown(report["compression"]).splitlines()]
    evaluation = report.get("bag_evaluation")
    if evaluation and (evaluation.get("files") or {}).get("markdown"):
        from evit_perception.evaluation.bag_eval import format_markdown

        folder = os.path.relpath(os.path.dirname(evaluation["files"]["markdown"]), report["out"])
        lines.append("")
        for line in format_markdown(evaluation).splitlines():
            if line.startswith("# "):
                line = "#" + line
            elif line.startswith("!["):  # images live beside the evaluation's own files
                line = line.replace("](", f"]({folder}/", 1)
            lines.append(line)
    return "\n".join(lines) + "\n"
