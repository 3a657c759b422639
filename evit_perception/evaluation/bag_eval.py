"""Evaluate a detector on a rosbag2 bag, directly or through the live ROS 2 node.

Direct mode decodes the bag's frames and runs :class:`~evit_perception.detector.Detector`
in-process: the fastest way to score a model. Live mode starts the detector node as a
process, replays the bag into it over DDS (recorded rate x ``rate``, /clock, sim time) and
records its Detection2DArray answers: the real system, transport and drops included.

Ground truth comes from a Detection2DArray topic in the bag (matched by header stamp) or a
COCO JSON (images matched by a ``stamp_ns`` field, else by order). Without ground truth the
result has latency, throughput and detection counts only. Problems that do not stop the run
are listed in ``result["problems"]``.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from evit_perception.evaluation.bag_io import (
    COMPRESSED_IMAGE_TYPE, DETECTIONS_TYPE, BagError, BagReader, boxes_to_detections,
    copy_connection, detections_to_boxes, make_typestore, ns_to_stamp, open_writer)

#: Detections down to this score are kept so PR curves and mAP span the whole range; the
#: operating threshold only decides the precision/recall point.
SCORE_FLOOR = 0.01
EVAL_NAMESPACE = "/evit_eval"
STRIP_FRAMES = 6
#: Where ``--output-bag`` puts the detections (and what ground-truth auto-detection skips).
OUTPUT_DETECTIONS_TOPIC = "/evit/detections"


@dataclass
class FrameRecord:
    """One frame of the bag and what the detector said about it."""

    index: int
    stamp_ns: int
    log_time_ns: int
    width: int
    height: int
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    class_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    answered: bool = False
    latency_ms: Optional[float] = None
    #: live mode: seconds from the first frame sent to this answer's arrival
    arrival_s: Optional[float] = None
    bgr: Optional[np.ndarray] = None  # kept only for the frame strip


@dataclass
class GroundTruth:
    """Boxes per frame stamp, class names indexing ``labels``."""

    source: str
    class_names: List[str]
    by_stamp: Dict[int, Tuple[np.ndarray, List[int]]]


def evaluate_bag(bag: str, model: str, image_topic: Optional[str] = None,
                 gt_topic: Optional[str] = None, gt_coco: Optional[str] = None, live: bool = False,
                 rate: float = 1.0, out_dir: Optional[str] = None, output_bag: Optional[str] = None,
                 score_threshold: float = 0.3, backend: str = "auto",
                 max_frames: Optional[int] = None, node_timeout_s: float = 60.0,
                 progress: bool = True) -> Dict[str, Any]:
    """Evaluate ``model`` on ``bag``; returns the result dict (also written under ``out_dir``).

    ``gt_topic`` and ``gt_coco`` are exclusive; with neither, the bag's ground-truth topic is
    found if unambiguous (see docs/evaluation.md). Raises :class:`BagError` for bags, topics
    or ground truth that cannot be used; lesser problems are listed in ``result["problems"]``.
    """
    if gt_topic and gt_coco:
        raise BagError("give ground truth as --gt-topic or --gt (COCO JSON), not both")
    if not os.path.isfile(model):
        raise BagError(f"model file not found: {model}")
    started = time.monotonic()
    with BagReader(bag) as reader:
        topic = reader.image_topic(image_topic)
        class_names = _model_class_names(model, backend)
        if live:
            frames = _read_frames(reader, topic, max_frames, progress)
            _run_live(reader, topic, frames, model, backend, rate, max_frames, node_timeout_s,
                      class_names, progress)
        else:
            frames = _run_direct(reader, topic, model, backend, max_frames, progress)
        truth = _load_ground_truth(reader, frames, gt_topic, gt_coco, class_names)
        result = _assemble(bag, model, topic, "live" if live else "direct", rate if live else None,
                           frames, truth, class_names, score_threshold, reader.problems)
        if output_bag:
            known = len(reader.problems)
            result["output_bag"] = write_output_bag(reader, topic, frames, class_names, output_bag)
            result["problems"] += reader.problems[known:]
    result["wall_s"] = round(time.monotonic() - started, 2)
    if out_dir:
        result["files"] = write_reports(result, frames, truth, class_names, out_dir)
    return result


# -- frames and detections --------------------------------------------------------------
def _model_class_names(model: str, backend: str) -> List[str]:
    """The model's class names, read without building a TensorRT engine."""
    from evit_perception.backends import is_engine_file, open_backend
    from evit_perception.model_contract import ModelContract, sidecar_path

    if is_engine_file(model):
        try:
            with open(sidecar_path(model)) as fh:
                return list(ModelContract.from_json(fh.read(), model).class_names)
        except OSError as exc:
            raise BagError(f"engine {model} has no readable contract sidecar "
                           f"{sidecar_path(model)} ({exc})") from exc
    be = open_backend(model, "onnxruntime", intra_op_num_threads=1)
    try:
        return list(be.contract.class_names)
    finally:
        be.close()


