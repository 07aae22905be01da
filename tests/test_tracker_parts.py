"""The tracker's parts: candidate sampling, top-k fusion, sample windows, update triggers,
hard-negative mining, box regression, executor reuse and input checks."""
import gc
import weakref

import numpy as np
import pytest

from runtime import sampling
from runtime.bbreg import BBoxRegressor
from runtime.errors import TrackerInputError, TrackerStateError
from runtime.geometry import center_error, iou
from runtime.params import TrackerParams
from runtime.synthetic import make_sequence
from runtime.tracker import Tracker, fuse_top_k

# Cheap first-frame training for tests that only need a tracker that runs.
CHEAP = dict(n_pos_init=100, n_neg_init=600, iters_init=5, n_bbreg=200)


def _centres(b):
    b = np.asarray(b, dtype=np.float64)
    return b[..., :2] + b[..., 2:] / 2


def _owner(a):
    """The array that owns ``a``'s memory (a view keeps its base alive)."""
    while isinstance(a.base, np.ndarray):
        a = a.base
    return a


@pytest.fixture(scope="module")
def model(tiny_model):
    from runtime.model import load_model

    return load_model(tiny_model)


# --------------------------------------------------------------------------- sampling


def test_gaussian_candidate_statistics():
    rng = np.random.default_rng(0)
    box = np.array([50.0, 60.0, 40.0, 20.0])
    n, trans, scale = 20000, 0.6, 1.05
    s = sampling.gaussian(rng, box, n, trans=trans, scale=scale)
    assert s.shape == (n, 4)
    m = box[2:].mean()
    bound = trans * m
    shift = _centres(s) - _centres(box)
    # reference spread of clip(0.5 N(0,1), -1, 1) by its own simulation (about 0.48)
    ref = np.clip(0.5 * np.random.default_rng(123).standard_normal(2_000_000), -1, 1).std()
    assert 0.45 < ref < 0.5
    for axis in (0, 1):
        d = shift[:, axis]
        assert abs(d.mean()) < 0.02 * bound
        assert np.abs(d).max() <= bound + 1e-9
        assert np.abs(d).max() > 0.95 * bound  # the clip is reached
        assert d.std() == pytest.approx(bound * ref, rel=0.03)
    f = s[:, 2] / box[2]
    assert f.min() >= 1 / scale - 1e-12 and f.max() <= scale + 1e-12
    assert f.max() > scale ** 0.95 and f.min() < scale ** -0.95  # the clip is reached
    np.testing.assert_allclose(s[:, 3] / box[3], f)  # aspect kept
    assert abs(np.log(f).mean()) < 0.01 * np.log(scale) + 3 * np.log(scale) * ref / np.sqrt(n)
    # the scale step is scale ** clip(0.5 N(0,1), -1, 1): log f has the same spread as the shift
    assert np.log(f).std() == pytest.approx(np.log(scale) * ref, rel=0.03)


def test_uniform_and_whole_stay_in_range():
    rng = np.random.default_rng(1)
    box = np.array([100.0, 80.0, 30.0, 50.0])
    m = box[2:].mean()
    u = sampling.uniform(rng, box, 5000, trans=1.0, scale=1.6)
    shift = _centres(u) - _centres(box)
    assert np.abs(shift).max() <= m + 1e-9
    assert shift.std(axis=0) == pytest.approx([m / np.sqrt(3)] * 2, rel=0.05)  # uniform spread
    f = u[:, 2] / box[2]
    assert f.min() >= 1 / 1.6 - 1e-12 and f.max() <= 1.6 + 1e-12
    np.testing.assert_allclose(u[:, 3] / box[3], f)
    # size times 1.6 ** U(-1, 1): log f uniform in +-log 1.6 (std log(1.6) / sqrt(3))
    assert abs(np.log(f).mean()) < 0.03 * np.log(1.6)
    assert np.log(f).std() == pytest.approx(np.log(1.6) / np.sqrt(3), rel=0.03)
    hist, _ = np.histogram(np.log(f), bins=4, range=(-np.log(1.6), np.log(1.6)))
    assert hist.min() > 0.85 * len(f) / 4  # flat, not peaked at 1

    bounds = np.array([10.0, 20.0, 300.0, 200.0])
    w = sampling.whole(rng, box, 5000, bounds, scale=1.6)
    c = _centres(w)
    assert (c[:, 0] >= bounds[0]).all() and (c[:, 0] <= bounds[0] + bounds[2]).all()
    assert (c[:, 1] >= bounds[1]).all() and (c[:, 1] <= bounds[1] + bounds[3]).all()
    f = w[:, 2] / box[2]
    assert f.min() >= 1 / 1.6 - 1e-12 and f.max() <= 1.6 + 1e-12
    np.testing.assert_allclose(w[:, 3] / box[3], f)
    assert np.log(f).std() == pytest.approx(np.log(1.6) / np.sqrt(3), rel=0.03)


