"""Box sampling around a target (MDNet's SampleGenerator), shared by training and tracking.

The samplers take a ``numpy.random.Generator``, so that a seed fixes every sample, and return
``(n, 4)`` float64 boxes ``(x, y, w, h)``; ``first_frame_samples`` returns a (positives,
negatives) pair of them. The spreads of MDNet's sample distributions are fixed here, named
below; the counts and IoU ranges are tracker parameters (``runtime.params``).
"""
from __future__ import annotations

import numpy as np

from . import geometry
from .geometry import cxcywh_to_xywh, iou, xywh_to_cxcywh

# Training samples are at least this many pixels a side, whatever the tracker's min_size.
MIN_SAMPLE_SIZE = 4.0
# MDNet's (trans, scale) spreads: positives (first frame and updates), first-frame negatives
# near the target, update negatives, and the bounding-box regression's training boxes.
POS_SPREAD = (0.1, 1.3)
NEG_SPREAD = (1.0, 1.6)
NEG_UPDATE_SPREAD = (1.5, 1.2)
BBREG_SPREAD = (0.3, 1.6)


def gaussian(rng, box, n, trans=0.6, scale=1.05):
    """MDNet candidates: centre shift ``trans * mean(w, h) * clip(0.5 N(0,1), -1, 1)``,
    size times ``scale ** clip(0.5 N(0,1), -1, 1)``."""
    c = np.tile(xywh_to_cxcywh(np.reshape(box, 4)), (n, 1))
    m = c[:, 2:].mean(axis=1, keepdims=True)
    c[:, :2] += trans * m * np.clip(0.5 * rng.standard_normal((n, 2)), -1, 1)
    c[:, 2:] *= scale ** np.clip(0.5 * rng.standard_normal((n, 1)), -1, 1)
    return cxcywh_to_xywh(c)


def uniform(rng, box, n, trans=1.0, scale=1.6):
    """Centre shift uniform in ``+-trans * mean(w, h)``, size times ``scale ** U(-1, 1)``."""
    c = np.tile(xywh_to_cxcywh(np.reshape(box, 4)), (n, 1))
    m = c[:, 2:].mean(axis=1, keepdims=True)
    c[:, :2] += trans * m * (rng.random((n, 2)) * 2 - 1)
    c[:, 2:] *= scale ** (rng.random((n, 1)) * 2 - 1)
    return cxcywh_to_xywh(c)


def whole(rng, box, n, bounds, scale=1.6):
    """Boxes of about the target's size anywhere in ``bounds`` (x, y, w, h)."""
    c = np.tile(xywh_to_cxcywh(np.reshape(box, 4)), (n, 1))
    c[:, 2:] *= scale ** (rng.random((n, 1)) * 2 - 1)
    bx, by, bw, bh = (float(v) for v in bounds)
    c[:, 0] = bx + rng.random(n) * bw
    c[:, 1] = by + rng.random(n) * bh
    return cxcywh_to_xywh(c)


def clip_into(boxes, bounds, min_size=MIN_SAMPLE_SIZE):
    """:func:`runtime.geometry.clip_into`, samples at least ``MIN_SAMPLE_SIZE`` a side by default."""
    return geometry.clip_into(boxes, bounds, min_size)


def sample_by_iou(rng, kind, box, n, iou_min=0.0, iou_max=1.0, bounds=None, max_rounds=20, **kw):
    """Draw ``n`` boxes of ``kind`` ('gaussian', 'uniform', 'whole') whose IoU with ``box``
    lies in ``[iou_min, iou_max]`` (rejection sampling; may return fewer after
    ``max_rounds`` if the range is nearly impossible, e.g. a target filling the bounds)."""
    gen = {"gaussian": gaussian, "uniform": uniform, "whole": whole}[kind]
    if kind == "whole":
        kw["bounds"] = bounds
    got, total = [], 0
    for _ in range(max_rounds):
        s = gen(rng, box, max(2 * n, 16), **kw)
        if bounds is not None:
            s = clip_into(s, bounds)
        o = iou(s, np.asarray(box, dtype=np.float64)[None, :])
        s = s[(o >= iou_min) & (o <= iou_max)]
        got.append(s)
        total += len(s)
        if total >= n:
            break
    s = np.concatenate(got, axis=0)[:n] if got else np.zeros((0, 4))
    return s


def first_frame_samples(rng, box, n_pos, n_neg, bounds, pos_iou=0.7, neg_iou=0.5):
    """MDNet's samples of a frame with a known box, for offline training and the tracker's
    first frame alike: positives (IoU >= ``pos_iou``) close around the box, negatives
    (IoU <= ``neg_iou``) half near it, half anywhere in ``bounds``."""
    pos = sample_by_iou(rng, "gaussian", box, n_pos, pos_iou, 1.0, bounds, trans=POS_SPREAD[0], scale=POS_SPREAD[1])
    half = n_neg // 2
    neg = np.concatenate([
        sample_by_iou(rng, "uniform", box, half, 0.0, neg_iou, bounds, trans=NEG_SPREAD[0], scale=NEG_SPREAD[1]),
        sample_by_iou(rng, "whole", box, n_neg - half, 0.0, neg_iou, bounds, scale=NEG_SPREAD[1]),
    ])
    return pos, neg
