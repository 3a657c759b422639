"""Calibration images -> model input tensors, the way the node preprocesses them.

The tensors come from ``evit_perception.preprocess.Preprocessor`` driven by the model's own
contract, so INT8 ranges are measured on exactly what the deployed model will see.
"""
from __future__ import annotations

import glob
import os
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Union

import numpy as np
from onnxruntime.quantization import CalibrationDataReader

from evit_perception.model_contract import ModelContract

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


def read_contract(onnx_path: str) -> ModelContract:
    """The model contract embedded in an ONNX file."""
    import onnx

    from evit_perception.model_contract import contract_from_metadata

    model = onnx.load(onnx_path, load_external_data=False)
    return contract_from_metadata({p.key: p.value for p in model.metadata_props}, onnx_path)


def list_images(image_dir: str, limit: Optional[int] = None) -> List[str]:
    """Image files under ``image_dir`` (recursive, sorted); raises if there are none."""
    if not os.path.isdir(image_dir):
        raise FileNotFoundError(f"calibration image folder not found: {image_dir}")
    paths = sorted(p for p in glob.glob(os.path.join(image_dir, "**", "*"), recursive=True)
                   if p.lower().endswith(IMAGE_SUFFIXES))
    if not paths:
        raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {image_dir}")
    if limit is not None and limit > 0:
        # Spread the picks over the folder instead of taking the first scenes only.
        step = max(len(paths) // limit, 1)
        paths = paths[::step][:limit]
    return paths


def preprocess_images(images: Iterable[Union[str, np.ndarray]], contract: ModelContract,
                      progress: bool = True) -> List[np.ndarray]:
    """Input tensors ``[1, ...]`` for BGR images (arrays or file paths)."""
    import cv2
    from tqdm.auto import tqdm

    from evit_perception.preprocess import Preprocessor

    preprocess = Preprocessor(contract.input)
    tensors = []
    items = list(images)
    for item in tqdm(items, desc="calibration images", unit="img", disable=not progress):
        bgr = cv2.imread(item, cv2.IMREAD_COLOR) if isinstance(item, str) else item
        if bgr is None:
            raise ValueError(f"cannot read calibration image {item}")
        tensors.append(preprocess(bgr)[0])
    if not tensors:
        raise ValueError("no calibration images given")
    return tensors


class TensorListReader(CalibrationDataReader):
    """ONNX Runtime calibration reader over preprocessed tensors; :meth:`rewind` re-reads."""

    def __init__(self, input_name: str, tensors: Sequence[np.ndarray]) -> None:
        if not tensors:
            raise ValueError("calibration needs at least one input tensor")
        self.input_name = input_name
        self.tensors = list(tensors)
        self._iter: Iterator[np.ndarray] = iter(self.tensors)

    def get_next(self) -> Optional[Dict[str, np.ndarray]]:
        tensor = next(self._iter, None)
        return None if tensor is None else {self.input_name: tensor}

    def rewind(self) -> None:
        self._iter = iter(self.tensors)

    def __len__(self) -> int:
        return len(self.tensors)