@pytest.mark.parametrize("kind,lo,hi,kw", [
    ("gaussian", 0.7, 1.0, dict(trans=0.1, scale=1.3)),
    ("uniform", 0.0, 0.5, dict(trans=1.0, scale=1.6)),
    ("whole", 0.0, 0.5, dict(scale=1.6)),
    ("uniform", 0.6, 1.0, dict(trans=0.3, scale=1.6)),
])
def test_sample_by_iou_range(kind, lo, hi, kw):
    rng = np.random.default_rng(2)
    box = np.array([120.0, 90.0, 40.0, 32.0])
    bounds = np.array([0.0, 0.0, 320.0, 240.0])
    s = sampling.sample_by_iou(rng, kind, box, 500, lo, hi, bounds, **kw)
    assert s.shape == (500, 4)
    o = iou(s, box[None])
    assert o.min() >= lo and o.max() <= hi
    c = _centres(s)
    assert (c >= 0).all() and (c[:, 0] <= 320).all() and (c[:, 1] <= 240).all()


# --------------------------------------------------------------------------- fusion


def test_fuse_top_k_drops_outliers():
    near = np.array([[100, 100, 40, 40], [102, 99, 40, 41], [98, 101, 41, 40],
                     [101, 102, 39, 40], [99, 98, 40, 39]], dtype=np.float64)
    far = np.array([[250, 30, 40, 40]], dtype=np.float64)
    boxes = np.concatenate([near, far])
    scores = np.array([10.0, 8.0, 7.0, 6.0, 5.0, 9.0])  # the far box is second best
    keep = fuse_top_k(boxes, scores, 5, 0.5, 1.3)
    assert 5 not in keep
    assert sorted(keep.tolist()) == [0, 1, 2, 3]  # the rest of the top-5
    assert keep[0] == 0

    # a scale outlier (same centre, twice the side = 4x the area), third best
    big = np.array([[80, 80, 80, 80]], dtype=np.float64)
    boxes = np.concatenate([near, big])
    scores = np.array([10.0, 9.0, 7.0, 6.0, 5.0, 8.0])
    keep = fuse_top_k(boxes, scores, 5, 0.5, 1.3)
    assert 5 not in keep and sorted(keep.tolist()) == [0, 1, 2, 3]

    # a moderate box (shift 0.3 * size, area x1.2) is not an outlier
    mild = np.array([[112, 100, 42, 46]], dtype=np.float64)
    boxes = np.concatenate([near, mild])
    keep = fuse_top_k(boxes, np.array([10.0, 8.0, 7.0, 6.0, 5.0, 9.0]), 5, 0.5, 1.3)
    assert 5 in keep and len(keep) == 5


def test_fuse_top_k_keeps_the_best_even_when_far():
    near = np.array([[100, 100, 40, 40]] * 4, dtype=np.float64) + np.arange(4)[:, None]
    boxes = np.concatenate([[[250, 30, 40, 40]], near])
    keep = fuse_top_k(boxes, np.array([10.0, 5.0, 4.0, 3.0, 2.0]), 5, 0.5, 1.3)
    assert keep[0] == 0  # documented: the best-scoring box is always kept
    assert set(keep.tolist()) == {0, 1, 2, 3, 4}


# --------------------------------------------------------------------------- a tracked run


@pytest.fixture(scope="module")
def run_log(model):
    """Init + 50 updates on a synthetic sequence, recording the sample windows as they go."""
    tracker = Tracker(model, seed=0, long_interval=10)
    seq = make_sequence(n_frames=51, size=(320, 240), seed=1)
    f0 = seq.read_frame(0)
    tracker.init(f0.image, f0.gt)
    log = {
        "tracker": tracker, "seq": seq,
        "first_neg": tracker.neg_mem[0],  # the first frame's negatives (held for an identity check)
        "oks": [], "neg_len": [len(tracker.neg_mem)], "pos_len": [len(tracker.pos_mem)],
        "neg_refs": [], "pos_refs": [], "updates": [],
    }
    for i in range(1, 51):
        before = tracker.neg_mem[-1]
        r = tracker.update(seq.read_frame(i).image)
        appended = tracker.neg_mem[-1] is not before
        del before
        log["oks"].append(r.ok)
        log["neg_len"].append(len(tracker.neg_mem))
        log["pos_len"].append(len(tracker.pos_mem))
        log["updates"].append(dict(tracker.updates))
        if appended:
            log["neg_refs"].append((i, weakref.ref(_owner(tracker.neg_mem[-1]))))
            log["pos_refs"].append((i, weakref.ref(_owner(tracker.pos_mem[-1]))))
    return log


def test_short_term_window_discards_old_negatives(run_log):
    t = run_log["tracker"]
    p = t.params
    assert max(run_log["neg_len"]) <= p.short_frames
    oks = run_log["oks"]
    assert sum(oks[:39]) > p.short_frames  # the synthetic target is tracked
    assert run_log["neg_len"][-1] == p.short_frames
    # the first frame's negatives are gone from the window
    assert all(a is not run_log["first_neg"] for a in t.neg_mem)
    # positives are kept for the long window
    successes = sum(oks)
    assert run_log["pos_len"][-1] == min(1 + successes, p.long_frames) > p.short_frames
    # nothing keeps the memory of negatives older than the window alive
    gc.collect()
    appended = run_log["neg_refs"]
    old = appended[: len(appended) - p.short_frames]
    assert old, "the run must push negatives out of the window"
    alive = [i for i, ref in old if ref() is not None]
    assert not alive, (f"negatives of frames {alive} left the short-term window but their memory is still "
                       "referenced (e.g. as a view sharing a buffer with the kept positives)")
    assert all(ref() is not None for _, ref in run_log["pos_refs"][-p.short_frames:])


