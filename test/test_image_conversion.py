"""image_conversion: every encoding against hand-built pixels, on real sensor_msgs messages."""
import array

import cv2
import numpy as np
import pytest
from sensor_msgs.msg import CompressedImage, Image

from evit_perception import image_conversion
from evit_perception.image_conversion import (SUPPORTED_ENCODINGS, ImageConversionError,
                                              compressed_to_bgr, image_to_bgr)

# A 2x4 scene in RGB, every pixel different so swapped channels or rows show.
SCENE_RGB = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [10, 20, 30]],
                      [[200, 100, 50], [1, 2, 3], [250, 251, 252], [0, 0, 0]]], np.uint8)
SCENE_BGR = SCENE_RGB[..., ::-1]


def make_image(encoding, rows, step=None, bigendian=False, pad_byte=0xEE):
    """A real sensor_msgs/Image from per-row byte strings, padded to ``step`` with junk."""
    rows = [bytes(r) for r in rows]
    step = step if step is not None else len(rows[0])
    msg = Image()
    msg.height, msg.width = len(rows), len(rows[0]) // image_conversion._RAW[encoding][0] \
        // image_conversion._RAW[encoding][1]
    msg.encoding, msg.is_bigendian, msg.step = encoding, int(bigendian), step
    msg.data = b"".join(r + bytes([pad_byte]) * (step - len(r)) for r in rows)
    return msg


def assert_bgr(out, expected):
    assert out.dtype == np.uint8 and out.flags.c_contiguous and out.flags.writeable
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("pad", [0, 7])
def test_rgb8_and_bgr8_with_and_without_step_padding(pad):
    rgb_rows = [SCENE_RGB[y].tobytes() for y in range(2)]
    bgr_rows = [SCENE_BGR[y].tobytes() for y in range(2)]
    assert_bgr(image_to_bgr(make_image("rgb8", rgb_rows, step=12 + pad)), SCENE_BGR)
    assert_bgr(image_to_bgr(make_image("bgr8", bgr_rows, step=12 + pad)), SCENE_BGR)


def test_alpha_encodings_drop_alpha():
    alpha = np.full((2, 4, 1), 77, np.uint8)
    rgba = np.concatenate([SCENE_RGB, alpha], axis=2)
    bgra = np.concatenate([SCENE_BGR, alpha], axis=2)
    assert_bgr(image_to_bgr(make_image("rgba8", [rgba[y].tobytes() for y in range(2)], step=20)),
               SCENE_BGR)
    assert_bgr(image_to_bgr(make_image("bgra8", [bgra[y].tobytes() for y in range(2)])), SCENE_BGR)


def test_mono8_replicates_grey_into_three_channels():
    grey = np.array([[0, 17, 128, 255], [1, 2, 3, 4]], np.uint8)
    out = image_to_bgr(make_image("mono8", [grey[0].tobytes(), grey[1].tobytes()], step=6))
    assert_bgr(out, np.repeat(grey[..., None], 3, axis=2))


@pytest.mark.parametrize("bigendian", [False, True])
def test_mono16_keeps_top_byte_in_either_byte_order(bigendian):
    values = np.array([[0x0000, 0x00FF, 0x0100, 0x1234], [0x7FFF, 0x8000, 0xABCD, 0xFFFF]])
    dtype = ">u2" if bigendian else "<u2"
    rows = [values[y].astype(dtype).tobytes() for y in range(2)]
    out = image_to_bgr(make_image("mono16", rows, step=10, bigendian=bigendian))
    expected = np.array([[0x00, 0x00, 0x01, 0x12], [0x7F, 0x80, 0xAB, 0xFF]], np.uint8)
    assert_bgr(out, np.repeat(expected[..., None], 3, axis=2))


def test_rgb16_big_endian():
    rgb16 = SCENE_RGB.astype(np.uint16) * 257  # 0xABAB: top byte is the 8-bit value
    rows = [rgb16[y].astype(">u2").tobytes() for y in range(2)]
    assert_bgr(image_to_bgr(make_image("rgb16", rows, bigendian=True)), SCENE_BGR)


