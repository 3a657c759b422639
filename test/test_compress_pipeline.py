"""``evit compress`` end to end on the tiny config, stage caching, and clear errors."""
from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torch_pruning")
pytest.importorskip("onnxruntime")

from typer.testing import CliRunner  # noqa: E402

from evit_training.config import ConfigError  # noqa: E402
from evit_training.pipeline import Pipeline, load_compress_config  # noqa: E402
from evit_training.report.report import REQUIRED_KEYS  # noqa: E402

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "training" / "configs" / "compress_tiny.yaml"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    cfg = load_compress_config(str(TINY))
    cfg.out_dir = str(tmp_path_factory.mktemp("compress_tiny"))
    pipeline = Pipeline(cfg, progress=False)
    report = pipeline.run()
    return pipeline, report


def test_tiny_config_runs_every_stage(tiny_run):
    pipeline, report = tiny_run
    out = Path(pipeline.cfg.out_dir)
    names = [s["name"] for s in report["stages"]]
    assert names == ["teacher", "kd_student", "pruned", "int8"]
    for stage in report["stages"]:
        for key in REQUIRED_KEYS:
            assert stage[key] is not None, f"{stage['name']}: {key} missing"
        assert stage["input_size"] == [64, 64]
    by = {s["name"]: s for s in report["stages"]}
    assert by["pruned"]["params"] < by["kd_student"]["params"]
    assert by["pruned"]["macs"] < by["kd_student"]["macs"]
    assert by["int8"]["size_mb"] < by["pruned"]["size_mb"]
    for name in ("report.json", "report.md", "report.png"):
        assert (out / name).is_file()
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk["stages"] == json.loads(json.dumps(report["stages"]))
    assert on_disk["prune"]["macs_ratio"] <= 0.9
    assert (out / "quantize" / "model_fp16.onnx").is_file()
    assert "sensitivity" in on_disk["quantize"]


def test_pruned_checkpoint_and_exports_agree(tiny_run):
    """The fine-tuned pruned checkpoint reloads on its own and its ONNX matches PyTorch."""
    from evit_training.export.onnx_export import DecodedDetector, compare_with_onnxruntime
    from evit_training.models.checkpoint import load_model

    pipeline, _ = tiny_run
    model = load_model(pipeline.checkpoint("finetune"))
    assert model.config["blocks"] is not None, "pruned widths travel in the checkpoint"
    size = model.config["input_size"]
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(1))
    assert (model.predict(x)[0, :, 4] > 0.01).any()
    # Order-invariant comparison: near-equal scores of an untrained model may swap places
    # between runtimes.
    assert compare_with_onnxruntime(DecodedDetector(model), pipeline.onnx("finetune"), x) < 1e-3


def test_int8_model_runs_in_the_node_detector(tiny_run):
    import cv2

    from evit_perception.backends import open_backend
    from evit_perception.detector import Detector

    pipeline, report = tiny_run
    int8 = Path(report["stages"][-1]["onnx"])
    detector = Detector(open_backend(str(int8), "onnxruntime", intra_op_num_threads=1), score_threshold=0.0)
    images = sorted((Path(pipeline.splits()["val"]["images"])).iterdir())
    dets = detector.detect(cv2.imread(str(images[0])))
    assert dets.boxes.shape[1] == 4 and len(dets) <= 100
    assert detector.contract.extra["stage"] == "int8"


def test_second_run_reuses_stage_outputs(tiny_run):
    pipeline, _ = tiny_run
    stamps = {p: os.path.getmtime(p) for p in (pipeline.checkpoint("teacher"), pipeline.checkpoint("prune"),
                                               pipeline.stage_dir("quantize") / "model_int8.onnx")}
    cfg = pipeline.cfg
    cfg.stages = ["teacher", "student", "prune", "finetune", "quantize"]
    Pipeline(cfg, progress=False).run()
    assert {p: os.path.getmtime(p) for p in stamps} == stamps


def test_edited_config_redoes_the_stages_it_affects(tiny_run):
    pipeline, _ = tiny_run
    cfg = copy.deepcopy(pipeline.cfg)
    cfg.stages = ["teacher", "student", "prune", "finetune", "quantize"]
    stamps = {stage: os.path.getmtime(path) for stage, path in (
        ("teacher", pipeline.checkpoint("teacher")), ("student", pipeline.checkpoint("student")),
        ("finetune", pipeline.checkpoint("finetune")),
        ("quantize", pipeline.stage_dir("quantize") / "model_int8.onnx"))}
    cfg.prune.finetune.train.steps += 1  # only the pruning side changes
    Pipeline(cfg, progress=False).run()
    after = {stage: os.path.getmtime(path) for stage, path in (
        ("teacher", pipeline.checkpoint("teacher")), ("student", pipeline.checkpoint("student")),
        ("finetune", pipeline.checkpoint("finetune")),
        ("quantize", pipeline.stage_dir("quantize") / "model_int8.onnx"))}
    assert after["teacher"] == stamps["teacher"] and after["student"] == stamps["student"]
    assert after["finetune"] > stamps["finetune"] and after["quantize"] > stamps["quantize"]