def test_long_term_updates_every_interval(run_log):
    t = run_log["tracker"]
    oks = run_log["oks"]
    expected_long = sum(1 for i, ok in enumerate(oks, 1) if ok and i % t.params.long_interval == 0)
    assert expected_long >= 3
    assert t.updates["long"] == expected_long
    assert t.updates["short"] == sum(1 for ok in oks if not ok)
    # the count rises exactly on the interval frames
    longs = [u["long"] for u in run_log["updates"]]
    for i in range(1, len(longs)):
        frame = i + 1
        rise = longs[i] - longs[i - 1]
        assert rise == (1 if frame % 10 == 0 and oks[i] else 0)


@pytest.fixture
def real_binds(monkeypatch):
    """Counts of what really binds in MXNet (not the trackers' own counters): Symbol.bind,
    Symbol.simple_bind, Executor.reshape, Module.bind, and every Executor created."""
    import mxnet as mx

    counts = {}

    def spy(cls, name):
        real = getattr(cls, name)
        key = f"{cls.__name__}.{name}"
        counts[key] = 0

        def counted(*a, **k):
            counts[key] += 1
            return real(*a, **k)

        monkeypatch.setattr(cls, name, counted)

    spy(mx.sym.Symbol, "bind")
    spy(mx.sym.Symbol, "simple_bind")
    spy(mx.executor.Executor, "reshape")
    spy(mx.executor.Executor, "__init__")
    spy(mx.mod.Module, "bind")
    return counts


def test_executors_never_rebound(model, real_binds):
    """50 frames over a scale-changing target with failed frames (a widened search) that
    move the patch through several buckets: every executor is bound once, for its batch
    size, when the tracker is built (extractor) or initialised (head), and never again."""
    t = Tracker(model, seed=0, long_interval=10, **CHEAP)
    n_shapes = len(t.policy.shapes)
    built = dict(real_binds)
    assert built["Symbol.bind"] == t.backend.binds == n_shapes
    seq = make_sequence(n_frames=51, size=(320, 240), seed=1)  # scale_change on by default
    assert np.ptp(seq.groundtruth[:51, 2]) > 10
    f0 = seq.read_frame(0)
    buckets = [t.init(f0.image, f0.gt).bucket]
    head = t.head
    ready = dict(real_binds)
    # the head's executors: train, score, mine, and one embed per (bucket, row count)
    assert head.binds == 3 + n_shapes * len(head.chunks)
    assert ready["Symbol.bind"] - built["Symbol.bind"] == head.binds
    assert ready["Executor.__init__"] - built["Executor.__init__"] == head.binds
    assert sorted(head._embed) == sorted(((1, model.channels) + t.policy.feature_shape(b), r)
                                         for b in range(n_shapes) for r in head.chunks)
    assert ready["Symbol.simple_bind"] == ready["Executor.reshape"] == ready["Module.bind"] == 0

    # forced failures (scores shifted below 0, ranking kept) widen the search; forced
    # successes reset it
    real_score = t._scores
    failing = set(range(11, 23)) | set(range(35, 38))
    state = {}

    def forced(emb, ridge_x):
        s = real_score(emb, ridge_x)
        return s - (s.max() + 1.0) if state["fail"] else s - s.min() + 1.0

    t._scores = forced
    oks = []
    for i in range(1, 51):
        state["fail"] = i in failing
        r = t.update(seq.read_frame(i).image)
        oks.append(r.ok)
        buckets.append(r.bucket)
        assert real_binds == ready, f"frame {i} (bucket {r.bucket}) bound: {real_binds} after {ready}"
    assert [not ok for ok in oks] == [i in failing for i in range(1, 51)]
    assert t.updates["short"] == len(failing) and t.updates["long"] >= 2
    visited = sorted(set(buckets))
    assert len(visited) >= 3, f"buckets visited: {visited}"
    assert buckets[-1] == buckets[0]  # back to the first bucket after the search narrows again
    assert t.head is head and head.binds == 3 + n_shapes * len(head.chunks)
    assert t.backend.binds == n_shapes
    assert t.frame == 50


def test_real_features_bbox_regression(run_log):
    """The first frame's regressor moves fresh samples of that frame towards the target."""
    t = run_log["tracker"]
    assert t.bbreg is not None
    f0 = run_log["seq"].read_frame(0)
    gt = f0.gt
    geom = t.policy.select(gt)
    feat = t._features(f0.image, geom, {})
    rng = np.random.default_rng(7)
    boxes = sampling.sample_by_iou(rng, "uniform", gt, 300, 0.6, 1.0, np.array([0, 0, 320, 240.0]),
                                   trans=0.3, scale=1.6)
    pooled, _ = t.head.embed(feat, geom.to_patch(boxes))
    pred = t.bbreg.predict(pooled, boxes)
    # Measured with conftest's seeded random extractor: 1 - IoU x0.16 and centre error x0.09
    # (with the ImageNet extractor x0.12 and x0.07).
    err0, err1 = 1 - iou(boxes, gt[None]).mean(), 1 - iou(pred, gt[None]).mean()
    assert err1 < 0.3 * err0, f"1 - IoU {err0:.3f} -> {err1:.3f}"
    c0, c1 = center_error(boxes, gt[None]).mean(), center_error(pred, gt[None]).mean()
    assert c1 < 0.25 * c0, f"centre error {c0:.2f} -> {c1:.2f} px"


