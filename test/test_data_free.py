"""Data-free KD: the generator, the adversarial loop, resume, the config entry point.

Tiny timm ViTs run real generator and student steps on CPU; nothing is mocked.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("timm")

import yaml  # noqa: E402

from evit_training.classification import create_classifier, load_classifier, save_classifier  # noqa: E402
from evit_training.distill.data_free import (DataFreeConfig, DataFreeDistiller, _kl,  # noqa: E402
                                             batchnorm_stats_loss,
                                             heatmap_peak_priors, patch_similarity_entropy,
                                             mosaic, pseudo_label_targets, random_crop_shift, random_roll,
                                             run_from_config)
from evit_training.distill.logit_kd import heatmap_kd_loss  # noqa: E402
from evit_training.distill.generator import TransformerGenerator  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _tiny_cfg(**overrides) -> DataFreeConfig:
    base = dict(steps=6, batch_size=8, generator_patch_size=8, generator_latent_dim=8, generator_embed_dim=16,
                generator_depth=1, generator_heads=2, memory_bank_size=32, grid_every=3, checkpoint_every=2,
                log_every=1, stats_batches=1, seed=3, warmup_generator_steps=0)
    base.update(overrides)
    return DataFreeConfig(**base)


def _pair(seed: int = 0):
    torch.manual_seed(seed)
    teacher = create_classifier("digits_micro", embed_dim=32)
    student = create_classifier("digits_micro")
    return teacher, student


@pytest.mark.parametrize("num_classes,chans,size,patch,decoder,upsample", [
    (0, 3, 64, 8, "linear", 1), (10, 1, 32, 4, "linear", 2), (0, 3, 64, 16, "conv", 1), (10, 1, 32, 8, "conv", 1)])
def test_generator_output_shape_and_range(num_classes, chans, size, patch, decoder, upsample):
    gen = TransformerGenerator(image_size=size, out_chans=chans, patch_size=patch, latent_dim=8, embed_dim=16,
                               depth=1, num_heads=2, num_classes=num_classes, decoder=decoder, upsample=upsample,
                               output_gain=3.0)
    latent = gen.sample_latent(6, torch.Generator().manual_seed(0))
    labels = torch.arange(6) % num_classes if num_classes else None
    # Push the pixel head far out of range: the fixed output normalisation must still hold.
    with torch.no_grad():
        for param in gen.to_pixels.parameters():
            param.mul_(100.0).add_(50.0)
    images = gen(latent, labels)
    assert images.shape == (6, chans, size, size)
    assert float(images.min().detach()) >= 0.0 and float(images.max().detach()) <= 1.0
    assert float(images.std().detach()) > 0.05, "images collapsed to a constant"
    gen.eval()
    assert gen(latent, labels).shape == (6, chans, size, size)


def test_generator_rejects_bad_input():
    with pytest.raises(ValueError, match="divisible"):
        TransformerGenerator(image_size=30, patch_size=4)
    with pytest.raises(ValueError, match="decoder"):
        TransformerGenerator(image_size=32, patch_size=4, decoder="deconv")
    with pytest.raises(ValueError, match="power-of-two"):
        TransformerGenerator(image_size=36, patch_size=6, decoder="conv")
    gen = TransformerGenerator(image_size=32, out_chans=1, patch_size=8, latent_dim=8, embed_dim=16, depth=1,
                               num_heads=2, num_classes=10)
    with pytest.raises(ValueError, match="latent must be"):
        gen(torch.zeros(2, 5, 8), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="class-conditional"):
        gen(gen.sample_latent(2))


def test_canvas_generator_edits_its_canvas():
    from evit_training.distill.image_priors import dead_leaves

    gen = TransformerGenerator(image_size=32, out_chans=3, patch_size=8, latent_dim=8, embed_dim=16, depth=1,
                               num_heads=2, decoder="conv", canvas=True, canvas_residual=0.25)
    canvas = dead_leaves(4, 32, torch.Generator().manual_seed(0), shapes=12, texture=0.0)
    latent = gen.sample_latent(4, torch.Generator().manual_seed(1))
    images = gen(latent, canvas=canvas)
    assert images.shape == canvas.shape and images.min() >= 0.0 and images.max() <= 1.0
    # A light edit: the output follows the canvas (its colours and edges) but is not a copy.
    assert 0.0 < float((images - canvas).abs().mean().detach()) < 0.15
    other = gen(latent, canvas=canvas.flip(0))
    assert not torch.allclose(images, other)              # the canvas, not only the latent, decides
    images.mean().backward()                              # gradients reach the canvas embedding
    assert gen.canvas_embed.weight.grad is not None and gen.canvas_embed.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="edits a canvas"):
        gen(latent)
    with pytest.raises(ValueError, match="without canvas"):
        TransformerGenerator(image_size=32, patch_size=8, latent_dim=8, embed_dim=16, depth=1,
                             num_heads=2)(latent, canvas=canvas)


def test_patch_similarity_entropy_prefers_diverse_tokens():
    gen = torch.Generator().manual_seed(0)
    diverse = torch.randn(4, 16, 32, generator=gen)
    collapsed = torch.ones(4, 16, 32) + 0.01 * torch.randn(4, 16, 32, generator=gen)
    assert patch_similarity_entropy(diverse) > patch_similarity_entropy(collapsed)


def test_few_steps_write_grids_checkpoint_and_history(tmp_path):
    teacher, student = _pair()
    cfg = _tiny_cfg(conditional=True, warmup_generator_steps=2)
    distiller = DataFreeDistiller(teacher, student, cfg, tmp_path, show_progress=False, device="cpu")
    distiller.fit()
    assert distiller.step == 6 and distiller.warmup_done == 2 and distiller.device == torch.device("cpu")
    assert distiller.generator.num_classes == 10
    assert (tmp_path / "last.pt").is_file()
    grids = sorted(p.name for p in (tmp_path / "samples").glob("*.png"))
    assert grids == ["step_000003.png", "step_000006.png"]
    assert (tmp_path / "samples" / "step_000003.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    history = distiller.history
    assert [h["step"] for h in history] == [1, 2, 3, 4, 5, 6]
    for key in ("g_adversarial", "g_confidence", "g_balance", "g_stats", "g_patch_sim", "g_diversity", "s_kl",
                "s_feature"):
        assert all(torch.isfinite(torch.tensor(h[key])) for h in history), key
    assert distiller.bank.count == 32   # 6 fresh batches of 8 (ring buffer full)
    # The teacher stays frozen; only the student and generator learn.
    assert all(not p.requires_grad for p in teacher.parameters())


def test_student_loss_falls_on_fixed_seed(tmp_path):
    teacher, student = _pair(seed=1)
    cfg = _tiny_cfg(steps=40, batch_size=16, grid_every=100, checkpoint_every=100, lr_student=3e-3, cutmix_prob=0.0)
    distiller = DataFreeDistiller(teacher, student, cfg, tmp_path, show_progress=False)
    # The same probe images before and after: the final generator's output.
    initial = create_classifier("digits_micro")
    initial.load_state_dict(student.state_dict())
    distiller.fit()
    probe = distiller.synthesize(64, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        t = teacher(probe)
        before = float(_kl(initial(probe), t, cfg.temperature))
        after = float(_kl(student(probe), t, cfg.temperature))
    assert after < 0.7 * before, (before, after)
    first = sum(h["s_kl"] for h in distiller.history[:5]) / 5
    last = sum(h["s_kl"] for h in distiller.history[-5:]) / 5
    assert last < first, (first, last)


def test_layout_generator_draws_where_the_layout_says():
    from evit_training.distill.layout import layout_masks, sample_layouts

    torch.manual_seed(0)
    gen = TransformerGenerator(image_size=64, out_chans=3, patch_size=16, latent_dim=8, embed_dim=16, depth=1,
                               num_heads=2, decoder="conv", layout_chans=3, output_affine=True)
    rng = torch.Generator().manual_seed(0)
    layouts = sample_layouts(4, 64, 3, rng, objects=(1, 3), sides=(8, 24))
    masks = layout_masks(layouts, 3, 64)
    latent = gen.sample_latent(4, rng)
    images = gen(latent, layout=masks)
    assert images.shape == (4, 3, 64, 64) and images.min() >= 0.0 and images.max() <= 1.0
    assert not torch.allclose(images, gen(latent, layout=masks.flip(0)))   # the layout, not only the latent, decides
    images.mean().backward()
    for module in (gen.layout_embed, *gen.layout_stages):                   # token and every decoder stage
        assert module.weight.grad is not None and module.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="draws a layout"):
        gen(latent)
    with pytest.raises(ValueError, match="without layout_chans"):
        TransformerGenerator(image_size=64, patch_size=16, latent_dim=8, embed_dim=16, depth=1, num_heads=2,
                             decoder="conv")(latent, layout=masks)
    with pytest.raises(ValueError, match="conv decoder"):
        TransformerGenerator(image_size=64, patch_size=16, decoder="linear", layout_chans=3)


def test_layout_generator_learns_what_the_teacher_should_detect():
    # A fixed batch of layouts: the generator lowers the teacher's CenterNet loss against them.
    models = pytest.importorskip("evit_training.models")
    from evit_training.distill.layout import layout_masks, sample_layouts
    from evit_training.engine.losses import detection_loss, encode_targets

    torch.manual_seed(0)
    teacher = models.create_detector("test_micro").eval().requires_grad_(False)
    rng = torch.Generator().manual_seed(0)
    layouts = sample_layouts(8, 64, 3, rng, objects=(1, 3), sides=(8, 24))
    masks, targets = layout_masks(layouts, 3, 64), encode_targets(layouts, 3, 16, int(teacher.stride))
    gen = TransformerGenerator(image_size=64, out_chans=3, patch_size=16, latent_dim=8, embed_dim=16, depth=1,
                               num_heads=2, decoder="conv", layout_chans=3, output_affine=True)
    latent = gen.sample_latent(8, rng)
    opt = torch.optim.Adam(gen.parameters(), lr=1e-2)
    losses = []
    for _ in range(40):
        loss = detection_loss(teacher(gen(latent, layout=masks)), targets)["total"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0] - 0.04, losses


def test_layout_prior_is_the_teachers_detection_loss_on_the_sampled_boxes(tmp_path):
    from evit_training.engine.losses import detection_loss, encode_targets

    distiller = _micro_detection_distiller(tmp_path, detection_prior="layout", layout_objects=[1, 4],
                                           layout_sides=[6, 20])
    assert distiller.generator.layout_chans == distiller.num_classes == 3
    images, _, layouts = distiller._generate(4)
    assert len(layouts) == 4 and all(1 <= len(l["labels"]) <= 4 for l in layouts)
    with torch.no_grad():
        t_out = distiller.teacher(images)
        confidence, balance = distiller._teacher_priors(t_out, None, layouts)
        expected = detection_loss(t_out, encode_targets(layouts, 3, t_out["heatmap"].shape[-1],
                                                        int(distiller.teacher.stride)))["total"]
    assert torch.allclose(confidence, expected) and float(balance) == 0.0
    distiller.fit()
    for key in ("s_kl", "g_confidence", "g_objects"):
        assert torch.isfinite(torch.tensor(distiller.history[-1][key])), key
    assert distiller.save_grid(tmp_path / "grid.png").is_file()
    for name, value, match in (("layout_objects", [5, 2], "lo <= hi"), ("layout_objects", [1.5, 3], "whole"),
                               ("layout_sides", [0.5, 8], "layout_sides"), ("layout_sides", 8, "pair"),
                               ("layout_max_aspect", 0.5, "layout_max_aspect")):
        with pytest.raises(ValueError, match=match):
            DataFreeConfig.from_dict({"detection_prior": "layout", name: value})


def test_layout_detection_run_resumes_to_the_same_state(tmp_path):
    def run(out: Path, stops):
        distiller = None
        for stop in stops:
            if distiller is not None:
                distiller.close()
            distiller = _micro_detection_distiller(out, detection_prior="layout", steps=4, checkpoint_every=100)
            if stop == stops[-1] and len(stops) > 1:
                torch.manual_seed(99)    # the resumed leg must take its state from the checkpoint
            distiller.fit(until_step=stop)
        return distiller

    straight, resumed = run(tmp_path / "straight", [4]), run(tmp_path / "resumed", [2, 4])
    for name in ("student", "generator"):
        a, b = getattr(straight, name).state_dict(), getattr(resumed, name).state_dict()
        for key in a:
            assert torch.equal(a[key], b[key]), f"{name}.{key} differs after resume"
    assert [h["g_confidence"] for h in straight.history] == [h["g_confidence"] for h in resumed.history]


@pytest.mark.parametrize("options", [{}, {"augment_mode": "crop"},
                                     {"procedural_fraction": 0.25}, {"mosaic_fraction": 0.5}, {"student_ema": 0.9}, {"anchor_decay": 5.0},
                                     {"frozen_student": ("backbone.patch_embed", "backbone.pos_embed")},
                                     {"procedural_fraction": 0.5, "procedural_palette": "teacher", "palette_fit_steps": 3},
                                     {"generator_canvas": "dead_leaves", "canvas_residual": 0.5},
                                     {"generator_jitter": "roll", "generator_jitter_shift": 16}])
def test_resume_reaches_the_same_state(tmp_path, options):
    def run(out: Path, stops):
        teacher, student = _pair(seed=2)
        distiller = None
        for stop in stops:   # a fresh distiller per leg, as after a crash
            if distiller is not None:
                distiller.close()
                _, student = _pair(seed=99)   # student weights must come from the checkpoint
            distiller = DataFreeDistiller(teacher, student, _tiny_cfg(steps=6, checkpoint_every=100, **options),
                                          out, show_progress=False)
            distiller.fit(until_step=stop)
        return distiller

    straight = run(tmp_path / "straight", [6])
    resumed = run(tmp_path / "resumed", [3, 6])
    assert resumed.step == straight.step == 6
    for name, a, b in (("student", straight.student.state_dict(), resumed.student.state_dict()),
                       ("generator", straight.generator.state_dict(), resumed.generator.state_dict())):
        for key in a:
            assert torch.equal(a[key], b[key]), f"{name}.{key} differs after resume"
    assert torch.equal(straight.bank.images, resumed.bank.images)
    assert [h["s_kl"] for h in straight.history] == [h["s_kl"] for h in resumed.history]


def test_student_ema_becomes_the_student(tmp_path):
    teacher, student = _pair(seed=2)
    initial = {k: v.clone() for k, v in student.state_dict().items()}
    distiller = DataFreeDistiller(teacher, student, _tiny_cfg(steps=1, student_ema=0.75), tmp_path,
                                  show_progress=False)
    distiller.fit()
    raw = torch.load(tmp_path / "last.pt", weights_only=False)["student"]   # the optimiser's weights
    changed = 0
    for key, value in student.state_dict().items():
        if value.is_floating_point():
            assert torch.allclose(value, 0.75 * initial[key] + 0.25 * raw[key], atol=1e-6), key
            changed += not torch.equal(value, raw[key])
    assert changed, "the returned student should be the average, not the last step's weights"
    with pytest.raises(ValueError, match="student_ema"):
        DataFreeConfig.from_dict({"student_ema": 1.0})


def test_frozen_student_parameters_keep_their_start(tmp_path):
    teacher, student = _pair(seed=2)
    initial = {k: v.clone() for k, v in student.named_parameters()}
    cfg = DataFreeConfig.from_dict({**vars(_tiny_cfg(steps=2)), "frozen_student": ["backbone.patch_embed"]})
    assert cfg.frozen_student == ("backbone.patch_embed",)     # YAML lists become tuples
    DataFreeDistiller(teacher, student, cfg, tmp_path, show_progress=False).fit()
    frozen = [k for k in initial if k.startswith("backbone.patch_embed")]
    assert frozen
    for name, value in student.named_parameters():
        if name in frozen:
            assert torch.equal(value, initial[name]), f"{name} moved although frozen"
    assert any(not torch.equal(v, initial[k]) for k, v in student.named_parameters() if k not in frozen)
    with pytest.raises(ValueError, match="'backbone.patch_embd' matches no parameter"):
        DataFreeDistiller(teacher, student, _tiny_cfg(frozen_student=("backbone.patch_embd",)), tmp_path / "x",
                          show_progress=False)
    with pytest.raises(ValueError, match="list of parameter-name prefixes"):
        DataFreeConfig.from_dict({"frozen_student": "backbone.patch_embed"})


def test_detection_student_imitates_dense_outputs(tmp_path):
    models = pytest.importorskip("evit_training.models")
    pytest.importorskip("evit_training.distill.logit_kd")
    torch.manual_seed(0)
    teacher = models.create_detector("test_micro")
    student = models.create_detector("test_micro", embed_dim=16)
    cfg = _tiny_cfg(steps=4, batch_size=4, grid_every=4, memory_bank_size=8, generator_patch_size=16)
    distiller = DataFreeDistiller(teacher, student, cfg, tmp_path, task="detection", show_progress=False)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    distiller.fit()
    assert distiller.generator.num_classes == 0   # detectors get an unconditional generator
    assert (tmp_path / "samples" / "step_000004.png").is_file()
    for key in ("s_kl", "s_box", "g_adversarial", "g_confidence", "g_balance"):
        assert torch.isfinite(torch.tensor(distiller.history[-1][key])), key
    assert any(not torch.equal(before[k], v) for k, v in student.state_dict().items())


def _micro_detection_distiller(out_dir: Path, **options) -> DataFreeDistiller:
    """A 2-step detection game between two ``test_micro`` detectors, with ``options`` on top."""
    models = pytest.importorskip("evit_training.models")
    torch.manual_seed(0)
    teacher = models.create_detector("test_micro")
    student = models.create_detector("test_micro", embed_dim=16)
    base = dict(steps=2, batch_size=4, grid_every=4, memory_bank_size=8, generator_patch_size=16)
    cfg = DataFreeConfig.from_dict({**dataclasses.asdict(_tiny_cfg()), **base, **options})
    return DataFreeDistiller(teacher, student, cfg, out_dir, task="detection", show_progress=False)


def test_pasted_objects_are_the_teachers_detections(tmp_path):
    distiller = _micro_detection_distiller(tmp_path, procedural_fraction=0.5, paste_objects=3, paste_threshold=0.0)
    fresh = distiller.synthesize(4)
    boxes = distiller._teacher_boxes(fresh)
    assert len(boxes) == 4 and all(b.shape[1] == 4 for b in boxes)
    assert sum(len(b) for b in boxes) > 0          # threshold 0: every decoded box counts
    rng = torch.Generator().manual_seed(0)
    plain = distiller._with_image_priors(fresh, torch.Generator().manual_seed(0))
    pasted = distiller._with_image_priors(fresh, rng, objects_from=fresh)
    assert torch.equal(pasted[:2], plain[:2])      # the generator's half is untouched
    assert not torch.equal(pasted[2:], plain[2:])  # the dead-leaves half carries pasted crops
    distiller.fit()
    assert torch.isfinite(torch.tensor(distiller.history[-1]["s_kl"]))
    with pytest.raises(ValueError, match="needs task 'detection'"):
        DataFreeDistiller(*_pair(), _tiny_cfg(paste_objects=2), tmp_path / "c", show_progress=False)


def test_detection_peaks_prior_and_focal_student_loss(tmp_path):
    distiller = _micro_detection_distiller(tmp_path, detection_prior="peaks", target_objects=3,
                                           heatmap_focal_gamma=2.0, augment_mode="crop")
    distiller.fit()
    for key in ("s_kl", "g_confidence", "g_balance", "g_objects"):
        assert torch.isfinite(torch.tensor(distiller.history[-1][key])), key
    with pytest.raises(ValueError, match="detection_prior"):
        DataFreeConfig.from_dict({"detection_prior": "blobs"})


def test_batchnorm_stats_loss_is_zero_at_the_running_statistics():
    bn = torch.nn.BatchNorm2d(4).eval()
    bn.running_mean.copy_(torch.tensor([0.5, -1.0, 2.0, 0.0]))
    bn.running_var.copy_(torch.tensor([1.0, 4.0, 0.25, 9.0]))
    x = torch.randn(8, 4, 5, 5)
    x = (x - x.mean((0, 2, 3), keepdim=True)) / x.std((0, 2, 3), unbiased=False, keepdim=True)
    matched = x * bn.running_var.sqrt().view(1, 4, 1, 1) + bn.running_mean.view(1, 4, 1, 1)
    assert float(batchnorm_stats_loss([(matched, bn)])) < 1e-3
    assert float(batchnorm_stats_loss([(matched + 1.0, bn)])) > 0.4        # mean off by 1 per channel
    assert float(batchnorm_stats_loss([(matched * 3.0, bn)])) > 0.4        # std off by 3x


def test_batchnorm_prior_pulls_the_generator_to_the_teachers_head_statistics(tmp_path):
    distiller = _micro_detection_distiller(tmp_path, w_batchnorm_stats=1.0, w_feature_stats=0.0,
                                           w_patch_similarity=0.0, w_confidence=0.0, w_class_balance=0.0,
                                           w_diversity=0.0, w_total_variation=0.0, lr_generator=3e-3)
    assert [bn.num_features for bn in distiller.teacher_view.batchnorms] == [16, 16]   # the head's neck
    losses = [distiller.generator_step(adversarial=False)["g_bn_stats"] for _ in range(30)]
    assert sum(losses[-5:]) < 0.9 * sum(losses[:5])      # a fixed seed: mean of 5 steps 0.82 at the start, 0.70 at 25
    distiller.fit()
    assert torch.isfinite(torch.tensor(distiller.history[-1]["g_bn_stats"]))
    with pytest.raises(ValueError, match="w_batchnorm_stats needs a teacher with BatchNorm"):
        DataFreeDistiller(*_pair(), _tiny_cfg(w_batchnorm_stats=1.0), tmp_path / "c", show_progress=False)


def test_procedural_images_and_colour_jitter_reach_the_student(tmp_path):
    distiller = _micro_detection_distiller(tmp_path, procedural_fraction=0.5, colour_jitter=0.5)
    seen = []
    hook = distiller.student.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0].detach().clone()))
    distiller.fit()
    hook.remove()
    assert torch.isfinite(torch.tensor(distiller.history[-1]["s_kl"]))
    # The student's batches (not the generator's adversarial probes, which are only 4 fresh
    # images too) hold dead-leaves images: piecewise-flat colour plus texture noise, far more
    # saturated than the generator's first outputs.
    saturation = [float((batch.amax(1) - batch.amin(1)).mean()) for batch in seen]
    assert max(saturation) > 0.2, saturation
    rng_state = distiller.rng.get_state()
    view = distiller.save_student_view(tmp_path / "student_view.png", count=8)
    assert view.is_file() and torch.equal(distiller.rng.get_state(), rng_state)   # the run's randomness untouched
    teacher, grey_student = _pair()                        # digits: one channel, nothing to jitter
    with pytest.raises(ValueError, match="RGB"):
        DataFreeDistiller(teacher, grey_student, _tiny_cfg(colour_jitter=0.5), tmp_path / "grey", show_progress=False)
    for name, value in (("procedural_fraction", 1.5), ("colour_jitter", -0.1), ("generator_canvas", "photos"),
                        ("procedural_style", "photos")):
        with pytest.raises(ValueError, match=name):
            DataFreeConfig.from_dict({name: value})


def test_pseudo_labels_are_the_teachers_confident_detections(tmp_path):
    # A teacher map with two confident peaks (class 1 at cell (2, 3), class 0 at (5, 6)) and a
    # weak one: only the confident two become centres, with the teacher's sizes and offsets.
    heat = torch.full((1, 2, 8, 8), -8.0)
    heat[0, 1, 3, 2], heat[0, 0, 6, 5], heat[0, 0, 1, 6] = 3.0, 2.0, -1.0
    size = torch.zeros(1, 2, 8, 8)
    size[0, :, 3, 2] = torch.tensor([0.5, 1.0])
    offset = torch.full((1, 2, 8, 8), 0.25)
    targets = pseudo_label_targets({"heatmap": heat, "size": size, "offset": offset}, stride=4, threshold=0.3)
    centres = targets["mask"][0, 0].nonzero().tolist()
    assert sorted(centres) == [[3, 2], [6, 5]]
    assert float(targets["heatmap"][0, 1, 3, 2]) == 1.0 and float(targets["heatmap"][0, 0, 6, 5]) == 1.0
    assert float(targets["heatmap"][0, 0, 1, 6]) == 0.0
    assert torch.allclose(targets["size"][0, :, 3, 2], torch.tensor([0.5, 1.0]), atol=1e-5)
    assert torch.allclose(targets["offset"][0, :, 3, 2], torch.tensor([0.25, 0.25]), atol=1e-5)
    distiller = _micro_detection_distiller(tmp_path, w_pseudo_labels=1.0, pseudo_label_threshold=0.05)
    distiller.fit()
    assert torch.isfinite(torch.tensor(distiller.history[-1]["s_pseudo"]))
    with pytest.raises(ValueError, match="pseudo_label_threshold"):
        DataFreeConfig.from_dict({"pseudo_label_threshold": 2.0})


def test_heatmap_peak_priors_reward_a_few_confident_peaks():
    logits = torch.full((2, 3, 8, 8), -6.0)
    logits[0, 1, 2, 2] = logits[0, 2, 5, 5] = 4.0       # image 0: two confident objects, classes 1 and 2
    logits[1, 1, 4, 4] = 4.0                            # image 1: one
    conf_two, mix = heatmap_peak_priors(logits, target_objects=2)
    conf_one, _ = heatmap_peak_priors(logits[1:], target_objects=2)
    assert conf_two < conf_one                          # the image with two peaks scores better
    assert mix.shape == (3,) and torch.isclose(mix.sum(), torch.tensor(1.0))
    assert mix[0] < mix[1] and mix[0] < mix[2]          # the peaks carry classes 1 and 2
    flat = torch.full((1, 3, 8, 8), 0.0)                # everything at 0.5: many weak "objects"
    assert heatmap_peak_priors(flat, 2)[0] > heatmap_peak_priors(logits[:1], 2)[0]
    grad = torch.zeros(1, 3, 8, 8, requires_grad=True)
    heatmap_peak_priors(grad, 2)[0].backward()
    assert torch.isfinite(grad.grad).all() and grad.grad.abs().sum() > 0


def test_focal_heatmap_kd_is_zero_for_a_copy_and_positive_otherwise():
    teacher = torch.randn(2, 3, 8, 8)
    assert heatmap_kd_loss(teacher.clone(), teacher, focal_gamma=2.0).abs() < 1e-5
    student = torch.randn(2, 3, 8, 8, requires_grad=True)
    loss = heatmap_kd_loss(student, teacher, focal_gamma=2.0)
    loss.backward()
    assert loss > 0 and torch.isfinite(student.grad).all()


def test_run_from_config_trains_and_saves_student(tmp_path):
    teacher, _ = _pair()
    teacher_path = save_classifier(teacher, tmp_path / "teacher.pt")
    cfg = yaml.safe_load((REPO / "training" / "configs" / "data_free_digits.yaml").read_text())
    cfg["teacher"] = str(teacher_path)
    cfg["student"] = "digits_micro"
    cfg["data_free"].update(steps=2, batch_size=4, grid_every=1, warmup_generator_steps=1, memory_bank_size=8,
                            generator_embed_dim=16, generator_heads=2, generator_depth=1)
    result = run_from_config(cfg, out_dir=tmp_path / "run", show_progress=False)
    assert result["steps"] == 2 and 0.0 <= result["accuracy"] <= 1.0
    assert load_classifier(result["student"]).arch["embed_dim"] == 24
    assert (tmp_path / "run" / "samples" / "final.png").is_file()
    assert not (tmp_path / "run" / "samples" / "student_view.png").exists()   # no image priors: nothing more to show
    cfg["data_free"]["procedural_fraction"] = 0.25
    run_from_config(cfg, out_dir=tmp_path / "run_priors", show_progress=False)
    assert (tmp_path / "run_priors" / "samples" / "student_view.png").is_file()


def test_bad_configs_are_named(tmp_path):
    with pytest.raises(ValueError, match="w_advesarial"):
        DataFreeConfig.from_dict({"w_advesarial": 1.0})
    with pytest.raises(ValueError, match="memory_fraction"):
        DataFreeConfig.from_dict({"memory_fraction": 1.5})
    with pytest.raises(FileNotFoundError, match="teacher checkpoint not found"):
        run_from_config({"task": "classification", "teacher": str(tmp_path / "missing.pt")})
    with pytest.raises(ValueError, match="unknown key"):
        run_from_config({"teacher": "x", "epochs": 3})
    teacher, _ = _pair()
    with pytest.raises(ValueError, match="differ"):
        DataFreeDistiller(teacher, create_classifier("digits_micro", img_size=48), _tiny_cfg(), tmp_path)


def test_stats_targets_from_a_few_real_images(tmp_path):
    from evit_training.classification import load_digits_split

    teacher, student = _pair()
    real = load_digits_split()[0].subset(20).images
    noise_targets = DataFreeDistiller(teacher, student, _tiny_cfg(), tmp_path / "a").stat_targets
    real_targets = DataFreeDistiller(teacher, student, _tiny_cfg(), tmp_path / "b", stats_images=real).stat_targets
    assert len(real_targets) == len(noise_targets) == len(teacher.backbone.blocks)
    assert not torch.allclose(real_targets[0][0], noise_targets[0][0])
    with pytest.raises(ValueError, match="stats_images must be"):
        DataFreeDistiller(teacher, student, _tiny_cfg(), tmp_path / "c", stats_images=torch.rand(4, 3, 32, 32))


def test_random_crop_shift_keeps_shape_range_and_identity():
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(6, 1, 32, 32, generator=gen)
    out = random_crop_shift(images, 0.6, 3, gen)
    assert out.shape == images.shape and float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert not torch.allclose(out, images)
    assert torch.allclose(random_crop_shift(images, 1.0, 0, gen), images, atol=1e-5)
    with pytest.raises(ValueError, match="augment_mode"):
        DataFreeConfig.from_dict({"augment_mode": "mixup"})


def test_random_roll_moves_pixels_without_resampling():
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(6, 3, 20, 24, generator=gen, requires_grad=True)
    out = random_roll(images, 12, gen, flip=True)
    assert out.shape == images.shape and not torch.equal(out, images)
    for a, b in zip(images, out):   # a permutation of each image's own pixels, nothing interpolated
        assert torch.equal(a.detach().flatten().sort().values, b.detach().flatten().sort().values)
    out.sum().backward()            # every pixel lands exactly once, so its gradient is 1
    assert torch.equal(images.grad, torch.ones_like(images))
    assert torch.equal(random_roll(images, 0, gen), images)


@pytest.mark.parametrize("jitter", ["roll", "crop"])
def test_generator_step_judges_jittered_images(tmp_path, jitter):
    distiller = _micro_detection_distiller(tmp_path, generator_jitter=jitter, generator_jitter_shift=40,
                                           detection_prior="peaks")
    seen, generated = [], []
    hooks = [distiller.teacher.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach())),
             distiller.generator.register_forward_hook(lambda module, args, out: generated.append(out.detach()))]
    distiller.generator_step()
    for hook in hooks:
        hook.remove()
    assert len(seen) >= 1 and len(generated) == 1
    assert seen[0].shape == generated[0].shape and not torch.allclose(seen[0], generated[0])
    with pytest.raises(ValueError, match="generator_jitter must be"):
        DataFreeConfig.from_dict({"generator_jitter": "zoom"})
    with pytest.raises(ValueError, match="layout"):
        DataFreeConfig.from_dict({"generator_jitter": "roll", "detection_prior": "layout"})


def test_mosaic_tiles_half_size_batch_images():
    gen = torch.Generator().manual_seed(0)
    # Flat images of distinct grey levels: every mosaic quadrant must be one of them, whole.
    levels = torch.linspace(0.1, 0.9, 8)
    images = levels.view(8, 1, 1, 1).expand(8, 3, 33, 32).clone()
    out = mosaic(images, 0.5, gen)
    assert out.shape == images.shape
    changed = [i for i in range(8) if not torch.equal(out[i], images[i])]
    assert 1 <= len(changed) <= 4           # 4 replaced; a mosaic may repeat its own tile
    quadrants = [(slice(0, 16), slice(0, 16)), (slice(0, 16), slice(16, 32)),
                 (slice(16, 32), slice(0, 16)), (slice(16, 32), slice(16, 32))]
    for i in changed:
        for rows, cols in quadrants:
            tile = out[i, :, rows, cols]
            assert torch.allclose(tile, tile.flatten()[0].expand_as(tile), atol=1e-5)
            assert torch.isclose(levels, tile.flatten()[0], atol=1e-5).any()
        assert torch.equal(out[i, :, 32], out[i, :, 31])    # the odd row is padded, not left stale
    assert torch.equal(mosaic(images, 0.0, gen), images)
    with pytest.raises(ValueError, match="mosaic_fraction"):
        DataFreeConfig.from_dict({"mosaic_fraction": 1.5})


def _fading_distiller(out_dir: Path, **options) -> DataFreeDistiller:
    """A detection game whose student starts as the teacher and fades into its own shape."""
    models = pytest.importorskip("evit_training.models")
    torch.manual_seed(0)
    teacher = models.create_detector("test_micro")
    student = models.create_detector("test_micro", embed_dim=16, num_heads=1, head_channels=8)
    base = dict(steps=4, batch_size=4, grid_every=4, memory_bank_size=8, generator_patch_size=16,
                fade_fraction=0.5, checkpoint_every=100)
    cfg = DataFreeConfig.from_dict({**dataclasses.asdict(_tiny_cfg()), **base, **options})
    return DataFreeDistiller(teacher, student, cfg, out_dir, task="detection", show_progress=False)


def test_fading_student_trains_as_the_teacher_shape_and_returns_the_student(tmp_path):
    distiller = _fading_distiller(tmp_path)
    teacher_width = distiller.teacher.backbone.embed_dim
    assert distiller.student.backbone.embed_dim == teacher_width    # the copy trains, not the small student
    start = {k: v.clone() for k, v in distiller.student.state_dict().items()}
    student = distiller.fit()
    assert distiller.fading.alpha == 0.0 and student.backbone.embed_dim == 16
    assert any(not torch.equal(start[k], v) for k, v in distiller.student.state_dict().items())
    x = torch.rand(2, 3, 64, 64)
    distiller.student.eval()
    student.eval()
    with torch.no_grad():
        assert torch.allclose(distiller.student(x)["heatmap"], student(x)["heatmap"], atol=1e-5)
    with pytest.raises(ValueError, match="fade_fraction must be"):
        DataFreeConfig.from_dict({"fade_fraction": 1.5})
    with pytest.raises(ValueError, match="w_inherited_tokens"):
        DataFreeConfig.from_dict({"fade_fraction": 0.5, "w_inherited_tokens": 1.0})


def test_fading_run_resumes_to_the_same_state(tmp_path):
    straight = _fading_distiller(tmp_path / "straight")
    a = straight.fit()
    first = _fading_distiller(tmp_path / "resumed")
    first.fit(until_step=1)                  # mid-fade
    assert 0.0 < first.fading.alpha < 1.0
    first.close()
    resumed = _fading_distiller(tmp_path / "resumed")
    b = resumed.fit()
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), key


def test_run_from_config_fades_from_weight_selection_only(tmp_path):
    torch.manual_seed(0)
    teacher_path = save_classifier(create_classifier("digits_teacher"), tmp_path / "teacher.pt")
    cfg = {"task": "classification", "teacher": str(teacher_path), "student": "digits_student",
           "student_init": "weight_selection",
           "data_free": dict(steps=2, batch_size=4, grid_every=1, warmup_generator_steps=0, memory_bank_size=8,
                             generator_embed_dim=16, generator_heads=2, generator_depth=1, fade_fraction=0.5)}
    result = run_from_config(cfg, out_dir=tmp_path / "run", show_progress=False)
    assert load_classifier(result["student"]).arch["embed_dim"] == 48     # the student's shape, not the copy's
    with pytest.raises(ValueError, match="needs student_init: weight_selection"):
        run_from_config({**cfg, "student_init": "random"}, out_dir=tmp_path / "random", show_progress=False)
