"""One trainer for detection training and distillation, CPU to multi-node GPU.

- step budget drives everything: warm-up and cosine decay are fractions of ``steps`` so a
  short CPU run still finishes its warm-up (a fixed warm-up that never ends halved mAP);
- deterministic data order: epoch ``e`` shuffles with seed ``seed + e`` and each rank takes
  every ``world_size``-th item, so resuming skips exactly the batches already seen;
- checkpoints every ``checkpoint_every`` steps and at the end hold model, optimizer,
  scheduler, step and all RNG states (``last.pt``); ``model.pt`` is the final model only;
- AMP (bf16, or fp16 with a grad scaler) on CUDA only; DDP when launched by torchrun;
- KD: a teacher runs live, or its outputs are cached once for a non-augmented dataset.
"""
from __future__ import annotations

import logging
import math
import random
import shutil
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from evit_training.distill.objective import DistillationObjective, KDConfig
from evit_training.distill import token_statistics
from evit_training.distill.teacher_cache import TeacherCache
from evit_training.models import layer_moments
from evit_training.models.checkpoint import load_checkpoint, save_checkpoint, unwrap

from .distributed import DistContext, all_reduce_mean, barrier, setup_distributed
from .history import TrainingHistory
from .losses import LossWeights, detection_loss, encode_targets, targets_to_device

log = logging.getLogger(__name__)

AMP_MODES = ("auto", "bf16", "fp16", "off")


@dataclass
class TrainConfig:
    """Optimisation settings; every field can be set from the ``train:`` YAML section."""

    steps: int = 1000
    batch_size: int = 16              # global batch, split over DDP processes
    lr: float = 1e-3
    backbone_lr_scale: float = 1.0    # < 1 when the backbone starts from pretrained weights
    weight_decay: float = 0.05
    warmup_fraction: float = 0.05     # of ``steps``
    min_lr_ratio: float = 0.02        # cosine floor as a fraction of ``lr``
    grad_clip: float = 5.0            # 0 disables
    seed: int = 0
    deterministic: bool = True
    num_workers: int = 0
    threads: int = 0                  # torch CPU threads per process; 0 keeps torch's default
    checkpoint_every: int = 0         # 0: only at the end
    keep_checkpoints: int = 2         # periodic checkpoints/step_*.pt kept besides last.pt
    log_every: int = 10
    eval_every: int = 0               # 0: only at the end (when a validation set is given)
    amp: str = "auto"                 # auto | bf16 | fp16 | off (CUDA only)
    device: str = "auto"              # auto | cpu | cuda | cuda:N
    heatmap_weight: float = 1.0
    size_weight: float = 1.0
    offset_weight: float = 1.0
    progress: bool = True
    # Training images whose token statistics go into model.pt (the data-free KD prior,
    # see distill/token_statistics.py); 0 records none.
    token_stats_images: int = 256
    # Training images whose layer-input moments go into model.pt (what compensated weight
    # selection refits a cut student with, see models/layer_moments.py); 0 records none.
    layer_moments_images: int = 256

    def validate(self) -> None:
        if self.steps < 1:
            raise ValueError(f"train.steps must be >= 1, got {self.steps}")
        if self.batch_size < 1:
            raise ValueError(f"train.batch_size must be >= 1, got {self.batch_size}")
        if not 0 <= self.warmup_fraction < 1:
            raise ValueError(f"train.warmup_fraction must be in [0, 1), got {self.warmup_fraction}")
        if self.amp not in AMP_MODES:
            raise ValueError(f"train.amp {self.amp!r} not in {AMP_MODES}")
        if self.lr <= 0:
            raise ValueError(f"train.lr must be positive, got {self.lr}")
        if self.token_stats_images < 0:
            raise ValueError(f"train.token_stats_images must be >= 0, got {self.token_stats_images}")
        if self.layer_moments_images < 0:
            raise ValueError(f"train.layer_moments_images must be >= 0, got {self.layer_moments_images}")


def lr_factor(step: int, total: int, warmup_fraction: float, min_ratio: float) -> float:
    """Linear warm-up over ``warmup_fraction * total`` steps, then cosine to ``min_ratio``."""
    warmup = int(round(warmup_fraction * total))
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def seed_everything(seed: int, deterministic: bool = True) -> None:
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)
    if deterministic:
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


