"""``evit compress CONFIG``: teacher -> KD student -> prune -> KD fine-tune -> INT8/FP16 -> report.

Every stage writes into ``<out_dir>/<stage>/`` and is skipped when its outputs already exist
and were made from the same configuration (a fingerprint of the config sections the stage
depends on is stored beside them; ``force=True`` or ``--force`` reruns), so an interrupted run
resumes at the first missing stage (and a training stage cut off mid-run from its ``last.pt``),
an edited config redoes the stages it affects, and a single stage can be redone by deleting
its folder. Training stages reuse the
``evit train``/``evit distill`` machinery (:func:`evit_training.engine.run.run_training`)
with a :class:`~evit_training.config.RunConfig` built from this config's sections.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import shutil
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from evit_training.config import (ConfigError, DataSection, ExportSection, ModelSection, RunConfig,
                                  config_to_dict, from_dict, read_yaml)
from evit_training.distill.objective import KDConfig
from evit_training.engine.trainer import TrainConfig

log = logging.getLogger(__name__)

STAGES = ("teacher", "student", "prune", "finetune", "quantize", "report")
#: Config sections each stage's outputs depend on (its own and every earlier stage's).
_STAGE_SECTIONS = {
    "teacher": ("data", "export", "teacher"),
    "student": ("data", "export", "teacher", "student"),
    "prune": ("data", "export", "teacher", "student", "prune"),
    "finetune": ("data", "export", "teacher", "student", "prune"),
    "quantize": ("data", "export", "teacher", "student", "prune", "quantize"),
}
FINGERPRINT_FILE = "config.fingerprint"
#: Written when a training stage starts: an interrupted stage resumes from its last.pt only if
#: it was started from the same configuration.
STARTED_FILE = "config.fingerprint.started"
#: Train settings that change how a run goes, not what it produces: editing them (e.g. the CPU
#: threads of a resumed run) keeps the cached stages. token_stats_images and
#: layer_moments_images only change the data summaries stored beside the weights, never the weights.
_RUNTIME_KEYS = ("threads", "log_every", "checkpoint_every", "keep_checkpoints", "eval_every",
                 "progress", "num_workers", "token_stats_images",
                 "layer_moments_images")


@dataclass
class TrainStage:
    """A training stage: which network, how long, and (for students) the KD weights."""

    model: ModelSection = field(default_factory=ModelSection)
    train: TrainConfig = field(default_factory=TrainConfig)
    kd: Optional[KDConfig] = None


@dataclass
class PruneSection:
    """Structured pruning of the KD student (see :func:`evit_training.prune.prune_vit`)."""

    target_macs_ratio: Optional[float] = 0.5
    target_params_ratio: Optional[float] = None
    importance: str = "magnitude"
    max_steps: int = 20
    max_pruning_ratio: float = 0.9
    max_head_ratio: float = 0.5
    prune_heads: bool = True
    round_to: int = 8
    taylor_batches: int = 2
    #: KD fine-tuning of the pruned student (its ``model`` is the pruned checkpoint).
    finetune: TrainStage = field(default_factory=TrainStage)

    def validate(self) -> None:
        from evit_training.prune.vit_pruning import IMPORTANCE_NAMES

        if (self.target_macs_ratio is None) == (self.target_params_ratio is None):
            raise ValueError("set exactly one of prune.target_macs_ratio / prune.target_params_ratio "
                             "(null the other)")
        if self.importance not in IMPORTANCE_NAMES:
            raise ValueError(f"prune.importance {self.importance!r} not in {IMPORTANCE_NAMES}")


@dataclass
class QuantizeSection:
    """INT8 static quantization (ONNX Runtime QDQ) and the FP16 copy for GPUs."""

    calibration: str = "minmax"
    percentile: float = 99.99
    calibration_images: int = 64
    per_channel: bool = True
    target: str = "cpu"
    sensitivity: bool = True
    #: Largest accepted relative mAP@0.5 drop of INT8 against the FP32 pruned model.
    max_map50_drop: float = 0.02
    max_excluded_fraction: float = 0.5
    #: Validation images used to score INT8 candidates during the sensitivity search.
    sensitivity_val_images: Optional[int] = 64
    fp16: bool = True

    def validate(self) -> None:
        from evit_training.quantize.int8 import Int8Settings

        Int8Settings(self.calibration, self.percentile, self.per_channel, self.target)
        if self.calibration_images < 1:
            raise ValueError(f"quantize.calibration_images must be >= 1, got {self.calibration_images}")


@dataclass
class ReportSection:
    """How stages are measured (ONNX Runtime CPU latency, mAP on the validation split)."""

    threads: int = 2
    warmup: int = 10
    runs: int = 50
    max_val_images: Optional[int] = None
    reference: str = "teacher"


@dataclass
class CompressConfig:
    """One ``evit compress`` run (YAML: training/configs/compress_*.yaml)."""

    name: str = "compress"
    out_dir: str = "runs/compress"
    stages: List[str] = field(default_factory=lambda: list(STAGES))
    data: DataSection = field(default_factory=DataSection)
    teacher: TrainStage = field(default_factory=TrainStage)
    student: TrainStage = field(default_factory=TrainStage)
    prune: PruneSection = field(default_factory=PruneSection)
    quantize: QuantizeSection = field(default_factory=QuantizeSection)
    export: ExportSection = field(default_factory=ExportSection)
    report: ReportSection = field(default_factory=ReportSection)

    def validate(self) -> None:
        unknown = [s for s in self.stages if s not in STAGES]
        if unknown:
            raise ValueError(f"unknown stage(s) {unknown}; stages are {list(STAGES)}")


def load_compress_config(path: str) -> CompressConfig:
    """A :class:`CompressConfig` from YAML; unknown keys are errors naming key and place."""
    return from_dict(CompressConfig, read_yaml(path), str(path))


class Pipeline:
    """The compress run; each ``stage_*`` method is callable alone and returns its outputs."""

    def __init__(self, cfg: CompressConfig, force: bool = False, progress: bool = True) -> None:
        self.cfg = cfg
        self.out = Path(cfg.out_dir)
        self.force = force
        self.progress = progress
        self.data = copy.deepcopy(cfg.data)
        if not self.data.train and not self.data.synthetic.out_dir:
            self.data.synthetic.out_dir = str(self.out / "data")
        self.timings: Dict[str, float] = {}

    # -- paths ------------------------------------------------------------------------------
    def stage_dir(self, stage: str) -> Path:
        return self.out / stage

    def checkpoint(self, stage: str) -> Path:
        return self.stage_dir(stage) / "model.pt"

    def onnx(self, stage: str) -> Path:
        return self.stage_dir(stage) / "model.onnx"

    def splits(self) -> Dict[str, Dict[str, str]]:
        """``{"train"|"val": {"annotations", "images"}}`` of the dataset in use."""
        if self.data.train:
            out = {}
            for split, path in (("train", self.data.train), ("val", self.data.val)):
                if not path:
                    continue
                p = Path(path)
                ann = p / "annotations.json" if p.is_dir() else p
                if ann.suffix != ".json":
                    raise ConfigError(f"data.{split}: compress needs COCO data (a .json file or a folder "
                                      f"with annotations.json), got {path}")
                out[split] = {"annotations": str(ann), "images": str(ann.parent / "images")}
            return out
        root = Path(self.data.synthetic.out_dir)
        return {s: {"annotations": str(root / s / "annotations.json"), "images": str(root / s / "images")}
                for s in ("train", "val")}

    # -- stages -----------------------------------------------------------------------------
    def ensure_data(self) -> Dict[str, Dict[str, str]]:
        """Generate the synthetic dataset if missing or made with other settings; fail clearly
        on an empty dataset."""
        splits = self.splits()
        if not self.data.train:
            syn = self.data.synthetic
            stamp = Path(syn.out_dir) / FINGERPRINT_FILE
            wanted = _fingerprint(dataclasses.asdict(syn))
            exists = Path(splits["train"]["annotations"]).is_file()
            if exists and stamp.is_file() and stamp.read_text() != wanted:
                log.info("synthetic data settings changed: regenerating %s", syn.out_dir)
                shutil.rmtree(syn.out_dir)
                exists = False
            if not exists:
                from evit_training.data.synthetic import generate_dataset

                generate_dataset(syn.out_dir, syn.num_images, syn.image_size, syn.seed, syn.val_fraction,
                                 progress=self.progress)
                stamp.write_text(wanted)
        for split, paths in splits.items():
            ann = Path(paths["annotations"])
            if not ann.is_file():
                raise ConfigError(f"{split} annotations not found: {ann}")
            if not json.loads(ann.read_text()).get("images"):
                raise ConfigError(f"{split} dataset {ann} is empty (no images)")
        return splits

    def _run_config(self, stage: str, section: TrainStage, teacher: Optional[Path]) -> RunConfig:
        kd = copy.deepcopy(section.kd) if teacher is not None else None
        if teacher is not None:
            kd = kd or KDConfig()
            kd.teacher = str(teacher)
        train = copy.deepcopy(section.train)
        train.progress = train.progress and self.progress
        export = copy.deepcopy(self.cfg.export)
        export.onnx = str(self.onnx(stage))
        return RunConfig(name=f"{self.cfg.name}-{stage}", out_dir=str(self.stage_dir(stage)),
                         model=copy.deepcopy(section.model), data=copy.deepcopy(self.data), train=train,
                         kd=kd, export=export)

    def _train(self, stage: str, section: TrainStage, teacher: Optional[Path]) -> Dict[str, Any]:
        if self._cached(stage, self.checkpoint(stage), self.onnx(stage)):
            return {"checkpoint": str(self.checkpoint(stage)), "onnx": str(self.onnx(stage)), "cached": True}
        if teacher is not None and not teacher.is_file():
            raise ConfigError(f"stage {stage!r} needs the checkpoint {teacher}, which does not exist; "
                              f"run the earlier stages first")
        from evit_training.engine.run import run_training

        self.ensure_data()
        stage_dir = self.stage_dir(stage)
        started = stage_dir / STARTED_FILE
        resume = (not self.force and (stage_dir / "last.pt").is_file() and started.is_file()
                  and started.read_text() == self.fingerprint(stage))
        if resume:
            print(f"   {stage}: resuming the interrupted run from {stage_dir / 'last.pt'}", flush=True)
        stage_dir.mkdir(parents=True, exist_ok=True)
        started.write_text(self.fingerprint(stage))
        return run_training(self._run_config(stage, section, teacher), distill=teacher is not None,
                            resume=resume)

    def stage_teacher(self) -> Dict[str, Any]:
        """Train the teacher on the labels."""
        return self._train("teacher", self.cfg.teacher, None)

    def stage_student(self) -> Dict[str, Any]:
        """Distil the student from the teacher (cached teacher outputs on CPU)."""
        return self._train("student", self.cfg.student, self.checkpoint("teacher"))

    def stage_prune(self) -> Dict[str, Any]:
        """Prune the KD student's heads and MLP width to the MACs/params target."""
        out_ckpt = self.checkpoint("prune")
        if self._cached("prune", out_ckpt):
            return json.loads((self.stage_dir("prune") / "prune.json").read_text())
        source = self.checkpoint("student")
        if not source.is_file():
            raise ConfigError(f"prune needs the student checkpoint {source}; run the student stage first")
        import torch

        from evit_training.models.checkpoint import load_model, save_checkpoint
        from evit_training.prune import prune_vit

        p = self.cfg.prune
        model = load_model(source)
        size = int(model.config["input_size"])
        loss_fn = self._taylor_loss(model, p.taylor_batches) if p.importance == "taylor" else None
        result = prune_vit(model, torch.zeros(1, 3, size, size), target_macs_ratio=p.target_macs_ratio,
                           target_params_ratio=p.target_params_ratio, importance=p.importance,
                           max_steps=p.max_steps, max_pruning_ratio=p.max_pruning_ratio,
                           max_head_ratio=p.max_head_ratio, prune_heads=p.prune_heads,
                           round_to=p.round_to or None, loss_fn=loss_fn, progress=self.progress)
        save_checkpoint(model, out_ckpt, stage="prune")
        doc = {"checkpoint": str(out_ckpt), "blocks": result.arch, "params_before": result.params_before,
               "params_after": result.params_after, "macs_before": result.macs_before,
               "macs_after": result.macs_after, "macs_ratio": round(result.macs_ratio, 4),
               "params_ratio": round(result.params_ratio, 4), "steps": result.steps,
               "history": result.history}
        (self.stage_dir("prune") / "prune.json").write_text(json.dumps(doc, indent=1))
        return doc

    def _taylor_loss(self, model: Any, batches: int):
        import torch

        from evit_training.data.datasets import load_detection_dataset
        from evit_training.engine.losses import detection_loss, encode_targets

        splits = self.ensure_data()
        size, stride = int(model.config["input_size"]), int(model.config["output_stride"])
        dataset = load_detection_dataset(splits["train"]["annotations"], input_size=size)
        items = [dataset[i] for i in range(min(len(dataset), 8 * max(batches, 1)))]
        images = torch.stack([im for im, _ in items])
        encoded = encode_targets([t for _, t in items], len(model.config["class_names"]), size // stride, stride)

        def loss_fn(net: Any) -> Any:
            return detection_loss(net(images), encoded)["total"]
        return loss_fn

    def stage_finetune(self) -> Dict[str, Any]:
        """KD fine-tune of the pruned student (starts from the pruned checkpoint)."""
        pruned = self.checkpoint("prune")
        if not pruned.is_file():
            raise ConfigError(f"finetune needs the pruned checkpoint {pruned}; run the prune stage first")
        section = copy.deepcopy(self.cfg.prune.finetune)
        section.model = ModelSection(init=str(pruned))
        return self._train("finetune", section, self.checkpoint("teacher"))

    def stage_quantize(self) -> Dict[str, Any]:
        """INT8 (sensitivity-guided, accuracy measured) and FP16 copies of the fine-tuned model."""
        q = self.cfg.quantize
        source = self.onnx("finetune")
        int8_path = self.stage_dir("quantize") / "model_int8.onnx"
        fp16_path = self.stage_dir("quantize") / "model_fp16.onnx"
        summary_path = self.stage_dir("quantize") / "quantize.json"
        wanted = [int8_path, summary_path] + ([fp16_path] if q.fp16 else [])
        if self._cached("quantize", *wanted):
            return json.loads(summary_path.read_text())
        if not source.is_file():
            raise ConfigError(f"quantize needs {source}; run the finetune stage first")
        from evit_training.quantize.calibration import (TensorListReader, list_images, preprocess_images,
                                                        read_contract)
        from evit_training.quantize.int8 import Int8Settings, quantize_int8
        from evit_training.quantize.sensitivity import quantize_within_budget

        splits = self.ensure_data()
        contract = read_contract(str(source))
        tensors = preprocess_images(list_images(splits["train"]["images"], q.calibration_images), contract,
                                    progress=self.progress)
        reader = TensorListReader(contract.input.name, tensors)
        settings = Int8Settings(q.calibration, q.percentile, q.per_channel, q.target)
        self.stage_dir("quantize").mkdir(parents=True, exist_ok=True)
        summary: Dict[str, Any] = {"int8": str(int8_path), "calibration_images": len(tensors),
                                   "settings": dataclasses.asdict(settings)}
        summary["settings"]["op_types"] = list(settings.op_types)
        if q.sensitivity and "val" in splits:
            from evit_training.report.stage_metrics import onnx_map

            val = splits["val"]

            def score(path: str) -> float:
                return onnx_map(path, val["annotations"], val["images"], self.cfg.report.threads,
                                q.sensitivity_val_images, progress=False)["map50"]

            report = quantize_within_budget(str(source), str(int8_path), reader, settings, score_fn=score,
                                            max_drop=q.max_map50_drop, relative=True,
                                            max_excluded_fraction=q.max_excluded_fraction,
                                            progress=self.progress)
            summary["sensitivity"] = report.to_dict()
        else:
            quantize_int8(str(source), str(int8_path), reader, settings)
        if q.fp16:
            from evit_training.quantize.fp16 import convert_fp16

            convert_fp16(str(source), str(fp16_path))
            summary["fp16"] = str(fp16_path)
        summary_path.write_text(json.dumps(summary, indent=1))
        return summary

    def report_stages(self) -> List[tuple]:
        """(report name, ONNX path) of every stage that has an ONNX file."""
        candidates = [("teacher", self.onnx("teacher")), ("kd_student", self.onnx("student")),
                      ("pruned", self.onnx("finetune")),
                      ("int8", self.stage_dir("quantize") / "model_int8.onnx")]
        return [(name, path) for name, path in candidates if path.is_file()]

    def stage_report(self) -> Dict[str, Any]:
        """Measure every stage's ONNX file and write report.json/.md/.png."""
        from evit_training.report.report import write_report
        from evit_training.report.stage_metrics import measure_stage

        splits = self.ensure_data()
        r = self.cfg.report
        val = splits.get("val")
        rows = []
        for name, path in self.report_stages():
            rows.append(measure_stage(name, str(path), val and val["annotations"], val and val["images"],
                                      threads=r.threads, warmup=r.warmup, runs=r.runs,
                                      max_images=r.max_val_images, progress=self.progress))
        if not rows:
            raise ConfigError(f"nothing to report under {self.out}: no stage has produced an ONNX file yet")
        prune_json = self.stage_dir("prune") / "prune.json"
        info: Dict[str, Any] = {"config": self.cfg.name, "out_dir": str(self.out),
                                "stage_seconds": self.timings,
                                "compress_config": config_to_dict(self.cfg)}
        if prune_json.is_file():
            info["prune"] = {k: v for k, v in json.loads(prune_json.read_text()).items() if k != "history"}
        quant_json = self.stage_dir("quantize") / "quantize.json"
        if quant_json.is_file():
            info["quantize"] = json.loads(quant_json.read_text())
        return write_report(str(self.out), rows, reference=r.reference, info=info, show=True)

    # -- driver -----------------------------------------------------------------------------
    def fingerprint(self, stage: str) -> str:
        """Hash of the config sections ``stage``'s outputs depend on."""
        doc = {k: dataclasses.asdict(self.cfg)[k] for k in _STAGE_SECTIONS[stage]}
        for section in doc.values():
            for train in _train_sections(section):
                for key in _RUNTIME_KEYS:
                    train.pop(key, None)
        return _fingerprint(doc)

    def _cached(self, stage: str, *outputs: Path) -> bool:
        if self.force or not outputs or not all(Path(o).is_file() for o in outputs):
            return False
        stamp = self.stage_dir(stage) / FINGERPRINT_FILE
        if stamp.is_file() and stamp.read_text() != self.fingerprint(stage):
            log.info("stage %s: the config changed since its outputs were made; redoing it", stage)
            print(f"   {stage}: config changed since the cached outputs were made, redoing", flush=True)
            return False
        log.info("stage %s: outputs exist, skipped (use --force to redo)", stage)
        return True

    def run(self) -> Dict[str, Any]:
        """All configured stages in order; returns the report."""
        self.ensure_data()
        report: Dict[str, Any] = {}
        for stage in STAGES:
            if stage not in self.cfg.stages:
                continue
            print(f"== evit compress [{self.cfg.name}]: {stage}", flush=True)
            start = time.perf_counter()
            result = getattr(self, f"stage_{stage}")()
            self.timings[stage] = round(time.perf_counter() - start, 1)
            if stage in _STAGE_SECTIONS and self.stage_dir(stage).is_dir():
                (self.stage_dir(stage) / FINGERPRINT_FILE).write_text(self.fingerprint(stage))
            if stage == "report":
                report = result
        return report


def _train_sections(doc: Any) -> List[Dict[str, Any]]:
    """Every ``train`` mapping nested in a config section (stage trainers, the fine-tune)."""
    if not isinstance(doc, dict):
        return []
    found: List[Dict[str, Any]] = []
    for key, value in doc.items():
        if key == "train" and isinstance(value, dict):
            found.append(value)
        else:
            found.extend(_train_sections(value))
    return found


def _fingerprint(doc: Any) -> str:
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:16]


def compress(config: Any, force: bool = False, progress: bool = True) -> Dict[str, Any]:
    """Run the compression pipeline for a config path or :class:`CompressConfig`; returns the report."""
    cfg = config if isinstance(config, CompressConfig) else load_compress_config(str(config))
    return Pipeline(cfg, force=force, progress=progress).run()
