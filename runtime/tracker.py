"""The MDNet online tracker with a got10k-style ``init`` / ``update`` interface.

Per frame: one patch around the previous target, cropped into its bucket; features once;
RoIAlign of all candidates; fc scores plus a ridge classifier's (``runtime.ridge_scorer``);
top-k fusion without outliers; box regression; sample collection and long/short-term
updates spread over the following frames.
"""
from __future__ import annotations

import logging
import os
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from . import sampling
from .bbreg import BBoxRegressor
from .buckets import extractor_input
from .errors import TrackerInputError, TrackerStateError
from .fork_guard import check_not_forked, mark_mxnet_used
from .geometry import iou, keep_center_inside
from .head import effective_rank
from .imageops import to_bgr8
from .model import Model, load_model
from .params import TrackerParams
from .ridge_scorer import RidgeScorer

log = logging.getLogger("runtime.tracker")
_WARNED_NO_STATS = set()  # model hashes warned about

STAGES = ("crop", "features", "head", "bbreg", "update")


@dataclass
class TrackResult:
    box: np.ndarray  # (x, y, w, h) float image pixels
    score: float     # target score of the fused top-k: head + ridge_weight x ridge (above success_threshold: found)
    ok: bool         # success flag
    ms: float = 0.0  # wall time of this call
    stages: dict = field(default_factory=dict)  # ms per stage; "other" is Python overhead
    bucket: int = -1


def fuse_top_k(boxes: np.ndarray, scores: np.ndarray, k: int, max_center: float, max_scale: float):
    """Indices of the top-``k`` boxes by score after dropping outliers.

    A box is an outlier when its centre is farther than ``max_center * mean(w, h)`` of the
    median box from the median centre, or its area differs from the median's by more than
    ``max_scale`` times. The best-scoring box is always kept.
    """
    top = np.argsort(-scores, kind="stable")[:k]
    b = boxes[top]
    c = b[:, :2] + b[:, 2:] / 2
    med_c = np.median(c, axis=0)
    med_wh = np.median(b[:, 2:], axis=0)
    dist = np.linalg.norm(c - med_c, axis=1) / max(med_wh.mean(), 1e-6)
    area = b[:, 2] * b[:, 3]
    med_a = max(float(np.median(area)), 1e-6)
    ratio = np.maximum(area / med_a, med_a / np.maximum(area, 1e-6))
    keep = (dist <= max_center) & (ratio <= max_scale)
    keep[0] = True
    return top[keep]


