"""Direct bag evaluation with a model whose answers are known (the reference colour-grid ONNX)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from evit_perception.evaluation.bag_eval import evaluate_bag
from evit_perception.evaluation.bag_io import (
    DETECTIONS_TYPE, IMAGE_TYPE, BagError, BagReader, make_typestore, ns_to_stamp, open_writer)
from evit_perception.evaluation.bag_writer import write_flight_bag
from support.reference_model import write_reference_model
from test_bags import CLASS_NAMES, SIZE, square_frames, write_squares_bag


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> str:
    return write_reference_model(str(tmp_path_factory.mktemp("model") / "reference.onnx"), (SIZE, SIZE))


def test_known_answers_give_map_one_and_reports(tmp_path, model):
    bag = write_squares_bag(tmp_path / "bag", count=6)
    result = evaluate_bag(bag, model, out_dir=str(tmp_path / "eval"), progress=False)
    metrics = result["metrics"]
    assert metrics["map50"] == pytest.approx(1.0) and metrics["map50_95"] == pytest.approx(1.0)
    assert metrics["precision"] == pytest.approx(1.0) and metrics["recall"] == pytest.approx(1.0)
    assert metrics["per_class"]["person"]["ap50"] == pytest.approx(1.0)
    assert result["frames_read"] == result["frames_answered"] == result["frames_scored"] == 6
    assert result["dropped_frames"] == 0 and result["mode"] == "direct"
    assert result["detections"]["by_class"] == {"person": 6, "vehicle": 6, "obstacle": 0}
    assert result["latency_ms"]["p50"] > 0 and result["throughput_fps"] > 0
    assert result["ground_truth"] == "topic /ground_truth/detections" and result["problems"] == []

    files = result["files"]
    for key in ("json", "markdown", "latency_png", "frames_png", "pr_png"):
        assert Path(files[key]).stat().st_size > 0, key
    assert Path(files["frames_png"]).read_bytes()[:4] == b"\x89PNG"
    saved = json.loads(Path(files["json"]).read_text())
    assert saved["metrics"]["map50"] == pytest.approx(1.0)
    markdown = Path(files["markdown"]).read_text()
    assert "mAP@0.5 **1.000**" in markdown and "| person | 1.000 |" in markdown


def test_known_misses_give_known_map(tmp_path, model):
    # The obstacle in the ground truth sits on a grey cell: the model can never find it.
    bag = write_squares_bag(tmp_path / "bag", count=4, with_obstacle_truth=True)
    metrics = evaluate_bag(bag, model, progress=False)["metrics"]
    assert metrics["per_class"]["obstacle"]["ap50"] == 0.0
    assert metrics["map50"] == pytest.approx(2.0 / 3.0)
    assert metrics["precision"] == pytest.approx(1.0)
    assert metrics["recall"] == pytest.approx(2.0 / 3.0)


def test_operating_threshold_moves_precision_recall_not_map(tmp_path, model):
    # A dimmer red (R=180) scores 180/255 = 0.706 for "person"; pure green still scores 1.0.
    frames = square_frames(3)
    for frame in frames:
        frame.bgr[frame.bgr[:, :, 2] == 255] = (0, 0, 180)
    write_flight_bag(str(tmp_path / "bag"), frames, CLASS_NAMES)
    low = evaluate_bag(str(tmp_path / "bag"), model, score_threshold=0.5, progress=False)
    high = evaluate_bag(str(tmp_path / "bag"), model, score_threshold=0.8, progress=False)
    assert low["metrics"]["recall"] == pytest.approx(1.0) and high["metrics"]["recall"] == pytest.approx(0.5)
    assert high["metrics"]["precision"] == pytest.approx(1.0)
    assert low["metrics"]["map50"] == high["metrics"]["map50"] == pytest.approx(1.0)
    assert high["detections"]["by_class"] == {"person": 0, "vehicle": 3, "obstacle": 0}


def test_coco_json_ground_truth_matches_topic_ground_truth(tmp_path, model):
    frames = square_frames(4, with_obstacle_truth=True)
    bag = write_squares_bag(tmp_path / "bag", count=4, with_obstacle_truth=True)
    coco = {"images": [{"id": 100 + i, "width": SIZE, "height": SIZE, "file_name": f"f{i}.png"}
                       for i in range(4)],
            "categories": [{"id": 7, "name": "vehicle"}, {"id": 8, "name": "person"}, {"id": 9, "name": "obstacle"}],
            "annotations": []}
    cat = {1: 7, 0: 8, 2: 9}
    for i, frame in enumerate(frames):
        for (x1, y1, x2, y2), label in zip(frame.boxes.tolist(), frame.labels):
            coco["annotations"].append({"id": len(coco["annotations"]) + 1, "image_id": 100 + i,
                                        "category_id": cat[label], "bbox": [x1, y1, x2 - x1, y2 - y1],
                                        "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
    (tmp_path / "gt.json").write_text(json.dumps(coco))
    result = evaluate_bag(bag, model, gt_coco=str(tmp_path / "gt.json"), progress=False)
    assert result["ground_truth"].startswith("COCO")
    assert result["metrics"]["map50"] == pytest.approx(2.0 / 3.0)
    assert result["metrics"]["recall"] == pytest.approx(2.0 / 3.0)


def test_bad_coco_and_conflicting_ground_truth(tmp_path, model):
    bag = write_squares_bag(tmp_path / "bag", count=1)
    (tmp_path / "bad.json").write_text("{\"images\": []")
    with pytest.raises(BagError, match="bad.json is not a readable COCO JSON"):
        evaluate_bag(bag, model, gt_coco=str(tmp_path / "bad.json"), progress=False)
    with pytest.raises(BagError, match="not both"):
        evaluate_bag(bag, model, gt_topic="/ground_truth/detections", gt_coco=str(tmp_path / "bad.json"))
    with pytest.raises(BagError, match="model file not found"):
        evaluate_bag(bag, str(tmp_path / "missing.onnx"))


def _user_bag(path: Path, count: int, encoding: str = "rgb8", width: int = 200, height: int = 150,
              stamped: bool = True) -> str:
    """A bag as a user's drone records it: odd size and encoding, no ground truth."""
    store = make_typestore()
    writer = open_writer(str(path), "sqlite3")
    conn = writer.add_connection("/drone/cam/image", IMAGE_TYPE, typestore=store)
    for i in range(count):
        rgb = np.full((height, width, 3), 120, np.uint8)
        rgb[40:80, 50:90] = (255, 0, 0)  # red in RGB: a "person" for the reference model
        stamp = 5_000_000_000 + i * 50_000_000
        header = store.types["std_msgs/msg/Header"](stamp=ns_to_stamp(store, stamp if stamped else 0), frame_id="cam")
        msg = store.types[IMAGE_TYPE](header=header, height=height, width=width, encoding=encoding,
                                      is_bigendian=0, step=width * 3, data=rgb.reshape(-1))
        writer.write(conn, stamp, store.serialize_cdr(msg, IMAGE_TYPE))
    writer.close()
    return str(path)