# --------------------------------------------------------------------------- failures


def test_failure_triggers_short_update_and_widens_search(model, monkeypatch):
    """Scores are shifted (ranking kept) to force success or failure, so the test checks the
    update logic whatever the weights."""
    # trans_max 0.7 so that the cap is reached after two failed frames (0.66, then 0.7)
    t = Tracker(model, seed=0, long_interval=10, trans=0.6, trans_max=0.7, **CHEAP)
    p = t.params
    seq = make_sequence(n_frames=12, size=(320, 240), seed=1)
    f0 = seq.read_frame(0)
    t.init(f0.image, f0.gt)
    assert t.trans_f == p.trans
    real_score = t._scores  # the candidates' scores: the head's, and the ridge classifier's

    def succeeding(emb, ridge_x):
        s = real_score(emb, ridge_x)
        return s - s.min() + 1.0

    def failing(emb, ridge_x):
        s = real_score(emb, ridge_x)
        return s - (s.max() + 1.0)

    monkeypatch.setattr(t, "_scores", succeeding)
    for i in (1, 2):
        r = t.update(seq.read_frame(i).image)
        assert r.ok and t.trans_f == p.trans
    assert t.updates == {"long": 0, "short": 0}
    assert len(t.pos_mem) == len(t.neg_mem) == 3

    monkeypatch.setattr(t, "_scores", failing)
    expected = p.trans
    for k in range(1, 5):
        n_pos, n_neg = len(t.pos_mem), len(t.neg_mem)
        r = t.update(seq.read_frame(2 + k).image)
        assert not r.ok and r.score < 0
        assert t.updates == {"long": 0, "short": k}
        assert (len(t.pos_mem), len(t.neg_mem)) == (n_pos, n_neg)  # no samples from a failed frame
        expected = min(expected * p.widen_rate, p.trans_max)
        assert t.trans_f == pytest.approx(expected)
        assert np.all(np.isfinite(r.box))
    assert t.trans_f == pytest.approx(p.trans_max)  # capped

    monkeypatch.setattr(t, "_scores", succeeding)
    for i in range(7, 12):
        r = t.update(seq.read_frame(i).image)
        assert r.ok and t.trans_f == p.trans  # reset after success
    # frame 10 succeeded: one long-term update; the short count is unchanged
    assert t.updates == {"long": 1, "short": 4}
    assert len(t.pos_mem) == 3 + 5


# --------------------------------------------------------------------------- head


def test_hard_negatives_are_the_highest_scoring(model):
    import mxnet as mx

    from runtime.head import OnlineHead

    p = TrackerParams()
    rng = np.random.default_rng(0)
    head = OnlineHead(model, mx.cpu(), p, rng)
    # give fc6 some spread so that the scores differ clearly
    head.weights["fc6_weight"][:] = rng.normal(0, 0.5, (2, 512)).astype(np.float32)
    for n in (p.mine_from, 300):  # the mining executor, and the score path
        neg = np.abs(rng.normal(0, 1, (n, head.embed_dim))).astype(np.float32)
        k = p.batch_neg
        idx = head.hard_negatives(neg, k)
        assert len(idx) == k and len(set(idx.tolist())) == k
        s = head.score(neg)
        rest = np.setdiff1d(np.arange(n), idx)
        assert s[idx].min() >= s[rest].max() - 1e-4
        assert np.all(np.diff(s[idx]) <= 1e-4)  # best first
        assert set(idx.tolist()) == set(np.argsort(-s, kind="stable")[:k].tolist())


# --------------------------------------------------------------------------- bbreg


def test_bbox_regression_on_linear_features():
    from runtime.bbreg import _targets

    rng = np.random.default_rng(3)
    gt = np.array([100.0, 80.0, 40.0, 30.0])
    a = rng.normal(0, 5.0, (4, 256))

    def feats(boxes):
        d = _targets(boxes, gt)
        return (d @ a + rng.normal(0, 0.1, (len(boxes), 256))).astype(np.float32)

    train = sampling.sample_by_iou(rng, "uniform", gt, 1000, 0.6, 1.0, trans=0.3, scale=1.6)
    reg = BBoxRegressor(1000.0).fit(feats(train), train, gt)
    test = sampling.sample_by_iou(rng, "uniform", gt, 300, 0.6, 1.0, trans=0.3, scale=1.6)
    pred = reg.predict(feats(test), test)
    err0, err1 = center_error(test, gt[None]).mean(), center_error(pred, gt[None]).mean()
    iou0, iou1 = iou(test, gt[None]).mean(), iou(pred, gt[None]).mean()
    assert err1 < 0.3 * err0
    assert (1 - iou1) < 0.3 * (1 - iou0)


# --------------------------------------------------------------------------- inputs


@pytest.fixture
def fresh_tracker(model):
    """A tracker of its own for each test (built, never initialised; ~0.1 s)."""
    return Tracker(model, seed=0, **CHEAP)


def _image():
    return make_sequence(n_frames=1, size=(320, 240), seed=1).read_frame(0)


