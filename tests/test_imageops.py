"""to_bgr8: every layout OpenCV can hand back becomes contiguous HxWx3 uint8 BGR."""
import numpy as np
import pytest

from runtime.errors import TrackerInputError
from runtime.imageops import to_bgr8


def _check(out, h=5, w=7):
    assert out.shape == (h, w, 3)
    assert out.dtype == np.uint8
    assert out.flags["C_CONTIGUOUS"]


def test_bgr_uint8_passes_through_unchanged():
    img = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    out = to_bgr8(img)
    _check(out)
    np.testing.assert_array_equal(out, img)


def test_non_contiguous_input_becomes_contiguous():
    img = np.random.default_rng(1).integers(0, 256, (5, 14, 3), dtype=np.uint8)[:, ::2]
    assert not img.flags["C_CONTIGUOUS"]
    out = to_bgr8(img)
    _check(out)
    np.testing.assert_array_equal(out, img)


@pytest.mark.parametrize("shape", [(5, 7), (5, 7, 1)])
def test_grey_is_replicated_to_three_channels(shape):
    img = np.arange(35, dtype=np.uint8).reshape(shape)
    out = to_bgr8(img)
    _check(out)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], img.reshape(5, 7))


def test_bgra_drops_alpha_keeps_colour_order():
    img = np.zeros((5, 7, 4), np.uint8)
    img[..., 0], img[..., 1], img[..., 2], img[..., 3] = 10, 20, 30, 0
    out = to_bgr8(img)
    _check(out)
    assert out[0, 0].tolist() == [10, 20, 30]


def test_uint16_divides_by_257_rounded():
    vals = np.array([0, 128, 129, 257, 385, 386, 65535, 65407], np.uint16)
    img = np.repeat(vals.reshape(1, -1, 1), 3, axis=2)
    out = to_bgr8(img)
    assert out[0, :, 0].tolist() == [int(round(v / 257)) for v in vals.tolist()]
    assert out[0, :, 0].tolist() == [0, 0, 1, 1, 1, 2, 255, 255]


def test_uint16_grey_and_bgra():
    grey = np.full((5, 7), 65535, np.uint16)
    _check(to_bgr8(grey))
    assert to_bgr8(grey).min() == 255
    bgra = np.full((5, 7, 4), 257 * 100, np.uint16)
    out = to_bgr8(bgra)
    _check(out)
    assert (out == 100).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_float_is_scaled_and_clipped(dtype):
    img = np.array([[-0.5, 0.0, 0.5, 1.0, 2.0, np.nan, 0.2]], dtype=dtype)
    img = np.repeat(img[..., None], 3, axis=2).repeat(5, axis=0)
    out = to_bgr8(img)
    _check(out)
    assert out[0, :, 1].tolist() == [0, 0, 128, 255, 255, 0, 51]


@pytest.mark.parametrize(
    "bad, words",
    [
        (None, "image array"),
        ([[1, 2], [3, 4]], "image array"),
        (np.zeros((5,), np.uint8), "dimensions"),
        (np.zeros((2, 5, 7, 3), np.uint8), "dimensions"),
        (np.zeros((0, 7, 3), np.uint8), "empty"),
        (np.zeros((5, 0), np.uint8), "empty"),
        (np.zeros((5, 7, 2), np.uint8), "channels"),
        (np.zeros((5, 7, 5), np.uint8), "channels"),
        (np.zeros((5, 7, 3), np.int32), "dtype"),
        (np.zeros((5, 7, 3), np.int8), "dtype"),
        (np.zeros((5, 7, 3), np.uint32), "dtype"),
        (np.zeros((5, 7, 3), bool), "dtype"),
        (np.zeros((5, 7, 3), np.complex64), "dtype"),
    ],
)
def test_rejects_unsupported_inputs(bad, words):
    with pytest.raises(TrackerInputError, match=words):
        to_bgr8(bad)


def test_dark_float_frame_in_0_255_refused():
    """A converted uint8 (``frame.astype(np.float32)``) of a mostly black frame has a median
    under 2, and its lit part would have been silently clipped to white."""
    img = np.zeros((40, 60, 3), np.float32)
    img[10:30, 20:40] = np.arange(20 * 20 * 3).reshape(20, 20, 3) % 200 + 30
    assert np.median(img) < 2
    with pytest.raises(TrackerInputError, match="divide by 255"):
        to_bgr8(img)
    # 0..1 images stay accepted: a binary mask, and HDR highlights above 1 (clipped)
    mask = (np.arange(40 * 60 * 3).reshape(40, 60, 3) % 3 == 0).astype(np.float32)
    np.testing.assert_array_equal(to_bgr8(mask), (mask * 255).astype(np.uint8))
    hdr = img / 100.0
    assert to_bgr8(hdr).max() == 255 and to_bgr8(hdr)[0, 0, 0] == 0
