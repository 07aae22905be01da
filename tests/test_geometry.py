"""Box geometry: hand-computed values plus hypothesis properties."""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime import geometry as g

PROPS = settings(derandomize=True, max_examples=200, deadline=None, database=None)

# (a, b, expected IoU), computed by hand.
IOU_TABLE = [
    pytest.param((0, 0, 10, 10), (0, 0, 10, 10), 1.0, id="identical"),
    pytest.param((0, 0, 10, 10), (20, 20, 5, 5), 0.0, id="disjoint"),
    # overlap 5x10 = 50, union 100 + 100 - 50 = 150
    pytest.param((0, 0, 10, 10), (5, 0, 10, 10), 1.0 / 3.0, id="half-shift"),
    # 5x5 inside 10x10: 25 / 100
    pytest.param((0, 0, 10, 10), (2.5, 2.5, 5, 5), 0.25, id="containment"),
    pytest.param((0, 0, 10, 10), (10, 0, 10, 10), 0.0, id="touching-x"),
    pytest.param((0, 0, 10, 10), (0, 10, 10, 10), 0.0, id="touching-y"),
    pytest.param((0, 0, 10, 10), (3, 3, 0, 4), 0.0, id="zero-width"),
    pytest.param((0, 0, 0, 0), (0, 0, 0, 0), 0.0, id="both-zero-area"),
    pytest.param((0, 0, 10, 10), (2, 2, -4, 4), 0.0, id="negative-width"),
    # overlap 5x5 = 25, union 200 - 25 = 175
    pytest.param((0, 0, 10, 10), (5, 5, 10, 10), 25.0 / 175.0, id="corner"),
    # 10x20 vs 20x10 crossing: overlap 10x10 = 100, union 200 + 200 - 100 = 300
    pytest.param((5, 0, 10, 20), (0, 5, 20, 10), 1.0 / 3.0, id="cross"),
]


@pytest.mark.parametrize("a, b, expected", IOU_TABLE)
def test_iou_table(a, b, expected):
    assert float(g.iou(a, b)) == pytest.approx(expected, abs=1e-12)
    assert float(g.iou(b, a)) == pytest.approx(expected, abs=1e-12)


def test_iou_nan_gives_nan():
    assert math.isnan(float(g.iou((0, 0, 10, 10), (np.nan, 0, 10, 10))))
    assert math.isnan(float(g.iou((0, 0, 10, np.nan), (0, 0, 10, 10))))


def test_iou_broadcasts_rows():
    a = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10]], float)
    b = np.array([[0, 0, 10, 10], [5, 0, 10, 10], [2.5, 2.5, 5, 5]], float)
    np.testing.assert_allclose(g.iou(a, b), [1.0, 1.0 / 3.0, 0.25])
    np.testing.assert_allclose(g.iou(a, b[1]), [1.0 / 3.0] * 3)


def test_conversions():
    np.testing.assert_array_equal(g.xywh_to_xyxy([1, 2, 3, 4]), [1, 2, 4, 6])
    np.testing.assert_array_equal(g.xyxy_to_xywh([1, 2, 4, 6]), [1, 2, 3, 4])
    boxes = np.array([[1.5, 2.0, 3.0, 4.0], [-5, 0, 10, 0.5]])
    np.testing.assert_allclose(g.xyxy_to_xywh(g.xywh_to_xyxy(boxes)), boxes)
    np.testing.assert_array_equal(g.centers([[0, 0, 10, 4], [2, 2, 2, 2]]), [[5, 2], [3, 3]])
    np.testing.assert_array_equal(g.cxcywh_to_xywh([5, 2, 10, 4]), [0, 0, 10, 4])
    np.testing.assert_array_equal(g.xywh_to_cxcywh([[0, 0, 10, 4], [1, 2, 3, 5]]), [[5, 2, 10, 4], [2.5, 4.5, 3, 5]])
    box = np.array([3.3, 1.7, 10.1, 4.9])
    np.testing.assert_allclose(g.cxcywh_to_xywh(g.xywh_to_cxcywh(box)), box, rtol=0, atol=1e-12)
    # conversions do not modify their input
    before = boxes.copy()
    g.xywh_to_xyxy(boxes)
    np.testing.assert_array_equal(boxes, before)