BAD_BOXES = [
    ([np.nan, 10, 20, 20], "finite"),
    ([10, 10, np.inf, 20], "finite"),
    ([10, 10, 0, 20], "positive"),
    ([10, 10, -5, 20], "positive"),
    ([10, 10, 20, 0], "positive"),
    ([400, 300, 20, 20], "outside"),
    ([-50, -50, 20, 20], "outside"),
    ([10, 10, 20], "4"),
]


@pytest.mark.parametrize("box,words", BAD_BOXES)
def test_init_rejects_bad_boxes(fresh_tracker, box, words):
    with pytest.raises(TrackerInputError, match=words):
        fresh_tracker.init(_image().image, box)
    # nothing half-initialised: still not tracking, so update refuses as before init
    assert fresh_tracker.head is None and fresh_tracker.frame == -1
    with pytest.raises(TrackerStateError, match="init"):
        fresh_tracker.update(_image().image)


def test_rejected_init_keeps_the_running_sequence(model):
    """A bad box for a new sequence is refused before anything is touched: the tracker
    keeps tracking the previous one (same head, weights, box, samples, frame count)."""
    seq = make_sequence(n_frames=4, size=(320, 240), seed=1)
    t = Tracker(model, seed=0, **CHEAP)
    f0 = seq.read_frame(0)
    t.init(f0.image, f0.gt)
    for i in (1, 2):
        t.update(seq.read_frame(i).image)
    head, box, rng, pos_mem, neg_mem = t.head, t.box.copy(), t.rng, t.pos_mem, t.neg_mem
    n_pos, last_pos = len(pos_mem), pos_mem[-1]
    weights = {k: v.asnumpy().copy() for k, v in head.weights.items()}
    rng_state = rng.bit_generator.state
    for bad, words in BAD_BOXES:
        with pytest.raises(TrackerInputError, match=words):
            t.init(seq.read_frame(3).image, bad)
    assert t.head is head and t.rng is rng and t.pos_mem is pos_mem and t.neg_mem is neg_mem
    assert t.frame == 2 and len(pos_mem) == n_pos and pos_mem[-1] is last_pos
    np.testing.assert_array_equal(t.box, box)
    assert rng.bit_generator.state == rng_state
    assert all(np.array_equal(v.asnumpy(), weights[k]) for k, v in head.weights.items())
    r = t.update(seq.read_frame(3).image)  # and goes on with the old sequence
    assert t.frame == 3 and np.all(np.isfinite(r.box))
    assert iou(r.box[None], seq.groundtruth[3][None])[0] > 0.5


def test_update_before_init_raises(fresh_tracker):
    with pytest.raises(RuntimeError, match="init") as e:
        fresh_tracker.update(_image().image)
    assert isinstance(e.value, TrackerStateError)


def test_partly_outside_box_is_clipped_and_formats_accepted(model):
    t = Tracker(model, seed=0, **CHEAP)
    f = _image()
    gray = f.image.mean(axis=2).astype(np.uint8)
    r = t.init(gray, [-20, -10, 60, 50])
    np.testing.assert_allclose(r.box, [0, 0, 40, 40])
    x, y, w, h = r.box
    assert x >= 0 and y >= 0 and x + w <= 320 and y + h <= 240

    t.init(f.image, f.gt)
    bgra = np.concatenate([f.image, np.full((240, 320, 1), 255, np.uint8)], axis=2)
    u16 = f.image.astype(np.uint16) * 257
    for img in (gray, bgra, u16, gray[:, :, None]):
        r = t.update(img)
        assert r.box.shape == (4,) and np.all(np.isfinite(r.box))
        c = _centres(r.box)
        assert 0 <= c[0] <= 320 and 0 <= c[1] <= 240
    with pytest.raises(TrackerInputError):
        t.update(np.zeros((240, 320, 2), np.uint8))


def test_params_replace_rejects_unknown_names(model):
    p = TrackerParams()
    before = (p.top_k, p.trans)
    q = p.replace(top_k=3, trans=0.5)
    assert (q.top_k, q.trans) == (3, 0.5) != before
    assert (p.top_k, p.trans) == before  # replace() returns a copy; the original keeps its values
    with pytest.raises(ValueError, match="bogus"):
        p.replace(bogus=1)
    with pytest.raises(ValueError, match="unknown tracker parameter"):
        p.replace(top_k=3, n_candidatez=10)
    with pytest.raises(ValueError, match="bogus"):
        Tracker(model, bogus=1)


# -- the Python API refuses what it cannot run with, by name ------------------------------------

@pytest.mark.parametrize("kw,name", [
    ({"scale": 0}, "scale"),  # once aborted the process inside MXNet's RoIAlign
    ({"top_k": 0}, "top_k"),
    ({"n_candidates": "many"}, "n_candidates"),
    ({"long_interval": 0}, "long_interval"),
    ({"trans": -1}, "trans"),
    ({"lr_init": float("nan")}, "lr_init"),
    ({"pos_iou_init": 1.5}, "pos_iou_init"),
    ({"dropout": 2}, "dropout"),
    ({"bbreg": "no"}, "bbreg"),
    ({"online_layers": ("fc4",)}, "online_layers"),
    ({"mine_from": 10}, "mine_from"),
    ({"itres_update": 3}, "itres_update"),
    ({"online_layers": ("fc4", "fc5", "fc6")}, "fc4_rank"),  # a factored fc4 is cached, not trained
    ({"grad_clip": -1}, "grad_clip"),
])
def test_bad_tracker_parameters_refused_by_name(tiny_model, kw, name):
    from runtime.errors import TrackerInputError
    from runtime.tracker import Tracker

    with pytest.raises(TrackerInputError, match=name):
        Tracker(tiny_model, **kw)


