"""Live bag evaluation: the bag replayed over DDS into the detector node as its own process."""
from __future__ import annotations

import threading
import time

import pytest

from evit_perception.evaluation.bag_eval import evaluate_bag
from evit_perception.evaluation.bag_io import BagReader
from evit_perception.evaluation.bag_writer import DEFAULT_START_NS
from evit_perception.evaluation.replay import BagReplayer
from support.reference_model import write_reference_model
from test_bag_eval import _user_bag
from test_bags import SIZE, write_squares_bag

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> str:
    return write_reference_model(str(tmp_path_factory.mktemp("model") / "reference.onnx"), (SIZE, SIZE))


@pytest.mark.parametrize("compressed", [False, True], ids=["raw", "jpeg"])
def test_live_replay_through_the_node_gives_known_map(tmp_path, model, compressed):
    bag = write_squares_bag(tmp_path / "bag", count=5, compressed=compressed)
    # rate 0.5: frames 0.2 s apart, so a loaded CI machine does not make the node drop any.
    result = evaluate_bag(bag, model, live=True, rate=0.5, out_dir=str(tmp_path / "eval"),
                          output_bag=str(tmp_path / "out"), progress=False)
    assert result["mode"] == "live" and result["rate"] == 0.5
    assert result["frames_read"] == 5 and result["frames_answered"] == 5 and result["dropped_frames"] == 0
    assert result["metrics"]["map50"] == pytest.approx(1.0)
    assert result["metrics"]["precision"] == pytest.approx(1.0) and result["metrics"]["recall"] == pytest.approx(1.0)
    assert result["latency_ms"]["p50"] > 0
    with BagReader(str(tmp_path / "out")) as reader:
        assert reader.topics()["/evit/detections"][1] == 5


def test_live_replay_of_unstamped_frames_restamps_them(tmp_path, model):
    bag = _user_bag(tmp_path / "bag", 3, stamped=False)
    result = evaluate_bag(bag, model, live=True, rate=1.0, progress=False)
    assert result["frames_answered"] == 3
    assert any("replayed with the bag's receive time as stamp" in p for p in result["problems"])


def test_replay_publishes_clock_at_the_recorded_times(tmp_path):
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rosgraph_msgs.msg import Clock

    bag = write_squares_bag(tmp_path / "bag", count=4)
    context = rclpy.Context()
    rclpy.init(context=context)
    listener = rclpy.create_node("clock_listener", context=context)
    seen = []
    listener.create_subscription(Clock, "/clock", lambda m: seen.append(m.clock.sec * 10**9 + m.clock.nanosec), 50)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(listener)
    stop = threading.Event()
    spinner = threading.Thread(target=lambda: [executor.spin_once(timeout_sec=0.05) for _ in iter(stop.is_set, True)])
    spinner.start()
    try:
        with BagReader(bag) as reader, BagReplayer(reader, "/camera/image_raw", "/unused/answers") as replayer:
            deadline = time.monotonic() + 20
            while replayer._clock_pub.get_subscription_count() == 0 and time.monotonic() < deadline:
                time.sleep(0.05)
            recording = replayer.replay(rate=4.0, drain_s=0.0)
            deadline = time.monotonic() + 5
            while len(seen) < 4 and time.monotonic() < deadline:
                time.sleep(0.05)
    finally:
        stop.set()
        spinner.join()
        executor.shutdown()
        listener.destroy_node()
        context.try_shutdown()
    expected = [DEFAULT_START_NS + i * 100_000_000 for i in range(4)]
    assert [p.stamp_ns for p in recording.published] == expected
    assert sorted(set(seen)) == expected  # one /clock per message, at the recorded time
    assert recording.answers == {}


def test_graph_without_a_node_is_a_clear_error(tmp_path):
    from evit_perception.evaluation.bag_io import BagError

    bag = write_squares_bag(tmp_path / "bag", count=1)
    with BagReader(bag) as reader, BagReplayer(reader, "/camera/image_raw", "/nobody/answers") as replayer:
        with pytest.raises(BagError, match=r"not ready after 1 s: nobody subscribed to '/camera/image_raw'; "
                                           r"nobody publishes '/nobody/answers'"):
            replayer.wait_for_graph(1.0)
        with pytest.raises(BagError, match="rate must be > 0"):
            replayer.replay(rate=0.0)


def test_node_without_a_model_answers_nothing_and_its_log_says_why(tmp_path):
    from evit_perception.evaluation.bag_eval import DetectorProcess

    bag = write_squares_bag(tmp_path / "bag", count=2)
    node = DetectorProcess(str(tmp_path / "missing.onnx"), "/evit_eval/image_raw", "/evit_eval/detections", "raw")
    try:
        with BagReader(bag) as reader, BagReplayer(reader, "/camera/image_raw", "/evit_eval/detections",
                                                   rename={"/camera/image_raw": "/evit_eval/image_raw"}) as replayer:
            replayer.wait_for_graph(60.0, alive=node.death_reason)
            recording = replayer.replay(rate=2.0, drain_s=1.0)
        assert len(recording.published) == 2 and recording.answers == {}
        assert "missing.onnx" in node.log_tail()
    finally:
        node.stop()


def test_quick_demo_runs_every_stage_end_to_end(tmp_path):
    from evit_training.demo import run_demo

    report = run_demo(str(tmp_path / "demo"), quick=True, frames=4, rate=2.0)
    assert report["ok"], report["stages"]
    assert [s["status"] for s in report["stages"]] == ["ran"] * 4, report["stages"]
    assert report["model"].endswith("model_int8.onnx")
    evaluation = report["bag_evaluation"]
    assert evaluation["mode"] == "live" and evaluation["frames_read"] == 4
    assert evaluation["frames_answered"] + evaluation["dropped_frames"] == 4
    assert evaluation["metrics"] is not None
    markdown = (tmp_path / "demo" / "demo_report.md").read_text()
    assert "## Compression report" in markdown and "## Bag evaluation (live)" in markdown
    assert (tmp_path / "demo" / "bag_eval" / "frames.png").is_file()
    assert (tmp_path / "demo" / "flight_with_detections" / "metadata.yaml").is_file()