def _strip_indices(total: int, count: int = STRIP_FRAMES) -> set:
    return set(np.linspace(0, max(total - 1, 0), num=min(count, max(total, 1))).astype(int).tolist())


def _read_frames(reader: BagReader, topic: str, max_frames: Optional[int], progress: bool,
                 on_frame: Any = None) -> List[FrameRecord]:
    total = reader.topics()[topic][1]
    if max_frames is not None:
        total = min(total, max_frames)
    keep = _strip_indices(total)
    frames: List[FrameRecord] = []
    iterator: Any = reader.iter_frames(topic, max_frames)
    if progress:
        from tqdm import tqdm
        iterator = tqdm(iterator, total=total, desc="frames", unit="frame")
    for frame in iterator:
        rec = FrameRecord(frame.index, frame.stamp_ns, frame.log_time_ns, frame.bgr.shape[1],
                          frame.bgr.shape[0], bgr=frame.bgr if frame.index in keep else None)
        if on_frame is not None:
            on_frame(rec, frame.bgr)
        frames.append(rec)
    if not frames:
        raise BagError(f"no frame of topic {topic!r} in bag {reader.path} could be read"
                       + (": " + "; ".join(reader.problems) if reader.problems else ""))
    return frames


def _run_direct(reader: BagReader, topic: str, model: str, backend: str,
                max_frames: Optional[int], progress: bool) -> List[FrameRecord]:
    from evit_perception.backends import open_backend
    from evit_perception.detector import Detector

    detector = Detector(open_backend(model, backend), score_threshold=SCORE_FLOOR)

    def detect(rec: FrameRecord, bgr: np.ndarray) -> None:
        t0 = time.perf_counter()
        det = detector.detect(bgr)
        rec.latency_ms = (time.perf_counter() - t0) * 1e3
        rec.boxes, rec.scores, rec.class_ids, rec.answered = det.boxes, det.scores, det.class_ids, True

    try:
        return _read_frames(reader, topic, max_frames, progress, on_frame=detect)
    finally:
        detector.backend.close()


def _run_live(reader: BagReader, topic: str, frames: List[FrameRecord], model: str, backend: str,
              rate: float, max_frames: Optional[int], node_timeout_s: float,
              class_names: Sequence[str], progress: bool) -> None:
    try:
        import rclpy  # noqa: F401  (the replayer and the node both need ROS 2)
        from evit_perception.evaluation.replay import BagReplayer
    except ImportError as exc:
        raise BagError(f"--live needs ROS 2 (rclpy and the message packages) in this Python: {exc}") from exc

    compressed = reader.topics()[topic][0] == COMPRESSED_IMAGE_TYPE
    # The node reads compressed frames from <image_topic>/compressed (image_transport naming).
    node_topic = EVAL_NAMESPACE + "/image_raw"
    graph_topic = node_topic + "/compressed" if compressed else node_topic
    answer_topic = EVAL_NAMESPACE + "/detections"
    info_topics = [t for t, (ty, _) in reader.topics().items() if ty == "sensor_msgs/msg/CameraInfo"]
    node = DetectorProcess(model, node_topic, answer_topic, "compressed" if compressed else "raw",
                           backend)
    try:
        with BagReplayer(reader, topic, answer_topic, companion_topics=info_topics[:1],
                         rename={topic: graph_topic}) as replayer:
            replayer.wait_for_graph(node_timeout_s, alive=node.death_reason)
            recording = replayer.replay(rate=rate, max_frames=max_frames, progress=progress)
        if not recording.answers:
            reader.note("the detector node answered no frame; its log ends:\n" + node.log_tail())
    finally:
        node.stop()
    published = {p.stamp_ns: p for p in recording.published}
    first_sent = min((p.wall_s for p in recording.published), default=0.0)
    by_stamp = {f.stamp_ns: f for f in frames}
    # Frames without a header stamp were replayed with their receive time as stamp.
    by_log = {f.log_time_ns: f for f in frames}
    for stamp, (arrived, raw) in recording.answers.items():
        rec = by_stamp.get(stamp) or by_log.get(stamp)
        if rec is None or stamp not in published:
            continue
        boxes = detections_to_boxes(reader.deserialize(raw, DETECTIONS_TYPE))
        rec.boxes, rec.scores = boxes.boxes, boxes.scores
        rec.class_ids = np.asarray([_class_index(c, class_names) for c in boxes.class_ids], np.int32)
        rec.answered = True
        rec.latency_ms = (arrived - published[stamp].wall_s) * 1e3
        rec.arrival_s = arrived - first_sent
    if recording.unmatched_answers:
        reader.note(f"{recording.unmatched_answers} answer(s) of the node matched no replayed frame")


