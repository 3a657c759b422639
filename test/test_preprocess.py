"""preprocess: letterbox/stretch geometry, the tensor the contract asks for, and the way back."""
import numpy as np
import pytest

from evit_perception.model_contract import InputSpec
from evit_perception.preprocess import ImageTransform, Preprocessor, letterbox, stretch


def test_letterbox_wide_frame_pads_top_and_bottom_equally():
    frame = np.full((480, 640, 3), 200, np.uint8)
    out, t = letterbox(frame, 320, 320)
    assert out.shape == (320, 320, 3)
    assert (t.scale_x, t.scale_y, t.pad_x, t.pad_y) == (0.5, 0.5, 0.0, 40.0)
    assert (out[:40] == 114).all() and (out[280:] == 114).all()
    assert (out[40:280] == 200).all()


def test_letterbox_tall_frame_pads_left_and_right_with_pad_value():
    frame = np.full((200, 100, 3), 9, np.uint8)
    out, t = letterbox(frame, 64, 96, pad_value=0)
    # ratio = min(64/200, 96/100) = 0.32 -> 32x64 content centred in 96 columns.
    assert (t.pad_x, t.pad_y) == (32.0, 0.0)
    assert (out[:, :32] == 0).all() and (out[:, 64:] == 0).all() and (out[:, 32:64] == 9).all()


@pytest.mark.parametrize("src_hw,dst_hw", [((37, 100), (64, 64)), ((480, 640), (320, 320)),
                                           ((1080, 1920), (384, 640)), ((20, 30), (320, 320))])
def test_transform_maps_content_corners_to_source_corners(src_hw, dst_hw):
    h, w = src_hw
    _, t = letterbox(np.zeros((h, w, 3), np.uint8), *dst_hw)
    content = np.array([[t.pad_x, t.pad_y, t.pad_x + w * t.scale_x, t.pad_y + h * t.scale_y]])
    np.testing.assert_allclose(t.to_source(content), [[0, 0, w, h]], atol=1e-3)
    boxes = np.array([[3.5, 4.0, 10.0, 20.0], [0.0, 0.0, w, h]], np.float32)
    np.testing.assert_allclose(t.to_source(t.to_input(boxes)), boxes, atol=1e-3)


def test_to_source_clips_to_the_image_and_returns_float32():
    t = ImageTransform(0.5, 0.5, 0.0, 40.0, 640, 480)
    out = t.to_source(np.array([[-10, 0, 330, 300]], np.float64))
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, [[0, 0, 640, 480]])
    np.testing.assert_array_equal(t.to_source(np.array([[32, 72, 64, 104]])), [[64, 64, 128, 128]])


def test_letterbox_keeps_a_marked_pixel_block_where_the_transform_says():
    frame = np.zeros((480, 640, 3), np.uint8)
    frame[100:140, 200:260] = 255
    out, t = letterbox(frame, 320, 320)
    x1, y1, x2, y2 = t.to_input(np.array([[200, 100, 260, 140]]))[0]
    assert (x1, y1, x2, y2) == (100, 90, 130, 110)
    assert (out[91:109, 101:129] == 255).all()
    assert (out[40:89] == 0).all() and (out[111:280] == 0).all()  # black around the block


def test_stretch_ignores_aspect_ratio():
    frame = np.zeros((100, 400, 3), np.uint8)
    out, t = stretch(frame, 50, 50)
    assert out.shape == (50, 50, 3)
    np.testing.assert_allclose(t.to_source(np.array([[0, 0, 50, 50]])), [[0, 0, 400, 100]])


def test_preprocessor_nchw_rgb_normalised_values():
    spec = InputSpec(height=8, width=8, layout="NCHW", channel_order="RGB", dtype="float32",
                     resize="letterbox", scale=1 / 255, mean=(0.485, 0.456, 0.406),
                     std=(0.229, 0.224, 0.225))
    frame = np.empty((8, 8, 3), np.uint8)
    frame[...] = (10, 128, 250)  # B, G, R
    tensor, t = Preprocessor(spec)(frame)
    assert tensor.shape == (1, 3, 8, 8) and tensor.dtype == np.float32 and tensor.flags.c_contiguous
    expected = [(250 / 255 - 0.485) / 0.229, (128 / 255 - 0.456) / 0.224, (10 / 255 - 0.406) / 0.225]
    np.testing.assert_allclose(tensor[0, :, 3, 5], expected, rtol=1e-5)
    assert t.scale_x == 1.0 and t.pad_y == 0.0


