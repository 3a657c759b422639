"""ViT detector models: named configs, decoding, checkpoints (ours and timm files on disk)."""
import pytest

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")

from evit_training.models import CONFIGS, DEFAULT_CLASS_NAMES, create_detector, decode_detections  # noqa: E402
from evit_training.models.checkpoint import (CheckpointError, load_model, load_timm_backbone,  # noqa: E402
                                             save_checkpoint)

torch.set_num_threads(1)


def test_default_classes_match_synthetic_world():
    from evit_training.data.synthetic import CLASS_NAMES
    assert tuple(DEFAULT_CLASS_NAMES) == tuple(CLASS_NAMES)


def test_micro_forward_shapes_and_tokens():
    model = create_detector("test_micro").eval()
    out = model(torch.rand(2, 3, 64, 64))
    assert out["heatmap"].shape == (2, 3, 16, 16)
    assert out["size"].shape == out["offset"].shape == (2, 2, 16, 16)
    assert out["tokens"].shape == (2, 64, 32)  # 8x8 patches, no class token
    with pytest.raises(ValueError, match=r"\(B, 3, 64, 64\)"):
        model(torch.rand(1, 3, 96, 96))


@pytest.mark.parametrize("name,lo,hi", [("teacher", 21e6, 24e6), ("student", 5e6, 6.5e6),
                                        ("teacher_tiny", 1.5e6, 4e6), ("student_tiny", 0.3e6, 1.5e6)])
def test_named_configs_have_the_promised_size(name, lo, hi):
    model = create_detector(name)
    params = sum(p.numel() for p in model.parameters())
    assert lo < params < hi, f"{name}: {params} parameters"
    assert model.backbone.cls_token is None and not model.backbone.dynamic_img_size


def test_teacher_is_vit_small_student_is_vit_tiny():
    assert (CONFIGS["teacher"]["embed_dim"], CONFIGS["teacher"]["depth"], CONFIGS["teacher"]["num_heads"]) == (384, 12, 6)
    assert (CONFIGS["student"]["embed_dim"], CONFIGS["student"]["depth"], CONFIGS["student"]["num_heads"]) == (192, 12, 3)


def test_config_errors_name_the_problem():
    with pytest.raises(KeyError, match="known: .*student_tiny"):
        create_detector("vit_huge")
    with pytest.raises(KeyError, match="embed_dimm"):
        create_detector("test_micro", embed_dimm=8)
    with pytest.raises(ValueError, match="multiple of patch_size"):
        create_detector("test_micro", input_size=60)


def test_decode_recovers_a_planted_box():
    c, h, w, stride = 3, 16, 16, 4
    heat = torch.full((1, c, h, w), -10.0)
    heat[0, 2, 5, 7] = 3.0  # class 2 centre at cell (x=7, y=5)
    size = torch.zeros(1, 2, h, w)
    size[0, :, 5, 7] = torch.log(torch.tensor([20.0, 12.0]) / stride)
    offset = torch.zeros(1, 2, h, w)
    offset[0, :, 5, 7] = torch.tensor([0.25, 0.5])
    det = decode_detections({"heatmap": heat, "size": size, "offset": offset}, stride, max_detections=5)
    assert det.shape == (1, 5, 6)
    cx, cy = (7 + 0.25) * 4, (5 + 0.5) * 4
    expected = torch.tensor([cx - 10, cy - 6, cx + 10, cy + 6, torch.sigmoid(torch.tensor(3.0)), 2.0])
    assert torch.allclose(det[0, 0], expected, atol=1e-4)
    assert det[0, 1, 4] < 1e-3


def test_checkpoint_roundtrip_keeps_pruned_architecture(tmp_path):
    import torch_pruning as tp

    model = create_detector("test_micro").eval()
    blk = model.backbone.blocks[1]
    # Real structured surgery with Torch-Pruning: drop 40 of 128 MLP hidden units.
    tp.prune_linear_out_channels(blk.mlp.fc1, idxs=list(range(40)))
    tp.prune_linear_in_channels(blk.mlp.fc2, idxs=list(range(40)))
    path = save_checkpoint(model, tmp_path / "pruned.pt", stage="prune")
    assert model.config["blocks"][1]["mlp_hidden"] == 88 and model.config["blocks"][0]["mlp_hidden"] == 128
    again = load_model(path)
    assert again.backbone.blocks[1].mlp.fc1.out_features == 88
    x = torch.rand(1, 3, 64, 64)
    assert torch.equal(model(x)["heatmap"], again(x)["heatmap"])


def test_load_model_rejects_foreign_files(tmp_path):
    bad = tmp_path / "weights.pt"
    torch.save({"state_dict": {}}, bad)
    with pytest.raises(CheckpointError, match="not an evit detector checkpoint"):
        load_model(bad)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "missing.pt")


def test_timm_deit_checkpoint_file_loads_as_backbone(tmp_path):
    # A DeiT distilled model (class + distillation tokens, patch 16, 224 px, classifier heads)
    # saved as a training script would: wrapped in {"model": ...} with a DDP "module." prefix.
    deit = timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False, embed_dim=32, depth=2, num_heads=2)
    path = tmp_path / "deit.pth"
    torch.save({"model": {"module." + k: v for k, v in deit.state_dict().items()}, "epoch": 3}, path)
    model = create_detector("test_micro")
    report = load_timm_backbone(model, path)
    assert report == {"missing": [], "unexpected": []}
    assert torch.equal(model.backbone.blocks[1].mlp.fc2.weight, deit.blocks[1].mlp.fc2.weight)
    assert model.backbone.pos_embed.shape == (1, 64, 32)  # 14x14 grid + 2 prefix -> 8x8 grid
    assert model.backbone.patch_embed.proj.weight.shape[-1] == 8  # patch 16 resampled to 8


def test_timm_checkpoint_with_other_width_is_rejected_by_name(tmp_path):
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, embed_dim=48, depth=2, num_heads=2)
    path = tmp_path / "vit.pth"
    torch.save(vit.state_dict(), path)
    with pytest.raises(CheckpointError, match="blocks.0"):
        load_timm_backbone(create_detector("test_micro"), path)


def test_per_block_structure_rebuilds_and_reads_back(tmp_path):
    blocks = [{"num_heads": 1, "head_dim": 16, "mlp_hidden": 40}, {"num_heads": 2, "head_dim": 16, "mlp_hidden": 128}]
    model = create_detector("test_micro", blocks=blocks).eval()
    assert model.backbone.blocks[0].attn.qkv.out_features == 48
    assert model.config_from_modules()["blocks"] == blocks
    again = load_model(save_checkpoint(model, tmp_path / "heads.pt"))
    x = torch.rand(1, 3, 64, 64)
    assert torch.equal(model(x)["size"], again(x)["size"])
    # Uniform blocks collapse back to the plain description.
    assert create_detector("test_micro").config_from_modules()["blocks"] is None
