"""Box geometry: the one place for conversions, IoU, centre error and clipping.

Boxes are ``(x, y, w, h)`` in image pixels (OTB convention), as float arrays of shape
``(4,)`` or ``(N, 4)``. Corner form is ``(x1, y1, x2, y2)`` with ``x2 = x + w``.
"""
from __future__ import annotations

import numpy as np


def xywh_to_xyxy(boxes) -> np.ndarray:
    b = np.asarray(boxes, dtype=np.float64)
    out = b.copy()
    out[..., 2] = b[..., 0] + b[..., 2]
    out[..., 3] = b[..., 1] + b[..., 3]
    return out


def xyxy_to_xywh(boxes) -> np.ndarray:
    b = np.asarray(boxes, dtype=np.float64)
    out = b.copy()
    out[..., 2] = b[..., 2] - b[..., 0]
    out[..., 3] = b[..., 3] - b[..., 1]
    return out


def centers(boxes) -> np.ndarray:
    b = np.asarray(boxes, dtype=np.float64)
    return b[..., :2] + b[..., 2:4] / 2.0


def xywh_to_cxcywh(boxes) -> np.ndarray:
    """Centre form ``(cx, cy, w, h)``, in which the samplers shift and scale boxes."""
    b = np.asarray(boxes, dtype=np.float64)
    out = b.copy()
    out[..., :2] = centers(b)
    return out


def cxcywh_to_xywh(c) -> np.ndarray:
    c = np.asarray(c, dtype=np.float64)
    out = c.copy()
    out[..., 0] = c[..., 0] - c[..., 2] / 2.0
    out[..., 1] = c[..., 1] - c[..., 3] / 2.0
    return out


def iou(a, b) -> np.ndarray:
    """Element-wise IoU of boxes ``a`` and ``b`` (broadcast over leading axes).

    Boxes with a non-positive area, or NaN coordinates, give IoU 0 (NaN stays NaN so
    that the evaluation can skip absent ground truth explicitly).
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    ax2, ay2 = a[..., 0] + a[..., 2], a[..., 1] + a[..., 3]
    bx2, by2 = b[..., 0] + b[..., 2], b[..., 1] + b[..., 3]
    iw = np.minimum(ax2, bx2) - np.maximum(a[..., 0], b[..., 0])
    ih = np.minimum(ay2, by2) - np.maximum(a[..., 1], b[..., 1])
    inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
    area_a = np.clip(a[..., 2], 0, None) * np.clip(a[..., 3], 0, None)
    area_b = np.clip(b[..., 2], 0, None) * np.clip(b[..., 3], 0, None)
    union = area_a + area_b - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)
    out = np.clip(out, 0.0, 1.0)  # (x + w) - x is not always w in floating point
    nan = np.isnan(a).any(axis=-1) | np.isnan(b).any(axis=-1)
    return np.where(nan, np.nan, out)


def center_error(a, b) -> np.ndarray:
    """Euclidean distance between box centres (NaN where either box is NaN)."""
    d = centers(a) - centers(b)
    return np.sqrt((d ** 2).sum(axis=-1))


def clip_into(boxes, bounds, min_size: float) -> np.ndarray:
    """``(N, 4)`` boxes with sizes in ``[min_size, bounds]`` and centres inside ``bounds``
    (x, y, w, h). A box may still extend past the border: a target half out of frame keeps
    its size, as trackers on OTB do."""
    b = np.array(boxes, dtype=np.float64).reshape(-1, 4)
    bx, by, bw, bh = (float(v) for v in bounds)
    w = np.clip(b[:, 2], min_size, max(min_size, bw))
    h = np.clip(b[:, 3], min_size, max(min_size, bh))
    cx = np.clip(b[:, 0] + b[:, 2] / 2.0, bx, bx + bw)
    cy = np.clip(b[:, 1] + b[:, 3] / 2.0, by, by + bh)
    return np.stack([cx - w / 2.0, cy - h / 2.0, w, h], axis=1)


def keep_center_inside(box, image_size, min_size: float = 1.0) -> np.ndarray:
    """``box`` (any shape ending in 4) with its centre inside the image and its size bounded
    by the image: :func:`clip_into` with the whole image as bounds."""
    b = np.asarray(box, dtype=np.float64)
    return clip_into(b, (0.0, 0.0, image_size[0], image_size[1]), min_size).reshape(b.shape)


def is_valid_box(box) -> bool:
    """True for a finite box with positive width and height."""
    b = np.asarray(box, dtype=np.float64).reshape(-1)
    return b.shape == (4,) and bool(np.all(np.isfinite(b))) and b[2] > 0 and b[3] > 0