ALPHA = np.full((2, 4, 1), 77, np.uint8)
GREY = np.array([[0, 17, 128, 255], [1, 2, 3, 4]], np.uint8)
GREY_BGR = np.repeat(GREY[..., None], 3, axis=2)
# encoding -> (HxWxC samples as stored in the message, expected BGR)
KNOWN_PIXELS = {
    "8UC1": (GREY, GREY_BGR),
    "8UC3": (SCENE_BGR, SCENE_BGR),
    "8UC4": (np.concatenate([SCENE_BGR, ALPHA], axis=2), SCENE_BGR),
    "16UC1": (GREY.astype(np.uint16) * 257, GREY_BGR),
    "bgr16": (SCENE_BGR.astype(np.uint16) * 257, SCENE_BGR),
    "rgba16": (np.concatenate([SCENE_RGB, ALPHA], axis=2).astype(np.uint16) * 257, SCENE_BGR),
    "bgra16": (np.concatenate([SCENE_BGR, ALPHA], axis=2).astype(np.uint16) * 256 + 0x7F,
               SCENE_BGR),
}


@pytest.mark.parametrize("encoding", sorted(KNOWN_PIXELS))
@pytest.mark.parametrize("bigendian", [False, True])
def test_aliases_and_16_bit_colour_against_known_pixels(encoding, bigendian):
    samples, expected = KNOWN_PIXELS[encoding]
    if samples.dtype == np.uint16:
        samples = samples.astype(">u2" if bigendian else "<u2")
    rows = [samples[y].tobytes() for y in range(2)]
    msg = make_image(encoding, rows, step=len(rows[0]) + 4, bigendian=bigendian)
    assert_bgr(image_to_bgr(msg), expected)


def uyvy_pairs(pairs):
    """Bytes of 4:2:2 pixel pairs given as (y0, u, y1, v) in UYVY order."""
    return bytes(b for y0, u, y1, v in pairs for b in (u, y0, v, y1))


def yuyv_pairs(pairs):
    return bytes(b for y0, u, y1, v in pairs for b in (y0, u, y1, v))


# BT.601 limited range: Y=16 black, Y=235 white; (Y, U, V) = (81, 90, 240) is pure red.
YUV_ROW = [(16, 128, 235, 128), (81, 90, 81, 240)]
YUV_EXPECTED = np.array([[[0, 0, 0], [255, 255, 255], [0, 0, 254], [0, 0, 254]]], np.uint8)


@pytest.mark.parametrize("encoding,pack", [("yuv422", uyvy_pairs), ("uyvy", uyvy_pairs),
                                           ("yuv422_yuy2", yuyv_pairs), ("yuyv", yuyv_pairs)])
def test_yuv422_byte_orders(encoding, pack):
    out = image_to_bgr(make_image(encoding, [pack(YUV_ROW)], step=10))
    assert out.shape == (1, 4, 3)
    np.testing.assert_allclose(out.astype(int), YUV_EXPECTED.astype(int), atol=2)


BAYER_PATTERNS = {"bayer_rggb8": ("R", "G", "G", "B"), "bayer_bggr8": ("B", "G", "G", "R"),
                  "bayer_gbrg8": ("G", "B", "R", "G"), "bayer_grbg8": ("G", "R", "B", "G")}


@pytest.mark.parametrize("encoding", sorted(BAYER_PATTERNS) + [
    e.replace("8", "16") for e in sorted(BAYER_PATTERNS)])
def test_bayer_patterns_demosaic_a_flat_colour(encoding):
    colour = {"R": 200, "G": 100, "B": 30}
    tl, tr, bl, br = (colour[c] for c in BAYER_PATTERNS[encoding.replace("16", "8")])
    wide = encoding.endswith("16")
    mosaic = np.zeros((8, 8), ">u2" if wide else np.uint8)
    mosaic[0::2, 0::2], mosaic[0::2, 1::2], mosaic[1::2, 0::2], mosaic[1::2, 1::2] = tl, tr, bl, br
    if wide:
        mosaic = (mosaic * 256 + 0xAB).astype(">u2")  # low byte: noise the 8-bit image drops
    out = image_to_bgr(make_image(encoding, [mosaic[y].tobytes() for y in range(8)],
                                  bigendian=wide))
    # Borders are extrapolated; the interior must be exactly the flat colour.
    np.testing.assert_allclose(out[2:-2, 2:-2].astype(int), np.broadcast_to([30, 100, 200], (4, 4, 3)),
                               atol=1)


@pytest.mark.parametrize("data_type", ["bytes", "array", "list", "numpy"])
def test_plain_objects_with_any_data_container(data_type):
    class Look:
        height, width, encoding, is_bigendian, step = 2, 4, "rgb8", 0, 12

    raw = SCENE_RGB.tobytes()
    Look.data = {"bytes": raw, "array": array.array("B", raw), "list": list(raw),
                 "numpy": np.frombuffer(raw, np.uint8)}[data_type]
    assert_bgr(image_to_bgr(Look()), SCENE_BGR)


