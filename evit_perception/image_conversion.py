"""ROS image messages -> contiguous HxWx3 uint8 BGR numpy arrays.

Works on any object carrying the sensor_msgs/Image fields (``height``, ``width``,
``encoding``, ``is_bigendian``, ``step``, ``data``) or the sensor_msgs/CompressedImage fields
(``format``, ``data``); ``data`` may be ``bytes``, ``array.array``, a list or a numpy array.

Where cv_bridge is importable (a real ROS install) it unpacks the raw buffer
(``passthrough``) for the layouts it handles correctly (row padding a whole number of pixels,
native byte order); the colour conversion below runs in both cases, so both paths give
identical pixels.

16-bit encodings (``mono16``, ``rgb16``, ``bayer_rggb16``, ...) keep their top 8 bits:
``v8 = v16 >> 8`` (floor of ``v16 / 256``, what OpenCV does to a 16-bit PNG read as colour),
the same fixed mapping every frame, so the network never sees brightness jump because a
frame's histogram changed.
"""
from __future__ import annotations

import sys
from typing import Any, Dict, Optional, Tuple

import cv2
import numpy as np

try:  # a real ROS 2 install; not on PyPI, so usually absent in the dev venv
    from cv_bridge import CvBridge as _CvBridge  # type: ignore
except Exception:  # pragma: no cover - depends on the install
    _CvBridge = None


class ImageConversionError(ValueError):
    """An image message that cannot be turned into a BGR array (says which field is wrong)."""


# encoding -> (channels, bytes per channel, cv2 conversion to BGR or None for a plain copy)
_RAW: Dict[str, Tuple[int, int, Optional[int]]] = {
    "bgr8": (3, 1, None),
    "rgb8": (3, 1, cv2.COLOR_RGB2BGR),
    "bgra8": (4, 1, cv2.COLOR_BGRA2BGR),
    "rgba8": (4, 1, cv2.COLOR_RGBA2BGR),
    "mono8": (1, 1, cv2.COLOR_GRAY2BGR),
    "8UC1": (1, 1, cv2.COLOR_GRAY2BGR),
    "8UC3": (3, 1, None),
    "8UC4": (4, 1, cv2.COLOR_BGRA2BGR),
    "bgr16": (3, 2, None),
    "rgb16": (3, 2, cv2.COLOR_RGB2BGR),
    "bgra16": (4, 2, cv2.COLOR_BGRA2BGR),
    "rgba16": (4, 2, cv2.COLOR_RGBA2BGR),
    "mono16": (1, 2, cv2.COLOR_GRAY2BGR),
    "16UC1": (1, 2, cv2.COLOR_GRAY2BGR),
    # Packed 4:2:2, two bytes per pixel. ROS "yuv422" is UYVY byte order (u0 y0 v0 y1);
    # "yuv422_yuy2" / "yuyv" is YUYV (y0 u0 y1 v0).
    "yuv422": (2, 1, cv2.COLOR_YUV2BGR_UYVY),
    "uyvy": (2, 1, cv2.COLOR_YUV2BGR_UYVY),
    "yuv422_yuy2": (2, 1, cv2.COLOR_YUV2BGR_YUYV),
    "yuyv": (2, 1, cv2.COLOR_YUV2BGR_YUYV),
    # OpenCV names a Bayer pattern by its second row's first two pixels, hence the swap
    # (the same table as cv_bridge).
    "bayer_rggb8": (1, 1, cv2.COLOR_BayerBG2BGR),
    "bayer_bggr8": (1, 1, cv2.COLOR_BayerRG2BGR),
    "bayer_gbrg8": (1, 1, cv2.COLOR_BayerGR2BGR),
    "bayer_grbg8": (1, 1, cv2.COLOR_BayerGB2BGR),
    "bayer_rggb16": (1, 2, cv2.COLOR_BayerBG2BGR),
    "bayer_bggr16": (1, 2, cv2.COLOR_BayerRG2BGR),
    "bayer_gbrg16": (1, 2, cv2.COLOR_BayerGR2BGR),
    "bayer_grbg16": (1, 2, cv2.COLOR_BayerGB2BGR),
}

#: Every ``sensor_msgs/Image.encoding`` :func:`image_to_bgr` accepts.
SUPPORTED_ENCODINGS: Tuple[str, ...] = tuple(sorted(_RAW))
#: Codecs :func:`compressed_to_bgr` accepts in ``CompressedImage.format``.
SUPPORTED_COMPRESSED_FORMATS: Tuple[str, ...] = ("jpeg", "png")

_bridge: Any = None