def test_center_error():
    assert float(g.center_error((0, 0, 10, 10), (3, 4, 10, 10))) == pytest.approx(5.0)
    # same centre, different size
    assert float(g.center_error((0, 0, 10, 10), (2, 2, 6, 6))) == 0.0
    # centres (5, 5) and (8, 9)
    np.testing.assert_allclose(
        g.center_error([[0, 0, 10, 10], [0, 0, 10, 10]], [[6, 8, 4, 2], [0, 0, 10, 10]]),
        [5.0, 0.0])
    assert math.isnan(float(g.center_error((0, 0, 10, 10), (np.nan, 0, 1, 1))))


def test_keep_center_inside():
    size = (100, 50)
    # inside: unchanged
    np.testing.assert_allclose(g.keep_center_inside((10, 10, 20, 20), size), (10, 10, 20, 20))
    # half out of frame, centre still inside: unchanged (size kept, extends past border)
    np.testing.assert_allclose(g.keep_center_inside((90, 40, 20, 20), size), (90, 40, 20, 20))
    # centre (130, 10) outside -> moved to x = 100, size kept
    np.testing.assert_allclose(g.keep_center_inside((120, 0, 20, 20), size), (90, 0, 20, 20))
    # centre (-5, -5) -> (0, 0)
    np.testing.assert_allclose(g.keep_center_inside((-15, -15, 20, 20), size),
                               (-10, -10, 20, 20))
    # oversize box: size bounded to the image, centre (200, 5) moved to x = 100
    np.testing.assert_allclose(g.keep_center_inside((0, 0, 400, 10), size), (50, 0, 100, 10))


def test_is_valid_box():
    assert g.is_valid_box((0, 0, 1, 1))
    assert not g.is_valid_box((0, 0, 0, 1))
    assert not g.is_valid_box((0, 0, 1, -1))
    assert not g.is_valid_box((np.nan, 0, 1, 1))
    assert not g.is_valid_box((0, 0, np.inf, 1))
    assert not g.is_valid_box((0, 0, 1))


def test_iou_identical_boxes_exactly_one():
    # Non-representable coordinates: (0.1 + 0.2) - 0.1 != 0.2 in float64.
    rng = np.random.default_rng(0)
    a = np.column_stack([rng.uniform(0, 1000, (2000, 2)), rng.uniform(0.01, 500, (2000, 2))])
    v = g.iou(a, a)
    assert np.all(v <= 1.0)  # never above 1: a perfect frame must fail the 1.0 threshold
    assert np.all(v > 1.0 - 1e-9)


# ------------------------------------------------------------------------ properties

coord = st.floats(min_value=-1e4, max_value=1e4, allow_nan=False, allow_infinity=False)
size = st.floats(min_value=1e-2, max_value=1e4, allow_nan=False, allow_infinity=False)
boxes = st.tuples(coord, coord, size, size)


@PROPS
@given(boxes, boxes)
def test_prop_iou_range_and_symmetry(a, b):
    ab = float(g.iou(a, b))
    ba = float(g.iou(b, a))
    assert ab == ba
    # 1e-9 slack for the rounding bug pinned by test_iou_identical_boxes_exactly_one.
    assert 0.0 <= ab <= 1.0 + 1e-9
    assert float(g.iou(a, a)) == pytest.approx(1.0, abs=1e-6)


@PROPS
@given(boxes)
def test_prop_xywh_xyxy_round_trip(box):
    back = g.xyxy_to_xywh(g.xywh_to_xyxy(box))
    # (x + w) - x loses up to one ulp of the larger magnitude
    np.testing.assert_allclose(back, box, rtol=0, atol=4e-12 * (1 + max(abs(v) for v in box)))
    xyxy = g.xywh_to_xyxy(box)
    assert xyxy[2] >= xyxy[0] and xyxy[3] >= xyxy[1]
