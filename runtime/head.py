"""The online head: RoIAlign + fc4 -> fc5 -> fc6 in MXNet, fine-tuned while tracking.

Every graph is bound exactly once, for the fixed batch sizes it is used with:

* *embed* executors per bucket, one per row count (``chunk`` candidates, one frame's stored
  samples): (feature map, RoIs) -> pooled conv features
  (for bounding-box regression), the cached input of the trainable layers and, where the
  ridge classifier pools the boxes' inner parts (``ridge_shrink``), those parts' pooled
  features;
* *score* (``chunk`` rows), *mine* (``mine_from`` rows) and *train* (``batch_pos +
  batch_neg`` rows) executors over the trainable layers, sharing one set of weights.

Layers before the first online-trained one are frozen, so what they output for a stored
sample is cached once (``embed``) and never recomputed. With the default
``online_layers=("fc5", "fc6")`` that cache is fc4's 512-d output and an update iteration
costs a few ms; ``("fc4", "fc5", "fc6")`` is MDNet's original choice (cache = pooled conv
features, each iteration many times dearer).

``fc4_rank`` > 0 factors fc4 (512 x C*9) into a 1x1 projection of the feature map to
``fc4_rank`` channels and a 512 x rank*9 fc4, chosen to reconstruct fc4's output best on
the model's feature statistics (``train_mx.feature_stats``): RoIAlign and fc4 then cost
rank/C of the full ones. Dropout masks come from the head's own generator, so trackers
sharing a process stay independent without reseeding MXNet every step.
"""
from __future__ import annotations

import numpy as np

from .errors import TrackerInputError

FC_LAYERS = ("fc4", "fc5", "fc6")
MIN_ROI = 1e-2  # patch pixels: the narrowest RoI handed to RoIAlign (see embed)
LR_MULT = {"fc4_weight": 1.0, "fc4_bias": 2.0, "fc5_weight": 1.0, "fc5_bias": 2.0,
           "fc6_weight": 10.0, "fc6_bias": 20.0}


def _dropped(first: str, dropout: float) -> tuple:
    """Layers whose input gets dropout while training (MDNet: fc5 and fc6)."""
    return tuple(l for l in FC_LAYERS[FC_LAYERS.index(first):] if l != "fc4") if dropout else ()


def _top_symbol(first: str, masks: tuple = ()):
    """Trainable layers from ``first`` to fc6; the input 'x' is what the layer before gives.
    ``masks``: layers whose input is multiplied by a ``mask_<layer>`` input (dropout)."""
    import mxnet as mx

    x = mx.sym.Variable("x")
    for layer in FC_LAYERS[FC_LAYERS.index(first):]:
        if layer in masks:
            x = x * mx.sym.Variable(f"mask_{layer}")
        n = 2 if layer == "fc6" else 512
        x = mx.sym.FullyConnected(x, num_hidden=n, name=layer)
        if layer != "fc6":
            x = mx.sym.Activation(x, act_type="relu", name=f"{layer}_relu")
    return x


def _inner_rois(rois, frac: float):
    """RoI rows (batch index, x1, y1, x2, y2) with ``frac`` of the width and height taken off
    each side, never below MIN_ROI (see ``OnlineHead.embed_all``). They are pooled as the
    model pools any RoI (``roi_pool``: its ``roi_shrink`` pixels come off the inner box too,
    its ``roi_offset`` is added once)."""
    import mxnet as mx

    idx = mx.sym.slice_axis(rois, axis=1, begin=0, end=1)
    lo = mx.sym.slice_axis(rois, axis=1, begin=1, end=3)
    hi = mx.sym.slice_axis(rois, axis=1, begin=3, end=5)
    d = mx.sym.minimum((hi - lo) * float(frac), mx.sym.relu((hi - lo - MIN_ROI) * 0.5))
    return mx.sym.concat(idx, lo + d, hi - d, dim=1)


def _embed_symbol(first: str, sample_ratio: int, rank: int = 0, shrink: float = 0.0, offset: float = 0.0,
                  inner: float = 0.0):
    """(feat, rois) -> [pooled (projected) conv features, input of layer ``first``, and with
    ``inner`` > 0 the features pooled from the RoIs' inner parts (``_inner_rois``)]."""
    import mxnet as mx

    from train_mx import network

    feat = mx.sym.Variable("feat")
    if rank:
        feat = mx.sym.Convolution(feat, weight=mx.sym.Variable("proj_weight"), num_filter=rank, kernel=(1, 1),
                                  no_bias=True, name="proj")
    rois = mx.sym.Variable("rois")
    pooled = mx.sym.flatten(network.roi_pool(feat, rois, sample_ratio, shrink, offset), name="pooled")
    x = pooled
    for layer in FC_LAYERS[: FC_LAYERS.index(first)]:
        x = mx.sym.FullyConnected(x, num_hidden=512, name=layer)
        x = mx.sym.Activation(x, act_type="relu", name=f"{layer}_relu")
    outs = [pooled] + ([x] if x is not pooled else [])
    if inner:
        outs.append(mx.sym.flatten(network.roi_pool(feat, _inner_rois(rois, inner), sample_ratio, shrink, offset),
                                   name="pooled_inner"))
    return mx.sym.Group(outs)


