"""The whole frame pipeline without ROS: BGR image -> detections in source pixels."""
from __future__ import annotations

import time
from typing import Dict, Optional, Sequence

import numpy as np

from evit_perception.backends.base import InferenceBackend
from evit_perception.model_contract import ModelContract, class_index
from evit_perception.postprocess import Detections, Postprocessor
from evit_perception.preprocess import Preprocessor


class Detector:
    """preprocess -> backend -> postprocess, with per-stage timings in ``last_timing``.

    ``classes`` is a list of class NAMES to keep (``None``: all); an unknown name raises
    :class:`~evit_perception.model_contract.ModelContractError` listing the model's classes.
    Thresholds, ``max_detections`` and ``classes`` may be changed between frames. One
    Detector serves one thread at a time (it reuses its letterbox canvas); the ROS node calls
    it from its single worker thread.
    """

    def __init__(self, backend: InferenceBackend, score_threshold: float = 0.3,
                 iou_threshold: float = 0.5, max_detections: int = 100,
                 classes: Optional[Sequence[str]] = None) -> None:
        self.backend = backend
        self.preprocessor = Preprocessor(backend.contract.input)
        self.postprocessor = Postprocessor(backend.contract, score_threshold, iou_threshold,
                                           max_detections)
        self._classes: Optional[Sequence[str]] = None
        self.classes = classes
        #: Milliseconds spent in each stage of the latest :meth:`detect` call.
        self.last_timing: Dict[str, float] = {
            "preprocess_ms": 0.0, "inference_ms": 0.0, "postprocess_ms": 0.0}

    @property
    def contract(self) -> ModelContract:
        return self.backend.contract

    @property
    def class_names(self) -> Sequence[str]:
        return self.backend.contract.class_names

    @property
    def score_threshold(self) -> float:
        return self.postprocessor.score_threshold

    @score_threshold.setter
    def score_threshold(self, value: float) -> None:
        self.postprocessor.score_threshold = float(value)

    @property
    def iou_threshold(self) -> float:
        return self.postprocessor.iou_threshold

    @iou_threshold.setter
    def iou_threshold(self, value: float) -> None:
        self.postprocessor.iou_threshold = float(value)

    @property
    def max_detections(self) -> int:
        return self.postprocessor.max_detections

    @max_detections.setter
    def max_detections(self, value: int) -> None:
        self.postprocessor.max_detections = int(value)

    @property
    def classes(self) -> Optional[Sequence[str]]:
        """Class names kept, or ``None`` for all."""
        return self._classes

    @classes.setter
    def classes(self, names: Optional[Sequence[str]]) -> None:
        if names is None or len(names) == 0:
            self._classes, self.postprocessor.class_ids = None, None
            return
        names = [str(n) for n in names]
        ids = class_index(self.backend.contract, names)  # raises naming the unknown ones
        self._classes, self.postprocessor.class_ids = names, ids

    def detect(self, bgr: np.ndarray) -> Detections:
        """Detect objects in one HxWx3 uint8 BGR image; boxes are in its pixels."""
        if not isinstance(bgr, np.ndarray) or bgr.ndim != 3 or bgr.shape[2] != 3 \
                or bgr.dtype != np.uint8:
            desc = f"{bgr.shape} {bgr.dtype}" if isinstance(bgr, np.ndarray) else type(bgr).__name__
            raise ValueError(f"Detector.detect needs an HxWx3 uint8 BGR image, got {desc}")
        t0 = time.perf_counter()
        tensor, transform = self.preprocessor(bgr)
        t1 = time.perf_counter()
        raw = self.backend.infer(tensor)
        t2 = time.perf_counter()
        detections = self.postprocessor(raw, transform)
        t3 = time.perf_counter()
        self.last_timing = {"preprocess_ms": (t1 - t0) * 1e3, "inference_ms": (t2 - t1) * 1e3,
                            "postprocess_ms": (t3 - t2) * 1e3}
        return detections
