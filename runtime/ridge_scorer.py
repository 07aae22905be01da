"""A second online classifier beside the fc head: ridge regression to +-1 labels on the
L2-normalised pooled conv features of the samples the tracker stores, solved in closed form.
The tracker pools them from each box's inner part (``TrackerParams.ridge_shrink``,
``OnlineHead.embed_all``): the target's own appearance, less of what surrounds it.

Why: with every label correct (the oracle diagnosis, ``benchmarks.oracle``) such a linear
classifier found the target on more frames than the SGD-trained fc head did on the same
features, and added to the head's score it tracked the development set better
(benchmarks/README.md, "A ridge classifier beside the head"). Pooled from the inner part it
holds a target whose first box holds much background (vot_bolt1's crouched runner beside a
lane board) as the target changes pose and the background moves past it. It needs no iterations: the
solution is one 577 x 577 linear solve from Gram matrices that are updated as samples enter
and leave the windows, so a refit costs a few milliseconds.

Its size is the head's pooled features': 64 x 9 + 1 with the default ``fc4_rank``. With the
exact fc4 (``fc4_rank=0``) the pooled features are 2304-d, and a refit costs about 0.3 s and
the Gram matrices about 200 MB: use ``ridge_weight=0`` there, or accept the stalls.

Windows follow the head's: positives of the last ``long_frames`` frames, negatives of the
last ``short_frames`` (older negatives are subtracted out, never re-used), plus the first
frame's samples, which stay.
"""
from __future__ import annotations

from collections import deque

import numpy as np


def _augment(x: np.ndarray) -> np.ndarray:
    """Rows L2-normalised (the scale of pooled features varies with the scene's contrast),
    with a constant 1 appended for the bias; float32, which halves the Gram updates' cost
    (the sums themselves are kept in float64)."""
    x = np.asarray(x, np.float32)
    out = np.ones((len(x), x.shape[1] + 1), np.float32)
    out[:, :-1] = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), np.float32(1e-12))
    return out


class _Window:
    """Rows of the last ``frames`` frames and their Gram matrix, kept up to date: a frame's
    Gram is added when it enters and the same product subtracted when it leaves (about 1.4 ms
    each for a frame's 128 rows here, where a refit from all rows would stall one frame in
    ten for about 50 ms)."""

    def __init__(self, dim: int, frames: int):
        self.rows = deque()
        self.frames = frames
        self.gram = np.zeros((dim, dim))
        self.n = 0

    def add(self, x: np.ndarray) -> None:
        self.rows.append(x)
        self.gram += x.T @ x
        self.n += len(x)
        while len(self.rows) > self.frames:
            old = self.rows.popleft()
            self.gram -= old.T @ old
            self.n -= len(old)


class RidgeScorer:
    """``fit`` after ``start`` / ``add``; ``score`` gives about +1 for the target, -1 for
    background."""

    def __init__(self, dim: int, reg: float, long_frames: int, short_frames: int):
        self.dim = dim + 1
        self.reg = float(reg)
        self.pos = _Window(self.dim, long_frames)
        self.neg = _Window(self.dim, short_frames)
        self.first = None  # (Gram of positives, n, Gram of negatives, n) of the first frame
        self.w = np.zeros(self.dim)
        self._changed = True  # samples came or went since the last fit

    def start(self, pos_pooled: np.ndarray, neg_pooled: np.ndarray) -> None:
        """The first frame's samples (kept for the whole sequence), then a fit."""
        p, n = _augment(pos_pooled), _augment(neg_pooled)
        self.first = ((p.T @ p).astype(np.float64), len(p), (n.T @ n).astype(np.float64), len(n))
        self._changed = True
        self.fit()

    def add(self, pos_pooled: np.ndarray, neg_pooled: np.ndarray) -> None:
        """One successful frame's samples; the oldest frames leave their windows."""
        self.pos.add(_augment(pos_pooled))
        self.neg.add(_augment(neg_pooled))
        self._changed = True

    def fit(self) -> None:
        """Solve for the weights, positives and negatives weighted to count equally; nothing
        to do when no sample came or went since the last fit (a run of failed frames, which
        store none)."""
        if not self._changed:
            return
        self._changed = False
        gp, n_p, gn, n_n = self.first
        gp, gn = gp + self.pos.gram, gn + self.neg.gram
        n_p, n_n = n_p + self.pos.n, n_n + self.neg.n
        wp = n_n / n_p
        # the last column of a Gram matrix of augmented rows is the sum of the rows
        a = wp * gp + gn + self.reg * np.eye(self.dim)
        self.w = np.linalg.solve(a, wp * gp[:, -1] - gn[:, -1])

    def score(self, pooled: np.ndarray) -> np.ndarray:
        return (_augment(pooled) @ self.w).astype(np.float32)
