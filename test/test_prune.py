"""Structured pruning of timm ViTs (heads and MLP width) with Torch-Pruning."""
from __future__ import annotations

import copy

import pytest

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")
pytest.importorskip("torch_pruning")

from evit_training.models import create_detector  # noqa: E402
from evit_training.models.checkpoint import load_model, save_checkpoint  # noqa: E402
from evit_training.prune import (apply_pruned_architecture, count_macs_params, prune_vit,  # noqa: E402
                                 pruned_architecture)

torch.set_num_threads(1)


def small_vit():
    torch.manual_seed(0)
    return timm.models.vision_transformer.VisionTransformer(
        img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4, num_classes=0,
        class_token=False, global_pool="avg").eval()


def test_prune_reaches_macs_target_and_keeps_attention_consistent():
    model = small_vit()
    x = torch.rand(2, 3, 32, 32)
    result = prune_vit(model, x[:1], target_macs_ratio=0.6, progress=False)
    assert result.macs_ratio <= 0.6
    assert result.macs_after < result.macs_before and result.params_after < result.params_before
    for block, spec in zip(model.blocks, result.arch):
        attn = block.attn
        assert 1 <= attn.num_heads < 4, "whole heads were removed, not all of them"
        assert attn.head_dim == 16, "head dims are not pruned, whole heads are"
        assert attn.qkv.out_features == 3 * attn.num_heads * attn.head_dim == 3 * attn.attn_dim
        assert attn.proj.in_features == attn.attn_dim
        assert block.mlp.fc1.out_features == block.mlp.fc2.in_features == spec["mlp_hidden"] < 256
        assert spec["mlp_hidden"] % 8 == 0
    assert model(x).shape == (2, 64), "embedding width is untouched"
    assert [h["macs_ratio"] for h in result.history] == sorted(
        [h["macs_ratio"] for h in result.history], reverse=True)


def test_magnitude_pruning_drops_the_dead_head():
    model = small_vit()
    attn = model.blocks[0].attn
    dead = 2  # zero head 2's q, k, v rows and its proj columns: zero magnitude
    with torch.no_grad():
        for part in range(3):
            start = part * 64 + dead * 16
            attn.qkv.weight[start:start + 16] = 0
            attn.qkv.bias[start:start + 16] = 0
        attn.proj.weight[:, dead * 16:(dead + 1) * 16] = 0
    prune_vit(model, torch.rand(1, 3, 32, 32), target_params_ratio=0.9, max_head_ratio=0.25,
              max_steps=1, max_pruning_ratio=0.05, progress=False)
    assert model.blocks[0].attn.num_heads == 3
    rows = model.blocks[0].attn.qkv.weight.abs().sum(dim=1)
    assert bool((rows > 0).all()), "the all-zero head should be the one removed"


def test_taylor_needs_a_loss_and_targets_are_checked():
    model = small_vit()
    x = torch.rand(1, 3, 32, 32)
    with pytest.raises(ValueError, match="loss_fn"):
        prune_vit(model, x, target_macs_ratio=0.5, importance="taylor", progress=False)
    with pytest.raises(ValueError, match="exactly one"):
        prune_vit(model, x, target_macs_ratio=0.5, target_params_ratio=0.5, progress=False)
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        prune_vit(model, x, target_macs_ratio=1.5, progress=False)
    with pytest.raises(ValueError, match="unknown pruning importance"):
        prune_vit(model, x, target_macs_ratio=0.5, importance="random", progress=False)


def test_taylor_pruning_runs_on_gradients():
    model = small_vit()
    batch = torch.rand(4, 3, 32, 32)
    result = prune_vit(model, batch[:1], target_params_ratio=0.7, importance="taylor",
                       loss_fn=lambda net: net(batch).pow(2).mean(), progress=False)
    assert result.params_ratio <= 0.7
    assert all(p.grad is None for p in model.parameters()), "gradients are cleared after pruning"


def test_pruned_timm_vit_reloads_from_its_architecture():
    original = small_vit()
    pruned = copy.deepcopy(original)
    prune_vit(pruned, torch.rand(1, 3, 32, 32), target_macs_ratio=0.5, progress=False)
    arch = pruned_architecture(pruned)
    fresh = apply_pruned_architecture(copy.deepcopy(original), arch)
    fresh.load_state_dict(pruned.state_dict())
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(fresh.eval()(x), pruned.eval()(x), atol=1e-6)
    with pytest.raises(ValueError, match="blocks"):
        apply_pruned_architecture(copy.deepcopy(original), arch[:1])


def test_pruned_detector_checkpoint_reloads_without_original_config(tmp_path):
    torch.manual_seed(0)
    model = create_detector("test_micro", depth=2, embed_dim=64, num_heads=4).eval()
    size = model.config["input_size"]
    x = torch.rand(1, 3, size, size)
    macs0, _ = count_macs_params(model, x)
    result = prune_vit(model, x, target_params_ratio=0.8, progress=False)
    assert model.config["blocks"] == result.arch, "the pruned widths are in the config"
    path = save_checkpoint(model, tmp_path / "pruned.pt")
    reloaded = load_model(path)
    assert pruned_architecture(reloaded) == result.arch
    with torch.no_grad():
        a, b = model.eval()(x), reloaded(x)
    for key in ("heatmap", "size", "offset"):
        assert torch.allclose(a[key], b[key], atol=1e-6)
    assert count_macs_params(reloaded, x)[0] < macs0


def test_detector_head_hidden_channels_shrink_together(tmp_path):
    from evit_training.prune.vit_pruning import head_hidden_layers

    torch.manual_seed(0)
    model = create_detector("test_micro", head_channels=32).eval()
    hidden = head_hidden_layers(model)
    assert model.head.heatmap[-1] not in hidden and model.head.neck[0] in hidden
    x = torch.rand(1, 3, 64, 64)
    prune_vit(model, x, target_macs_ratio=0.5, progress=False)
    widths = {m.out_channels for m in head_hidden_layers(model)}
    assert len(widths) == 1 and widths.pop() < 32, "one common, smaller head width"
    assert model.config["head_channels"] < 32
    out = model(x)
    assert out["heatmap"].shape == (1, 3, 16, 16) and out["size"].shape == (1, 2, 16, 16)
    reloaded = load_model(save_checkpoint(model, tmp_path / "p.pt"))
    with torch.no_grad():
        assert torch.allclose(reloaded(x)["heatmap"], model.eval()(x)["heatmap"], atol=1e-6)
