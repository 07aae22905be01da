"""The ridge classifier beside the fc head: it separates what its labels separate, its
windows drop old samples exactly (old negatives are never re-used), and the tracker uses it
only when ``ridge_weight`` asks for it."""
import numpy as np
import pytest

from runtime.params import TrackerParams
from runtime.errors import TrackerInputError
from runtime.ridge_scorer import RidgeScorer, _augment


def _clusters(rng, n, centre, dim=24, spread=0.3):
    return np.abs(centre + spread * rng.standard_normal((n, dim))).astype(np.float32)


def test_scores_separate_target_from_background():
    rng = np.random.default_rng(0)
    dim = 24
    c_pos, c_neg = rng.random(dim) * 2, rng.random(dim) * 2
    r = RidgeScorer(dim, reg=1.0, long_frames=100, short_frames=20)
    r.start(_clusters(rng, 50, c_pos), _clusters(rng, 400, c_neg))  # 1:8, as the first frame is unbalanced
    test_pos, test_neg = _clusters(rng, 200, c_pos), _clusters(rng, 200, c_neg)
    sp, sn = r.score(test_pos), r.score(test_neg)
    assert (sp > 0).mean() > 0.95 and (sn < 0).mean() > 0.95
    # the classes count equally: a positive's mean score is about as far above 0 as a negative's is below
    assert 0.5 < sp.mean() / -sn.mean() < 2.0
    # the scale of a row does not matter (rows are normalised)
    np.testing.assert_allclose(r.score(10 * test_pos), sp, rtol=1e-5, atol=1e-6)