def test_bad_config_key_is_named(tmp_path):
    text = TINY.read_text().replace("importance: magnitude", "importance: magnitude\n  ratio: 0.5")
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    with pytest.raises(ConfigError, match=r"prune: unknown key\(s\) 'ratio'"):
        load_compress_config(str(bad))
    bad.write_text(TINY.read_text().replace("importance: magnitude", "importance: random"))
    with pytest.raises(ConfigError, match="prune.importance"):
        load_compress_config(str(bad))


def test_missing_checkpoint_and_empty_dataset_fail_clearly(tmp_path):
    cfg = load_compress_config(str(TINY))
    cfg.out_dir = str(tmp_path / "run")
    with pytest.raises(ConfigError, match="student checkpoint .*student/model.pt"):
        Pipeline(cfg, progress=False).stage_prune()
    empty = tmp_path / "empty"
    (empty / "images").mkdir(parents=True)
    (empty / "annotations.json").write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
    cfg.data.train = str(empty)
    cfg.data.val = str(empty / "annotations.json")
    with pytest.raises(ConfigError, match="empty"):
        Pipeline(cfg, progress=False).ensure_data()


def test_cli_errors(tmp_path):
    from evit_training.cli import app

    runner = CliRunner()
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nteachr: {}\n")
    result = runner.invoke(app, ["compress", str(bad)])
    assert result.exit_code != 0 and "teachr" in result.output
    result = runner.invoke(app, ["compress", str(TINY), "--stages", "teacher,distil"])
    assert result.exit_code != 0 and "distil" in result.output
    result = runner.invoke(app, ["report", str(tmp_path)])
    assert result.exit_code != 0 and "no report" in result.output


def test_build_engine_without_tensorrt_says_why(tmp_path):
    from evit_perception.backends.tensorrt_backend import tensorrt_unavailable_reason
    from evit_training.cli import app

    if tensorrt_unavailable_reason() is None:
        pytest.skip("TensorRT and a CUDA device are present; the failure path cannot be exercised")
    from test_quantize import colour_detector_onnx

    onnx_path = colour_detector_onnx(str(tmp_path / "m.onnx"))
    result = CliRunner().invoke(app, ["build-engine", onnx_path, "--engine", str(tmp_path / "m.engine")])
    assert result.exit_code == 1
    assert "cannot build a TensorRT engine" in result.output
    assert not (tmp_path / "m.engine").exists()


def test_interrupted_stage_resumes_where_it_stopped(tiny_run, capsys):
    """A training stage cut off mid-run resumes from its last.pt and ends with exactly the
    weights the uninterrupted run had."""
    pipeline, _ = tiny_run
    cfg = copy.deepcopy(pipeline.cfg)
    cfg.stages = ["teacher", "student"]
    cfg.student.train.checkpoint_every = 2  # run-time settings: the cached teacher stays valid
    student_dir = pipeline.stage_dir("student")
    uninterrupted = {k: v.clone() for k, v in torch.load(pipeline.checkpoint("student"),
                                                         weights_only=False)["model"].items()}

    for name in ("model.pt", "model.onnx", "config.fingerprint"):  # as if killed at step 2
        (student_dir / name).unlink()
    (student_dir / "last.pt").unlink()
    Pipeline(cfg, progress=False).run()  # reruns the stage from scratch, writing step_2 on the way
    (student_dir / "checkpoints" / "step_0000002.pt").replace(student_dir / "last.pt")
    for name in ("model.pt", "model.onnx", "config.fingerprint"):
        (student_dir / name).unlink()
    capsys.readouterr()

    Pipeline(cfg, progress=False).run()
    assert "student: resuming the interrupted run" in capsys.readouterr().out
    resumed = torch.load(pipeline.checkpoint("student"), weights_only=False)
    assert resumed["model"].keys() == uninterrupted.keys()
    for key, value in uninterrupted.items():
        assert torch.equal(resumed["model"][key], value), key
    assert pipeline.onnx("student").is_file()


def test_started_stamp_of_another_config_does_not_resume(tiny_run, capsys):
    pipeline, _ = tiny_run
    cfg = copy.deepcopy(pipeline.cfg)
    cfg.stages = ["teacher", "student"]
    student_dir = pipeline.stage_dir("student")
    for name in ("model.pt", "model.onnx", "config.fingerprint"):
        (student_dir / name).unlink()
    (student_dir / "config.fingerprint.started").write_text("made-by-another-config")
    Pipeline(cfg, progress=False).run()
    assert "resuming" not in capsys.readouterr().out
    assert pipeline.checkpoint("student").is_file()


def test_run_time_settings_keep_the_fingerprint(tiny_run):
    """Threads, logging and checkpoint cadence change how a stage runs, not what it makes: a run
    resumed with other CPU threads keeps its cache; a learning-rate change does not."""
    pipeline, _ = tiny_run
    cfg = copy.deepcopy(pipeline.cfg)
    before = Pipeline(cfg, progress=False).fingerprint("finetune")
    cfg.student.train.threads, cfg.prune.finetune.train.eval_every = 2, 1
    cfg.teacher.train.log_every, cfg.teacher.train.checkpoint_every = 7, 3
    assert Pipeline(cfg, progress=False).fingerprint("finetune") == before
    cfg.prune.finetune.train.lr *= 2
    assert Pipeline(cfg, progress=False).fingerprint("finetune") != before
