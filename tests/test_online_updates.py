"""Online updates really train: long/short-term triggers spread ``iters_update`` SGD steps
over the following frames and change the trainable fc weights, a new trigger replaces a
pending update, each update takes the positives of its own window (``short_frames`` or
``long_frames``), and every minibatch holds the hard negatives mined from its candidates."""
import numpy as np
import pytest

from runtime.params import TrackerParams
from runtime.synthetic import make_sequence
from runtime.tracker import Tracker

# Cheap first-frame training for tests that only need a tracker that runs.
CHEAP = dict(n_pos_init=100, n_neg_init=600, iters_init=5, n_bbreg=200)


@pytest.fixture(scope="module")
def model(tiny_model):
    from runtime.model import load_model

    return load_model(tiny_model)


@pytest.fixture(scope="module")
def seq():
    return make_sequence(n_frames=24, size=(320, 240), seed=1)


class Run:
    """A tracker whose success or failure is forced (scores shifted, ranking kept, so the
    update logic is exercised whatever the weights), with a spy on ``head.train_step``."""

    def __init__(self, model, seq, **kw):
        self.t = Tracker(model, seed=0, **CHEAP, **kw)
        self.seq = seq
        f0 = seq.read_frame(0)
        self.t.init(f0.image, f0.gt)
        head = self.t.head
        real_score, real_step = self.t._scores, head.train_step
        self.fail = False
        self.calls = []  # (frame, pos, neg) of every train_step after init

        def forced(emb, ridge_x):  # the candidates' scores (the head's, and the ridge classifier's)
            s = real_score(emb, ridge_x)
            return s - (s.max() + 1.0) if self.fail else s - s.min() + 1.0

        def spy(pos, neg):
            self.calls.append((self.t.frame, pos, neg))
            return real_step(pos, neg)

        self.t._scores = forced
        head.train_step = spy
        self.positives = {0: self.t.pos_mem[-1]}  # frame -> the positives it stored

    def update(self, i, fail=False):
        self.fail = fail
        last = self.t.pos_mem[-1]
        r = self.t.update(self.seq.read_frame(i).image)
        assert r.ok is (not fail)
        if self.t.pos_mem[-1] is not last:
            self.positives[i] = self.t.pos_mem[-1]
        return r

    def calls_at(self, frame):
        return sum(1 for f, _, _ in self.calls if f == frame)

    def weights(self):
        return {k: v.asnumpy().copy() for k, v in self.t.head.weights.items()}


def _changed(a, b):
    return sorted(k for k in a if not np.array_equal(a[k], b[k]))


@pytest.mark.parametrize("per_frame,spread", [(1, [1, 1, 1, 1]), (3, [3, 1]), (0, [4])])
def test_long_term_update_trains_iters_update_steps_spread_over_frames(model, seq, per_frame, spread):
    run = Run(model, seq, long_interval=10, iters_update=4, update_iters_per_frame=per_frame)
    t, p = run.t, run.t.params
    head = t.head
    trainable = sorted(head.weights)
    assert trainable == ["fc5_bias", "fc5_weight", "fc6_bias", "fc6_weight"]  # online_layers fc5, fc6
    frozen = {k: v.asnumpy().copy() for k, v in head._frozen.items()}
    w = run.weights()
    for i in range(1, 10):  # no trigger yet: no training, weights untouched
        run.update(i)
        assert run.calls == [] and t.pending is None
    assert _changed(w, run.weights()) == []

    for i in range(10, 18):
        before = run.weights()
        run.update(i)
        if i == 10:
            neg = np.concatenate(list(t.neg_mem))
        k = i - 10
        want = spread[k] if k < len(spread) else 0
        assert run.calls_at(i) == want, f"frame {i}: {run.calls_at(i)} train steps, expected {want}"
        if want:
            # every trainable layer learns (fc5 and fc6, weights and biases)
            assert _changed(before, run.weights()) == trainable
        else:
            assert _changed(before, run.weights()) == []
        assert (t.pending is None) == (k >= len(spread) - 1)
        if t.pending is not None:
            assert t.pending[2] == p.iters_update - sum(spread[: k + 1])
    assert len(run.calls) == p.iters_update == 4
    assert t.updates == {"long": 1, "short": 0}
    # all steps of the update train on the samples of frame 10: the long window of
    # positives (init + frames 1-10) and the short window of negatives
    pos = np.concatenate([run.positives[f] for f in range(0, 11)])
    for _, cp, cn in run.calls:
        np.testing.assert_array_equal(cp, pos)
        np.testing.assert_array_equal(cn, neg)
    assert all(cp is run.calls[0][1] and cn is run.calls[0][2] for _, cp, cn in run.calls)
    assert head.optimizer.learning_rate == pytest.approx(p.lr_update)
    # the frozen layers never change
    assert all(np.array_equal(v.asnumpy(), frozen[k]) for k, v in head._frozen.items())