def _rng_state() -> Dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Mapping[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


class _Indexed(Dataset):
    """Yields ``(index, image, target)`` so cached teacher outputs can be looked up."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        image, target = self.dataset[i]
        return i, image, target


def _collate(batch: Sequence[Tuple[int, torch.Tensor, Dict[str, Any]]]):
    indices = [b[0] for b in batch]
    images = torch.stack([torch.as_tensor(b[1]) for b in batch])
    return indices, images, [b[2] for b in batch]


class _StudentStep(nn.Module):
    """Student + KD objective as one module so DDP synchronises the projector too."""

    def __init__(self, student: nn.Module, objective: Optional[DistillationObjective]) -> None:
        super().__init__()
        self.student = student
        self.objective = objective

    def forward(self, images: torch.Tensor, encoded: Mapping[str, torch.Tensor],
                teacher_out: Optional[Mapping[str, torch.Tensor]], weights: LossWeights,
                gt_weight: float) -> Dict[str, torch.Tensor]:
        out = self.student(images)
        sup = detection_loss(out, encoded, weights)
        terms = {"total": gt_weight * sup["total"], "heatmap": sup["heatmap"], "size": sup["size"],
                 "offset": sup["offset"]}
        if self.objective is not None and teacher_out is not None:
            for name, value in self.objective(out, teacher_out).items():
                terms["total"] = terms["total"] + value
                terms[name] = value.detach()
        return terms


class Trainer:
    """Train ``model`` on ``train_dataset`` (items ``(image, {"boxes", "labels", ...})``).

    With ``teacher`` and ``kd`` it distils; ``fit()`` returns the trained (unwrapped) model.
    Outputs in ``out_dir``: ``last.pt`` (resumable), ``model.pt`` (final model + metrics),
    ``history.json``, ``loss.png``.
    """

    def __init__(self, model: nn.Module, train_dataset: Dataset, cfg: TrainConfig, out_dir,
                 teacher: Optional[nn.Module] = None, kd: Optional[KDConfig] = None,
                 val_dataset: Optional[Dataset] = None, resume: bool = False) -> None:
        cfg.validate()
        if kd is not None and teacher is None:
            raise ValueError("a KDConfig was given without a teacher model")
        if len(train_dataset) == 0:
            raise ValueError("the training dataset is empty")
        self.cfg = cfg
        self.kd = kd if teacher is not None else None
        self.model = model
        self.teacher = teacher
        self.train_dataset = train_dataset
        self.val_dataset = val_dataset
        self.out_dir = Path(out_dir)
        self.resume = resume
        self.history = TrainingHistory()
        self.metrics: Dict[str, Any] = {}
        self.teacher_cache: Optional[TeacherCache] = None

    # -- data order -------------------------------------------------------------------------
    def _batches(self, epoch: int, ctx: DistContext, per_rank: int) -> List[List[int]]:
        gen = torch.Generator().manual_seed(self.cfg.seed * 100003 + epoch)
        order = torch.randperm(len(self.train_dataset), generator=gen).tolist()
        # Every rank must run the same number of steps (DDP all-reduces each one): drop the
        # tail that does not fill a batch on every rank.
        order = order[:len(order) // (per_rank * ctx.world_size) * per_rank * ctx.world_size]
        mine = order[ctx.rank::ctx.world_size]
        return [mine[i:i + per_rank] for i in range(0, len(mine) - per_rank + 1, per_rank)]

    def _loader(self, batches: List[List[int]], epoch: int) -> DataLoader:
        # Own generator: creating an iterator draws a worker base seed, which must not move
        # the global RNG (augmentation draws from it; resume replays it exactly).
        gen = torch.Generator().manual_seed(self.cfg.seed * 7919 + epoch)
        return DataLoader(_Indexed(self.train_dataset), batch_sampler=batches, collate_fn=_collate,
                          num_workers=self.cfg.num_workers, persistent_workers=False, generator=gen)

    # -- main loop --------------------------------------------------------------------------
    def fit(self, resume: Optional[bool] = None) -> nn.Module:
        cfg = self.cfg
        resume = self.resume if resume is None else resume
        if cfg.threads > 0:
            torch.set_num_threads(cfg.threads)
        ctx = setup_distributed(cfg.device)
        seed_everything(cfg.seed + ctx.rank, cfg.deterministic)
        if cfg.batch_size % ctx.world_size:
            raise ValueError(f"train.batch_size {cfg.batch_size} is not divisible by {ctx.world_size} processes")
        per_rank = cfg.batch_size // ctx.world_size
        if len(self.train_dataset) // ctx.world_size < per_rank:
            raise ValueError(f"{len(self.train_dataset)} training images cannot fill a batch of "
                             f"{per_rank} per process")
        device = ctx.device
        student = unwrap(self.model).to(device)
        objective = None
        if self.kd is not None:
            self.teacher = unwrap(self.teacher).to(device).eval()
            for p in self.teacher.parameters():
                p.requires_grad_(False)
            objective = DistillationObjective(self.kd, student.config["embed_dim"],
                                              self.teacher.config["embed_dim"]).to(device)
        step_module = _StudentStep(student, objective)
        optimizer = self._optimizer(step_module)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: lr_factor(s, cfg.steps, cfg.warmup_fraction, cfg.min_lr_ratio))
        amp_dtype = self._amp_dtype(device)
        scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None

        step = 0
        last = self.out_dir / "last.pt"
        if resume and last.is_file():
            step = self._restore(last, student, objective, optimizer, scheduler, scaler)
            if ctx.is_main:
                log.info("resumed from %s at step %d", last, step)
        elif resume and ctx.is_main:
            log.warning("resume requested but %s does not exist; starting from scratch", last)

        if ctx.enabled:
            step_module = DistributedDataParallel(
                step_module, device_ids=[device.index] if device.type == "cuda" else None)
        self._prepare_teacher(ctx, device)

        weights = LossWeights(cfg.heatmap_weight, cfg.size_weight, cfg.offset_weight)
        gt_weight = self.kd.gt_weight if self.kd is not None else 1.0
        num_classes = len(student.config["class_names"])
        out_size = student.config["input_size"] // student.stride
        per_epoch = len(self._batches(0, ctx, per_rank))
        bar = tqdm(total=cfg.steps, initial=step, desc="distill" if self.kd else "train", unit="step",
                   disable=not (ctx.is_main and cfg.progress), dynamic_ncols=True)
        step_module.train()
        if self.teacher is not None:
            self.teacher.eval()
        t_window, n_window = time.perf_counter(), 0
        while step < cfg.steps:
            epoch, skip = divmod(step, per_epoch)
            batches = self._batches(epoch, ctx, per_rank)[skip:]
            for indices, images, targets in self._loader(batches, epoch):
                images = images.to(device, non_blocking=True)
                encoded = targets_to_device(encode_targets(targets, num_classes, out_size, student.stride), device)
                teacher_out = self._teacher_outputs(indices, images, device)
                with self._autocast(device, amp_dtype):
                    terms = step_module(images, encoded, teacher_out, weights, gt_weight)
                loss = terms["total"]
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"loss became {float(loss)} at step {step}; lower train.lr "
                                             f"(now {cfg.lr}) or check the labels")
                optimizer.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.scale(loss).backward()
                    scaler.unscale_(optimizer)
                else:
                    loss.backward()
                if cfg.grad_clip > 0:
                    nn.utils.clip_grad_norm_(step_module.parameters(), cfg.grad_clip)
                if scaler is not None:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
                scheduler.step()
                step += 1
                n_window += len(indices) * ctx.world_size
                if step % max(1, cfg.log_every) == 0 or step == cfg.steps:
                    values = {k: float(all_reduce_mean(v.detach().float(), ctx)) for k, v in terms.items()}
                    elapsed = time.perf_counter() - t_window
                    values["lr"] = optimizer.param_groups[0]["lr"]
                    values["img_per_s"] = n_window / max(elapsed, 1e-9)
                    t_window, n_window = time.perf_counter(), 0
                    if ctx.is_main:
                        self.history.log(step, values)
                        bar.set_postfix(loss=f"{values['total']:.3f}", lr=f"{values['lr']:.2e}",
                                        ips=f"{values['img_per_s']:.1f}")
                bar.update(1)
                if cfg.eval_every and step % cfg.eval_every == 0 and step < cfg.steps:
                    self._evaluate(ctx, student, step)
                    step_module.train()
                if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < cfg.steps:
                    self._save(ctx, student, objective, optimizer, scheduler, scaler, step)
                if step >= cfg.steps:
                    break
        bar.close()
        self._save(ctx, student, objective, optimizer, scheduler, scaler, step)
        self._evaluate(ctx, student, step)
        if ctx.is_main:
            meta = {"metrics": self.metrics, "train_config": asdict(cfg), "step": step,
                    "kd_config": asdict(self.kd) if self.kd else None}
            if self.teacher_cache is not None:
                meta["teacher_cache_seconds"] = self.teacher_cache.seconds
            if cfg.token_stats_images:
                stats, count = token_statistics.record_token_statistics(
                    student, token_statistics.dataset_batches(self.train_dataset, cfg.token_stats_images))
                meta[token_statistics.CHECKPOINT_KEY] = token_statistics.to_checkpoint(stats, count)
            if cfg.layer_moments_images:
                moments, count = layer_moments.record_layer_moments(
                    student, token_statistics.dataset_batches(self.train_dataset, cfg.layer_moments_images))
                meta[layer_moments.CHECKPOINT_KEY] = layer_moments.to_checkpoint(moments, count)
            save_checkpoint(student, self.out_dir / "model.pt", **meta)
            self.history.save(self.out_dir, "distill" if self.kd else "train")
        barrier(ctx)
        student.eval()
        return student

    # -- pieces -----------------------------------------------------------------------------
    def _optimizer(self, module: nn.Module) -> torch.optim.Optimizer:
        cfg = self.cfg
        groups: Dict[Tuple[bool, bool], List[nn.Parameter]] = {}
        for name, p in module.named_parameters():
            if not p.requires_grad:
                continue
            no_decay = p.ndim <= 1 or name.endswith("pos_embed")
            in_backbone = ".backbone." in f".{name}"
            groups.setdefault((in_backbone, no_decay), []).append(p)
        param_groups = [{"params": ps, "lr": cfg.lr * (cfg.backbone_lr_scale if bb else 1.0),
                         "weight_decay": 0.0 if nd else cfg.weight_decay}
                        for (bb, nd), ps in sorted(groups.items())]
        return torch.optim.AdamW(param_groups, lr=cfg.lr)

    def _amp_dtype(self, device: torch.device) -> Optional[torch.dtype]:
        mode = self.cfg.amp
        if mode == "off":
            return None
        if device.type != "cuda":
            if mode != "auto":
                log.warning("train.amp=%s ignored: mixed precision runs on CUDA only", mode)
            return None
        if mode == "fp16" or (mode == "auto" and not torch.cuda.is_bf16_supported()):
            return torch.float16
        return torch.bfloat16

    @staticmethod
    def _autocast(device: torch.device, dtype: Optional[torch.dtype]):
        return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()

    def _prepare_teacher(self, ctx: DistContext, device: torch.device) -> None:
        if self.kd is None:
            return
        augmenting = bool(getattr(self.train_dataset, "train", False))
        mode = self.kd.cache_teacher
        if mode == "always" and augmenting:
            raise ValueError("kd.cache_teacher=always needs a non-augmented training set "
                             "(the dataset was built with train=True)")
        if mode == "always" or (mode == "auto" and not augmenting):
            self.teacher_cache = TeacherCache(keep_tokens=self.kd.feature_weight > 0)
            self.teacher_cache.fill(self.teacher, self.train_dataset, device=device,
                                    progress=ctx.is_main and self.cfg.progress)

    @torch.no_grad()
    def _teacher_outputs(self, indices: List[int], images: torch.Tensor, device: torch.device):
        if self.kd is None:
            return None
        if self.teacher_cache is not None:
            return self.teacher_cache.lookup(indices, device)
        out = self.teacher(images)
        return {k: v.float() for k, v in out.items()}

    def _evaluate(self, ctx: DistContext, student: nn.Module, step: int) -> None:
        if self.val_dataset is None or not ctx.is_main:
            return
        from .evaluate import evaluate_model
        self.metrics = evaluate_model(student, self.val_dataset, device=ctx.device,
                                      progress=self.cfg.progress)
        self.history.log_eval(step, self.metrics)
        log.info("step %d: mAP50 %.3f mAP50-95 %.3f", step, self.metrics.get("map50", float("nan")),
                 self.metrics.get("map50_95", float("nan")))

    def _save(self, ctx: DistContext, student: nn.Module, objective: Optional[nn.Module],
              optimizer: torch.optim.Optimizer, scheduler, scaler, step: int) -> None:
        # Only rank 0 writes: its RNG state is restored on every rank at resume. The data
        # order does not depend on it (seed + epoch), only augmentation draws do.
        if ctx.is_main:
            save_checkpoint(student, self.out_dir / "last.pt", step=step, optimizer=optimizer.state_dict(),
                            scheduler=scheduler.state_dict(),
                            scaler=scaler.state_dict() if scaler is not None else None,
                            objective=objective.state_dict() if objective is not None else None,
                            rng=_rng_state(), history=self.history.state_dict(),
                            train_config=asdict(self.cfg))
            self.history.save(self.out_dir, "distill" if self.kd else "train")  # progress of long runs
            if self.cfg.checkpoint_every and step % self.cfg.checkpoint_every == 0 and self.cfg.keep_checkpoints:
                folder = self.out_dir / "checkpoints"
                folder.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(self.out_dir / "last.pt", folder / f"step_{step:07d}.pt")
                for old in sorted(folder.glob("step_*.pt"))[:-self.cfg.keep_checkpoints]:
                    old.unlink()
        barrier(ctx)

    def _restore(self, path: Path, student: nn.Module, objective: Optional[nn.Module],
                 optimizer: torch.optim.Optimizer, scheduler, scaler) -> int:
        doc = load_checkpoint(path)
        student.load_state_dict(doc["model"])
        optimizer.load_state_dict(doc["optimizer"])
        scheduler.load_state_dict(doc["scheduler"])
        if scaler is not None and doc.get("scaler"):
            scaler.load_state_dict(doc["scaler"])
        if objective is not None and doc.get("objective"):
            objective.load_state_dict(doc["objective"])
        if doc.get("rng"):
            _set_rng_state(doc["rng"])
        self.history = TrainingHistory.from_state(doc.get("history"))
        return int(doc["step"])