def test_parameters_that_switch_a_part_off_are_accepted():
    from runtime.params import TrackerParams

    p = TrackerParams(grad_clip=0, outlier_center=float("inf"), outlier_scale=float("inf"), bbreg=np.bool_(False),
                      online_layers=["fc4", "fc5", "fc6"], fc4_rank=0, n_candidates=np.int64(128))
    assert p.bbreg is False and p.online_layers == ("fc4", "fc5", "fc6") and type(p.n_candidates) is int


def test_params_as_dict_and_bad_arguments(tiny_model):
    from runtime.errors import TrackerInputError
    from runtime.tracker import Tracker

    assert Tracker(tiny_model, params={"top_k": 3}).params.top_k == 3
    for kw, word in (({"params": object()}, "params"), ({"seed": -1}, "seed"), ({"seed": 1.7}, "seed"),
                     ({"model": 123}, "model")):
        with pytest.raises(TrackerInputError, match=word):
            Tracker(**({"model": tiny_model} | kw))


def test_params_are_read_only_so_their_checks_hold(tiny_model, tmp_path):
    """An assignment would skip __post_init__'s checks (top_k=0 then failed as an IndexError
    mid-run) and change a tracker already running on the caller's object."""
    import dataclasses

    from runtime.errors import ModelError, TrackerInputError
    from runtime.params import TrackerParams
    from runtime.tracker import Tracker

    p = TrackerParams(top_k=3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.top_k = 0
    assert p.replace(top_k=4).top_k == 4 and p.top_k == 3
    with pytest.raises(TrackerInputError, match="top_k"):
        p.replace(top_k=0)
    t = Tracker(tiny_model, params=p)
    with pytest.raises(dataclasses.FrozenInstanceError):
        t.params.n_candidates = 0
    # API errors name the Python form beside the command-line flag
    (tmp_path / "file").write_text("x")
    with pytest.raises(ModelError, match=r"model folder is a file, not a model folder: .*Tracker\(model=DIR\)"):
        Tracker(tmp_path / "file")
    for image in ("frame.jpg", object()):
        with pytest.raises(TrackerInputError, match=r"cv2.imread\(path\)"):
            t.init(image, (1, 2, 3, 4))


@pytest.mark.parametrize("box", ["40,30,30,20", [1, 2, [3, 4]], {"x": 1},
                                 [[40, 30], [70, 50]],  # corners (x1, y1), (x2, y2): not read as x, y, w, h
                                 [True, True, True, True]])
def test_malformed_box_is_a_clear_error(tiny_model, box):
    from runtime.errors import TrackerInputError
    from runtime.tracker import Tracker

    with pytest.raises(TrackerInputError, match="4 finite numbers"):
        Tracker(tiny_model).init(np.zeros((120, 160, 3), np.uint8), box)


def test_box_as_one_row_is_accepted(model):
    f = _image()
    r = Tracker(model, seed=0, **CHEAP).init(f.image, np.asarray(f.gt)[None])  # e.g. groundtruth[0:1]
    np.testing.assert_allclose(r.box, f.gt)


@pytest.mark.parametrize("min_size,wh", [(1.0, (2, 2)), (2.0, (3, 1.5)), (0.5, (0.5, 0.5))])
def test_tiny_first_box_with_a_small_min_size(model, min_size, wh):
    """min_size below the 4 px training samples are clipped to: a first box smaller than
    those got no positive sample and failed inside numpy ("a must be a positive integer")."""
    f = _image()
    t = Tracker(model, seed=0, min_size=min_size, **CHEAP)
    r = t.init(f.image, [100, 80, *wh])
    np.testing.assert_allclose(_centres(r.box), _centres([100, 80, *wh]))  # grown about its centre
    assert r.box[2] >= 4 and r.box[3] >= 4 and len(t.pos_mem[0]) > 0
    r = t.update(make_sequence(n_frames=2, size=(320, 240), seed=1).read_frame(1).image)
    assert np.isfinite(r.box).all() and r.box[2] >= min_size and r.box[3] >= min_size


@pytest.mark.parametrize("kw,box,words", [
    ({"pos_iou_init": 1.0}, None, "pos_iou_init=1.0"),
    ({"min_size": 1000.0}, None, "min_size=1000.0"),  # the box grows past the frame: no sample fits
    ({"neg_iou_init": 0.0}, [0, 0, 320, 240], "neg_iou_init=0.0"),  # the target fills the frame
])
def test_unreachable_sample_ranges_are_refused_by_name(model, kw, box, words):
    f = _image()
    t = Tracker(model, seed=0, **CHEAP, **kw)
    with pytest.raises(TrackerInputError, match=words):
        t.init(f.image, f.gt if box is None else box)
    assert t.head is None and t.frame == -1  # nothing half-initialised


def test_init_refused_half_way_keeps_the_running_sequence(model):
    """An init refused after its first-frame work began (no negative sample for a box that
    fills the frame) leaves the tracker on its sequence, as a refused box does."""
    seq = make_sequence(n_frames=4, size=(320, 240), seed=1)
    t = Tracker(model, seed=0, neg_iou_init=0.0, **CHEAP)
    f0 = seq.read_frame(0)
    t.init(f0.image, f0.gt)
    t.update(seq.read_frame(1).image)
    head, rng, box, pos_mem, bbreg = t.head, t.rng, t.box.copy(), t.pos_mem, t.bbreg
    with pytest.raises(TrackerInputError, match="neg_iou_init"):
        t.init(seq.read_frame(2).image, [0, 0, 320, 240])
    assert t.head is head and t.rng is rng and t.pos_mem is pos_mem and t.bbreg is bbreg and t.frame == 1
    np.testing.assert_array_equal(t.box, box)
    r = t.update(seq.read_frame(2).image)
    assert t.frame == 2 and iou(r.box[None], seq.groundtruth[2][None])[0] > 0.5


def test_zero_width_roi_does_not_abort_the_process(tiny_model):
    """MXNet's RoIAlign aborts the process (not an exception) on a RoI of no width in float32,
    which a far-widened search (a large trans_max / trans) produces; run in a child process."""
    import subprocess
    import sys

    code = (
        "import numpy as np, mxnet as mx\n"
        "from runtime.model import load_model\nfrom runtime.params import TrackerParams\n"
        "from runtime.head import OnlineHead\n"
        f"m = load_model({str(tiny_model)!r})\n"
        "h = OnlineHead(m, mx.cpu(), TrackerParams(), np.random.default_rng(0))\n"
        "feat = np.random.default_rng(1).standard_normal((1, m.channels, 24, 24)).astype(np.float32)\n"
        "boxes = np.array([[100.0, 90.0, 0.0, 5.0], [100.0, 90.0, 5.0, 0.0], [100.0, 90.0, 1e-9, 1e-9], [10, 10, 20, 20]])\n"
        "pooled, emb = h.embed(feat, boxes)\n"
        "ref, _ = h.embed(feat, boxes[3:])\n"
        "assert np.isfinite(pooled).all() and np.isfinite(emb).all()\n"
        "assert np.array_equal(pooled[3:], ref)\n"  # other rows untouched
        # the ridge classifier's inner parts of such boxes stay MIN_ROI wide too
        "h = OnlineHead(m, mx.cpu(), TrackerParams(ridge_shrink=0.49999999), np.random.default_rng(0))\n"
        "pooled, emb, inner = h.embed_all(feat, boxes)\n"
        "assert np.isfinite(inner).all() and np.isfinite(pooled).all()\n"
        "print('ok')\n"
    )
    from conftest import child_env

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=child_env())
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]