class DetectorProcess:
    """The detector node started as a child process for live evaluation."""

    def __init__(self, model: str, image_topic: str, detections_topic: str, input_type: str,
                 backend: str = "auto") -> None:
        self.log = tempfile.NamedTemporaryFile(prefix="evit-eval-node-", suffix=".log", delete=False)
        params = {"model_path": os.path.abspath(model), "image_topic": image_topic,
                  "detections_topic": detections_topic, "input_type": input_type,
                  "backend": backend, "score_threshold": SCORE_FLOOR, "use_sim_time": True,
                  "publish_debug_image": False, "qos_reliability": "reliable"}
        cmd = [sys.executable, "-c", "from evit_perception.detector_node import main; main()",
               "--ros-args", "-r", "__node:=evit_detector_eval"]
        for key, value in params.items():
            text = str(value).lower() if isinstance(value, bool) else str(value)
            cmd += ["-p", f"{key}:={text}"]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env)

    def death_reason(self) -> Optional[str]:
        """None while running; else why the node is gone, with the end of its log."""
        if self.proc.poll() is None:
            return None
        return f"the detector node exited with code {self.proc.returncode}:\n{self.log_tail()}"

    def log_tail(self, lines: int = 15) -> str:
        self.log.flush()
        with open(self.log.name, errors="replace") as fh:
            return "".join(fh.readlines()[-lines:])

    def stop(self) -> None:
        """SIGINT first (clean rclpy shutdown), then kill."""
        if self.proc.poll() is None:
            self.proc.send_signal(2)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        os.unlink(self.log.name)


def _class_index(class_id: str, class_names: Sequence[str]) -> int:
    if class_id in class_names:
        return list(class_names).index(class_id)
    if class_id.isdigit():
        return int(class_id)
    return -1


# -- ground truth -----------------------------------------------------------------------
def _load_ground_truth(reader: BagReader, frames: List[FrameRecord], gt_topic: Optional[str],
                       gt_coco: Optional[str], class_names: Sequence[str]) -> Optional[GroundTruth]:
    if gt_coco:
        return _truth_from_coco(gt_coco, frames, reader)
    topic = gt_topic or _auto_truth_topic(reader)
    if topic is None:
        return None
    reader.require_topic(topic, (DETECTIONS_TYPE,))
    names: List[str] = []
    by_stamp: Dict[int, Tuple[np.ndarray, List[int]]] = {}
    for stamp, boxes in reader.read_detections(topic).items():
        labels = []
        for cid in boxes.class_ids:
            # Numeric ids index the model's classes (some publishers send indices, not names).
            if cid.isdigit() and int(cid) < len(class_names):
                cid = class_names[int(cid)]
            if cid not in names:
                names.append(cid)
            labels.append(names.index(cid))
        by_stamp[stamp] = (boxes.boxes, labels)
    return GroundTruth(f"topic {topic}", names, by_stamp)


def _auto_truth_topic(reader: BagReader) -> Optional[str]:
    """The bag's ground-truth topic when unambiguous: its only Detection2DArray topic other
    than detections written by ``--output-bag``, or the one named like ground truth."""
    topics = sorted(n for n, (t, _) in reader.topics().items()
                    if t == DETECTIONS_TYPE and n != OUTPUT_DETECTIONS_TOPIC)
    if len(topics) <= 1:
        return topics[0] if topics else None
    named = [t for t in topics if "ground_truth" in t or "/gt" in t]
    if len(named) == 1:
        return named[0]
    raise BagError(f"bag {reader.path} has several Detection2DArray topics {topics}; "
                   "choose the ground truth with --gt-topic")


