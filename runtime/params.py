"""The online algorithm's parameters in one object (pytracking keeps parameters apart from
tracker code the same way); the spreads of MDNet's sample distributions are fixed, named in
``runtime.sampling``. Defaults follow MDNet / RT-MDNet where this CPU allows;
the comments say where and why they differ. Where a default was chosen by measurement, it
was on the development set (benchmarks/README.md), averaged over seeds 0-3: the same five
sequences the accuracy benchmark reports, so those figures are not a held-out test."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from numbers import Integral, Real

import numpy as np

from .errors import TrackerInputError

# The numeric parameters by the range they must lie in (checked in __post_init__).
_COUNTS_POSITIVE = ("n_candidates", "top_k", "n_pos_init", "n_neg_init", "n_pos_update", "n_neg_update",
                    "long_interval", "long_frames", "short_frames", "batch_pos", "batch_neg", "mine_from",
                    "ridge_first_neg")
_COUNTS = ("iters_init", "iters_update", "update_iters_per_frame", "fc4_rank", "n_bbreg")  # 0 allowed
_POSITIVE = ("trans", "scale", "widen_rate", "trans_max", "lr_init", "lr_update", "outlier_center",
             "min_size", "bbreg_alpha", "ridge_reg")
_MAY_BE_INF = ("outlier_center", "outlier_scale", "grad_clip")  # inf: that filter / clipping off
_UNIT = ("pos_iou_init", "neg_iou_init", "pos_iou_update", "neg_iou_update", "bbreg_iou")
_HALF_OPEN_UNIT = ("momentum", "dropout")  # [0, 1)
_ONLINE_LAYERS = (("fc6",), ("fc5", "fc6"), ("fc4", "fc5", "fc6"))


@dataclass(frozen=True)
class TrackerParams:
    """Read-only once made (checked in ``__post_init__``; a later assignment would bypass the
    checks and change a tracker already running on the object): ``replace(top_k=3)`` gives a
    changed copy."""

    # candidates (MDNet): Gaussian around the last box. MDNet uses trans 0.6 and scale 1.05
    # (OTB at 30 fps); UAV123@10fps and VOT move farther between frames and change scale
    # faster: 0.6 / 1.0 / 0.8 gave 0.36 / 0.43 / 0.44, and scale 1.1 with trans 0.8 0.45.
    n_candidates: int = 256
    trans: float = 0.8
    scale: float = 1.1
    # search widening on failure: translation factor x1.1 per failed frame, up to trans_max
    widen_rate: float = 1.1
    trans_max: float = 2.0
    # target = mean of the top-k candidates, after dropping outliers among them
    top_k: int = 5
    outlier_center: float = 0.5  # drop a box whose centre is farther than this * mean(w, h) from the median
    outlier_scale: float = 1.3   # ... or whose area differs from the median's by more than this factor
    # on the fused score: the top-k's mean of head score + ridge_weight * ridge score
    success_threshold: float = 0.0
    # first frame: samples and training
    n_pos_init: int = 500
    n_neg_init: int = 5000
    pos_iou_init: float = 0.7
    neg_iou_init: float = 0.5
    iters_init: int = 50
    lr_init: float = 5e-4
    # online updates
    # MDNet stores 50 / 200; 32 / 96 halves the cost of embedding them every frame (one
    # 128-row executor instead of 256) at a development-set AUC within the seed noise.
    n_pos_update: int = 32
    n_neg_update: int = 96
    pos_iou_update: float = 0.7
    neg_iou_update: float = 0.3
    long_interval: int = 10     # long-term update every N frames
    long_frames: int = 100      # positives of the last N frames
    short_frames: int = 20      # negatives (and short-term positives) of the last N frames
    # MDNet: 15 iterations at lr 1e-3. Here 10 at 2e-3, one per frame, so that a long-term
    # update fills the 10 frames until the next one: 10 instead of 15 cost 0.016 AUC at lr
    # 1e-3, and lr 2e-3 gained 0.014 back (four-seed means, benchmarks/README.md).
    iters_update: int = 10
    lr_update: float = 2e-3
    # How many update iterations run per frame: an update is spread over the following
    # frames so that no single frame stalls (0 = run the whole update at once, as MDNet).
    update_iters_per_frame: int = 1
    # minibatch and hard minibatch mining (MDNet mines 96 of 1024; 512 measured no worse,
    # 0.421 against 0.401, and halves the mining cost)
    batch_pos: int = 32
    batch_neg: int = 96
    mine_from: int = 512
    # optimiser (per-layer lr multipliers live in runtime.head.LR_MULT: fc6 x10)
    momentum: float = 0.9
    weight_decay: float = 5e-4
    grad_clip: float = 10.0
    dropout: float = 0.5
    # Layers fine-tuned online. MDNet trains fc4-fc6; training fc5-fc6 lets fc4's output be
    # cached per sample (an iteration costs ~5 ms instead of ~60). ("fc6",) caches fc5's
    # output and costs ~2 ms, but lost 0.04 AUC.
    online_layers: tuple = ("fc5", "fc6")
    # fc4 factored through a 1x1 projection of the feature map to this many channels (0 =
    # exact fc4): RoIAlign and fc4 cost rank/C of the full ones (runtime.head.factor_fc4).
    # 64 of 256 channels, 5 ms less per frame than 128; with the other defaults as they are,
    # 64 gave 0.472 against 0.424 for 128 and 0.425 for the exact fc4 (32: 0.459).
    fc4_rank: int = 64
    # bounding-box regression (ridge, on pooled conv features of the first frame)
    bbreg: bool = True
    n_bbreg: int = 1000
    bbreg_iou: float = 0.6
    bbreg_alpha: float = 1000.0
    # A ridge classifier on pooled conv features beside the fc head (runtime.ridge_scorer):
    # candidates are ranked by head score + ridge_weight * its score (about +-1); 0 turns it
    # off. It pools each box's inner part, ridge_shrink of the width and the height taken off
    # each side (0: the whole box, as the head pools it). Mean AUC over seeds 0-7 on the
    # development set: 0.561 with 15 and 0.25, against 0.496 with 3 and the whole box and
    # 0.468 without it (0.25 with 10 / 12 / 20 / 30: 0.521 / 0.557 / 0.541 / 0.539; seeds
    # 0-3, weight 10: 0.2 / 0.3 gave 0.503 / 0.527 against 0.540). On eight sequences the
    # offline training had not seen (a model trained without them, seeds 0-3): 0.458 against
    # 0.411 for 3 and the whole box (benchmarks/README.md, "The ridge classifier on the
    # boxes' inner parts"). ridge_reg, ridge_first_neg: on seeds 0-3, in the first version
    # of it, ridge_reg 0.1 / 10 gave 0.492 / 0.480 against 0.515 for 1, and 3000 first-frame
    # negatives 0.479 against 0.515 for 1000.
    ridge_weight: float = 15.0
    ridge_reg: float = 1.0
    ridge_first_neg: int = 1000  # first-frame negatives it keeps (of n_neg_init)
    ridge_shrink: float = 0.25
    # boxes never shrink below this many pixels
    min_size: float = 4.0

    def __post_init__(self):
        """Refuse a value the algorithm cannot run with, naming it (a zero scale step once
        aborted the whole process inside MXNet's RoIAlign)."""
        def bad(name, want):
            return TrackerInputError(f"tracker parameter {name}={getattr(self, name)!r}: must be {want}")

        for name in _COUNTS_POSITIVE + _COUNTS:
            v = getattr(self, name)
            low = 1 if name in _COUNTS_POSITIVE else 0
            if isinstance(v, bool) or not isinstance(v, Integral) or v < low:
                raise bad(name, "a whole number" + (" >= 1" if low else " >= 0"))
            object.__setattr__(self, name, int(v))
        for name in _POSITIVE + _UNIT + _HALF_OPEN_UNIT + ("weight_decay", "success_threshold", "outlier_scale",
                                                           "grad_clip", "ridge_weight", "ridge_shrink"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, Real) or not (math.isfinite(v) or
                                                                       (name in _MAY_BE_INF and v == math.inf)):
                raise bad(name, "a finite number" + (" or inf" if name in _MAY_BE_INF else ""))
            object.__setattr__(self, name, float(v))
        if self.grad_clip < 0:
            raise bad("grad_clip", ">= 0 (0 or inf: no clipping)")
        for name in _POSITIVE:
            if getattr(self, name) <= 0:
                raise bad(name, "positive")
        for name in _UNIT:
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise bad(name, "an IoU in [0, 1]")
        for name in _HALF_OPEN_UNIT:
            if not 0.0 <= getattr(self, name) < 1.0:
                raise bad(name, "in [0, 1)")
        if self.weight_decay < 0:
            raise bad("weight_decay", ">= 0")
        if self.ridge_weight < 0:
            raise bad("ridge_weight", ">= 0 (0: no ridge classifier)")
        if not 0.0 <= self.ridge_shrink < 0.5:
            raise bad("ridge_shrink", "in [0, 0.5) (a fraction of the box taken off each side)")
        if self.outlier_scale < 1:
            raise bad("outlier_scale", ">= 1 (an area ratio)")
        if self.mine_from < self.batch_neg:
            raise bad("mine_from", f">= batch_neg ({self.batch_neg}): the hard negatives are mined from it")
        if not isinstance(self.bbreg, (bool, np.bool_)):
            raise bad("bbreg", "True or False")
        object.__setattr__(self, "bbreg", bool(self.bbreg))
        layers = tuple(self.online_layers) if isinstance(self.online_layers, (list, tuple)) else None
        if layers not in _ONLINE_LAYERS:
            raise bad("online_layers", f"one of {', '.join(map(str, _ONLINE_LAYERS))}")
        object.__setattr__(self, "online_layers", layers)

    def replace(self, **kw) -> "TrackerParams":
        known = {f.name for f in fields(self)}
        bad = sorted(set(kw) - known)
        if bad:
            raise TrackerInputError(f"unknown tracker parameter(s): {', '.join(bad)}")
        d = asdict(self)
        d.update(kw)
        return TrackerParams(**d)

    def to_dict(self) -> dict:
        return asdict(self)