def start_box(box, size, params: TrackerParams | None = None, min_size: float | None = None) -> np.ndarray:
    """The box a tracker starts from, given the initial ``box`` (x,y,w,h) in an image of
    ``size`` (w, h): checked (a TrackerInputError if it is no box or lies outside), clipped to
    the image and grown about its centre to the smallest size ``params`` sample (defaults:
    ``TrackerParams()``). ``Tracker.init`` starts from it; the benchmarks start the peer
    trackers from it too, so every tracker starts from the same box."""
    try:
        b = np.asarray(box, dtype=np.float64)
        raw = np.asarray(box)
    except (TypeError, ValueError):
        raise TrackerInputError(f"initial box must be 4 finite numbers x,y,w,h, got {box!r}") from None
    # (4,) or one row (1, 4); a (2, 2) corner pair flattened would be read as x,y,w,h
    # without a word, and booleans are no coordinates.
    if b.shape not in ((4,), (1, 4)) or raw.dtype == np.bool_ or not np.all(np.isfinite(b)):
        raise TrackerInputError(f"initial box must be 4 finite numbers x,y,w,h, got {raw.tolist()}")
    b = b.reshape(4)
    if b[2] <= 0 or b[3] <= 0:
        raise TrackerInputError(f"initial box {b.tolist()} has no area: width and height must be positive")
    with np.errstate(over="ignore"):  # x + w beyond float range is beyond the image too
        x1, y1 = max(b[0], 0.0), max(b[1], 0.0)
        x2, y2 = min(b[0] + b[2], size[0]), min(b[1] + b[3], size[1])
    if b[0] >= size[0] or b[1] >= size[1] or x2 <= 0 or y2 <= 0:
        raise TrackerInputError(f"initial box {b.tolist()} lies outside the {size[0]}x{size[1]} image")
    if x2 - x1 <= 0 or y2 - y1 <= 0:  # inside, but thinner than float precision at its position
        raise TrackerInputError(f"initial box {b.tolist()} is too thin to have a visible part; give a width and "
                                "height of a pixel or more")
    # Part outside the image: keep the visible part (what the first frame can show).
    b = np.array([x1, y1, x2 - x1, y2 - y1])
    # Every candidate is at least min_size pixels a side and every training sample at
    # least sampling.MIN_SAMPLE_SIZE, so a thinner box would get no positive sample (IoU >= 0.7):
    # grow it to the larger of the two about its centre, moved back inside the image where the
    # growth crossed its border (and the image is large enough to hold it).
    m = max((params or TrackerParams()).min_size, sampling.MIN_SAMPLE_SIZE) if min_size is None else min_size
    if b[2] < m or b[3] < m:
        c = b[:2] + b[2:] / 2
        wh = np.maximum(b[2:], m)
        xy = c - wh / 2
        room = np.asarray(size[:2], np.float64) - wh
        xy = np.where(room >= 0, np.clip(xy, 0.0, np.maximum(room, 0.0)), xy)
        b = np.concatenate([xy, wh])
    return b



NOT_COPYABLE = ("a Tracker cannot be copied or pickled (it holds MXNet executors and loaded libraries); make "
                "another Tracker(...) and init it, or keep its TrackerParams (those copy and pickle)")


