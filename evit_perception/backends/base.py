"""The one small interface every inference engine implements."""
from __future__ import annotations

import abc
from typing import List, Tuple

import numpy as np

from evit_perception.model_contract import ModelContract, ModelContractError


class BackendError(RuntimeError):
    """A model cannot be opened or run: missing or corrupt file, wrong shapes, no runtime."""


class BackendContractError(BackendError, ModelContractError):
    """The model file opens but does not carry a valid contract or does not honour it.

    Both a :class:`BackendError` and a :class:`ModelContractError`, so callers may catch
    either.
    """


class InferenceBackend(abc.ABC):
    """An opened model: takes the contract's input tensor, returns the contract's output.

    Attributes set by implementations: ``contract`` (:class:`ModelContract`), ``name``
    (``"onnxruntime"``, ``"tensorrt"``), ``providers`` (what actually runs it, e.g.
    ``["CUDAExecutionProvider", "CPUExecutionProvider"]`` or ``["TensorRT 10.3.0 on Orin"]``),
    ``model_path``.
    """

    contract: ModelContract
    name: str = "backend"
    providers: List[str]
    model_path: str

    @property
    def input_shape(self) -> Tuple[int, ...]:
        """The input tensor shape the contract implies (batch of one)."""
        spec = self.contract.input
        if spec.layout == "NCHW":
            return (1, 3, spec.height, spec.width)
        return (1, spec.height, spec.width, 3)

    @property
    def device(self) -> str:
        """A short human description of where inference runs."""
        return ", ".join(self.providers)

    @abc.abstractmethod
    def infer(self, tensor: np.ndarray) -> np.ndarray:
        """Run the network on one input tensor; returns the contract's output array."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the runtime's resources; the backend is unusable afterwards."""

    def check_input(self, tensor: np.ndarray) -> None:
        """Raise :class:`BackendError` if ``tensor`` is not the shape the model takes."""
        if tuple(tensor.shape) != self.input_shape:
            raise BackendError(
                f"{self.model_path}: input tensor shape {tuple(tensor.shape)} does not match "
                f"the model's {self.input_shape} ({self.contract.input.layout})")

    def __enter__(self) -> "InferenceBackend":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.model_path!r}, {self.device})"