def test_new_trigger_replaces_the_pending_update(model, seq):
    """An update still running when the next one starts is dropped: the new one starts
    over with iters_update steps on the newer samples (nothing queued or added up)."""
    run = Run(model, seq, long_interval=5, iters_update=8, update_iters_per_frame=1, short_frames=3)
    t, p = run.t, run.t.params
    for i in range(1, 5):
        run.update(i)
    run.update(5)  # long-term trigger: 1 of 8 steps
    old = t.pending
    assert old[2] == 7
    for i in range(6, 10):
        run.update(i)
    assert t.pending[0] is old[0] and t.pending[2] == 3
    run.update(10)  # the next long-term trigger while 3 steps are still pending
    assert t.updates == {"long": 2, "short": 0}
    assert t.pending[0] is not old[0]
    np.testing.assert_array_equal(t.pending[0], np.concatenate([run.positives[f] for f in range(0, 11)]))
    assert t.pending[2] == p.iters_update - 1
    assert run.calls[-1][0] == 10 and run.calls[-1][1] is t.pending[0]
    run.update(11, fail=True)  # a short-term trigger replaces the pending long-term update
    assert t.updates == {"long": 2, "short": 1}
    np.testing.assert_array_equal(t.pending[0], np.concatenate([run.positives[f] for f in (8, 9, 10)]))
    assert t.pending[2] == p.iters_update - 1
    # one step per frame from frame 5 on, whatever was replaced
    assert [f for f, _, _ in run.calls] == list(range(5, 12))


def test_update_windows_short_and_long(model, seq):
    """A short-term update trains on the positives of the last short_frames frames that
    stored any, a long-term one on those of the last long_frames frames; both on the
    negatives of the short window."""
    run = Run(model, seq, long_interval=10, short_frames=3, long_frames=6, iters_update=10)
    t, p = run.t, run.t.params
    for i in range(1, 9):
        run.update(i)
    assert len(run.positives) == 9 > p.long_frames > p.short_frames  # init + 8 frames stored positives
    assert len(t.pos_mem) == p.long_frames and len(t.neg_mem) == p.short_frames

    run.update(9, fail=True)  # a failure: short-term update
    assert t.updates == {"long": 0, "short": 1}
    pos, neg, left = t.pending
    np.testing.assert_array_equal(pos, np.concatenate([run.positives[f] for f in (6, 7, 8)]))
    assert len(pos) == p.short_frames * p.n_pos_update
    np.testing.assert_array_equal(neg, np.concatenate(list(t.neg_mem)))
    assert len(neg) == p.short_frames * p.n_neg_update
    assert left == p.iters_update - 1
    assert run.calls[-1][1] is pos and run.calls[-1][2] is neg

    run.update(10)  # success on the interval: long-term update (frame 9 stored nothing)
    assert t.updates == {"long": 1, "short": 1}
    pos, neg, left = t.pending
    np.testing.assert_array_equal(pos, np.concatenate([run.positives[f] for f in (4, 5, 6, 7, 8, 10)]))
    assert len(pos) == p.long_frames * p.n_pos_update
    np.testing.assert_array_equal(neg, np.concatenate(list(t.neg_mem)))
    assert len(neg) == p.short_frames * p.n_neg_update
    assert left == p.iters_update - 1