def test_numpy_data_of_another_dtype_is_read_as_its_bytes():
    class Look:
        height, width, encoding, is_bigendian, step = 1, 2, "mono16", 0, 4
        data = np.array([0x1234, 0xFF00], dtype="<u2")

    assert image_to_bgr(Look())[0, :, 0].tolist() == [0x12, 0xFF]


def test_every_supported_encoding_converts_a_small_frame():
    for encoding in SUPPORTED_ENCODINGS:
        channels, depth, _ = image_conversion._RAW[encoding]
        rows = [bytes(range(y, y + 4 * channels * depth)) for y in range(2)]
        out = image_to_bgr(make_image(encoding, rows))
        assert out.shape == (2, 4, 3), encoding


def test_unknown_encoding_names_it_and_lists_supported():
    msg = make_image("rgb8", [SCENE_RGB[0].tobytes()])
    msg.encoding = "nv12_weird"
    with pytest.raises(ImageConversionError, match=r"unsupported image encoding 'nv12_weird'.*rgb8"):
        image_to_bgr(msg)


def test_zero_sized_image_is_refused():
    msg = Image(height=0, width=0, encoding="bgr8", step=0)
    with pytest.raises(ImageConversionError, match="0x0"):
        image_to_bgr(msg)


def test_step_shorter_than_a_row_is_refused():
    msg = make_image("rgb8", [SCENE_RGB[y].tobytes() for y in range(2)])
    msg.step = 11
    with pytest.raises(ImageConversionError, match=r"step 11 is shorter than one row \(4 px x 3 bytes = 12\)"):
        image_to_bgr(msg)


def test_data_shorter_than_step_times_height_is_refused():
    msg = make_image("rgb8", [SCENE_RGB[y].tobytes() for y in range(2)], step=16)
    msg.data = bytes(msg.data)[:20]
    with pytest.raises(ImageConversionError, match="has 20 bytes.*needs 32"):
        image_to_bgr(msg)


def test_odd_width_yuv422_is_refused():
    msg = Image(height=1, width=3, encoding="yuv422", step=6, data=bytes(6))
    with pytest.raises(ImageConversionError, match="odd"):
        image_to_bgr(msg)


def test_compressed_png_is_lossless_and_jpeg_close():
    frame = np.zeros((16, 24, 3), np.uint8)
    frame[4:12, 6:18] = (20, 140, 230)
    ok, png = cv2.imencode(".png", frame)
    assert ok
    msg = CompressedImage(format="png", data=png.tobytes())
    assert_bgr(compressed_to_bgr(msg), frame)
    ok, jpg = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 95])
    msg = CompressedImage(format="bgr8; jpeg compressed bgr8", data=jpg.tobytes())
    out = compressed_to_bgr(msg)
    assert out.shape == frame.shape
    assert np.abs(out[6:10, 8:16].astype(int) - frame[6:10, 8:16]).max() <= 6


def test_compressed_errors_name_the_problem():
    with pytest.raises(ImageConversionError, match="could not be decoded"):
        compressed_to_bgr(CompressedImage(format="jpeg", data=b"\xff\xd8\xff not really a jpeg"))
    with pytest.raises(ImageConversionError, match="unsupported CompressedImage format 'tiff'"):
        compressed_to_bgr(CompressedImage(format="tiff", data=b"II*\x00"))
    with pytest.raises(ImageConversionError, match="no data"):
        compressed_to_bgr(CompressedImage(format="png", data=b""))
    with pytest.raises(ImageConversionError, match="depth"):
        compressed_to_bgr(CompressedImage(format="16UC1; compressedDepth png", data=b"\x00" * 20))


@pytest.mark.skipif(image_conversion._CvBridge is None,
                    reason="cv_bridge is not importable (not on PyPI; present on real ROS installs)")
def test_cv_bridge_and_own_conversion_agree(monkeypatch):  # pragma: no cover - needs ROS
    messages = [make_image("rgb8", [SCENE_RGB[y].tobytes() for y in range(2)], step=15),
                make_image("mono16", [np.arange(4, dtype=">u2").tobytes()] * 2, bigendian=True)]
    with_bridge = [image_to_bgr(m) for m in messages]
    monkeypatch.setattr(image_conversion, "_CvBridge", None)
    for msg, expected in zip(messages, with_bridge):
        np.testing.assert_array_equal(image_to_bgr(msg), expected)