def test_windows_keep_exactly_the_recent_frames():
    """After many frames the running Gram matrices equal those of the frames still in the
    windows: positives of the last long_frames frames, negatives of the last short_frames."""
    rng = np.random.default_rng(1)
    dim, long_frames, short_frames = 8, 7, 3
    r = RidgeScorer(dim, reg=1.0, long_frames=long_frames, short_frames=short_frames)
    first = rng.random((5, dim)), rng.random((9, dim))
    r.start(*first)
    frames = [(rng.random((4, dim)), rng.random((6, dim))) for _ in range(25)]
    for p, n in frames:
        r.add(p, n)
    kept_pos = _augment(np.concatenate([p for p, _ in frames[-long_frames:]])).astype(np.float64)
    kept_neg = _augment(np.concatenate([n for _, n in frames[-short_frames:]])).astype(np.float64)
    np.testing.assert_allclose(r.pos.gram, kept_pos.T @ kept_pos, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(r.neg.gram, kept_neg.T @ kept_neg, rtol=1e-5, atol=1e-5)
    assert (r.pos.n, r.neg.n) == (4 * long_frames, 6 * short_frames)

    # the fit equals a ridge regression on exactly those rows and the first frame's
    r.fit()
    p0, n0 = _augment(first[0]).astype(np.float64), _augment(first[1]).astype(np.float64)
    x = np.concatenate([p0, kept_pos, n0, kept_neg])
    y = np.r_[np.ones(len(p0) + len(kept_pos)), -np.ones(len(n0) + len(kept_neg))]
    wt = np.where(y > 0, (y < 0).sum() / (y > 0).sum(), 1.0)
    w = np.linalg.solve((x * wt[:, None]).T @ x + np.eye(dim + 1), (x * wt[:, None]).T @ y)
    np.testing.assert_allclose(r.w, w, rtol=1e-4, atol=1e-6)


def test_a_fit_with_nothing_new_is_skipped():
    """A run of failed frames stores no samples: its refits would solve the same system."""
    rng = np.random.default_rng(3)
    r = RidgeScorer(8, reg=1.0, long_frames=5, short_frames=2)
    r.start(rng.random((5, 8)), rng.random((9, 8)))
    w = r.w
    r.fit()
    assert r.w is w
    r.add(rng.random((4, 8)), rng.random((6, 8)))
    r.fit()
    assert r.w is not w and not np.allclose(r.w, w)


@pytest.mark.parametrize("bad", [dict(ridge_weight=-1.0), dict(ridge_reg=0.0), dict(ridge_first_neg=0),
                                 dict(ridge_weight=float("nan")), dict(ridge_shrink=-0.1), dict(ridge_shrink=0.5),
                                 dict(ridge_shrink=float("nan"))])
def test_bad_ridge_parameters_are_refused(bad):
    with pytest.raises(TrackerInputError, match=next(iter(bad))):
        TrackerParams(**bad)


@pytest.fixture(scope="module")
def model(tiny_model):
    from runtime.model import load_model

    return load_model(tiny_model)


CHEAP = dict(n_pos_init=100, n_neg_init=600, iters_init=5, n_bbreg=200)


def test_tracker_refits_at_the_head_update_triggers(model, monkeypatch):
    """The ridge classifier learns from the frames the head learns from (successful ones),
    is refit where the head's updates start (every long_interval frames, and on failure),
    and its windows hold the head's: long_frames of positives, short_frames of negatives."""
    from runtime.synthetic import make_sequence
    from runtime.tracker import Tracker

    t = Tracker(model, seed=0, long_interval=4, long_frames=6, short_frames=3, **CHEAP)
    seq = make_sequence(n_frames=20, size=(320, 240), seed=1)
    f0 = seq.read_frame(0)
    t.init(f0.image, f0.gt)
    assert t.ridge is not None and t.ridge.first[1] == 100 and t.ridge.first[3] == 600  # all of them: fewer than ridge_first_neg
    fits, real_fit = [], t.ridge.fit
    monkeypatch.setattr(t.ridge, "fit", lambda: (fits.append(t.frame), real_fit()))
    real_score = t._scores
    failing = {6, 7, 13}

    def forced(emb, ridge_x):
        s = real_score(emb, ridge_x)
        return s - (s.max() + 1.0) if t.frame in failing else s - s.min() + 1.0

    monkeypatch.setattr(t, "_scores", forced)
    for i in range(1, 20):
        t.update(seq.read_frame(i).image)
    assert fits == sorted(failing | {f for f in range(1, 20) if f % 4 == 0 and f not in failing})
    successes = 19 - len(failing)
    assert len(t.ridge.pos.rows) == min(6, successes) and len(t.ridge.neg.rows) == 3
    # its negatives are exactly those of the head's last frames (the same samples' ridge features)
    assert t.ridge.neg.n == sum(len(n) for n in list(t.neg_mem)[-3:])


def test_ridge_weight_zero_is_the_head_alone(model):
    from runtime.synthetic import make_sequence
    from runtime.tracker import Tracker

    seq = make_sequence(n_frames=6, size=(320, 240), seed=2)
    boxes = {}
    for w in (0.0, 3.0):
        t = Tracker(model, seed=0, ridge_weight=w, **CHEAP)
        f0 = seq.read_frame(0)
        t.init(f0.image, f0.gt)
        assert (t.ridge is None) == (w == 0)
        # the classifier draws no random numbers: the head's draws are those of the head alone
        state = t.rng.bit_generator.state
        if w == 0:
            state0 = state
        else:
            assert state == state0
        emb = np.abs(np.random.default_rng(0).normal(0, 1, (7, t.head.embed_dim))).astype(np.float32)
        ridge_x = np.abs(np.random.default_rng(1).normal(0, 1, (7, t.head.pooled_dim))).astype(np.float32)
        want = t.head.score(emb) + (w * t.ridge.score(ridge_x) if w else 0)
        np.testing.assert_allclose(t._scores(emb, ridge_x), want, rtol=1e-6, atol=1e-6)
        boxes[w] = [t.update(seq.read_frame(i).image).box for i in range(1, 6)]
    assert not np.allclose(boxes[0.0], boxes[3.0])  # the classifier takes part in the ranking


@pytest.mark.parametrize("shrink,config", [(0.25, {}), (0.0, {}), (0.49, {}),
                                           (0.25, dict(fc4_rank=0, online_layers=("fc4", "fc5", "fc6")))])
def test_ridge_features_are_the_inner_boxes_pooled(model, shrink, config):
    """The ridge classifier's features come from the same pass as the head's: the pooled
    features of each box with ``ridge_shrink`` of its width and height taken off each side
    (with 0, the box's own pooled features). The head and the box regressor pool whole boxes;
    the graph gains an output only where the inner parts are pooled."""
    from runtime.head import MIN_ROI, OnlineHead
    from runtime.params import TrackerParams

    import mxnet as mx

    params = TrackerParams(ridge_shrink=shrink, **config, **CHEAP)
    head = OnlineHead(model, mx.cpu(), params, np.random.default_rng(0))
    n_out = len(head._embed_sym.list_outputs())
    assert n_out == (1 if "online_layers" in config else 2) + (shrink > 0)
    rng = np.random.default_rng(4)
    feat = rng.random((1, model.channels, 12, 14)).astype(np.float32)
    # more boxes than one executor's rows (chunks), and a box of no width (kept MIN_ROI wide)
    boxes = np.concatenate([[[8.0, 10.0, 48.0, 40.0], [30.0, 4.0, 20.0, 60.0], [0.0, 0.0, 100.0, 90.0],
                             [50.0, 20.0, 0.0, 30.0]],
                            np.c_[rng.uniform(0, 60, (296, 2)), rng.uniform(8, 50, (296, 2))]])
    assert len(boxes) > head.chunk
    pooled, emb, ridge_x = head.embed_all(feat, boxes)
    whole, whole_emb = head.embed(feat, boxes)
    np.testing.assert_array_equal(pooled, whole)
    np.testing.assert_array_equal(emb, whole_emb)
    inner = boxes.copy()
    inner[:, 2:] = np.maximum(inner[:, 2:], MIN_ROI)
    cut = np.minimum(shrink * inner[:, 2:], (inner[:, 2:] - MIN_ROI) / 2)
    inner[:, :2] += cut
    inner[:, 2:] -= 2 * cut
    assert np.isfinite(ridge_x).all()
    np.testing.assert_allclose(ridge_x[:3], head.embed(feat, inner[:3])[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ridge_x[4:], head.embed(feat, inner[4:])[0], rtol=1e-5, atol=1e-5)
    if shrink:
        assert not np.allclose(ridge_x, pooled, atol=1e-3)
    # only what is asked for is copied out
    p, e, r = head.embed_all(feat, boxes[:5], want_pooled=False, want_ridge=False)
    assert r is None and e.shape == (5, emb.shape[1]) and (p is None) == ("online_layers" not in config)

    # without the ridge classifier the graph is the head's alone
    off = OnlineHead(model, mx.cpu(), params.replace(ridge_weight=0.0), np.random.default_rng(0))
    assert len(off._embed_sym.list_outputs()) == n_out - (shrink > 0)


def test_tracker_feeds_the_ridge_classifier_its_own_features(model, monkeypatch):
    """What the ridge classifier learns from and scores is embed_all's ridge features (the
    inner parts), never the whole boxes' pooled features the box regressor uses."""
    from runtime.head import OnlineHead
    from runtime.synthetic import make_sequence
    from runtime.tracker import Tracker

    returned = []
    real_embed_all = OnlineHead.embed_all

    def embed_all(self, *a, **kw):
        out = real_embed_all(self, *a, **kw)
        if out[2] is not None:
            returned.append(out[2])
            assert out[0] is None or not np.shares_memory(out[0], out[2])
        return out

    seen = {"start": 0, "add": 0, "score": 0}
    real = {k: getattr(RidgeScorer, k) for k in seen}

    def spy(kind):
        def f(self, *arrays):
            for x in arrays[: 1 if kind == "start" else None]:  # start's negatives are a subset (a copy)
                assert any(np.shares_memory(x, r) for r in returned), kind
            seen[kind] += 1
            return real[kind](self, *arrays)
        return f

    monkeypatch.setattr(OnlineHead, "embed_all", embed_all)
    for k in seen:
        monkeypatch.setattr(RidgeScorer, k, spy(k))
    seq = make_sequence(n_frames=6, size=(320, 240), seed=2)
    t = Tracker(model, seed=0, **CHEAP)
    assert t.params.ridge_shrink > 0
    f0 = seq.read_frame(0)
    t.init(f0.image, f0.gt)
    for i in range(1, 6):
        t.update(seq.read_frame(i).image)
    assert seen["start"] == 1 and seen["score"] == 5 and seen["add"] >= 1