def effective_rank(params, channels: int) -> int:
    """The rank fc4 is factored to; 0 is the exact fc4 (``fc4_rank`` 0, or not below the
    feature channels, where a factoring would save nothing)."""
    return int(params.fc4_rank) if 0 < int(params.fc4_rank) < channels else 0


def factor_fc4(w4: np.ndarray, rank: int, cov: np.ndarray | None = None):
    """fc4 weights (512, C*9) -> (P (rank, C), W (512, rank*9)) with fc4(pool(F)) ~=
    W pool(P F): pooling is linear per channel, so the projection commutes with it.

    Minimises the expected squared error of fc4's output for features with second moment
    ``cov`` (identity when None): whiten with cov^(1/2), keep the top ``rank`` singular
    directions. P is scaled so that projected features keep the per-channel magnitude of
    the originals (the box regressor's ridge penalty assumes that scale).
    """
    out, cols = w4.shape
    c = cols // 9
    m = w4.reshape(out, c, 9).transpose(0, 2, 1).reshape(out * 9, c).astype(np.float64)
    cov = np.eye(c) if cov is None else np.asarray(cov, np.float64)
    ev, evec = np.linalg.eigh(cov + 1e-6 * max(np.trace(cov) / c, 1e-12) * np.eye(c))
    root = evec * np.sqrt(ev)           # cov = root root^T
    u, sv, vt = np.linalg.svd(m @ root, full_matrices=False)
    p = vt[:rank] @ np.linalg.inv(root)  # projected features have identity second moment
    w = u[:, :rank] * sv[:rank]
    g = np.sqrt(np.trace(cov) / c)
    p, w = p * g, w / g
    return p.astype(np.float32), w.reshape(out, 9, rank).transpose(0, 2, 1).reshape(out, rank * 9).astype(np.float32)