def image_to_bgr(msg: Any) -> np.ndarray:
    """Convert a sensor_msgs/Image (or look-alike) to a contiguous HxWx3 uint8 BGR array.

    Raises :class:`ImageConversionError` for an unknown encoding, a 0x0 image, a ``step``
    shorter than one row, or a ``data`` buffer shorter than ``step * height``.
    """
    encoding = str(msg.encoding)
    spec = _RAW.get(encoding)
    if spec is None:
        spec = _RAW.get(encoding.lower())
    if spec is None:
        raise ImageConversionError(
            f"unsupported image encoding {encoding!r}; supported: {', '.join(SUPPORTED_ENCODINGS)}")
    channels, depth, code = spec
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height <= 0 or width <= 0:
        raise ImageConversionError(f"image is {width}x{height} ({encoding}); nothing to convert")
    if channels == 2 and width % 2:
        raise ImageConversionError(
            f"{encoding} image width {width} is odd; 4:2:2 needs pixel pairs")
    row_bytes = width * channels * depth
    if step < row_bytes:
        raise ImageConversionError(
            f"{encoding} image step {step} is shorter than one row "
            f"({width} px x {channels * depth} bytes = {row_bytes})")
    if depth == 2 and step % 2:
        raise ImageConversionError(f"{encoding} image step {step} is odd for 16-bit pixels")

    pixels = _unpack(msg, encoding, height, width, channels, depth, step)
    if depth == 2:
        pixels = (pixels >> 8).astype(np.uint8)
    if code is None:
        return np.array(pixels, dtype=np.uint8, order="C", copy=True)
    return cv2.cvtColor(np.ascontiguousarray(pixels), code)


def compressed_to_bgr(msg: Any) -> np.ndarray:
    """Decode a sensor_msgs/CompressedImage (jpeg or png) to an HxWx3 uint8 BGR array.

    ``format`` may be the bare codec (``"jpeg"``) or image_transport's long form
    (``"bgr8; jpeg compressed bgr8"``); an empty format is decoded by content.
    """
    fmt = str(getattr(msg, "format", "") or "")
    lowered = fmt.lower()
    if "compresseddepth" in lowered:
        raise ImageConversionError(
            f"CompressedImage format {fmt!r} is a depth image, not a camera frame")
    if lowered and not any(c in lowered for c in ("jpeg", "jpg", "png")):
        raise ImageConversionError(
            f"unsupported CompressedImage format {fmt!r}; supported: "
            f"{', '.join(SUPPORTED_COMPRESSED_FORMATS)}")
    buf = _as_uint8(msg.data)
    if buf.size == 0:
        raise ImageConversionError(f"CompressedImage ({fmt or 'no format'}) has no data")
    bgr = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    if bgr is None or bgr.size == 0:
        raise ImageConversionError(
            f"CompressedImage ({fmt or 'no format'}, {buf.size} bytes) could not be decoded; "
            "the data is corrupt or not jpeg/png")
    return bgr


def _as_uint8(data: Any) -> np.ndarray:
    """A flat uint8 view of a message's ``data`` without copying where possible."""
    if isinstance(data, np.ndarray):  # rosbags messages; the bytes whatever the dtype
        return np.ascontiguousarray(data).reshape(-1).view(np.uint8)
    if isinstance(data, (bytes, bytearray, memoryview)):
        return np.frombuffer(data, dtype=np.uint8)
    try:  # array.array('B') and other buffer-protocol objects
        return np.frombuffer(memoryview(data).cast("B"), dtype=np.uint8)
    except TypeError:
        return np.asarray(data, dtype=np.uint8)


def _unpack(msg: Any, encoding: str, height: int, width: int, channels: int, depth: int,
            step: int) -> np.ndarray:
    """HxWxC array of the raw samples (uint8 or native-endian uint16), padding dropped."""
    # cv_bridge's passthrough mis-slices rows whose padding is not a whole number of pixels
    # and byte-swaps with an API NumPy 2 removed, so it only gets the layouts it gets right.
    native_order = not (depth == 2 and bool(msg.is_bigendian) != (sys.byteorder == "big"))
    if _CvBridge is not None and channels != 2 and not encoding.startswith("bayer") \
            and step % (channels * depth) == 0 and native_order:
        pixels = _unpack_with_cv_bridge(msg)
        if pixels is not None:
            return pixels.reshape(height, width, channels)
    buf = _as_uint8(msg.data)
    needed = step * height
    if buf.size < needed:
        raise ImageConversionError(
            f"{encoding} image data has {buf.size} bytes; {width}x{height} with step {step} "
            f"needs {needed}")
    rows = buf[:needed].reshape(height, step)[:, :width * channels * depth]
    if depth == 1:
        return rows.reshape(height, width, channels)
    byte_order = ">" if msg.is_bigendian else "<"
    samples = np.ascontiguousarray(rows).view(byte_order + "u2")
    return samples.astype(np.uint16, copy=False).reshape(height, width, channels)


def _unpack_with_cv_bridge(msg: Any) -> Optional[np.ndarray]:  # pragma: no cover - needs ROS
    global _bridge
    if _bridge is None:
        _bridge = _CvBridge()
    try:
        return np.asarray(_bridge.imgmsg_to_cv2(msg, desired_encoding="passthrough"))
    except Exception:  # cv_bridge refuses look-alike objects; our own unpacking is exact
        return None