def _truth_from_coco(path: str, frames: List[FrameRecord], reader: BagReader) -> GroundTruth:
    try:
        with open(path) as fh:
            doc = json.load(fh)
        images, annotations, categories = doc["images"], doc.get("annotations", []), doc["categories"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BagError(f"ground truth {path} is not a readable COCO JSON ({exc!r})") from exc
    cat_index = {c["id"]: i for i, c in enumerate(categories)}
    names = [str(c["name"]) for c in categories]
    if all("stamp_ns" in im for im in images):
        stamp_of = {im["id"]: int(im["stamp_ns"]) for im in images}
    else:
        if len(images) != len(frames):
            reader.note(f"COCO {path}: {len(images)} images without stamp_ns for {len(frames)} "
                         "frames; matched by order as far as both go")
        ordered = sorted(images, key=lambda im: im["id"])
        stamp_of = {im["id"]: f.stamp_ns for im, f in zip(ordered, frames)}
    by_stamp: Dict[int, Tuple[List[List[float]], List[int]]] = {s: ([], []) for s in stamp_of.values()}
    for ann in annotations:
        stamp = stamp_of.get(ann["image_id"])
        if stamp is None:
            continue
        x, y, w, h = ann["bbox"]
        by_stamp[stamp][0].append([x, y, x + w, y + h])
        by_stamp[stamp][1].append(cat_index[ann["category_id"]])
    return GroundTruth(f"COCO {path}", names, {
        s: (np.asarray(b, np.float32).reshape(-1, 4), l) for s, (b, l) in by_stamp.items()})


# -- results ----------------------------------------------------------------------------
def _percentiles(values: Sequence[float]) -> Dict[str, Optional[float]]:
    if not values:
        return {"p50": None, "p95": None, "p99": None, "mean": None}
    arr = np.asarray(values, dtype=np.float64)
    return {"p50": round(float(np.percentile(arr, 50)), 3), "p95": round(float(np.percentile(arr, 95)), 3),
            "p99": round(float(np.percentile(arr, 99)), 3), "mean": round(float(arr.mean()), 3)}


def coco_inputs(frames: Sequence[FrameRecord], truth: GroundTruth, class_names: Sequence[str]
                ) -> Tuple[Dict[str, Any], List[Dict[str, Any]], List[str]]:
    """COCO ground-truth dict and prediction list for the frames that have ground truth.

    Categories are the model's classes (id = index + 1) plus any ground-truth class the
    model does not know (it can only be missed).
    """
    categories = list(class_names) + [n for n in truth.class_names if n not in class_names]
    images, annotations, predictions = [], [], []
    for f in frames:
        if f.stamp_ns not in truth.by_stamp:
            continue
        images.append({"id": f.index, "width": f.width, "height": f.height, "file_name": f"frame_{f.index:06d}"})
        boxes, labels = truth.by_stamp[f.stamp_ns]
        for (x1, y1, x2, y2), label in zip(boxes.tolist(), labels):
            annotations.append({"id": len(annotations) + 1, "image_id": f.index,
                                "category_id": categories.index(truth.class_names[label]) + 1,
                                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1),
                                "iscrowd": 0})
        for (x1, y1, x2, y2), score, cls in zip(f.boxes.tolist(), f.scores.tolist(), f.class_ids.tolist()):
            if 0 <= cls < len(class_names):
                predictions.append({"image_id": f.index, "category_id": int(cls) + 1,
                                    "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(score)})
    gt = {"images": images, "annotations": annotations,
          "categories": [{"id": i + 1, "name": n} for i, n in enumerate(categories)]}
    return gt, predictions, categories


def _assemble(bag: str, model: str, topic: str, mode: str, rate: Optional[float],
              frames: List[FrameRecord], truth: Optional[GroundTruth], class_names: Sequence[str],
              score_threshold: float, problems: List[str]) -> Dict[str, Any]:
    answered = [f for f in frames if f.answered]
    latencies = [f.latency_ms for f in answered if f.latency_ms is not None]
    if mode == "live" and answered:
        span_s = max(f.arrival_s or 0.0 for f in answered)
        throughput = len(answered) / span_s if span_s > 0 else None
    else:
        throughput = 1e3 * len(latencies) / sum(latencies) if latencies and sum(latencies) > 0 else None
    kept = [int(np.sum(f.scores >= score_threshold)) for f in answered]
    result: Dict[str, Any] = {
        "bag": str(bag), "model": str(model), "mode": mode, "rate": rate, "image_topic": topic,
        "class_names": list(class_names), "score_threshold": score_threshold,
        "frames_read": len(frames), "frames_answered": len(answered),
        "dropped_frames": len(frames) - len(answered),
        "latency_ms": _percentiles(latencies),
        "throughput_fps": round(throughput, 2) if throughput else None,
        "detections": {"total": int(sum(kept)), "per_frame_mean": round(float(np.mean(kept)), 3) if kept else 0.0,
                       "by_class": {n: int(sum(int(np.sum((f.scores >= score_threshold) & (f.class_ids == i)))
                                                for f in answered)) for i, n in enumerate(class_names)}},
        "ground_truth": truth.source if truth else None,
        "metrics": None, "problems": list(problems),
        "per_frame": [{"index": f.index, "stamp_ns": f.stamp_ns, "answered": f.answered,
                       "latency_ms": None if f.latency_ms is None else round(f.latency_ms, 3),
                       "detections": int(np.sum(f.scores >= score_threshold))} for f in frames],
    }
    if truth is None:
        result["problems"].append("no ground truth (no Detection2DArray topic, no --gt): "
                                  "latency and detection counts only")
        return result
    unknown = [n for n in truth.class_names if n not in class_names]
    if unknown:
        result["problems"].append(f"ground-truth classes {unknown} are unknown to the model; counted as misses")
    missing_gt = sum(1 for f in frames if f.stamp_ns not in truth.by_stamp)
    if missing_gt:
        result["problems"].append(f"{missing_gt} frame(s) have no ground truth with their stamp; not scored")
    from evit_perception.evaluation.coco_metrics import evaluate_detections

    gt, predictions, _ = coco_inputs(frames, truth, class_names)
    if not gt["images"]:
        result["problems"].append("no frame matched the ground truth; no mAP")
        return result
    result["metrics"] = evaluate_detections(gt, predictions, score_threshold)
    result["frames_scored"] = len(gt["images"])
    return result


def write_output_bag(reader: BagReader, topic: str, frames: Sequence[FrameRecord],
                     class_names: Sequence[str], path: str, detections_topic: str = OUTPUT_DETECTIONS_TOPIC) -> str:
    """A copy of the bag with the detections added on ``detections_topic`` (for Foxglove/RViz)."""
    target = Path(path)
    if target.resolve() == Path(reader.path).resolve():
        raise BagError(f"output bag {path} would overwrite the input bag")
    if target.exists() and not (target / "metadata.yaml").exists():
        raise BagError(f"output bag path {path} exists and is not a bag; not overwriting")
    storage = "sqlite3" if any(Path(reader.path).glob("*.db3")) else "mcap"
    store = make_typestore()
    writer = open_writer(path, storage, overwrite=True)
    try:
        conns = {}
        for conn in reader.connections:
            if conn.topic == detections_topic:
                continue
            copied = copy_connection(writer, store, conn)
            if copied is None:
                reader.note(f"output bag: topic {conn.topic!r} ({conn.msgtype}) has no definition; left out")
            else:
                conns[conn.id] = copied
        det_conn = writer.add_connection(detections_topic, DETECTIONS_TYPE, typestore=store)
        by_log = {f.log_time_ns: f for f in frames if f.answered}
        for conn, log_ns, raw in reader.raw_messages():
            if conn.id in conns:
                writer.write(conns[conn.id], log_ns, raw)
            rec = by_log.get(log_ns) if conn.topic == topic else None
            if rec is not None:
                header = store.types["std_msgs/msg/Header"](stamp=ns_to_stamp(store, rec.stamp_ns),
                                                           frame_id="")
                names = [class_names[c] if 0 <= c < len(class_names) else str(c) for c in rec.class_ids.tolist()]
                msg = boxes_to_detections(store, header, rec.boxes, names, rec.scores.tolist())
                writer.write(det_conn, log_ns, store.serialize_cdr(msg, DETECTIONS_TYPE))
    finally:
        writer.close()
    return str(target)


def write_reports(result: Dict[str, Any], frames: Sequence[FrameRecord], truth: Optional[GroundTruth],
                  class_names: Sequence[str], out_dir: str) -> Dict[str, str]:
    """evaluation.json, evaluation.md, latency.png, frames.png and (with ground truth) pr_curves.png."""
    from evit_perception.evaluation.plots import plot_frame_strip, plot_latency_histogram

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {"json": str(out / "evaluation.json"), "markdown": str(out / "evaluation.md"),
             "latency_png": str(out / "latency.png"), "frames_png": str(out / "frames.png")}
    latencies = [f.latency_ms for f in frames if f.latency_ms is not None]
    plot_latency_histogram(latencies, files["latency_png"],
                           f"{result['mode']} latency per frame ({Path(result['model']).name})")
    strip = []
    for f in frames:
        if f.bgr is None:
            continue
        true_boxes = truth.by_stamp.get(f.stamp_ns, (np.zeros((0, 4)), []))[0] if truth else np.zeros((0, 4))
        keep = f.scores >= result["score_threshold"]
        strip.append({"bgr": f.bgr, "pred_boxes": f.boxes[keep], "pred_scores": f.scores[keep],
                      "pred_classes": f.class_ids[keep], "true_boxes": true_boxes,
                      "label": f"frame {f.index}" + ("" if f.answered else " (dropped)")})
    plot_frame_strip(strip, class_names, files["frames_png"])
    if result.get("metrics"):
        from evit_perception.evaluation.coco_metrics import plot_pr_curves

        files["pr_png"] = str(out / "pr_curves.png")
        plot_pr_curves(result["metrics"], files["pr_png"])
    doc = dict(result, files=files)
    with open(files["json"], "w") as fh:
        json.dump(to_jsonable(doc), fh, indent=2)
    with open(files["markdown"], "w") as fh:
        fh.write(format_markdown(doc))
    return files


def to_jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _fmt(value: Any, digits: int = 3) -> str:
    return "n/a" if value is None else (f"{value:.{digits}f}" if isinstance(value, float) else str(value))


def format_markdown(result: Dict[str, Any]) -> str:
    """The evaluation as a Markdown report."""
    lat = result["latency_ms"]
    lines = [f"# Bag evaluation ({result['mode']})", "",
             f"- bag: `{result['bag']}`, image topic `{result['image_topic']}`",
             f"- model: `{result['model']}`" + (f", replay rate {result['rate']}x" if result.get("rate") else ""),
             f"- ground truth: {result['ground_truth'] or 'none'}", "",
             "| frames read | answered | dropped | latency p50 / p95 / p99 ms | throughput fps | detections |",
             "|---|---|---|---|---|---|",
             f"| {result['frames_read']} | {result['frames_answered']} | {result['dropped_frames']} | "
             f"{_fmt(lat['p50'], 1)} / {_fmt(lat['p95'], 1)} / {_fmt(lat['p99'], 1)} | "
             f"{_fmt(result['throughput_fps'], 1)} | {result['detections']['total']} |", ""]
    metrics = result.get("metrics")
    if metrics:
        lines += [f"mAP@0.5 **{_fmt(metrics.get('map50'))}**, mAP@0.5:0.95 **{_fmt(metrics.get('map50_95'))}**; "
                  f"at score >= {result['score_threshold']}: precision {_fmt(metrics.get('precision'))}, "
                  f"recall {_fmt(metrics.get('recall'))}", ""]
        per_class = metrics.get("per_class") or {}
        if isinstance(per_class, dict) and per_class:
            lines += ["| class | AP |", "|---|---|"]
            for name, value in per_class.items():
                ap = value.get("ap50", value.get("ap")) if isinstance(value, dict) else value
                lines.append(f"| {name} | {_fmt(ap) if isinstance(ap, float) else ap} |")
            lines.append("")
    if result.get("problems"):
        lines += ["## Problems", ""] + [f"- {p}" for p in result["problems"]] + [""]
    files = result.get("files") or {}
    lines += [f"![{k}]({Path(v).name})" for k, v in files.items() if v.endswith(".png")]
    return "\n".join(lines) + "\n"