def test_user_bag_without_ground_truth_gives_latency_and_counts(tmp_path, model):
    bag = _user_bag(tmp_path / "bag", 5)
    result = evaluate_bag(bag, model, out_dir=str(tmp_path / "eval"), progress=False)
    assert result["metrics"] is None and result["ground_truth"] is None
    assert result["frames_answered"] == 5 and result["latency_ms"]["p99"] is not None
    assert result["detections"]["by_class"]["person"] >= 5
    assert any("no ground truth" in p for p in result["problems"])
    assert "pr_png" not in result["files"] and Path(result["files"]["latency_png"]).is_file()


def test_unstamped_user_bag_still_evaluates(tmp_path, model):
    bag = _user_bag(tmp_path / "bag", 3, stamped=False)
    result = evaluate_bag(bag, model, progress=False)
    assert result["frames_answered"] == 3
    assert any("no header stamp" in p for p in result["problems"])


def test_truncated_bag_gives_results_for_what_could_be_read(tmp_path, model):
    write_squares_bag(tmp_path / "bag", count=30)
    (mcap,) = (tmp_path / "bag").glob("*.mcap")
    mcap.write_bytes(mcap.read_bytes()[: int(mcap.stat().st_size * 0.5)])
    result = evaluate_bag(str(tmp_path / "bag"), model, progress=False)
    assert 0 < result["frames_read"] < 30
    assert result["metrics"]["map50"] == pytest.approx(1.0)
    assert any("truncated or corrupt" in p for p in result["problems"])


def test_empty_and_missing_topic_bags(tmp_path, model):
    writer = open_writer(str(tmp_path / "empty"), "mcap")
    writer.close()
    with pytest.raises(BagError, match="is empty"):
        evaluate_bag(str(tmp_path / "empty"), model, progress=False)
    bag = write_squares_bag(tmp_path / "bag", count=1)
    with pytest.raises(BagError, match="no topic '/nope'"):
        evaluate_bag(bag, model, image_topic="/nope", progress=False)
    with pytest.raises(BagError, match="carries 'sensor_msgs/msg/Image', expected vision_msgs"):
        evaluate_bag(bag, model, gt_topic="/camera/image_raw", progress=False)


def test_output_bag_carries_the_detections(tmp_path, model):
    bag = write_squares_bag(tmp_path / "bag", count=3, storage="sqlite3")
    evaluate_bag(bag, model, output_bag=str(tmp_path / "out"), progress=False)
    with BagReader(str(tmp_path / "out")) as reader:
        topics = reader.topics()
        assert topics["/evit/detections"] == (DETECTIONS_TYPE, 3)
        assert topics["/camera/image_raw"] == (IMAGE_TYPE, 3) and "/camera/camera_info" in topics
        predicted = reader.read_detections("/evit/detections")
        truth = reader.read_detections("/ground_truth/detections")
    assert sorted(predicted) == sorted(truth)
    for stamp, boxes in truth.items():
        assert sorted(predicted[stamp].class_ids) == sorted(boxes.class_ids)
        np.testing.assert_allclose(np.sort(predicted[stamp].boxes, axis=0), np.sort(boxes.boxes, axis=0))
    with pytest.raises(BagError, match="overwrite the input bag"):
        evaluate_bag(bag, model, output_bag=bag, progress=False)
    # The output bag evaluates again: its own detections are not mistaken for ground truth.
    again = evaluate_bag(str(tmp_path / "out"), model, progress=False)
    assert again["ground_truth"] == "topic /ground_truth/detections"
    assert again["metrics"]["map50"] == pytest.approx(1.0)