class Tracker:
    """``Tracker(model, backend, device, seed).init(image, box)`` then ``update(image)``.

    Images are BGR uint8 arrays as OpenCV gives them (grayscale, BGRA and 16-bit are
    converted). ``artifacts`` points the compiled backends at a prebuilt artifact set.
    """

    def __init__(self, model=None, backend: str = "mxnet", device: str = "cpu", seed: int = 0,
                 params: TrackerParams | None = None, artifacts=None, bucketed: bool = True, **params_kw):
        from .backends import make_backend
        from .backends.mxnet_backend import mx_context
        from .devices import parse_device

        check_not_forked()

        # model=None: the shipped models/default, found from the package, not the cwd
        if not (model is None or isinstance(model, (Model, str, os.PathLike))):
            raise TrackerInputError(f"model must be a model folder path or a Model, got {type(model).__name__}")
        self.model: Model = model if isinstance(model, Model) else load_model(model)
        if isinstance(params, dict):
            params = TrackerParams().replace(**params)
        elif params is not None and not isinstance(params, TrackerParams):
            raise TrackerInputError(f"params must be a TrackerParams or a dict of its fields, got {type(params).__name__}")
        self.params = (params or TrackerParams()).replace(**params_kw) if params_kw else (params or TrackerParams())
        p = self.params
        if p.online_layers[0] == "fc4" and effective_rank(p, self.model.channels):
            raise TrackerInputError(f"tracker parameter fc4_rank={p.fc4_rank}: must be 0 (the exact fc4) when "
                                    "online_layers trains fc4: a factored fc4 is cached, not trained")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise TrackerInputError(f"seed must be a whole number >= 0, got {seed!r}")
        if effective_rank(p, self.model.channels) and self.model.feature_cov is None \
                and self.model.model_hash not in _WARNED_NO_STATS:  # once, not once per sequence
            # a model trained without the README's feature_stats step still tracks, less well
            _WARNED_NO_STATS.add(self.model.model_hash)
            log.warning("model %s has no feature statistics, so fc4 is factored without them (lower accuracy); "
                        "add them with: python -m train_mx.feature_stats --model %s", self.model.path, self.model.path)
        self.policy = self.model.policy
        device = parse_device(device)
        if artifacts is not None and backend == "mxnet":
            raise TrackerInputError("artifacts are compiled sets for the onnxruntime and tvm backends; "
                                    "the mxnet backend takes none (drop --artifacts / artifacts=, or pick another backend)")
        # bucketed=False: the unbucketed baseline for benchmarks (MXNet only): one exact
        # patch shape per frame, binding new executors whenever the shape is new. Checked
        # before the backend, which may export or compile for minutes on first use.
        if not bucketed and backend != "mxnet":
            raise TrackerInputError("the unbucketed baseline exists for the mxnet backend only")
        kw = {"artifacts": artifacts} if artifacts is not None and backend != "mxnet" else {}
        self.backend = make_backend(backend, self.model, device=device, **kw)
        mark_mxnet_used()
        self.ctx = mx_context(device) if backend == "mxnet" else mx_context("cpu")
        self.seed = int(seed)
        self.bucketed = bucketed
        self.head = None
        self.ridge = None
        self.frame = -1

    # A tracker's executors and loaded libraries are this process's: a pickled or deep-copied
    # one fails inside MXNet's ctypes, and a shallow copy shares the head with the original.
    def __reduce__(self):
        raise TypeError(NOT_COPYABLE)

    def __copy__(self):
        raise TypeError(NOT_COPYABLE)

    def __deepcopy__(self, memo):
        raise TypeError(NOT_COPYABLE)

    # -- helpers ------------------------------------------------------------------------
    def _geometry(self, box, region=None):
        if self.bucketed:
            return self.policy.select(box, region)
        return self.policy.unbucketed(box, region)

    def _features(self, image, geom, stages):
        t = time.perf_counter()
        x = extractor_input(image, geom, self.model.mean)
        t1 = time.perf_counter()
        feat = self.backend.extract(geom.bucket, x) if self.bucketed else self.backend.extract_any(x)
        stages["crop"] = stages.get("crop", 0.0) + (t1 - t) * 1e3
        stages["features"] = stages.get("features", 0.0) + (time.perf_counter() - t1) * 1e3
        return feat

    def _check_box(self, box, size):
        return start_box(box, size, self.params)

    # -- the interface ------------------------------------------------------------------
    def init(self, image, box) -> TrackResult:
        """Start a new sequence. Everything is built aside and swapped in at the end, so an
        init refused half-way leaves the tracker on its previous sequence (or uninitialised)."""
        from .head import OnlineHead

        check_not_forked()  # a tracker inherited through fork
        t0 = time.perf_counter()
        p = self.params
        image = to_bgr8(image)
        size = (image.shape[1], image.shape[0])
        box = self._check_box(box, size)
        rng = np.random.default_rng(self.seed)
        head = OnlineHead(self.model, self.ctx, p, rng)
        head.prepare([(1, self.model.channels) + self.policy.feature_shape(b) for b in range(len(self.policy.shapes))])
        stages = {}

        geom = self._geometry(box)
        feat = self._features(image, geom, stages)
        t = time.perf_counter()
        bounds = geom.sample_bounds(size)
        pos, neg = sampling.first_frame_samples(rng, box, p.n_pos_init, p.n_neg_init, bounds,
                                                p.pos_iou_init, p.neg_iou_init)
        # parameters can ask for an IoU range no sample reaches (pos_iou_init=1, a min_size
        # larger than the frame): say so instead of failing inside the first training step
        where = f"for the box {np.round(box, 2).tolist()} in the {size[0]}x{size[1]} image"
        if not len(pos):
            grown = f", or min_size={p.min_size} (the box is grown to it)" if p.min_size > min(size) else ""
            raise TrackerInputError(f"no positive sample with IoU >= pos_iou_init={p.pos_iou_init} {where}; "
                                    f"lower pos_iou_init{grown}")
        if not len(neg):
            raise TrackerInputError(f"no negative sample with IoU <= neg_iou_init={p.neg_iou_init} {where}; "
                                    "raise neg_iou_init")
        ridge = p.ridge_weight > 0
        _, pos_e, pos_r = head.embed_all(feat, geom.to_patch(pos), want_pooled=False, want_ridge=ridge)
        _, neg_e, neg_r = head.embed_all(feat, geom.to_patch(neg), want_pooled=False, want_ridge=ridge)
        stages["head"] = (time.perf_counter() - t) * 1e3

        t = time.perf_counter()
        bbreg = None
        if p.bbreg:
            trans, scale = sampling.BBREG_SPREAD
            bb = sampling.sample_by_iou(rng, "uniform", box, p.n_bbreg, p.bbreg_iou, 1.0, bounds, trans=trans, scale=scale)
            if len(bb) >= 10:  # fewer would not constrain the ridge regression's 4 targets
                bb_pooled, _ = head.embed(feat, geom.to_patch(bb))
                bbreg = BBoxRegressor(p.bbreg_alpha).fit(bb_pooled, bb, box)
        stages["bbreg"] = (time.perf_counter() - t) * 1e3

        t = time.perf_counter()
        head.set_lr(p.lr_init)
        for _ in range(p.iters_init):
            head.train_step(pos_e, neg_e)
        pos_mem = deque([pos_e[rng.permutation(len(pos_e))[: p.n_pos_update]]], maxlen=p.long_frames)
        neg_mem = deque([neg_e[rng.permutation(len(neg_e))[: p.n_neg_update]]], maxlen=p.short_frames)
        scorer = None
        if ridge:
            scorer = RidgeScorer(head.pooled_dim, p.ridge_reg, p.long_frames, p.short_frames)
            # evenly spaced over all the negatives: the subset keeps the near / whole-image mix
            # without a random draw (the head's draws stay what they are with the ridge off)
            k = min(len(neg_r), p.ridge_first_neg)
            scorer.start(pos_r, neg_r[np.arange(k) * len(neg_r) // k])
        stages["update"] = (time.perf_counter() - t) * 1e3

        self.rng, self.head, self.bbreg, self.pos_mem, self.neg_mem = rng, head, bbreg, pos_mem, neg_mem
        self.ridge = scorer
        self.frame, self.size, self.box, self.trans_f = 0, size, box.copy(), p.trans
        self.pending = None
        self.updates = {"long": 0, "short": 0}
        return self._result(box, float("inf"), True, t0, stages, geom.bucket)

    def update(self, image) -> TrackResult:
        check_not_forked()
        if self.head is None:
            raise TrackerStateError("call init(image, box) before update(image)")
        t0 = time.perf_counter()
        p = self.params
        image = to_bgr8(image)
        size = (image.shape[1], image.shape[0])
        if size != self.size:
            # boxes are image pixels: a resized frame would silently move and shrink them
            raise TrackerInputError(f"frame is {size[0]}x{size[1]} but the tracker was initialised on a "
                                    f"{self.size[0]}x{self.size[1]} image; resize it, or call init for a new sequence")
        self.frame += 1
        stages = {}
        rng = self.rng

        region = self.policy.search_region(self.box, widen=self.trans_f / p.trans)
        geom = self._geometry(self.box, region)
        feat = self._features(image, geom, stages)

        t = time.perf_counter()
        img_rect = np.array([0.0, 0.0, size[0], size[1]])
        cand = sampling.clip_into(sampling.gaussian(rng, self.box, p.n_candidates, self.trans_f, p.scale),
                                  img_rect, p.min_size)
        pooled, emb, ridge_x = self.head.embed_all(feat, geom.to_patch(cand), want_ridge=self.ridge is not None)
        scores = self._scores(emb, ridge_x)
        keep = fuse_top_k(cand, scores, p.top_k, p.outlier_center, p.outlier_scale)
        score = float(scores[keep].mean())
        ok = score > p.success_threshold
        fused = cand[keep].mean(axis=0)
        stages["head"] = (time.perf_counter() - t) * 1e3

        t = time.perf_counter()
        result = fused
        if ok and self.bbreg is not None:
            result = self.bbreg.predict(pooled[keep], cand[keep]).mean(axis=0)
        result = keep_center_inside(result, size, p.min_size)
        self.box = keep_center_inside(fused, size, p.min_size)
        self.trans_f = p.trans if ok else min(self.trans_f * p.widen_rate, p.trans_max)
        stages["bbreg"] = (time.perf_counter() - t) * 1e3

        t = time.perf_counter()
        if ok:
            bounds = geom.sample_bounds(size)
            pos = sampling.sample_by_iou(rng, "gaussian", self.box, p.n_pos_update, p.pos_iou_update, 1.0,
                                         bounds, trans=sampling.POS_SPREAD[0], scale=sampling.POS_SPREAD[1])
            neg = sampling.sample_by_iou(rng, "uniform", self.box, p.n_neg_update, 0.0, p.neg_iou_update,
                                         bounds, trans=sampling.NEG_UPDATE_SPREAD[0], scale=sampling.NEG_UPDATE_SPREAD[1])
            if len(pos) and len(neg):
                _, e, rx = self.head.embed_all(feat, geom.to_patch(np.concatenate([pos, neg])), want_pooled=False,
                                               want_ridge=self.ridge is not None)
                # Copies, not views: a view would keep the whole array (negatives too) alive
                # for as long as the positives stay in the long-term window.
                self.pos_mem.append(e[: len(pos)].copy())
                self.neg_mem.append(e[len(pos):].copy())  # deque(maxlen=short_frames): older negatives drop out
                if self.ridge is not None:
                    self.ridge.add(rx[: len(pos)], rx[len(pos):])
        if not ok:
            self._start_update("short")
        elif self.frame % p.long_interval == 0:
            self._start_update("long")
        if self.ridge is not None and (not ok or self.frame % p.long_interval == 0):
            self.ridge.fit()  # a linear solve, at the head's update triggers
        self._run_update()
        stages["update"] = (time.perf_counter() - t) * 1e3
        return self._result(result, score, ok, t0, stages, geom.bucket)

    def _scores(self, emb, ridge_x) -> np.ndarray:
        """Candidates' target scores: the fc head's, plus the ridge classifier's when on
        (``ridge_x``: its features, ``OnlineHead.embed_all``)."""
        s = self.head.score(emb)
        if self.ridge is not None:
            s = s + np.float32(self.params.ridge_weight) * self.ridge.score(ridge_x)
        return s

    # -- online updates -------------------------------------------------------------------
    def _start_update(self, kind: str) -> None:
        p = self.params
        frames = p.short_frames if kind == "short" else p.long_frames
        pos = list(self.pos_mem)[-frames:]
        if not pos or not self.neg_mem:
            return
        self.updates[kind] += 1
        self.pending = [np.concatenate(pos), np.concatenate(list(self.neg_mem)), p.iters_update]

    def _run_update(self) -> None:
        if self.pending is None:
            return
        pos, neg, left = self.pending
        n = left if self.params.update_iters_per_frame <= 0 else min(left, self.params.update_iters_per_frame)
        self.head.set_lr(self.params.lr_update)
        for _ in range(n):
            self.head.train_step(pos, neg)
        self.pending = None if left - n <= 0 else [pos, neg, left - n]

    def _result(self, box, score, ok, t0, stages, bucket) -> TrackResult:
        ms = (time.perf_counter() - t0) * 1e3
        for s in STAGES:
            stages.setdefault(s, 0.0)
        stages["other"] = max(0.0, ms - sum(stages[s] for s in STAGES))
        return TrackResult(box=np.asarray(box, dtype=np.float64), score=score, ok=bool(ok), ms=ms,
                           stages=stages, bucket=bucket)