def test_unbucketed_onnx_refused_before_the_backend_is_built(tiny_model, monkeypatch):
    """The check costs nothing; building an onnxruntime / tvm backend may export or compile
    for minutes on first use only to be refused afterwards."""
    import runtime.backends

    def no_build(*a, **k):
        raise AssertionError("the backend was built before the arguments were checked")

    monkeypatch.setattr(runtime.backends, "make_backend", no_build)
    with pytest.raises(TrackerInputError, match="unbucketed"):
        Tracker(tiny_model, backend="onnxruntime", bucketed=False)


def test_float_image_in_0_255_refused():
    from runtime.errors import TrackerInputError
    from runtime.imageops import to_bgr8

    img = np.full((20, 30, 3), 100.0)
    with pytest.raises(TrackerInputError, match="divide by 255"):
        to_bgr8(img)
    hdr = np.full((20, 30, 3), 0.5)
    hdr[0, 0] = 7.0  # an HDR highlight is clipped, not refused
    assert to_bgr8(hdr)[0, 0, 0] == 255 and to_bgr8(hdr)[5, 5, 0] == 128


def test_save_model_failing_midway_keeps_the_previous_model(tiny_model, tmp_path, monkeypatch):
    import shutil

    from runtime import model as M

    m = M.load_model(tiny_model)
    copy = tmp_path / "model"
    shutil.copytree(tiny_model, copy)
    real = M.json.dumps

    def disk_full(obj, *a, **k):
        if isinstance(obj, dict) and "extractor" in obj:  # the config, after the weights
            raise OSError(28, "No space left on device")
        return real(obj, *a, **k)

    monkeypatch.setattr(M.json, "dumps", disk_full)
    with pytest.raises(OSError):
        M.save_model(copy, dict(m.config, extra=1), {k: v * 2 for k, v in m.params.items()})
    monkeypatch.undo()
    again = M.load_model(copy)  # still loads, unchanged, no temporary files left
    assert again.model_hash == m.model_hash
    assert sorted(p.name for p in copy.iterdir()) == sorted(p.name for p in tiny_model.iterdir())