def test_numeric_class_ids_in_ground_truth_index_the_model_classes(tmp_path, model):
    write_flight_bag(str(tmp_path / "bag"), square_frames(3), ("0", "1", "2"))
    result = evaluate_bag(str(tmp_path / "bag"), model, progress=False)
    assert result["metrics"]["map50"] == pytest.approx(1.0) and result["problems"] == []


def _bag_with_truth_on(path: Path, source: str, topics) -> str:
    """The squares bag with its ground truth copied onto ``topics`` (instead of its own)."""
    from evit_perception.evaluation.bag_io import copy_connection

    store = make_typestore()
    writer = open_writer(str(path), "mcap")
    with BagReader(source) as reader:
        conns = {c.id: copy_connection(writer, store, c) for c in reader.connections
                 if c.topic != "/ground_truth/detections"}
        extra = [writer.add_connection(t, DETECTIONS_TYPE, typestore=store) for t in topics]
        for conn, log_ns, raw in reader.raw_messages():
            for target in ([conns[conn.id]] if conn.id in conns else extra):
                writer.write(target, log_ns, raw)
    writer.close()
    return str(path)


def test_ambiguous_ground_truth_topics_ask_for_one(tmp_path, model):
    source = write_squares_bag(tmp_path / "bag", count=2)
    two = _bag_with_truth_on(tmp_path / "two", source, ["/a/detections", "/b/detections"])
    with pytest.raises(BagError, match=r"several Detection2DArray topics \['/a/detections', '/b/detections'\].*--gt-topic"):
        evaluate_bag(two, model, progress=False)
    picked = evaluate_bag(two, model, gt_topic="/b/detections", progress=False)
    assert picked["ground_truth"] == "topic /b/detections" and picked["metrics"]["map50"] == pytest.approx(1.0)
    named = _bag_with_truth_on(tmp_path / "named", source, ["/tracker/detections", "/gt/detections"])
    assert evaluate_bag(named, model, progress=False)["ground_truth"] == "topic /gt/detections"


def test_cli_eval_bag(tmp_path, model):
    from typer.testing import CliRunner

    from evit_training.cli import app

    bag = write_squares_bag(tmp_path / "bag", count=3, compressed=True)
    runner = CliRunner()
    res = runner.invoke(app, ["eval-bag", bag, "--model", model, "--out", str(tmp_path / "eval")])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "eval" / "evaluation.json").read_text())["metrics"]["map50"] == pytest.approx(1.0)
    res = runner.invoke(app, ["eval-bag", bag, "--model", model, "--image-topic", "/nope"])
    assert res.exit_code == 2 and "no topic '/nope'" in res.output


def test_cli_make_bag(tmp_path):
    from typer.testing import CliRunner

    from evit_training.cli import app

    res = CliRunner().invoke(app, ["make-bag", str(tmp_path / "bag"), "--frames", "3", "--storage", "sqlite3",
                                   "--compressed", "--width", "160", "--height", "120"])
    assert res.exit_code == 0, res.output
    with BagReader(str(tmp_path / "bag")) as reader:
        assert reader.topics()["/camera/image_raw/compressed"][1] == 3
        frames = list(reader.iter_frames("/camera/image_raw/compressed"))
        assert frames[0].bgr.shape == (120, 160, 3)
        assert reader.topics()["/ground_truth/detections"][1] == 3
    assert set(CLASS_NAMES) >= {c for b in reader_gt(tmp_path / "bag").values() for c in b.class_ids}


def reader_gt(path: Path):
    with BagReader(str(path)) as reader:
        return reader.read_detections("/ground_truth/detections")


def test_engine_without_sidecar_or_tensorrt_is_named(tmp_path):
    from evit_perception.backends import BackendError
    from support.reference_model import reference_contract

    bag = write_squares_bag(tmp_path / "bag", count=1)
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"not really an engine")
    with pytest.raises(BagError, match="no readable contract sidecar .*model.engine.json"):
        evaluate_bag(bag, str(engine), progress=False)
    (tmp_path / "model.engine.json").write_text(reference_contract().to_json())
    try:
        import tensorrt  # noqa: F401
        pytest.skip("TensorRT is installed: this case is about machines without it")
    except ImportError:
        pass
    with pytest.raises(BackendError, match="(?i)tensorrt"):
        evaluate_bag(bag, str(engine), progress=False)
