"""Image -> network input tensor, and the way back from input pixels to source pixels.

Training reuses :func:`letterbox` and :class:`ImageTransform`, so the geometry a model is
trained with is exactly the geometry the node feeds it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import cv2
import numpy as np

from evit_perception.model_contract import InputSpec


@dataclass(frozen=True)
class ImageTransform:
    """Maps input-tensor pixels to source-image pixels: ``source = (input - pad) / scale``."""

    scale_x: float
    scale_y: float
    pad_x: float
    pad_y: float
    source_width: int
    source_height: int

    def to_source(self, boxes_xyxy: np.ndarray) -> np.ndarray:
        """Boxes ``(N, 4)`` xyxy in input pixels -> float32 source pixels, clipped to the image."""
        boxes = np.asarray(boxes_xyxy, dtype=np.float32).reshape(-1, 4)
        out = np.empty_like(boxes)
        out[:, 0::2] = (boxes[:, 0::2] - self.pad_x) / self.scale_x
        out[:, 1::2] = (boxes[:, 1::2] - self.pad_y) / self.scale_y
        np.clip(out[:, 0::2], 0.0, float(self.source_width), out=out[:, 0::2])
        np.clip(out[:, 1::2], 0.0, float(self.source_height), out=out[:, 1::2])
        return out

    def to_input(self, boxes_xyxy: np.ndarray) -> np.ndarray:
        """Boxes ``(N, 4)`` xyxy in source pixels -> float32 input pixels (not clipped)."""
        boxes = np.asarray(boxes_xyxy, dtype=np.float32).reshape(-1, 4)
        out = np.empty_like(boxes)
        out[:, 0::2] = boxes[:, 0::2] * self.scale_x + self.pad_x
        out[:, 1::2] = boxes[:, 1::2] * self.scale_y + self.pad_y
        return out


def letterbox_transform(source_height: int, source_width: int, height: int,
                        width: int) -> ImageTransform:
    """The transform :func:`letterbox` applies to a ``source_height x source_width`` image,
    computed without the image (training maps dataset boxes with it)."""
    ratio = min(height / source_height, width / source_width)
    new_w = max(1, min(width, int(round(source_width * ratio))))
    new_h = max(1, min(height, int(round(source_height * ratio))))
    left, top = (width - new_w) // 2, (height - new_h) // 2
    return ImageTransform(new_w / source_width, new_h / source_height, float(left), float(top),
                          int(source_width), int(source_height))


def letterbox(bgr: np.ndarray, height: int, width: int, pad_value: int = 114,
              out: Optional[np.ndarray] = None) -> Tuple[np.ndarray, ImageTransform]:
    """Resize keeping the aspect ratio and centre the result on a ``height x width`` canvas.

    The content is ``round(w * r) x round(h * r)`` with ``r = min(height / h, width / w)``,
    placed at ``((width - w') // 2, (height - h') // 2)``; the scale per axis is the exact
    ratio of content to source size, so :meth:`ImageTransform.to_source` lands on the source
    pixels the network saw. ``out`` (``height x width x 3`` uint8) is reused as the canvas
    when given.
    """
    src_h, src_w = _check_image(bgr)
    transform = letterbox_transform(src_h, src_w, height, width)
    new_w = int(round(src_w * transform.scale_x))
    new_h = int(round(src_h * transform.scale_y))
    left, top = int(transform.pad_x), int(transform.pad_y)
    shape = (height, width) + bgr.shape[2:]
    canvas = out if out is not None and out.shape == shape and out.dtype == bgr.dtype else None
    if canvas is None:
        canvas = np.empty(shape, dtype=bgr.dtype)
    # Pad only the borders; the middle is overwritten by the resized image.
    canvas[:top] = pad_value
    canvas[top + new_h:] = pad_value
    canvas[top:top + new_h, :left] = pad_value
    canvas[top:top + new_h, left + new_w:] = pad_value
    region = canvas[top:top + new_h, left:left + new_w]
    if (new_w, new_h) == (src_w, src_h):
        region[...] = bgr
    else:
        region[...] = cv2.resize(bgr, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    return canvas, transform


def stretch(bgr: np.ndarray, height: int, width: int) -> Tuple[np.ndarray, ImageTransform]:
    """Resize to ``height x width`` ignoring the aspect ratio."""
    src_h, src_w = _check_image(bgr)
    resized = bgr if (src_h, src_w) == (height, width) else cv2.resize(
        bgr, (width, height), interpolation=cv2.INTER_LINEAR)
    return resized, ImageTransform(width / src_w, height / src_h, 0.0, 0.0, src_w, src_h)


class Preprocessor:
    """``bgr -> (tensor [1, ...], ImageTransform)`` as the model contract's input spec says.

    The tensor has the contract's layout (NCHW/NHWC), channel order, dtype and
    normalisation (``(pixel * scale - mean) / std``; ``uint8`` inputs get raw pixels, the
    graph normalises). The letterbox canvas is reused between frames; each call returns a
    fresh tensor, so callers may keep it.
    """

    def __init__(self, input_spec: InputSpec) -> None:
        self.spec = input_spec
        std = np.asarray(input_spec.std, dtype=np.float32)
        # (p * scale - mean) / std == p * gain - offset, one multiply and one subtract.
        self._gain = (np.float32(input_spec.scale) / std).astype(np.float32)
        self._offset = (np.asarray(input_spec.mean, dtype=np.float32) / std).astype(np.float32)
        # Tensor channel c comes from BGR canvas channel _source[c].
        self._source = (2, 1, 0) if input_spec.channel_order == "RGB" else (0, 1, 2)
        self._canvas: Optional[np.ndarray] = None

    def resize(self, bgr: np.ndarray) -> Tuple[np.ndarray, ImageTransform]:
        """Only the geometry: the resized/letterboxed uint8 BGR image and its transform."""
        spec = self.spec
        if spec.resize == "stretch":
            return stretch(bgr, spec.height, spec.width)
        self._canvas, transform = letterbox(bgr, spec.height, spec.width, spec.pad_value,
                                            out=self._canvas)
        return self._canvas, transform

    def __call__(self, bgr: np.ndarray) -> Tuple[np.ndarray, ImageTransform]:
        resized, transform = self.resize(bgr)
        spec = self.spec
        if spec.layout == "NCHW":
            # Plane by plane: contiguous 2-D passes are several times faster than one
            # broadcast over an interleaved, channel-reversed HxWx3 view.
            planes = cv2.split(resized)
            if spec.dtype == "uint8":
                tensor = np.stack([planes[s] for s in self._source])[None]
            else:
                tensor = np.empty((1, 3, spec.height, spec.width), np.float32)
                for c, s in enumerate(self._source):
                    np.multiply(planes[s], self._gain[c], out=tensor[0, c], casting="unsafe")
                    np.subtract(tensor[0, c], self._offset[c], out=tensor[0, c])
        else:
            pixels = cv2.cvtColor(resized, cv2.COLOR_BGR2RGB) if self._source[0] == 2 \
                else np.array(resized, copy=True)  # the canvas is reused by the next frame
            if spec.dtype == "uint8":
                tensor = pixels[None]
            else:
                tensor = np.multiply(pixels, self._gain, dtype=np.float32)
                np.subtract(tensor, self._offset, out=tensor)
                tensor = tensor[None]
        if spec.dtype == "float16":
            tensor = tensor.astype(np.float16)
        return tensor, transform


def _check_image(bgr: np.ndarray) -> Tuple[int, int]:
    if not isinstance(bgr, np.ndarray) or bgr.ndim != 3 or bgr.shape[2] != 3:
        shape = getattr(bgr, "shape", type(bgr).__name__)
        raise ValueError(f"expected an HxWx3 BGR image, got {shape}")
    if bgr.shape[0] == 0 or bgr.shape[1] == 0:
        raise ValueError(f"image is {bgr.shape[1]}x{bgr.shape[0]}; nothing to resize")
    return int(bgr.shape[0]), int(bgr.shape[1])