class OnlineHead:
    """Scores candidate boxes and learns target vs background online (MDNet's fc layers)."""

    def __init__(self, model, ctx, params, rng: np.random.Generator):
        import mxnet as mx

        self.p = params
        self.ctx = ctx
        self.rng = rng
        self.binds = 0
        self.online_layers = params.online_layers  # one of FC_LAYERS' suffixes (TrackerParams checks)
        first = self.online_layers[0]
        self.rank = effective_rank(params, model.channels)
        if self.rank and first == "fc4":
            raise TrackerInputError("fc4_rank needs fc4 frozen: train online_layers ('fc5', 'fc6') or ('fc6',)")
        self.pooled_dim = (self.rank or model.channels) * 9
        self.embed_dim = self.pooled_dim if first == "fc4" else 512

        head = model.head_params()
        if self.rank:
            # one factorisation per model and rank (an SVD, ~50 ms), not one per target
            cache = model.__dict__.setdefault("_fc4_factors", {})
            if self.rank not in cache:
                cache[self.rank] = factor_fc4(head["fc4_weight"], self.rank, model.feature_cov)
            proj, w4 = cache[self.rank]
            head = dict(head, fc4_weight=w4, proj_weight=proj[:, :, None, None])
        # Frozen layers keep the offline weights; fc6 starts fresh for every sequence.
        self._frozen = {k: mx.nd.array(v, ctx=ctx) for k, v in head.items()
                        if k.split("_")[0] in FC_LAYERS[: FC_LAYERS.index(first)] + ("proj",)}
        self._init_weights = {}
        for layer in self.online_layers:
            if layer == "fc6":
                w = rng.normal(0, 0.01, (2, 512)).astype(np.float32)
                b = np.zeros(2, np.float32)
            else:
                w, b = head[f"{layer}_weight"], head[f"{layer}_bias"]
            self._init_weights[f"{layer}_weight"] = w
            self._init_weights[f"{layer}_bias"] = b

        # The ridge classifier's features (runtime.ridge_scorer) are pooled from the RoIs'
        # inner parts where ridge_shrink asks for it; the fc head and the box regressor pool
        # the RoIs themselves.
        self.inner = float(params.ridge_shrink) if params.ridge_weight > 0 else 0.0
        # Embed executors, one per (bucket, row count), bound by prepare() and kept.
        self._embed_sym = _embed_symbol(first, model.roi_sample_ratio, self.rank, model.roi_shrink,
                                        model.roi_offset, self.inner)
        self._embed = {}
        self.chunk = int(params.n_candidates)
        # Row counts the embed executors are bound for: candidates, and the samples stored
        # per frame (a smaller executor: RoIAlign and fc4 cost grows with the rows bound).
        self.chunks = tuple(sorted({self.chunk, int(params.n_pos_update) + int(params.n_neg_update)}))

        top = _top_symbol(first)
        self._dropped = _dropped(first, params.dropout)
        label = mx.sym.Variable("label")
        train_sym = mx.sym.SoftmaxOutput(_top_symbol(first, self._dropped), label=label, normalization="batch",
                                         name="softmax")
        n_train = params.batch_pos + params.batch_neg
        self.weights = {k: mx.nd.array(v, ctx=ctx) for k, v in self._init_weights.items()}
        self.grads = {k: mx.nd.zeros(v.shape, ctx=ctx) for k, v in self.weights.items()}
        self._x_train = mx.nd.zeros((n_train, self.embed_dim), ctx=ctx)
        self._label = mx.nd.zeros((n_train,), ctx=ctx)
        self._masks = {f"mask_{l}": mx.nd.ones((n_train, self.embed_dim if l == first else 512), ctx=ctx)
                       for l in self._dropped}
        inputs = {"x": self._x_train, "label": self._label, **self._masks}
        self._train = train_sym.bind(ctx, args=dict(self.weights, **inputs), args_grad=dict(self.grads),
                                     grad_req={**{k: "write" for k in self.weights}, **{k: "null" for k in inputs}})
        self._score = top.bind(ctx, args=dict(self.weights, x=mx.nd.zeros((self.chunk, self.embed_dim), ctx=ctx)),
                               grad_req="null")
        self._mine = top.bind(ctx, args=dict(self.weights, x=mx.nd.zeros((params.mine_from, self.embed_dim), ctx=ctx)),
                              grad_req="null")
        self.binds += 3
        names = sorted(self.weights)
        self._names = names
        self._make_optimizer(params.lr_init)

    def _make_optimizer(self, lr):
        import mxnet as mx

        opt = mx.optimizer.SGD(learning_rate=lr, momentum=self.p.momentum, wd=self.p.weight_decay,
                               clip_gradient=self.p.grad_clip, param_idx2name=dict(enumerate(self._names)))
        opt.set_lr_mult({k: v for k, v in LR_MULT.items() if k in self.weights})
        opt.set_wd_mult({k: (0.0 if k.endswith("_bias") else 1.0) for k in self.weights})
        self.optimizer = opt
        self._updater = mx.optimizer.get_updater(opt)

    def set_lr(self, lr: float) -> None:
        self.optimizer.set_learning_rate(lr)

    # -- features -----------------------------------------------------------------------
    def _embed_exec(self, feat_shape, rows: int):
        import mxnet as mx

        key = (tuple(feat_shape), rows)
        ex = self._embed.get(key)
        if ex is None:
            args = dict(self._frozen)
            args["feat"] = mx.nd.zeros(key[0], ctx=self.ctx)
            args["rois"] = mx.nd.zeros((rows, 5), ctx=self.ctx)
            # one embedding runs at a time: the executors share the first one's memory
            pool = next(iter(self._embed.values()), None)
            ex = self._embed_sym.bind(self.ctx, args=args, grad_req="null", shared_exec=pool)
            self._embed[key] = ex
            self.binds += 1
        return ex

    def prepare(self, feat_shapes) -> None:
        """Bind the embed executors for every bucket's feature shape up front, the largest
        first (its memory is the pool the others share)."""
        for s, rows in sorted(((tuple(s), r) for s in feat_shapes for r in self.chunks),
                              key=lambda k: -np.prod(k[0]) * k[1]):
            self._embed_exec(s, rows)

    def embed(self, feat: np.ndarray, boxes_patch: np.ndarray, want_pooled: bool = True):
        """Pooled conv features (N, C*9) and trainable-layer inputs (N, D) of patch boxes.

        ``want_pooled=False`` skips copying the pooled features out (None is returned for
        them, unless fc4 is trained online: its input is the pooled features) where only the
        cached layer inputs are kept, e.g. for stored samples.
        """
        return self.embed_all(feat, boxes_patch, want_pooled, want_ridge=False)[:2]

    def embed_all(self, feat: np.ndarray, boxes_patch: np.ndarray, want_pooled: bool = True,
                  want_ridge: bool = True):
        """``embed``'s two, and the ridge classifier's features (N, C*9) from the same pass:
        pooled from the boxes' inner parts (``ridge_shrink``), or the pooled features
        themselves; None without ``want_ridge``."""
        n = len(boxes_patch)
        rows = next((c for c in self.chunks if c >= n), self.chunks[-1])
        ex = self._embed_exec(feat.shape, rows)
        ex.arg_dict["feat"][:] = feat
        split = self.embed_dim != self.pooled_dim
        inner = want_ridge and self.inner > 0
        want_pooled = want_pooled or (want_ridge and not inner)
        pooled = np.empty((n, self.pooled_dim), np.float32) if (want_pooled or not split) else None
        emb = np.empty((n, self.embed_dim), np.float32) if split else pooled
        ridge_x = np.empty((n, self.pooled_dim), np.float32) if inner else (pooled if want_ridge else None)
        # Rows past the boxes get a valid dummy box whose output is discarded: MXNet's CPU
        # RoIAlign does not skip a batch index of -1, and such a row corrupted other rows.
        pad = np.array([0.0, 0.0, 0.0, 1.0, 1.0], np.float32)
        rois = np.tile(pad, (rows, 1))
        for s in range(0, n, rows):
            b = boxes_patch[s:s + rows]
            rois[:] = pad
            rois[: len(b), 1] = b[:, 0]
            rois[: len(b), 2] = b[:, 1]
            # A RoI of no width in float32 (a box shrunk to nothing by a far-widened search's
            # patch scale) aborts the whole process in MXNet's RoIAlign: keep MIN_ROI px.
            rois[: len(b), 3] = b[:, 0] + np.maximum(b[:, 2], MIN_ROI)
            rois[: len(b), 4] = b[:, 1] + np.maximum(b[:, 3], MIN_ROI)
            ex.arg_dict["rois"][:] = rois
            ex.forward(is_train=False)
            if pooled is not None:
                pooled[s:s + len(b)] = ex.outputs[0][: len(b)].asnumpy()
            if split:
                emb[s:s + len(b)] = ex.outputs[1][: len(b)].asnumpy()
            if inner:
                ridge_x[s:s + len(b)] = ex.outputs[-1][: len(b)].asnumpy()
        return pooled, emb, ridge_x

    # -- scoring ------------------------------------------------------------------------
    def _run(self, ex, x):
        n = ex.arg_dict["x"].shape[0]
        out = np.empty((len(x), 2), np.float32)
        buf = np.zeros((n, x.shape[1]), np.float32)
        for s in range(0, len(x), n):
            b = x[s:s + n]
            buf[: len(b)] = b
            if len(b) < n:
                buf[len(b):] = 0
            ex.arg_dict["x"][:] = buf
            ex.forward(is_train=False)
            out[s:s + len(b)] = ex.outputs[0].asnumpy()[: len(b)]
        return out

    def score(self, emb: np.ndarray) -> np.ndarray:
        """Target score of each row: fc6 positive minus negative logit (above
        ``success_threshold``, 0 by default: target)."""
        out = self._run(self._score, emb)
        return out[:, 1] - out[:, 0]

    # -- training -----------------------------------------------------------------------
    def hard_negatives(self, neg: np.ndarray, k: int) -> np.ndarray:
        """Indices of the ``k`` highest-scoring rows of ``neg`` (hard minibatch mining)."""
        # the mining executor is bound for exactly mine_from rows; other sizes go in chunks
        out = self._run(self._mine if len(neg) == self.p.mine_from else self._score, neg)
        return np.argsort(-(out[:, 1] - out[:, 0]), kind="stable")[:k]

    def train_step(self, pos: np.ndarray, neg: np.ndarray) -> float:
        """One SGD step on ``batch_pos`` positives and ``batch_neg`` hard negatives mined
        from ``mine_from`` candidates; returns the minibatch loss."""
        p = self.p
        pi = self.rng.choice(len(pos), p.batch_pos, replace=len(pos) < p.batch_pos)
        ni = self.rng.choice(len(neg), p.mine_from, replace=len(neg) < p.mine_from)
        cand = neg[ni]
        hard = cand[self.hard_negatives(cand, p.batch_neg)]
        x = np.concatenate([pos[pi], hard], axis=0)
        y = np.concatenate([np.ones(p.batch_pos), np.zeros(p.batch_neg)]).astype(np.float32)
        self._x_train[:] = x
        self._label[:] = y
        keep = 1.0 - p.dropout
        for m in self._masks.values():
            m[:] = (self.rng.random(m.shape, np.float32) < keep) / np.float32(keep)
        self._train.forward(is_train=True)
        self._train.backward()
        for i, name in enumerate(self._names):
            self._updater(i, self.grads[name], self.weights[name])
        prob = self._train.outputs[0].asnumpy()
        return float(-np.mean(np.log(np.clip(prob[np.arange(len(y)), y.astype(int)], 1e-12, None))))