class _RecordingRng:
    """Delegates to a Generator and records what ``choice`` returned."""

    def __init__(self, rng):
        self._rng = rng
        self.choices = []

    def choice(self, *a, **k):
        out = self._rng.choice(*a, **k)
        self.choices.append(np.asarray(out))
        return out

    def __getattr__(self, name):
        return getattr(self._rng, name)


class _ExecutorSpy:
    """Stands in for the training executor and records its inputs at each forward."""

    def __init__(self, ex):
        self._ex = ex
        self.seen = []

    def forward(self, *a, **k):
        self.seen.append({n: self._ex.arg_dict[n].asnumpy().copy() for n in ("x", "label")})
        return self._ex.forward(*a, **k)

    def __getattr__(self, name):
        return getattr(self._ex, name)


@pytest.mark.parametrize("n_neg", ["mine_from", 1500])
def test_train_step_minibatch_holds_the_mined_hard_negatives(model, n_neg):
    """The minibatch's negatives are the batch_neg highest-scoring of the mine_from
    candidates train_step drew (hardest first), not any batch_neg of them."""
    import mxnet as mx

    from runtime.head import OnlineHead

    p = TrackerParams()
    n_neg = p.mine_from if n_neg == "mine_from" else n_neg
    rng = np.random.default_rng(0)
    head = OnlineHead(model, mx.cpu(), p, np.random.default_rng(1))
    head.weights["fc6_weight"][:] = rng.normal(0, 0.5, (2, 512)).astype(np.float32)  # spread the scores
    pos = np.abs(rng.normal(0, 1, (60, head.embed_dim))).astype(np.float32)
    neg = np.abs(rng.normal(0, 1, (n_neg, head.embed_dim))).astype(np.float32)
    s = head.score(neg)  # with the weights before the step, as mining sees them
    head.rng = rec = _RecordingRng(head.rng)
    head._train = spy = _ExecutorSpy(head._train)
    head.train_step(pos, neg)

    assert len(spy.seen) == 1
    x, label = spy.seen[0]["x"], spy.seen[0]["label"]
    bp, bn = p.batch_pos, p.batch_neg
    np.testing.assert_array_equal(label, [1] * bp + [0] * bn)
    drawn = [c for c in rec.choices if len(c) == p.mine_from]
    assert len(drawn) == 1, "train_step draws mine_from candidate negatives"
    drawn = drawn[0]
    assert len(set(drawn.tolist())) == p.mine_from  # without replacement: enough negatives
    if n_neg == p.mine_from:
        assert sorted(drawn.tolist()) == list(range(n_neg))  # all of them, in random order
    order = drawn[np.argsort(-s[drawn], kind="stable")]
    hard, rest = order[:bn], order[bn:]
    assert s[hard[-1]] - s[rest[0]] > 1e-3  # a clear-cut boundary: no near-tie to flip
    # the negative rows are exactly the hardest drawn candidates, hardest first
    rows = {r.tobytes(): i for i, r in enumerate(neg)}
    got = np.array([rows.get(r.tobytes(), -1) for r in x[bp:]])
    assert (got >= 0).all(), "every negative row of the minibatch is one of the negatives given"
    assert set(got.tolist()) == set(hard.tolist())
    assert np.all(np.diff(s[got]) <= 1e-4)
    # for contrast: the drawn candidates' first batch_neg are not the hard ones
    assert len(set(drawn[:bn].tolist()) & set(hard.tolist())) < bn // 2
    # the positive rows are positives
    prows = {r.tobytes() for r in pos}
    assert all(r.tobytes() in prows for r in x[:bp])