def test_preprocessor_nhwc_bgr_uint8_passes_raw_pixels():
    spec = InputSpec(height=4, width=6, layout="NHWC", channel_order="BGR", dtype="uint8",
                     resize="stretch")
    frame = np.empty((8, 12, 3), np.uint8)
    frame[...] = (1, 2, 3)
    tensor, _ = Preprocessor(spec)(frame)
    assert tensor.shape == (1, 4, 6, 3) and tensor.dtype == np.uint8
    assert (tensor[0] == [1, 2, 3]).all()


def test_preprocessor_float16_and_letterbox_padding_value():
    spec = InputSpec(height=16, width=16, dtype="float16", pad_value=114)
    tensor, t = Preprocessor(spec)(np.zeros((8, 16, 3), np.uint8))
    assert tensor.dtype == np.float16 and t.pad_y == 4.0
    np.testing.assert_allclose(tensor[0, :, 0, 0].astype(np.float32), [114 / 255] * 3, rtol=1e-3)
    assert float(tensor[0, 0, 8, 8]) == 0.0


def test_preprocessor_returns_independent_tensors_across_frames():
    pre = Preprocessor(InputSpec(height=8, width=8))
    first, _ = pre(np.full((8, 8, 3), 10, np.uint8))
    kept = first.copy()
    pre(np.full((16, 8, 3), 200, np.uint8))
    np.testing.assert_array_equal(first, kept)


@pytest.mark.parametrize("bad", [np.zeros((0, 0, 3), np.uint8), np.zeros((4, 4), np.uint8),
                                 np.zeros((4, 4, 4), np.uint8), "not an image"])
def test_bad_images_raise_value_error(bad):
    with pytest.raises(ValueError, match="image"):
        Preprocessor(InputSpec(height=8, width=8))(bad)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("order", ["RGB", "BGR"])
@pytest.mark.parametrize("dtype", ["float32", "float16", "uint8"])
def test_every_layout_order_and_dtype_matches_the_contract_formula(layout, order, dtype):
    spec = InputSpec(height=12, width=16, layout=layout, channel_order=order, dtype=dtype,
                     resize="stretch", scale=0.5, mean=(1.0, 2.0, 3.0), std=(2.0, 4.0, 8.0))
    frame = np.random.default_rng(3).integers(0, 256, (12, 16, 3), dtype=np.uint8)
    tensor, _ = Preprocessor(spec)(frame)
    pixels = frame[..., ::-1] if order == "RGB" else frame
    if dtype == "uint8":
        expected = pixels.astype(np.float64)
    else:
        expected = (pixels * 0.5 - np.array([1.0, 2.0, 3.0])) / np.array([2.0, 4.0, 8.0])
    if layout == "NCHW":
        expected = expected.transpose(2, 0, 1)
    assert tensor.dtype == np.dtype(dtype) and tensor.flags.c_contiguous
    np.testing.assert_allclose(tensor[0].astype(np.float64), expected,
                               rtol=1e-3 if dtype == "float16" else 1e-6, atol=1e-2 if dtype == "float16" else 1e-5)


@pytest.mark.parametrize("h,w", [(480, 640), (37, 100), (1080, 1920), (333, 101), (1, 5000)])
def test_letterbox_transform_without_the_image_equals_letterbox(h, w):
    from evit_perception.preprocess import letterbox_transform

    canvas, t = letterbox(np.zeros((h, w, 3), np.uint8), 320, 288)
    assert letterbox_transform(h, w, 320, 288) == t
    content = np.argwhere(canvas[:, :, 0] == 0)  # the resized image is black, padding 114
    (y1, x1), (y2, x2) = content.min(axis=0), content.max(axis=0) + 1
    assert (x1, y1) == (t.pad_x, t.pad_y)
    assert (x2 - x1, y2 - y1) == (round(w * t.scale_x), round(h * t.scale_y))