def test_shared_executor_memory_keeps_every_bucket_exact(model):
    """The extractor's bucket executors, and the head's embed executors, share one memory
    pool (one runs at a time). Calls that alternate between buckets must give exactly what
    an executor bound on its own gives."""
    import mxnet as mx

    from runtime.backends.mxnet_backend import MXNetBackend

    backend = MXNetBackend(model)
    rng = np.random.default_rng(0)
    shapes = model.policy.shapes
    patches = [rng.uniform(-128, 128, (1, 3) + tuple(hw)).astype(np.float32) for hw in shapes]
    order = [len(shapes) - 1, 0, 3, len(shapes) - 1, 1, 0]
    got = [backend.extract(b, patches[b]) for b in order]
    for b, feat in zip(order, got):
        alone = backend.symbol.bind(mx.cpu(), args=dict(backend._params, data=mx.nd.array(patches[b])),
                                    grad_req="null")
        alone.forward(is_train=False)
        np.testing.assert_array_equal(feat, alone.outputs[0].asnumpy())

    t = Tracker(model, seed=0, **CHEAP)
    f0 = make_sequence(n_frames=1, size=(320, 240), seed=1).read_frame(0)
    t.init(f0.image, f0.gt)
    boxes = np.array([[8.0, 8.0, 40.0, 30.0], [20.0, 12.0, 24.0, 36.0]])
    feats = {b: backend.extract(b, patches[b]) for b in (0, len(shapes) - 1)}
    first = {b: t.head.embed(f, boxes)[1] for b, f in feats.items()}
    again = {b: t.head.embed(f, boxes)[1] for b, f in reversed(list(feats.items()))}
    head = t.head
    rois = np.array([[0.0, x, y, x + w, y + h] for x, y, w, h in boxes], np.float32)
    for b, f in feats.items():
        np.testing.assert_array_equal(first[b], again[b])
        alone = head._embed_sym.bind(mx.cpu(), args=dict(head._frozen, feat=mx.nd.array(f), rois=mx.nd.array(rois)),
                                     grad_req="null")
        alone.forward(is_train=False)
        # a batch of 2 rows, not 256: oneDNN sums in another order (~4e-6 here)
        np.testing.assert_allclose(first[b], alone.outputs[1].asnumpy(), rtol=1e-5, atol=2e-5)


# -- found in a library user's walk --------------------------------------------------------------

def _in_forked_child(queue, what, tracker, frame):
    from runtime.model import load_model

    try:
        if what == "new":
            Tracker()
        elif what == "load":
            load_model()
        else:
            tracker.update(frame)
        queue.put("no error")
    except TrackerStateError as e:
        queue.put(str(e))


def _forked(what, tracker=None, frame=None):
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_in_forked_child, args=(q, what, tracker, frame))
    p.start()
    p.join(120)
    if p.is_alive():
        p.kill()
        pytest.fail("the forked child hung")
    return q.get(timeout=10)


def test_a_forked_child_is_refused_not_left_hanging(model, monkeypatch):
    """A process forked after a model was loaded or a Tracker made (multiprocessing's default
    on Linux) hung at its first frame inside MXNet: a tracker made or inherited there, or a
    model loaded there, is refused, naming the way out. A parent whose only Tracker was
    refused before touching MXNet leaves its children free. (Spawned children track.)"""
    from runtime import fork_guard

    monkeypatch.setattr(fork_guard, "_PID", None)  # as in a fresh process
    with pytest.raises(TrackerInputError):
        Tracker(123)  # refused before any MXNet work
    assert fork_guard._PID is None
    seq = make_sequence(n_frames=2, size=(160, 120), seed=0)
    frames = [f.image for f in seq]
    t = Tracker(model, seed=0)
    assert fork_guard._PID is not None
    t.init(frames[0], seq.init_box)
    for what in ("new", "load", "inherited"):
        msg = _forked(what, t, frames[1])
        assert "forked from one that had already loaded a model or made a Tracker" in msg and "'spawn'" in msg, msg
    assert np.isfinite(t.update(frames[1]).box).all()  # the parent's tracker is unaffected


def test_a_tracker_is_not_copied_or_pickled(model):
    """Deep copies and pickles failed inside MXNet's ctypes; a shallow copy shared the head
    with the original, mixing two tracks' training: each is one clear TypeError."""
    import copy
    import pickle

    t = Tracker(model, seed=0)
    for how in (copy.copy, copy.deepcopy, pickle.dumps):
        with pytest.raises(TypeError, match="cannot be copied or pickled"):
            how(t)
    assert pickle.loads(pickle.dumps(t.params)) == t.params


def test_start_box_grown_at_the_border_stays_inside_and_huge_boxes_are_one_error():
    """A box below the sample size is grown about its centre, then moved back inside the
    image; 1e308 coordinates give the refusal, without a NumPy overflow warning, and a box
    thinner than float precision at its position is called too thin, not outside."""
    import warnings

    from runtime.errors import TrackerInputError
    from runtime.tracker import start_box

    np.testing.assert_allclose(start_box((159.9, 119.9, 5, 5), (160, 120)), [156, 116, 4, 4])
    np.testing.assert_allclose(start_box((0, 0, 1, 1), (160, 120)), [0, 0, 4, 4])
    np.testing.assert_allclose(start_box((50, 50, 2, 2), (160, 120)), [49, 49, 4, 4])  # inside: about its centre
    np.testing.assert_allclose(start_box((0, 0, 1, 1), (2, 2)), [-1.5, -1.5, 4, 4])  # no room: about its centre
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(TrackerInputError, match="lies outside the 160x120 image"):
            start_box((1e308, 40, 1e308, 41), (160, 120))
        with pytest.raises(TrackerInputError, match="too thin to have a visible part"):
            start_box((40, 40, 1e-300, 41), (160, 120))
