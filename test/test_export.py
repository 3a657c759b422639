"""ONNX export: in-graph decoding, opset 16 without LayerNormalization, the contract, and
torch vs ONNX Runtime equivalence through the node's own backend and Detector."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from evit_perception.backends import open_backend  # noqa: E402
from evit_perception.detector import Detector  # noqa: E402
from evit_perception.model_contract import METADATA_KEY, contract_from_metadata  # noqa: E402
from evit_perception.preprocess import letterbox  # noqa: E402
from evit_training.export import ExportError, export_onnx  # noqa: E402
from evit_training.export.onnx_export import DecodedDetector, graph_op_types  # noqa: E402
from evit_training.models import create_detector  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    net = create_detector("test_micro").eval()
    # Spread the heatmap so peaks have distinct, non-trivial scores (an untrained head sits
    # at the 0.1 prior everywhere).
    with torch.no_grad():
        net.head.heatmap[-1].weight.normal_(0, 2.0)
        net.head.size[-1].weight.normal_(0, 0.5)
    return net


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("export") / "micro.onnx"
    export_onnx(model, path, name="micro", extra={"stage": "test"})
    return path


def test_graph_is_opset16_without_layernorm_and_passes_checker(exported):
    proto = onnx.load(str(exported))
    onnx.checker.check_model(proto, full_check=True)
    assert {o.domain: o.version for o in proto.opset_import}.get("", None) == 16
    ops = graph_op_types(exported)
    assert "LayerNormalization" not in ops
    assert {"TopK", "MaxPool", "Sigmoid"} <= set(ops)  # decoding happens inside the graph
    (inp,), (out,) = proto.graph.input, proto.graph.output
    assert inp.name == "images" and [d.dim_value for d in inp.type.tensor_type.shape.dim] == [1, 3, 64, 64]
    assert out.name == "detections" and [d.dim_value for d in out.type.tensor_type.shape.dim] == [1, 100, 6]


def test_opset17_graph_has_layernorm_so_the_check_means_something(model, tmp_path):
    path = export_onnx(model, tmp_path / "o17.onnx", opset=17)
    assert "LayerNormalization" in graph_op_types(path)


def test_contract_is_embedded_and_readable(exported):
    session = ort.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    contract = contract_from_metadata(meta, str(exported))
    assert METADATA_KEY in meta
    assert contract.class_names == ("person", "vehicle", "obstacle")
    assert (contract.input.height, contract.input.width, contract.input.channel_order) == (64, 64, "RGB")
    assert contract.input.scale == pytest.approx(1 / 255) and contract.input.mean == (0.0, 0.0, 0.0)
    assert contract.output.layout == "xyxy_score_class" and contract.output.needs_nms is False
    assert contract.extra["stage"] == "test"
    assert contract.extra["export"]["opset"] == 16
    assert contract.extra["export"]["max_abs_diff"] < 1e-4


def test_torch_and_onnxruntime_agree_numerically(model, exported):
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(1, 3, 64, 64, generator=gen)
    with torch.no_grad():
        expected = DecodedDetector(model)(x).numpy()
    session = ort.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
    got = session.run(["detections"], {"images": x.numpy()})[0]
    assert got.shape == expected.shape == (1, 100, 6)
    keep = expected[0, :, 4] > 0.01
    assert keep.sum() > 5
    np.testing.assert_allclose(got[0, keep], expected[0, keep], atol=1e-4, rtol=0)


def test_node_detector_matches_torch_pipeline(model, exported):
    rng = np.random.default_rng(3)
    bgr = rng.integers(0, 255, (48, 80, 3), dtype=np.uint8)  # non-square: exercises letterbox
    backend = open_backend(str(exported), backend="onnxruntime")
    try:
        dets = Detector(backend, score_threshold=0.2, max_detections=100).detect(bgr)
    finally:
        backend.close()
    canvas, transform = letterbox(bgr, 64, 64, 114)
    x = torch.from_numpy(np.ascontiguousarray(canvas[..., ::-1].transpose(2, 0, 1))).float().div(255)[None]
    rows = model.predict(x)[0].numpy()
    rows = rows[rows[:, 4] > 0.2]
    assert len(dets) == len(rows) > 0
    order = np.argsort(-dets.scores)
    np.testing.assert_allclose(dets.scores[order], rows[:, 4], atol=1e-4)
    np.testing.assert_allclose(dets.boxes[order], transform.to_source(rows[:, :4]), atol=1e-2)
    np.testing.assert_array_equal(dets.class_ids[order], rows[:, 5].astype(np.int32))


def test_patch16_model_with_two_upsampling_stages_exports_equivalently(tmp_path):
    torch.manual_seed(4)
    net = create_detector("test_micro", patch_size=16).eval()
    with torch.no_grad():
        net.head.heatmap[-1].weight.normal_(0, 2.0)
    path = export_onnx(net, tmp_path / "p16.onnx", max_detections=20)
    meta = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_modelmeta().custom_metadata_map
    assert contract_from_metadata(meta, "p16").extra["export"]["max_abs_diff"] < 1e-4
    assert graph_op_types(path)["ConvTranspose"] == 2


def test_untrained_head_with_near_tied_scores_verifies(tmp_path):
    # Every cell sits near the 0.1 prior: TopK may order ties differently in torch and ORT,
    # which must not read as a numerical mismatch.
    torch.manual_seed(5)
    net = create_detector("test_micro").eval()
    path = export_onnx(net, tmp_path / "untrained.onnx")
    meta = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_modelmeta().custom_metadata_map
    assert contract_from_metadata(meta, "untrained").extra["export"]["max_abs_diff"] < 1e-4


def test_export_rejects_wrong_sizes(model, tmp_path):
    with pytest.raises(ValueError, match="fixed input size 64"):
        export_onnx(model, tmp_path / "bad.onnx", input_size=96)
    with pytest.raises(ValueError, match="2 class names"):
        export_onnx(model, tmp_path / "bad.onnx", class_names=["a", "b"])


def test_export_fails_loudly_on_numerical_mismatch(model, tmp_path, monkeypatch):
    # A tolerance no float pipeline can meet proves the comparison is really made.
    sample = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with pytest.raises(ExportError, match="differs from torch"):
        export_onnx(model, tmp_path / "strict.onnx", tolerance=-1.0, sample=sample)


def test_evit_export_command(model, tmp_path):
    from typer.testing import CliRunner

    from evit_training.cli import app
    from evit_training.models.checkpoint import save_checkpoint

    ckpt = save_checkpoint(model, tmp_path / "m.pt", metrics={"map50": 0.5})
    out = tmp_path / "cli.onnx"
    result = CliRunner().invoke(app, ["export", str(ckpt), str(out), "--max-detections", "10"])
    assert result.exit_code == 0, result.output
    meta = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).get_modelmeta().custom_metadata_map
    contract = contract_from_metadata(meta, "cli")
    assert contract.extra["metrics"]["map50"] == 0.5 and contract.extra["export"]["max_detections"] == 10
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    result = CliRunner().invoke(app, ["export", str(bad), str(tmp_path / "x.onnx")])
    assert result.exit_code != 0 and "cannot read checkpoint" in result.output
