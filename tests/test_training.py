"""Offline training (train_mx): symbols per bucket, RoIAlign cell mapping, the bucket policy,
hard minibatch mining, per-layer learning rates, no re-binds, multi-device and dist_sync
data parallelism, ground-truth cleaning. CPU only; small synthetic sequences."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import mxnet as mx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime import sampling
from runtime.buckets import BucketPolicy, crop_patch
from runtime.head import LR_MULT, OnlineHead
from runtime.params import TrackerParams
from runtime.synthetic import make_sequence, write_otb
from train_mx import network
from train_mx.data import Batch, BatchSampler, clean_groundtruth, load_domains
from train_mx.train import MEAN, Trainer
from conftest import expect_one_error_line as _one_error_line

ROOT = Path(__file__).resolve().parents[1]
# Tiny buckets keep every Trainer test fast; the default policy is covered by the bind test.
SMALL = BucketPolicy(shapes=((64, 64), (64, 96)), target_size=24.0)
SMALL_KEYS = dict(batch_pos=4, batch_neg=4, mine_from=16)


@pytest.fixture(scope="module")
def sequences(tmp_path_factory):
    """Two 12-frame synthetic OTB folders."""
    root = tmp_path_factory.mktemp("seqs")
    return [str(write_otb(make_sequence(n_frames=12, size=(160, 120), seed=s), root / f"syn{s}", ext=".jpg"))
            for s in (1, 2)]


@pytest.fixture(scope="module")
def synthetic():
    return make_sequence(n_frames=12, size=(160, 120), seed=3)


def frame_batch(seq, policy, bucket, patches, rng, n_pos=4, n_neg=16, domain=0) -> Batch:
    """A training batch cut from synthetic frames into a chosen bucket."""
    mean = np.asarray(MEAN["squeezenet"], np.float32)
    data, pos, neg = [], [], []
    for k in rng.choice(len(seq), patches, replace=False):
        frame = seq.read_frame(int(k))
        geom = policy.for_shape(frame.gt, bucket)
        patch = crop_patch(frame.image, geom, fill=mean)
        data.append((patch.astype(np.float32) - mean).transpose(2, 0, 1))
        pos.append(geom.to_patch(sampling.gaussian(rng, frame.gt, n_pos, trans=0.1, scale=1.3)))
        neg.append(geom.to_patch(sampling.uniform(rng, frame.gt, n_neg, trans=1.0, scale=1.6)))
    return Batch(bucket, np.stack(data), np.stack(pos), np.stack(neg), domain)


def tiny_trainer(contexts=None, **kw):
    args = dict(SMALL_KEYS, freeze=["conv1"])
    args.update(kw)
    return Trainer("squeezenet", 2, SMALL, contexts or [mx.cpu()], **args)


# --------------------------------------------------------------------------- symbols


@pytest.mark.parametrize("name,channels", [("vggm", 512), ("squeezenet", 256)])
def test_extractor_binds_every_bucket(name, channels):
    policy = BucketPolicy()
    feat, c = network.extractor(name)
    assert c == channels
    for bucket, (h, w) in enumerate(policy.shapes):
        ex = feat.simple_bind(mx.cpu(), data=(1, 3, h, w), grad_req="null")
        ex.forward(is_train=False)
        ex.outputs[0].wait_to_read()
        assert ex.outputs[0].shape == (1, channels, h // 8, w // 8) == (1, channels) + policy.feature_shape(bucket)


def test_training_symbol_shapes():
    sym = network.training_symbol("squeezenet", n_domains=3)
    _, out, _ = sym.infer_shape(data=(2, 3, 64, 96), rois=(2, 10, 5), domain_mask=(2, 10, 3), label=(2, 10))
    assert out == [(20, 2)]


def test_instance_loss_output_and_labels():
    """With RT-MDNet's instance loss the symbol gives a second output, a softmax over the
    domains' positive logits per RoI, and reads inst_label (domain or -1)."""
    sym = network.training_symbol("squeezenet", n_domains=3, instance_weight=0.1)
    assert "inst_label" in sym.list_arguments()
    _, out, _ = sym.infer_shape(data=(2, 3, 64, 96), rois=(2, 10, 5), domain_mask=(2, 10, 3), label=(2, 10),
                                inst_label=(2, 10))
    assert out == [(20, 2), (20, 3)]


def test_instance_loss_trains_the_own_branch_above_the_others(synthetic):
    """Steps on one domain's batches raise that domain's share of the positives' instance
    softmax; the negatives carry no instance label."""
    rng = np.random.default_rng(0)
    trainer = tiny_trainer(instance_weight=1.0, lr=1e-3)
    batch = frame_batch(synthetic, SMALL, 0, 1, rng, domain=1)
    built = trainer._batch(batch.data, batch.pos[:, :4], np.ones((1, 4), np.float32), 1)
    np.testing.assert_array_equal(built.label[1].asnumpy(), [[1, 1, 1, 1]])
    built = trainer._batch(batch.data, batch.neg[:, :4], np.zeros((1, 4), np.float32), 1)
    np.testing.assert_array_equal(built.label[1].asnumpy(), [[-1, -1, -1, -1]])
    first = [trainer.step(batch)["instance_loss"]]
    for _ in range(15):
        first.append(trainer.step(batch)["instance_loss"])
    assert first[0] == pytest.approx(np.log(2), abs=0.2)  # two domains, fc6 starts near zero
    assert first[-1] < 0.5 * first[0]


# --------------------------------------------------------------------------- RoIAlign


def _roi_align(feat: np.ndarray, rois: np.ndarray) -> np.ndarray:
    sym = network.roi_pool(mx.sym.Variable("feat"), mx.sym.Variable("rois"))
    ex = sym.bind(mx.cpu(), args={"feat": mx.nd.array(feat), "rois": mx.nd.array(rois)}, grad_req="null")
    ex.forward(is_train=False)
    return ex.outputs[0].asnumpy()


def _cells_roi(batch, rows, cols):
    """RoI in patch pixels covering feature cells rows[0]..rows[1], cols[0]..cols[1] (inclusive)."""
    return [batch, 8 * cols[0], 8 * rows[0], 8 * (cols[1] + 1), 8 * (rows[1] + 1)]


def test_roialign_maps_boxes_to_feature_cells():
    h, w = 12, 16
    feat = np.zeros((2, 2, h, w), np.float32)
    feat[0, 0, 3:8, 4:9] = 5.0                          # a block of cells rows 3-7, cols 4-8
    ii, jj = np.mgrid[0:h, 0:w]
    feat[0, 1] = 100.0 * ii + jj                         # a ramp: every cell says where it is
    feat[1] = 2.0 * feat[0]                              # second patch of the batch
    rois = np.array([
        _cells_roi(0, (4, 6), (5, 7)),                   # inside the block
        _cells_roi(0, (9, 11), (12, 14)),                # away from it
        _cells_roi(1, (4, 6), (5, 7)),                   # the same cells of patch 1
        _cells_roi(0, (2, 4), (1, 3)),                   # elsewhere, for the ramp
    ], np.float32)
    out = _roi_align(feat, rois)
    assert out.shape == (4, 2, 3, 3)
    np.testing.assert_allclose(out[0, 0], np.full((3, 3), 5.0), atol=1e-5)
    np.testing.assert_allclose(out[1, 0], np.zeros((3, 3)), atol=1e-6)
    np.testing.assert_allclose(out[2, 0], np.full((3, 3), 10.0), atol=1e-5)
    # aligned=True at stride 8: cell (i, j) covers patch pixels [8j, 8j+8) x [8i, 8i+8), so a
    # RoI over exactly 3x3 cells pools each cell's own value (bilinear is exact on a ramp).
    for r, (i0, j0) in ((0, (4, 5)), (3, (2, 1))):
        np.testing.assert_allclose(out[r, 1], 100.0 * (i0 + np.arange(3))[:, None] + (j0 + np.arange(3))[None, :],
                                   rtol=1e-5)
    np.testing.assert_allclose(out[2, 1], 2 * out[0, 1], rtol=1e-5)


def test_roialign_half_cell_shift_is_visible():
    """A RoI shifted by 4 px (half a cell) pools half-way values: the mapping is not rounded."""
    feat = np.zeros((1, 1, 12, 16), np.float32)
    feat[0, 0] = np.arange(16, dtype=np.float32)[None, :]
    out = _roi_align(feat, np.array([[0, 8 * 5 + 4, 16, 8 * 8 + 4, 40]], np.float32))
    np.testing.assert_allclose(out[0, 0, 0], [5.5, 6.5, 7.5], rtol=1e-5)


def test_roialign_shrink_pools_the_inner_box():
    """shrink=s pools exactly what the RoI with s px cut off each side pools, and a RoI
    narrower than 2s + 1 px shrinks to 1 px about its centre, never inverts."""
    rng = np.random.default_rng(0)
    feat = mx.nd.array(rng.normal(0, 1, (1, 3, 12, 16)).astype(np.float32))
    rois = np.array([[0, 10, 12, 90, 70], [0, 40, 30, 50, 36]], np.float32)
    inner = np.array([[0, 22, 24, 78, 58], [0, 44.5, 32.5, 45.5, 33.5]], np.float32)
    sym = lambda shrink: network.roi_pool(mx.sym.Variable("feat"), mx.sym.Variable("rois"), 2, shrink)
    a = sym(12.0).eval(feat=feat, rois=mx.nd.array(rois))[0].asnumpy()
    b = sym(0.0).eval(feat=feat, rois=mx.nd.array(inner))[0].asnumpy()
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert not np.allclose(a, sym(0.0).eval(feat=feat, rois=mx.nd.array(rois))[0].asnumpy())



@pytest.mark.parametrize("name", network.EXTRACTORS)
def test_rf_offset_centres_the_bins_on_the_cells_receptive_fields(name):
    """An impulse at each patch column (positive weights, zero biases) finds where feature
    cell 6's receptive field is centred: patch pixel 48, x = 48.5 in RoI coordinates. A RoI
    centred there samples cell 6 only when moved by RF_OFFSET; unmoved, RoIAlign's bins sit
    3.5 px off, at cell 5.56."""
    feat, _ = network.extractor(name)
    n = 96
    ex = feat.simple_bind(mx.cpu(), data=(n, 3, n, n), grad_req="null")
    for k, a in ex.arg_dict.items():
        if k != "data":
            a[:] = 0.01 if k.endswith("weight") else 0.0
    data = np.zeros((n, 3, n, n), np.float32)
    data[np.arange(n), :, 48, np.arange(n)] = 1.0  # impulse i at column i of row 48
    ex.arg_dict["data"][:] = data
    response = ex.forward()[0].asnumpy().sum(axis=1)[:, 6, 6]  # cell (6, 6), one value per impulse
    assert response.min() >= 0 and response.max() > 0
    centre = float((np.arange(n) * response).sum() / response.sum()) + 0.5  # pixel index -> coordinate
    assert abs(centre - 48.5) < 1e-3, centre

    ramp = mx.nd.array(np.tile(np.arange(12, dtype=np.float32), (1, 1, 12, 1)))
    roi = mx.nd.array([[0, centre - 12, centre - 12, centre + 12, centre + 12]])
    pool = lambda offset: network.roi_pool(mx.sym.Variable("feat"), mx.sym.Variable("rois"), 2, 0.0, offset)
    assert pool(network.RF_OFFSET).eval(feat=ramp, rois=roi)[0].asnumpy()[0, 0, 1, 1] == pytest.approx(6.0)
    assert pool(0.0).eval(feat=ramp, rois=roi)[0].asnumpy()[0, 0, 1, 1] == pytest.approx(6.0 - 3.5 / 8)


# --------------------------------------------------------------------------- bucket policy

_coord = st.floats(-2000, 2000, allow_nan=False)
_size = st.floats(1.0, 1500.0, allow_nan=False)
_boxes = st.tuples(_coord, _coord, _size, _size)


@settings(derandomize=True, max_examples=300, deadline=None)
@given(box=_boxes, widen=st.floats(1.0, 2.0))
def test_bucket_policy_properties(box, widen):
    policy = BucketPolicy()
    box = np.array(box)
    region = policy.search_region(box, widen=widen)
    before = box.copy(), region.copy()
    geom = policy.select(box, region)
    # pure: same input, same output; inputs untouched
    assert policy.select(box.copy(), region.copy()) == geom
    np.testing.assert_array_equal(box, before[0])
    np.testing.assert_array_equal(region, before[1])
    h, w = geom.shape
    assert geom.shape == policy.shapes[geom.bucket]
    # round trip image -> patch -> image
    np.testing.assert_allclose(geom.to_image(geom.to_patch(box)), box, rtol=1e-9, atol=1e-6)
    np.testing.assert_allclose(geom.to_patch(geom.to_image([[0, 0, w, h]])), [[0, 0, w, h]], rtol=1e-9, atol=1e-6)
    # the scale puts the target at target_size unless capped (tiny target) or shrunk (region too big)
    s0 = min(policy.target_size / np.sqrt(box[2] * box[3]), policy.max_upscale)
    fits = [i for i, (bh, bw) in enumerate(policy.shapes) if region[2] * s0 <= bw and region[3] * s0 <= bh]
    assert geom.scale <= s0 * (1 + 1e-12)
    if fits:
        assert geom.scale == pytest.approx(s0, rel=1e-12)
        # ... in the smallest bucket that holds the region
        assert h * w == min(policy.shapes[i][0] * policy.shapes[i][1] for i in fits)
        if s0 < policy.max_upscale:
            assert np.sqrt(box[2] * box[3]) * geom.scale == pytest.approx(policy.target_size, rel=1e-9)
    else:
        assert geom.scale < s0
    # the search region lies inside the patch (and is centred in it)
    rx, ry, rw, rh = geom.to_patch(region)
    tol = 1e-6 * max(w, h)
    assert rx >= -tol and ry >= -tol and rx + rw <= w + tol and ry + rh <= h + tol
    assert rx + rw / 2 == pytest.approx(w / 2, abs=tol) and ry + rh / 2 == pytest.approx(h / 2, abs=tol)
    # for_shape keeps the region inside whatever bucket it is asked for
    other = policy.for_shape(box, (geom.bucket + 1) % len(policy.shapes), region)
    ox, oy, ow, oh = other.to_patch(region)
    oh_, ow_ = other.shape
    assert ox >= -tol and oy >= -tol and ox + ow <= ow_ + tol and oy + oh <= oh_ + tol


@settings(derandomize=True, max_examples=100, deadline=None)
@given(box=_boxes, which=st.sampled_from(["nan_x", "inf_w", "zero_w", "neg_h", "nan_h", "zero_both"]))
def test_bucket_policy_rejects_bad_boxes(box, which):
    b = np.array(box)
    if which == "nan_x":
        b[0] = np.nan
    elif which == "inf_w":
        b[2] = np.inf
    elif which == "zero_w":
        b[2] = 0.0
    elif which == "neg_h":
        b[3] = -b[3]
    elif which == "nan_h":
        b[3] = np.nan
    else:
        b[2:] = 0.0
    with pytest.raises(ValueError):
        BucketPolicy().select(b)


# --------------------------------------------------------------------------- hard minibatch mining


def _mine_probs(trainer, batch):
    """Positive-class probability of every negative of ``batch`` under the current weights."""
    P, R = batch.neg.shape[:2]
    rois = np.zeros((P, R, 5), np.float32)
    rois[..., 1:3] = batch.neg[..., :2]
    rois[..., 3:5] = batch.neg[..., :2] + batch.neg[..., 2:]
    mask = np.zeros((P, R, trainer.n_domains), np.float32)
    mask[..., batch.domain] = 1
    h, w = batch.data.shape[2:]
    db = mx.io.DataBatch([mx.nd.array(batch.data), mx.nd.array(rois), mx.nd.array(mask)],
                         [mx.nd.zeros((P, R))], bucket_key=(h, w, R),
                         provide_data=[mx.io.DataDesc("data", batch.data.shape), mx.io.DataDesc("rois", rois.shape),
                                       mx.io.DataDesc("domain_mask", mask.shape)],
                         provide_label=[mx.io.DataDesc("label", (P, R))])
    trainer.mod.forward(db, is_train=False)
    return trainer.mod.get_outputs()[0].asnumpy().reshape(P, R, 2)[..., 1]


def test_trainer_mines_the_highest_scoring_negatives(synthetic, monkeypatch):
    rng = np.random.default_rng(0)
    trainer = tiny_trainer()
    # spread the scores so that the ranking is clear-cut
    trainer.set_params({"fc6_weight": rng.normal(0, 0.5, (4, 512)).astype(np.float32)})
    batch = frame_batch(synthetic, SMALL, 0, 1, rng, domain=1)
    prob = _mine_probs(trainer, batch)[0]
    assert len(np.unique(prob)) == len(prob)
    seen = {}
    real = trainer.mod.forward_backward

    def capture(data_batch):
        seen["rois"] = data_batch.data[1].asnumpy()
        seen["mask"] = data_batch.data[2].asnumpy()
        seen["label"] = data_batch.label[0].asnumpy()
        return real(data_batch)

    monkeypatch.setattr(trainer.mod, "forward_backward", capture)
    stats = trainer.step(batch)
    k = trainer.batch_neg
    top = np.argsort(-prob)[:k]
    rois, label = seen["rois"][0], seen["label"][0]
    np.testing.assert_array_equal(label, [1] * trainer.batch_pos + [0] * k)
    xywh = np.concatenate([rois[:, 1:3], rois[:, 3:5] - rois[:, 1:3]], axis=1)
    np.testing.assert_allclose(xywh[: trainer.batch_pos], batch.pos[0, : trainer.batch_pos], atol=1e-4)
    np.testing.assert_allclose(xywh[trainer.batch_pos:], batch.neg[0, top], atol=1e-4)  # hardest first
    assert np.all(seen["mask"][0, :, 1] == 1) and np.all(seen["mask"][0, :, 0] == 0)
    assert stats["hard_neg_prob"] == pytest.approx(prob[top].mean(), rel=1e-5)
    assert prob[top].min() > np.delete(prob, top).max()


class FakeModel:
    """What OnlineHead reads from a model: feature channels and the fc weights."""

    def __init__(self, channels=8, seed=0):
        rng = np.random.default_rng(seed)
        self.channels = channels
        self.roi_sample_ratio, self.roi_shrink, self.roi_offset = 2, 0.0, 0.0
        self.feature_cov = None
        self._p = {"fc4_weight": rng.normal(0, 0.05, (512, channels * 9)), "fc4_bias": rng.normal(0, 0.1, 512),
                   "fc5_weight": rng.normal(0, 0.05, (512, 512)), "fc5_bias": rng.normal(0, 0.1, 512)}
        self._p = {k: v.astype(np.float32) for k, v in self._p.items()}

    def head_params(self):
        return dict(self._p)


def _head(**kw):
    params = TrackerParams(n_candidates=16, mine_from=64, batch_pos=8, batch_neg=8, **kw)
    return OnlineHead(FakeModel(), mx.cpu(), params, np.random.default_rng(0))


def test_online_head_pools_with_the_models_roi_shrink():
    """The head pools candidates the way the model was trained: a model recording
    roi_shrink=8 embeds a box as a shrink-free model embeds the box 8 px smaller a side."""
    params = TrackerParams(n_candidates=16, mine_from=64, batch_pos=8, batch_neg=8, fc4_rank=0)
    shrunk, plain = FakeModel(), FakeModel()
    shrunk.roi_shrink = 8.0
    feat = np.random.default_rng(2).normal(0, 1, (1, 8, 12, 16)).astype(np.float32)
    boxes = np.array([[10.0, 12.0, 60.0, 50.0], [30.0, 20.0, 40.0, 40.0]])
    inner = boxes + np.array([8.0, 8.0, -16.0, -16.0])
    a, _ = OnlineHead(shrunk, mx.cpu(), params, np.random.default_rng(0)).embed(feat, boxes)
    b, _ = OnlineHead(plain, mx.cpu(), params, np.random.default_rng(0)).embed(feat, inner)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_online_head_pools_with_the_models_roi_offset():
    """A model recording roi_offset=3.5 embeds a box as an offset-free model embeds the box
    moved 3.5 px right and down."""
    params = TrackerParams(n_candidates=16, mine_from=64, batch_pos=8, batch_neg=8, fc4_rank=0)
    moved, plain = FakeModel(), FakeModel()
    moved.roi_offset = 3.5
    feat = np.random.default_rng(2).normal(0, 1, (1, 8, 12, 16)).astype(np.float32)
    boxes = np.array([[10.0, 12.0, 60.0, 50.0], [30.0, 20.0, 40.0, 40.0]])
    a, _ = OnlineHead(moved, mx.cpu(), params, np.random.default_rng(0)).embed(feat, boxes)
    b, _ = OnlineHead(plain, mx.cpu(), params, np.random.default_rng(0)).embed(feat, boxes + [3.5, 3.5, 0, 0])
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert not np.allclose(a, OnlineHead(plain, mx.cpu(), params, np.random.default_rng(0)).embed(feat, boxes)[0])


@pytest.mark.parametrize("n", [64, 40])  # mine_from rows (mine executor) and any other count (score)
def test_online_head_hard_negatives(n):
    head = _head(online_layers=("fc5", "fc6"))
    rng = np.random.default_rng(1)
    head.weights["fc6_weight"][:] = rng.normal(0, 0.2, (2, 512)).astype(np.float32)
    neg = rng.normal(0, 1, (n, 512)).astype(np.float32)
    w = {k: v.asnumpy().astype(np.float64) for k, v in head.weights.items()}
    h5 = np.maximum(neg @ w["fc5_weight"].T + w["fc5_bias"], 0)  # dropout is off when scoring
    s = h5 @ w["fc6_weight"].T + w["fc6_bias"]
    margin = s[:, 1] - s[:, 0]
    k = 8
    idx = head.hard_negatives(neg, k)
    assert len(idx) == k and len(set(idx.tolist())) == k
    assert margin[idx].min() >= np.delete(margin, idx).max() - 1e-4
    assert np.all(np.diff(margin[idx]) <= 1e-4)  # hardest first
    np.testing.assert_allclose(head.score(neg), margin, rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------- per-layer lr


def test_trainer_lr_mult_reaches_the_optimizer(synthetic):
    lr = 1e-2
    trainer = tiny_trainer(lr=lr, momentum=0.0, wd=0.0)
    trainer.step(frame_batch(synthetic, SMALL, 0, 1, np.random.default_rng(2)))  # optimizer ready
    mod = trainer.mod._curr_module
    group = mod._exec_group
    before = {n: group.execs[0].arg_dict[n].asnumpy() for n in group.param_names}
    for grads in group.grad_arrays:
        for g in grads or []:
            if g is not None:
                g[:] = 1.0  # the same known gradient for every weight
    trainer.mod.update()
    delta = {n: before[n] - group.execs[0].arg_dict[n].asnumpy() for n in group.param_names}
    step = {n: float(np.mean(d)) for n, d in delta.items()}
    for n, d in delta.items():
        np.testing.assert_allclose(d, step[n], rtol=1e-3, atol=1e-7, err_msg=n)  # uniform step
    conv = step["fire4_squeeze1x1_weight"]
    assert conv == pytest.approx(lr / trainer.P, rel=1e-3)
    assert step["fire4_squeeze1x1_bias"] == pytest.approx(2 * conv, rel=1e-3)
    assert step["fc6_weight"] == pytest.approx(10 * conv, rel=1e-3)
    assert step["fc6_bias"] == pytest.approx(20 * conv, rel=1e-3)
    # offline training: every fc layer at x10 (MDNet / RT-MDNet: lr 1e-4, fc layers 1e-3)
    assert step["fc4_weight"] == pytest.approx(10 * conv, rel=1e-3)
    assert step["fc5_weight"] == pytest.approx(10 * conv, rel=1e-3)
    # frozen layers do not move
    assert step["conv1_weight"] == 0.0 and np.all(delta["conv1_weight"] == 0)
    assert trainer.optimizer.lr_mult["fc6_weight"] == 10.0


def test_online_head_lr_mult_reaches_the_optimizer():
    head = _head(online_layers=("fc4", "fc5", "fc6"), weight_decay=0.0)
    assert set(head.weights) == set(LR_MULT)
    lr = head.optimizer.lr
    before = {k: v.asnumpy() for k, v in head.weights.items()}
    for i, name in enumerate(head._names):  # the same call train_step makes
        head._updater(i, mx.nd.ones(head.weights[name].shape), head.weights[name])
    step = {k: float(np.mean(before[k] - head.weights[k].asnumpy())) for k in before}
    assert step["fc4_weight"] == pytest.approx(lr, rel=1e-3)
    assert step["fc5_weight"] == pytest.approx(lr, rel=1e-3)
    assert step["fc6_weight"] == pytest.approx(10 * step["fc4_weight"], rel=1e-3)
    assert step["fc6_bias"] == pytest.approx(20 * step["fc4_weight"], rel=1e-3)
    assert step["fc4_bias"] == pytest.approx(2 * step["fc4_weight"], rel=1e-3)


# --------------------------------------------------------------------------- no re-binds


def test_no_rebind_after_each_buckets_first_batch(synthetic, monkeypatch):
    trainer = tiny_trainer()
    real_bind = mx.mod.Module.bind
    calls = []

    def counting_bind(self, *a, **kw):
        calls.append(1)
        return real_bind(self, *a, **kw)

    monkeypatch.setattr(mx.mod.Module, "bind", counting_bind)
    rng = np.random.default_rng(3)
    batches = [frame_batch(synthetic, SMALL, b, 1, rng) for b in (0, 1)]
    keys = {(64, 64, 16), (64, 64, 8), (64, 96, 16), (64, 96, 8)}  # (H, W, RoIs): mining and training
    for b in batches:
        trainer.step(b)
    assert set(trainer.bound_keys) == keys and trainer.binds == len(keys)
    assert len(trainer.mod._buckets) == len(keys)
    bound = len(calls)
    assert bound == len(keys) - 1  # the default key was bound in the constructor
    for _ in range(3):
        for b in batches:
            trainer.step(b)
    assert trainer.binds == len(keys) and len(calls) == bound and len(trainer.mod._buckets) == len(keys)


# --------------------------------------------------------------------------- data parallel


def _device_params(trainer):
    group = trainer.mod._curr_module._exec_group
    return [{n: ex.arg_dict[n].asnumpy() for n in group.param_names} for ex in group.execs]


def test_two_context_training_keeps_devices_identical(sequences):
    domains = load_domains(sequences)
    trainer = tiny_trainer(contexts=[mx.cpu(0), mx.cpu(1)], lr=1e-3)
    start = trainer.params()
    sampler = BatchSampler(domains, SMALL, MEAN["squeezenet"], n_pos=4, n_neg=16, patches=2, seed=0)
    for _ in range(3):
        stats = trainer.step(sampler.sample())
        assert np.isfinite(stats["loss"])
    devs = _device_params(trainer)
    assert len(devs) == 2
    for n in devs[0]:
        np.testing.assert_array_equal(devs[0][n], devs[1][n], err_msg=n)
    end = trainer.params()
    assert not np.array_equal(start["fc6_weight"], end["fc6_weight"])
    np.testing.assert_array_equal(start["conv1_weight"], end["conv1_weight"])  # frozen


def test_set_params_survives_the_first_multi_device_update(synthetic):
    trainer = tiny_trainer(contexts=[mx.cpu(0), mx.cpu(1)], lr=1e-4)
    w = np.full(trainer.params()["fc5_weight"].shape, 0.01, np.float32)
    trainer.set_params({"fc5_weight": w})  # e.g. pretrained or resumed weights
    trainer.step(frame_batch(synthetic, SMALL, 0, 2, np.random.default_rng(4)))
    for dev in _device_params(trainer):
        np.testing.assert_allclose(dev["fc5_weight"], w, atol=1e-3)


def test_train_records_target_size_and_roi_shrink_in_the_model(sequences, tmp_path):
    """The crop scale and the RoI shrink a model was trained with travel in its config, so
    the tracker crops and pools the same way."""
    from runtime.model import load_model
    from train_mx import train

    rc = train.main(["--sequences", *sequences, "--iterations", "2", "--epoch-size", "2", "--pretrained", "",
                     "--target-size", "48", "--roi-shrink", "4", "--roi-offset", "3.5", "--instance-loss", "0.1", "--out", str(tmp_path / "run"),
                     "--save-model", str(tmp_path / "model"), "--quiet"])
    assert rc == 0
    model = load_model(tmp_path / "model")
    assert model.policy.target_size == 48.0 and model.roi_shrink == 4.0 and model.roi_offset == 3.5
    assert model.config["training"]["instance_loss"] == 0.1


def test_resume_refuses_a_changed_recipe(sequences, tmp_path, capsys):
    """--resume continues the checkpoint's run: an option that defines it (here the RoI
    shrink) given differently is refused with the option named, not silently switched."""
    from train_mx import train

    base = ["--sequences", *sequences, "--epoch-size", "2", "--pretrained", "", "--out", str(tmp_path / "run"),
            "--quiet", "--roi-shrink", "4"]
    assert train.main(base + ["--iterations", "2"]) == 0
    capsys.readouterr()
    changed = [a if a != "4" else "0" for a in base]
    assert train.main(changed + ["--iterations", "4", "--resume"]) == 2
    err = capsys.readouterr().err
    assert "--roi-shrink 0.0 (checkpoint: 4.0)" in err and "new --out" in err
    assert train.main(base + ["--iterations", "4", "--resume"]) == 0
    assert "resumed from" in capsys.readouterr().out
    assert json.loads((tmp_path / "run" / "state.json").read_text())["iteration"] == 4
    # options left out take the checkpoint's values (they counted as defaults, and were refused)
    left_out = base[: base.index("--roi-shrink")]
    assert train.main(left_out + ["--iterations", "6", "--resume", "--save-model", str(tmp_path / "m")]) == 0
    assert "resumed from" in capsys.readouterr().out
    assert json.loads((tmp_path / "m" / "config.json").read_text())["training"]["roi_shrink"] == 4.0
    # values are checked again once the checkpoint's have filled in (its --holdout needs held-out batches)
    held = ["--sequences", *sequences, "--epoch-size", "2", "--pretrained", "", "--quiet",
            "--holdout", Path(sequences[0]).name, "--out", str(tmp_path / "held")]
    assert train.main(held + ["--iterations", "2", "--heldout-batches", "1"]) == 0
    capsys.readouterr()
    no_holdout = held[: held.index("--holdout")] + held[held.index("--out"):]
    assert train.main(no_holdout + ["--iterations", "4", "--resume", "--heldout-batches", "0"]) == 2
    assert "--heldout-batches must be positive" in capsys.readouterr().err


def test_given_options_sees_abbreviations_and_equals_signs():
    import argparse

    from train_mx.train import given_options

    ap = argparse.ArgumentParser()
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--roi-shrink", type=float, default=0.0)
    ap.add_argument("--iterations", type=int, default=2)
    names = ("lr", "roi_shrink")
    assert given_options(ap, ["--iterations", "3"], names) == set()
    assert given_options(ap, ["--lr=0.1", "--roi", "2"], names) == {"lr", "roi_shrink"}
    assert given_options(ap, ["--roi-shrink", "0"], names) == {"roi_shrink"}  # given as the default: still given


WORKER = textwrap.dedent('''
    """Runs train_mx.train and dumps this worker's final parameters and batch hashes."""
    import hashlib, json, os, sys
    import numpy as np
    from train_mx import train

    seen = {"batches": []}
    _init, _step = train.Trainer.__init__, train.Trainer.step

    def init(self, *a, **k):
        _init(self, *a, **k)
        seen["trainer"] = self

    def step(self, batch):
        seen["batches"].append(hashlib.sha1(batch.data.tobytes() + batch.neg.tobytes()).hexdigest())
        return _step(self, batch)

    train.Trainer.__init__, train.Trainer.step = init, step
    rc = train.main(sys.argv[1:])
    t = seen["trainer"]
    out = os.environ["DUMP_DIR"]
    np.savez(os.path.join(out, f"rank{t.kvstore.rank}.npz"), **t.params())
    with open(os.path.join(out, f"rank{t.kvstore.rank}.json"), "w") as f:
        json.dump({"batches": seen["batches"], "num_workers": t.kvstore.num_workers,
                   "rescale_grad": t.optimizer.rescale_grad}, f)
    sys.exit(rc)
''')


@pytest.fixture(scope="module")
def dist_run(sequences, tmp_path_factory):
    """A 2-worker, 1-server dist_sync job on 127.0.0.1 through train_mx.launch (run once)."""
    tmp = tmp_path_factory.mktemp("dist")
    (tmp / "dumpworker.py").write_text(WORKER)
    dump = tmp / "dump"
    dump.mkdir()
    out = tmp / "run"
    env = dict(os.environ, DUMP_DIR=str(dump),
               PYTHONPATH=os.pathsep.join([str(tmp), str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    cmd = [sys.executable, "-m", "train_mx.launch", "-n", "2", "-s", "1", "--timeout", "120", "--threads", "1",
           "--module", "dumpworker", "--",
           "--sequences", *sequences, "--extractor", "squeezenet", "--pretrained", "",
           "--iterations", "4", "--epoch-size", "2", "--mine-from", "96", "--out", str(out), "--quiet"]
    # a hang ends at the launcher's --timeout (exit 124), or at worst at the subprocess timeout
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    return {"res": res, "dump": dump, "out": out}


@pytest.mark.slow
def test_dist_sync_two_workers_end_identical(dist_run):
    from runtime.model import load_model

    res, dump, out = dist_run["res"], dist_run["dump"], dist_run["out"]
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    assert "[worker 0]" in res.stdout and "[worker 1]" in res.stdout
    info = [json.loads((dump / f"rank{r}.json").read_text()) for r in (0, 1)]
    p0, p1 = (dict(np.load(dump / f"rank{r}.npz")) for r in (0, 1))
    assert all(i["num_workers"] == 2 for i in info)
    assert len(info[0]["batches"]) == len(info[1]["batches"]) == 4
    assert not set(info[0]["batches"]) & set(info[1]["batches"])  # each worker draws its own batches
    assert set(p0) == set(p1) and "fc6_weight" in p0
    for n in p0:
        np.testing.assert_array_equal(p0[n], p1[n], err_msg=n)
    # only rank 0 writes the checkpoint, and it holds the shared final weights
    ckpt = load_model(out / "checkpoint")
    for n in p0:
        np.testing.assert_array_equal(ckpt.params[n], p0[n], err_msg=n)
    assert json.loads((out / "state.json").read_text())["iteration"] == 4


@pytest.mark.slow
def test_dist_sync_averages_gradients_over_workers(dist_run):
    assert dist_run["res"].returncode == 0
    for r in (0, 1):
        info = json.loads((dist_run["dump"] / f"rank{r}.json").read_text())
        assert info["rescale_grad"] == pytest.approx(1.0 / (1 * info["num_workers"]))


@pytest.mark.slow
def test_launch_documented_command_finishes_and_rank0_writes_the_model(sequences, tmp_path):
    """README's ``python -m train_mx.launch -n 2 -s 1 -- <train args>`` with plain train_mx.train
    as the workers (no wrapper reading the weights on every rank): both workers end, rank 0
    writes the checkpoint, state.json and --save-model once, the launcher exits 0."""
    from runtime.model import load_model

    out, model = tmp_path / "run", tmp_path / "model"
    cmd = [sys.executable, "-m", "train_mx.launch", "-n", "2", "-s", "1", "--timeout", "50", "--grace", "5",
           "--threads", "1", "--",
           "--sequences", *sequences, "--pretrained", "", "--iterations", "4", "--epoch-size", "2",
           "--mine-from", "96", "--out", str(out), "--save-model", str(model), "--quiet"]
    # a job that never finishes is stopped by the launcher's --timeout (exit 124, not 0)
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=150)
    log = res.stdout + res.stderr
    assert res.returncode == 0, log[-4000:]
    assert "[launch] 2 worker(s) finished" in res.stdout
    for w in (0, 1):
        assert f"[worker {w}] trained 4 iterations" in res.stdout, log[-4000:]
    assert res.stdout.count("model written to") == 1  # rank 0 only
    assert json.loads((out / "state.json").read_text())["iteration"] == 4
    ckpt, final = load_model(out / "checkpoint"), load_model(model)
    assert "fc6_weight" in ckpt.params and not any(k.startswith("fc6") for k in final.params)
    for n, v in final.params.items():  # both read after the last synchronous step
        np.testing.assert_array_equal(v, ckpt.params[n], err_msg=n)


def _processes_with_env(tag: str) -> list:
    """PIDs of this user's processes whose environment holds ``tag``."""
    found = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and int(d.name) != os.getpid():
            try:
                if tag.encode() in (d / "environ").read_bytes():
                    found.append(int(d.name))
            except OSError:
                pass
    return found


def _reap_processes_with_env(tag: str) -> list:
    """The processes a launcher left behind (see above), killed so that a failing test does
    not leave them running; returns their PIDs for the test to assert on."""
    leftover = _processes_with_env(tag)
    for pid in leftover:
        try:
            os.kill(pid, 9)
        except OSError:
            pass
    return leftover


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs /proc")
def test_launch_timeout_kills_everything_and_exits_124(tmp_path):
    """A worker that ignores SIGTERM and SIGINT (like one stuck in a kvstore wait) cannot keep
    the job alive past --timeout + --grace: the launcher kills every process and exits 124."""
    (tmp_path / "stuck.py").write_text(textwrap.dedent('''
        import signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        print("stuck", flush=True)
        time.sleep(600)
    '''))
    tag = f"LAUNCH_TIMEOUT_TEST={os.getpid()}_{time.time_ns()}"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(ROOT)]))
    t0 = time.time()
    # 10 s: both workers must have started and printed within it on a loaded 2-core machine
    res = subprocess.run([sys.executable, "-m", "train_mx.launch", "-n", "2", "--timeout", "10", "--grace", "2",
                          "--env", tag, "--module", "stuck"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    seconds = time.time() - t0
    leftover = _reap_processes_with_env(tag)
    assert res.returncode == 124, res.stdout + res.stderr
    assert "timeout after 10 s" in res.stdout
    assert res.stdout.count("stuck") >= 2  # both workers were running
    assert seconds >= 10, seconds  # it waited for --timeout (how much longer it took is no test's business)
    assert leftover == []


def test_launch_dry_run_plans_roles_and_hosts(tmp_path, capsys):
    from train_mx import launch

    assert launch.main(["-n", "2", "-s", "1", "--port", "9100", "--dry-run", "--", "--iterations", "3"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [ln.split(":")[0] for ln in lines] == ["scheduler", "server 0", "worker 0", "worker 1"]
    for ln in lines:
        for var in ("DMLC_PS_ROOT_URI=127.0.0.1", "DMLC_PS_ROOT_PORT=9100", "DMLC_NUM_SERVER=1", "DMLC_NUM_WORKER=2"):
            assert var in ln
    assert "DMLC_ROLE=scheduler" in lines[0] and "import mxnet" in lines[0]
    assert "DMLC_ROLE=worker" in lines[2] and "-m train_mx.train --iterations 3 --kvstore dist_sync" in lines[2]
    hosts = tmp_path / "hosts"
    hosts.write_text("me@alpha 10.0.0.1\n# comment\nbeta 10.0.0.2\n")
    assert launch.main(["-n", "3", "-s", "2", "--hosts", str(hosts), "--port", "9100", "--dry-run", "--", "-x"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    where = [ln.split(" -tt ", 1)[1].split()[0] for ln in lines]  # ssh -o BatchMode=yes -tt HOST 'cd ...' 
    assert where == ["me@alpha", "me@alpha", "beta", "me@alpha", "beta", "me@alpha"]
    assert all("DMLC_PS_ROOT_URI=10.0.0.1" in ln for ln in lines)
    assert "DMLC_NODE_HOST=10.0.0.2" in lines[2] and "DMLC_NODE_HOST=10.0.0.1" in lines[3]


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs /proc")
def test_launch_stops_the_job_when_a_worker_fails(tmp_path):
    """Rank 1 exits 3 while rank 0 blocks forever in the synchronous kvstore: the launcher
    reports the failure, stops rank 0, the servers and the scheduler, and exits 1. Left alone
    the job would run into --timeout (exit 124, "timeout after"), so the exit status shows it
    was the failure that ended it; no time is measured."""
    (tmp_path / "failer.py").write_text(textwrap.dedent('''
        import os, time
        import mxnet as mx
        kv = mx.kv.create("dist_sync")
        print(f"rank {kv.rank} up", flush=True)
        if kv.rank == 1:
            os._exit(3)
        kv.init("x", mx.nd.zeros((2,)))
        kv.push("x", mx.nd.ones((2,)))  # waits for rank 1 forever
        kv.pull("x", out=mx.nd.zeros((2,)))
        time.sleep(600)
    '''))
    tag = f"LAUNCH_FAIL_TEST={os.getpid()}_{time.time_ns()}"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(ROOT)]))
    res = subprocess.run([sys.executable, "-m", "train_mx.launch", "-n", "2", "--timeout", "60", "--grace", "5",
                          "--env", tag, "--module", "failer"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    leftover = _reap_processes_with_env(tag)
    out = res.stdout
    assert res.returncode == 1, out + res.stderr
    assert "failed with exit status 3: stopping the job" in out
    assert "timeout after" not in out  # stopped by the failure, not by --timeout
    # rank 1 got past kv.create, which waits for every worker: rank 0 was up, blocked in a wait
    # it never leaves by itself (then a 600 s sleep), yet it is gone, with the servers and the scheduler
    assert "rank 1 up" in out
    assert leftover == []


# --------------------------------------------------------------------------- ground truth


def test_clean_groundtruth_rejects_bad_rows():
    n = 20
    t = np.arange(n, dtype=np.float64)
    gt = np.stack([40 + 2 * t, 30 + t, np.full(n, 30.0), np.full(n, 20.0)], axis=1)
    gt[3] = np.nan                       # target absent
    gt[6, 2] = 0.0                       # empty box
    gt[9] = [500.0, 400.0, 30.0, 20.0]   # outside the 160x120 image
    gt[12, 3] = np.inf                   # not finite
    gt[15, 2:] *= 3.0                    # a single-frame size outlier (9x the area)
    ok = clean_groundtruth(gt, (160, 120))
    bad = [3, 6, 9, 12, 15]
    assert ok.dtype == bool and ok.shape == (n,)
    assert np.flatnonzero(~ok).tolist() == bad


def test_clean_groundtruth_keeps_a_clean_track_and_partly_visible_boxes():
    n = 15
    t = np.arange(n, dtype=np.float64)
    gt = np.stack([-8 + 3 * t, 10 + t, 30 + t, 20 + 0.5 * t], axis=1)  # the first boxes stick out a little
    assert clean_groundtruth(gt, (160, 120)).all()
    glitch = gt.copy()
    glitch[7, :2] += 80                  # one frame's centre jumps away and back
    ok = clean_groundtruth(glitch, (160, 120))
    assert np.flatnonzero(~ok).tolist() == [7]


def test_load_domains_skips_absent_frames(tmp_path):
    folder = write_otb(make_sequence(n_frames=12, size=(160, 120), seed=5), tmp_path / "s", ext=".jpg")
    lines = (folder / "groundtruth_rect.txt").read_text().splitlines()
    lines[4] = "NaN,NaN,NaN,NaN"
    (folder / "groundtruth_rect.txt").write_text("\n".join(lines) + "\n")
    (dom,) = load_domains([str(folder)])
    assert len(dom.frames) == 11 and not any(p.endswith("0005.jpg") for p in map(str, dom.frames))
    assert np.isfinite(dom.boxes).all()


def test_sampler_leaves_out_corrupt_frames_once(tmp_path, capsys):
    """A corrupt or truncated frame met during training (hours in, on a real dataset) is left
    out with one warning, and the batch still has every patch; it once ended the run."""
    folder = write_otb(make_sequence(n_frames=12, size=(160, 120), seed=6), tmp_path / "s", ext=".jpg")
    (folder / "img" / "0005.jpg").write_bytes(b"not a jpeg")
    good = (folder / "img" / "0008.jpg").read_bytes()
    (folder / "img" / "0008.jpg").write_bytes(good[: len(good) // 2])  # truncated
    (dom,) = load_domains([str(folder)])
    sampler = BatchSampler([dom], SMALL, MEAN["squeezenet"], n_pos=4, n_neg=16, patches=12, seed=0)
    batch = sampler.sample()  # 12 patches of 12 frames: both bad ones are drawn
    assert batch.data.shape[0] == 12
    err = capsys.readouterr().err
    assert err.count("0005.jpg") == 1 and err.count("0008.jpg") == 1 and "Traceback" not in err
    assert len(dom.frames) == 10 and len(dom.boxes) == 10
    sampler.sample()
    assert capsys.readouterr().err == ""


def test_load_domains_says_what_it_leaves_out(tmp_path, capsys):
    """A sequence left out of training (too few usable boxes, no ground truth) and a ground
    truth that does not match the frames are reported, not dropped in silence; a folder that
    is not a sequence is refused with a training hint, not the tracker's image-glob one."""
    from runtime.errors import TrackerInputError

    def seq(name):
        return write_otb(make_sequence(n_frames=12, size=(160, 120), seed=7), tmp_path / name, ext=".jpg")

    one = seq("one")
    rows = (one / "groundtruth_rect.txt").read_text().splitlines()
    (one / "groundtruth_rect.txt").write_text("\n".join(rows[:1] + ["NaN,NaN,NaN,NaN"] * 11) + "\n")
    short = seq("short")
    (short / "groundtruth_rect.txt").write_text("\n".join(rows[:11]) + "\n")
    nogt = seq("nogt")
    (nogt / "groundtruth_rect.txt").unlink()
    bad_first = seq("bad_first")
    (bad_first / "img" / "0001.jpg").write_bytes(b"")
    domains = load_domains([str(one), str(short), str(nogt), str(bad_first)])
    assert [(d.name, len(d.frames)) for d in domains] == [("short", 11), ("bad_first", 11)]
    err = capsys.readouterr().err
    assert "one left out: 1 of its 12 frames" in err
    assert "11 rows for 12 frames" in err and "nogt left out: no ground truth" in err
    assert "bad_first" in err and "0001.jpg" in err
    (tmp_path / "notes").mkdir()
    with pytest.raises(TrackerInputError, match="--sequences .*notes is not a sequence folder") as e:
        load_domains([str(tmp_path / "notes")])
    assert "glob" not in str(e.value)
    # the problem with training's advice in place of the tracker's (--init, a frames folder)
    (nogt / "groundtruth_rect.txt").write_text("1,2,3\n")
    for folder, problem in ((nogt, "groundtruth_rect.txt:1: expected"), (tmp_path / "gone", "gone does not exist")):
        with pytest.raises(TrackerInputError) as e:
            load_domains([str(folder)])
        msg = str(e.value)
        assert problem in msg and msg.endswith(f"fix it, or leave {folder.name} out of --sequences"), msg
        assert "--init" not in msg and "pass a folder" not in msg, msg


def test_train_refuses_unknown_holdout_same_names_a_used_out_and_other_sequences_on_resume(
        sequences, tmp_path, capsys):
    """Mistakes found before any training, in one line, nothing on disk touched: a --holdout
    no sequence has (once silently no held-out set), two sequences of one name, an --out that
    holds a run without --resume (once overwritten), a resume with other sequences (once a
    traceback, or fc6 branches silently given to other sequences)."""
    import shutil

    from train_mx import train

    out = tmp_path / "run"
    base = ["--iterations", "2", "--epoch-size", "2", "--pretrained", "", "--out", str(out), "--quiet"]
    _one_error_line(capsys, train.main(["--sequences", *sequences, "--holdout", "syn1,nosuch", *base]),
                    "--holdout", "nosuch", "syn2")
    twin = tmp_path / "other" / Path(sequences[0]).name
    shutil.copytree(sequences[0], twin)
    _one_error_line(capsys, train.main(["--sequences", *sequences, str(twin), *base]), "two sequences named syn1")
    assert not out.exists()
    assert train.main(["--sequences", *sequences, *base]) == 0
    capsys.readouterr()
    state = (out / "state.json").read_text()
    _one_error_line(capsys, train.main(["--sequences", *sequences, *base]),
                    "already holds a training run", "--resume")
    _one_error_line(capsys, train.main(["--sequences", sequences[0], *base, "--iterations", "4", "--resume"]),
                    "--resume", "syn1, syn2", "new --out")
    assert (out / "state.json").read_text() == state


def test_save_model_replaces_only_its_own_runs_model(sequences, tmp_path, capsys, monkeypatch):
    """--save-model into a folder holding another run's model is refused before training
    (it was replaced at the end); the run that wrote it may write it again when resumed."""
    from runtime.model import load_model
    from train_mx import train

    model = tmp_path / "model"
    base = ["--sequences", *sequences, "--epoch-size", "2", "--pretrained", "", "--quiet", "--save-model", str(model)]
    assert train.main([*base, "--iterations", "2", "--out", str(tmp_path / "a")]) == 0
    first = load_model(model).model_hash
    _one_error_line(capsys, train.main([*base, "--iterations", "2", "--out", str(tmp_path / "b")]),
                    f"--save-model {model} already holds a model", "a)", "new folder")
    assert not (tmp_path / "b").exists() and load_model(model).model_hash == first
    assert train.main([*base, "--iterations", "4", "--out", str(tmp_path / "a"), "--resume"]) == 0
    assert load_model(model).model_hash != first
    # a model no run wrote (a copy of the shipped one, "training" absent or damaged) is never "this run's"
    from runtime.errors import TrackerInputError
    from train_mx.train import check_save_model_free

    for training in (None, "null", '{"out": 3}'):
        other = tmp_path / f"other_{training}"
        other.mkdir()
        (other / "manifest.json").write_text("{}")
        (other / "config.json").write_text("{}" if training is None else f'{{"training": {training}}}')
        monkeypatch.chdir(tmp_path)
        with pytest.raises(TrackerInputError, match="already holds a model; give a new folder"):
            check_save_model_free(other, ".")


# --------------------------------------------------------------------------- stopping, checkpoints, resume

TINY = ["--epoch-size", "2", "--pretrained", "", "--mine-from", "96", "--quiet"]


def _params(folder):
    from runtime.model import load_model

    return load_model(folder).params


def _assert_same_params(a, b):
    assert set(a) == set(b)
    for n in a:
        np.testing.assert_array_equal(a[n], b[n], err_msg=n)


def _ckpt_iteration(out):
    """The iteration the checkpoint in ``out`` holds, checked against its own state."""
    from train_mx import checkpoint

    model, state, _ = checkpoint.read(out)
    assert model.config["training"]["iteration"] == state["iteration"]
    assert not (Path(out) / checkpoint.NEW).exists() and not (Path(out) / checkpoint.OLD).exists()
    return state["iteration"]


@pytest.fixture(scope="module")
def reference_run(sequences, tmp_path_factory):
    """4 iterations in one go, a checkpoint every 2: what every interrupted and resumed run
    below must end with, bit for bit (training on the CPU is deterministic)."""
    from train_mx import train

    out = tmp_path_factory.mktemp("reference") / "run"
    assert train.main(["--sequences", *sequences, *TINY, "--iterations", "4", "--out", str(out)]) == 0
    return out


def test_resume_continues_the_run_bit_identically(sequences, reference_run, tmp_path):
    """2 iterations then --resume to 4 ends with the weights of 4 in one go: the SGD
    momentum, the batch sampler's draws and the dropout masks continue (they once restarted,
    and the sampler was re-seeded so that --seed 1 drew what --seed 0 resumed at 1000 drew)."""
    from train_mx import train

    base = ["--sequences", *sequences, *TINY, "--out", str(tmp_path / "run")]
    assert train.main(base + ["--iterations", "2"]) == 0
    assert train.main(base + ["--iterations", "4", "--resume"]) == 0
    _assert_same_params(_params(tmp_path / "run" / "checkpoint"), _params(reference_run / "checkpoint"))
    ref = json.loads((reference_run / "state.json").read_text())["log"]
    log = json.loads((tmp_path / "run" / "state.json").read_text())["log"]
    assert [e["loss"] for e in log] == [e["loss"] for e in ref]


def _signal_at_step(monkeypatch, sig, at):
    """Send ``sig`` to this process right after training step ``at`` (1-based)."""
    import signal

    from train_mx import train

    real, count = train.Trainer.step, [0]

    def step(self, batch):
        stats = real(self, batch)
        count[0] += 1
        if count[0] == at:
            os.kill(os.getpid(), getattr(signal, sig))
        return stats

    monkeypatch.setattr(train.Trainer, "step", step)


def test_signal_stops_after_the_step_with_checkpoint_and_model(sequences, reference_run, tmp_path, capsys,
                                                               monkeypatch):
    """Ctrl-C mid-epoch (once a traceback, everything since the last checkpoint lost, no
    --save-model): the step in hand finishes, checkpoint and model are written at that
    iteration, one line says so and how to go on, the exit status is 130; the command rerun
    with --resume ends as the uninterrupted run does."""
    from train_mx import train

    out, model = tmp_path / "run", tmp_path / "model"
    cmd = ["--sequences", *sequences, *TINY, "--iterations", "4", "--out", str(out), "--save-model", str(model)]
    _signal_at_step(monkeypatch, "SIGINT", 3)
    assert train.main(cmd) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("interrupted (SIGINT) at iteration 3 of 4: the checkpoint in")
    assert "rerun the same command with --resume" in err[0]
    assert _ckpt_iteration(out) == 3
    assert json.loads((out / "state.json").read_text())["iteration"] == 3
    assert json.loads((model / "config.json").read_text())["training"]["iteration"] == 3
    monkeypatch.undo()
    assert train.main(cmd + ["--resume"]) == 0
    _assert_same_params(_params(out / "checkpoint"), _params(reference_run / "checkpoint"))


def test_second_signal_stops_at_once_keeping_the_last_checkpoint(sequences, reference_run, tmp_path, capsys,
                                                                 monkeypatch):
    """A second signal (here while the first one's checkpoint is being written) stops at
    once, exit 128 + the signal; the checkpoint before it stays whole and resumable."""
    import signal

    from train_mx import checkpoint, train

    out = tmp_path / "run"
    cmd = ["--sequences", *sequences, *TINY, "--iterations", "4", "--out", str(out)]
    _signal_at_step(monkeypatch, "SIGTERM", 3)
    real, writes = checkpoint.save_model, [0]

    def save(*a, **k):
        writes[0] += 1
        if writes[0] == 2:  # the checkpoint of iteration 3
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*a, **k)

    monkeypatch.setattr(checkpoint, "save_model", save)
    assert train.main(cmd) == 143
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("interrupted (SIGTERM); the checkpoint in"), err
    assert "holds iteration 2" in err[0] and "--resume" in err[0]
    assert _ckpt_iteration(out) == 2
    monkeypatch.undo()
    assert train.main(cmd + ["--resume"]) == 0
    _assert_same_params(_params(out / "checkpoint"), _params(reference_run / "checkpoint"))


def test_sigterm_stops_a_real_process_cleanly(sequences, tmp_path):
    """A real SIGTERM (docker stop, systemd) once killed the process silently: now it exits
    143 with one line naming the iteration its checkpoint holds."""
    import signal

    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "train_mx.train", "--sequences", *sequences, *TINY,
                             "--epoch-size", "1", "--iterations", "100000", "--out", str(out)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (out / "state.json").exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 143, stderr
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("interrupted (SIGTERM) at iteration "), stderr
    it = int(lines[0].split("at iteration ")[1].split()[0])
    assert it >= 1 and _ckpt_iteration(out) == it
    assert json.loads((out / "state.json").read_text())["iteration"] == it


def _fault_disk_full(monkeypatch):
    """The second checkpoint's state.json: half written, then ENOSPC."""
    import errno

    real, n = Path.write_text, [0]

    def write_text(self, data, *a, **k):
        if self.name == "state.json" and self.parent.name == ".checkpoint.new":
            n[0] += 1
            if n[0] == 2:
                real(self, data[: len(data) // 2])
                raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return real(self, data, *a, **k)

    monkeypatch.setattr(Path, "write_text", write_text)


def _fault_kill_in_swap(monkeypatch):
    """A kill between the renames that swap the second checkpoint in."""
    from train_mx import checkpoint

    real, n = os.rename, [0]

    def rename(a, b):
        if Path(b).name == "checkpoint" and Path(a).name == ".checkpoint.new":
            n[0] += 1
            if n[0] == 2:
                raise KeyboardInterrupt
        return real(a, b)

    monkeypatch.setattr(checkpoint.os, "rename", rename)


def _fault_kill_in_save_model(monkeypatch):
    """A kill between the renames inside save_model (weights in, manifest not yet)."""
    import runtime.model as M

    real, n = os.replace, [0]

    def replace(a, b):
        real(a, b)
        if Path(b).name == "weights.params":
            n[0] += 1
            if n[0] == 2:
                raise KeyboardInterrupt

    monkeypatch.setattr(M.os, "replace", replace)


@pytest.mark.parametrize("fault,rc,kept", [(_fault_disk_full, 2, 2), (_fault_kill_in_swap, 130, 4),
                                           (_fault_kill_in_save_model, 130, 2)])
def test_checkpoint_and_state_are_one_unit(sequences, reference_run, tmp_path, capsys, monkeypatch, fault, rc, kept):
    """Weights and the state that says their iteration are written as one: a full disk while
    the state is written (once a traceback, then --resume refused), a kill between the
    checkpoint and its state (once iterations silently trained twice) or between
    save_model's renames (once a sha256 mismatch with nothing to restore) leaves a whole
    checkpoint, the previous one or the new one; the error is one line, and --resume ends
    as the uninterrupted run does."""
    from train_mx import train

    out = tmp_path / "run"
    cmd = ["--sequences", *sequences, *TINY, "--iterations", "4", "--out", str(out)]
    fault(monkeypatch)
    assert train.main(cmd) == rc
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    assert err[0].startswith("error: " if rc == 2 else "interrupted (SIGINT)"), err
    # the iteration --resume continues from (a kill between the swap's renames: the new one,
    # which the message once called the previous)
    assert f"holds iteration {kept}" in err[0] and "--resume" in err[0], err
    if rc == 2:
        assert "No space left on device" in err[0]
    monkeypatch.undo()
    assert train.main(cmd + ["--resume"]) == 0
    if kept == 4:  # the new checkpoint was whole: nothing left to train
        assert "--iterations 4 is not above the checkpoint's iteration 4" in capsys.readouterr().err
    assert _ckpt_iteration(out) == 4
    _assert_same_params(_params(out / "checkpoint"), _params(reference_run / "checkpoint"))


def test_train_reports_a_folder_it_cannot_create_in_one_line(sequences, tmp_path, capsys, monkeypatch):
    """--out in a place the checks let through but mkdir refuses (/proc as root): one error
    line, not a traceback."""
    import errno

    from train_mx import train

    out = tmp_path / "run"
    real = Path.mkdir

    def mkdir(self, *a, **k):
        if self == out:
            raise OSError(errno.ENOENT, "No such file or directory", str(self))
        return real(self, *a, **k)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    _one_error_line(capsys, train.main(["--sequences", *sequences, *TINY, "--iterations", "2", "--out", str(out)]),
                    f"--out {out} cannot be created", "No such file or directory")


def test_resume_records_the_iteration_reached_and_all_training_time(reference_run, tmp_path, capsys):
    """--resume with --iterations not above the checkpoint's (once a silent 'trained 0
    iterations' model): a warning line; the model records the iteration reached and the
    training time of every session, not the last one's."""
    import shutil

    from train_mx import train

    out, model = tmp_path / "run", tmp_path / "model"
    shutil.copytree(reference_run, out)
    seqs = json.loads((out / "checkpoint" / "config.json").read_text())["training"]["sequences"]
    first = json.loads((out / "checkpoint" / "state.json").read_text())["seconds"]
    cmd = ["--sequences", *seqs, *TINY, "--out", str(out), "--save-model", str(model), "--resume"]
    assert train.main(cmd + ["--iterations", "2"]) == 0
    captured = capsys.readouterr()
    warnings = [ln for ln in captured.err.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 1 and "--iterations 2 is not above the checkpoint's iteration 4" in warnings[0]
    assert "trained 0 iterations" in captured.out and "(iteration 4," in captured.out
    training = json.loads((model / "config.json").read_text())["training"]
    assert training["iteration"] == 4 and training["seconds"] >= first
    assert train.main(cmd + ["--iterations", "6"]) == 0
    training = json.loads((model / "config.json").read_text())["training"]
    state = json.loads((out / "state.json").read_text())
    assert training["iteration"] == state["iteration"] == 6
    assert training["seconds"] >= state["seconds"] > first  # the first session's time is in it
    assert "warning" not in capsys.readouterr().err


def test_resume_accepts_the_holdout_in_another_order(sequences, tmp_path, capsys):
    """--holdout is a set of names: the same ones in another order resume (once refused)."""
    from train_mx import train

    third = str(write_otb(make_sequence(n_frames=12, size=(160, 120), seed=3), tmp_path / "syn3", ext=".jpg"))
    base = ["--sequences", *sequences, third, *TINY, "--heldout-batches", "1", "--out", str(tmp_path / "run")]
    assert train.main(base + ["--holdout", "syn1,syn3", "--iterations", "2"]) == 0
    assert train.main(base + ["--holdout", "syn3,syn1", "--iterations", "4", "--resume"]) == 0
    assert json.loads((tmp_path / "run" / "state.json").read_text())["iteration"] == 4
    _one_error_line(capsys, train.main(base + ["--holdout", "syn1", "--iterations", "6", "--resume"]),
                    "--holdout syn1 (checkpoint: syn3,syn1)")  # as the last session gave it


def test_heldout_loss_scores_the_same_batches_every_time(sequences):
    """The held-out loss of unchanged weights is the same at every evaluation (it once drew
    new batches each time, so its curve mixed the draw into the weights' progress)."""
    from train_mx.train import heldout_loss

    trainer = tiny_trainer()
    sampler = BatchSampler(load_domains(sequences), SMALL, MEAN["squeezenet"], n_pos=4, n_neg=16, seed=0)
    first = heldout_loss(trainer, sampler, 3)
    sampler.sample()  # whatever the sampler drew in between
    assert heldout_loss(trainer, sampler, 3) == first
    assert heldout_loss(trainer, sampler, 3, seed=1) != first


def test_load_domains_leaves_out_frames_of_another_size(tmp_path, capsys):
    """A frame of another size than its sequence's (its boxes are in the sequence's size) is
    left out with one warning per sequence, not trained on with boxes outside it; one that
    changes after loading is left out when the sampler meets it."""
    import cv2

    folder = write_otb(make_sequence(n_frames=12, size=(160, 120), seed=8), tmp_path / "s", ext=".jpg")
    for k in (5, 9):
        small = cv2.resize(cv2.imread(str(folder / "img" / f"{k:04d}.jpg")), (80, 60))
        cv2.imwrite(str(folder / "img" / f"{k:04d}.jpg"), small)
    (dom,) = load_domains([str(folder)])
    assert len(dom.frames) == 10 and dom.size == (160, 120)
    assert not any(Path(p).name in ("0005.jpg", "0009.jpg") for p in dom.frames)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning: s: 2 frame(s) of another size than the sequence's 160x120")
    assert "frame 4, 0005.jpg, 80x60" in err[0]  # numbered from 0, as every warning
    cv2.imwrite(str(dom.frames[0]), np.zeros((60, 80, 3), np.uint8))
    sampler = BatchSampler([dom], SMALL, MEAN["squeezenet"], n_pos=4, n_neg=16, patches=10, seed=0)
    assert sampler.sample().data.shape[0] == 10
    assert "80x60, the sequence's frames 160x120" in capsys.readouterr().err
    assert len(dom.frames) == 9


def test_sequences_are_recorded_absolute_for_feature_stats(sequences, tmp_path, capsys, monkeypatch):
    """Relative --sequences are recorded absolute, so feature_stats run from another folder
    reads them, not other folders of the same relative names (or none); a model recorded
    before that is read relative to the folder its training ran in (from --out and its
    absolute path), and refused with advice when that cannot be told."""
    import shutil

    from runtime.errors import TrackerInputError
    from runtime.model import load_model, save_model
    from train_mx import feature_stats, train

    parent = Path(sequences[0]).parent
    monkeypatch.chdir(parent)
    model = tmp_path / "model"
    assert train.main(["--sequences", "syn1", "syn2", *TINY, "--iterations", "2", "--out", str(tmp_path / "run"),
                       "--save-model", str(model)]) == 0
    assert load_model(model).config["training"]["sequences"] == [str(parent / "syn1"), str(parent / "syn2")]
    elsewhere = tmp_path / "elsewhere"
    for name in ("syn1", "syn2"):  # decoys of the same relative names
        shutil.copytree(parent / name, elsewhere / name)
    read = []

    def moment(m, domains, every=10):
        read.extend(str(Path(p).parent.parent) for d in domains for p in d.frames)
        return np.eye(m.channels), 1

    monkeypatch.setattr(feature_stats, "feature_moment", moment)
    monkeypatch.chdir(elsewhere)
    feature_stats.add_feature_stats(model)
    assert set(read) == {str(parent / "syn1"), str(parent / "syn2")}
    # as an older train_mx.train recorded them: typed relative, --out relative to the same folder
    old = load_model(model)
    training = dict(old.config["training"], sequences=["syn1", "syn2"], out="run",
                    out_abs=str(parent / "run"))
    save_model(model, dict(old.config, training=training), old.params)
    read.clear()
    feature_stats.add_feature_stats(model)
    assert set(read) == {str(parent / "syn1"), str(parent / "syn2")}
    training.pop("out_abs")
    save_model(model, dict(old.config, training=training), old.params)
    with pytest.raises(TrackerInputError, match="relative to a folder it does not name; pass --sequences"):
        feature_stats.add_feature_stats(model)


def test_a_failed_report_copy_is_a_warning_and_the_checkpoint_counts(sequences, reference_run, tmp_path, capsys,
                                                                       monkeypatch):
    """<out>/state.json (the report's copy) that cannot be written after the checkpoint was
    swapped in: one warning naming the whole checkpoint's iteration, and the run goes on (it
    was once an error claiming the previous iteration)."""
    import errno

    from train_mx import checkpoint, train

    out = tmp_path / "run"
    real, n = checkpoint._write_text, [0]

    def write_text(path, text):
        n[0] += 1
        if n[0] == 1:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, text)

    monkeypatch.setattr(checkpoint, "_write_text", write_text)
    assert train.main(["--sequences", *sequences, *TINY, "--iterations", "4", "--out", str(out)]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning: cannot write ") and "iteration 2 is whole" in err[0], err
    assert _ckpt_iteration(out) == 4
    _assert_same_params(_params(out / "checkpoint"), _params(reference_run / "checkpoint"))


def test_resume_ignores_a_damaged_report_copy(sequences, tmp_path):
    """--resume reads the state inside the checkpoint: <out>/state.json (train_mx.report's
    copy) damaged does not stop it, and is written whole again."""
    from train_mx import train

    base = ["--sequences", *sequences, *TINY, "--out", str(tmp_path / "run")]
    assert train.main(base + ["--iterations", "2"]) == 0
    (tmp_path / "run" / "state.json").write_text("{")
    assert train.main(base + ["--iterations", "4", "--resume"]) == 0
    assert json.loads((tmp_path / "run" / "state.json").read_text())["iteration"] == 4


def _recheckpoint(out, edit_config=None, state=None):
    """Rewrite the checkpoint in ``out`` with a consistent manifest (as another program, or a
    bug, could): its config edited and/or its state replaced, the sha256 in config.json kept
    in step with the state file."""
    from runtime.model import load_model, save_model, sha256_file
    from train_mx import checkpoint

    ckpt = Path(out) / checkpoint.CHECKPOINT
    model = load_model(ckpt)
    config = json.loads((ckpt / "config.json").read_text())
    if state is not None:
        (ckpt / checkpoint.STATE).write_text(state)
        config["training"]["checkpoint_files"][checkpoint.STATE] = sha256_file(ckpt / checkpoint.STATE)
    if edit_config:
        edit_config(config)
    save_model(ckpt, config, model.params)


@pytest.mark.parametrize("how,words", [
    ("state", ["the state in", "is damaged", "'log'"]),
    ("iteration", ["the state in", "is damaged", "iteration 2, config.json 3"]),
])
def test_resume_refuses_a_checkpoint_whose_state_disagrees(reference_run, sequences, tmp_path, capsys, how, words):
    """checkpoint.read's own checks, behind the sha256 ones: a state without its log, and a
    state of another iteration than config.json's, are refused with one line."""
    import shutil

    from train_mx import train

    out = tmp_path / "run"
    shutil.copytree(reference_run, out)
    if how == "state":
        _recheckpoint(out, state=json.dumps({"iteration": 4}))
    else:
        state = json.loads((out / "checkpoint" / "state.json").read_text())
        state["iteration"] = 2
        _recheckpoint(out, state=json.dumps(state),
                      edit_config=lambda c: c["training"].__setitem__("iteration", 3))
    _one_error_line(capsys, train.main(["--sequences", *sequences, *TINY, "--iterations", "6", "--out", str(out),
                                        "--resume"]), *words)


def test_resume_with_another_ctx_count_keeps_the_momentum(sequences, tmp_path, capsys, monkeypatch):
    """One device keys the SGD momentum by index, several (on the kvstore) by name: a
    checkpoint stores names, so --ctx going from 1 to 2 devices and back keeps the momentum
    (it was silently dropped)."""
    from train_mx import checkpoint, train

    out = tmp_path / "run"
    base = ["--sequences", *sequences, *TINY, "--out", str(out)]
    loaded = []
    real = train.Trainer._set_optimizer_states

    def spy(self, states):
        real(self, states)
        updater, keys = self._updater(), self._state_keys()
        loaded.append({n: [updater.states[k].asnumpy() for k in keys[n] if k in updater.states] for n in keys})

    monkeypatch.setattr(train.Trainer, "_set_optimizer_states", spy)
    for n, ctx in ((2, "cpu:0"), (4, "cpu:0,cpu:1"), (6, "cpu:0")):
        saved = None
        if n > 2:
            saved = {k: v.asnumpy() for k, v in checkpoint.read(out)[2].items()}
        assert train.main(base + ["--ctx", ctx, "--iterations", str(n)] + (["--resume"] if n > 2 else [])) == 0
        assert "warning" not in capsys.readouterr().err
        if saved is None:
            continue
        got = loaded[-1]
        assert saved and all(k.startswith("n:") for k in saved), sorted(saved)
        for k, v in saved.items():
            copies = got[k[2:]]
            assert copies and len(copies) == (1 if ctx == "cpu:0" else len(copies)), k
            for c in copies:
                np.testing.assert_array_equal(c, v, err_msg=k)
    assert len(loaded) == 2


def test_optimizer_states_naming_no_parameter_warn(synthetic, capsys):
    """Saved optimizer states that name none of the network's parameters: one warning line
    that the momentum starts from zero, not silence."""
    trainer = tiny_trainer()
    trainer.load_optimizer_states({"n:not_a_parameter": mx.nd.zeros((3,))})
    trainer.step(frame_batch(synthetic, SMALL, 0, 1, np.random.default_rng(0), n_pos=4, n_neg=16))
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning: none of the checkpoint's 1 optimizer states"), err
    assert "momentum starts again from zero" in err[0]


@pytest.mark.parametrize("devices", [1, 2, 3])
def test_first_checkpoints_index_keys_map_to_their_parameters(synthetic, devices, capsys):
    """The first checkpoints stored the updater's own keys, 'i:<index * devices + device>'
    without the devices' count (several devices with MXNET_UPDATE_ON_KVSTORE=0). Each state
    lands on its own parameter, whatever the count: read as indices they had landed on the
    wrong weights (or none)."""
    trainer = tiny_trainer()
    batch = frame_batch(synthetic, SMALL, 0, 1, np.random.default_rng(0), n_pos=4, n_neg=16)
    trainer.step(batch)
    saved = trainer.optimizer_states()
    names = list(trainer._state_keys())
    old = {}
    for i, n in enumerate(names):
        if f"n:{n}" in saved:
            for k in range(devices):
                old[f"i:{i * devices + k}"] = saved[f"n:{n}"].copy()
    other = tiny_trainer()
    other.load_optimizer_states(old)
    other._init_optimizer()
    got = other.optimizer_states()
    assert sorted(got) == sorted(saved)
    for k, v in saved.items():
        np.testing.assert_array_equal(got[k].asnumpy(), v.asnumpy(), err_msg=k)
    assert "warning" not in capsys.readouterr().err


def test_index_keys_that_fit_no_parameter_leave_the_momentum_at_zero():
    from train_mx.train import _index_keys

    shapes = {"a": (2, 3), "b": (2,)}
    assert _index_keys({0: mx.nd.zeros((2, 3)), 1: mx.nd.zeros((2,))}, ["a", "b"], shapes) == {0: "a", 1: "b"}
    assert _index_keys({0: mx.nd.zeros((2, 3)), 1: mx.nd.zeros((2, 3)), 2: mx.nd.zeros((2,)), 3: mx.nd.zeros((2,))},
                       ["a", "b"], shapes) == {0: "a", 1: "a", 2: "b", 3: "b"}
    assert _index_keys({0: mx.nd.zeros((5,))}, ["a", "b"], shapes) == {}


def test_resume_after_a_dropped_frame_is_bit_identical(tmp_path, capsys):
    """Frames left out while drawing (here corrupt files) are part of the sampler's state: a
    resumed run indexes the same frames as the run that was not stopped (it once drew again
    among the corrupt ones, and its weights differed)."""
    from train_mx import checkpoint, train

    seqs = []
    for s in (1, 2):
        folder = write_otb(make_sequence(n_frames=12, size=(160, 120), seed=s), tmp_path / f"syn{s}", ext=".jpg")
        for k in range(2, 12):  # most frames corrupt: the first iterations meet some
            (folder / "img" / f"{k:04d}.jpg").write_bytes(b"not a jpeg")
        seqs.append(str(folder))
    base = ["--sequences", *seqs, *TINY]
    assert train.main(base + ["--iterations", "4", "--out", str(tmp_path / "ref")]) == 0
    assert train.main(base + ["--iterations", "2", "--out", str(tmp_path / "run")]) == 0
    dropped = checkpoint.read(tmp_path / "run")[1]["sampler"]["dropped"]
    assert sum(len(v) for v in dropped.values()) > 0, dropped
    capsys.readouterr()
    assert train.main(base + ["--iterations", "4", "--out", str(tmp_path / "run"), "--resume"]) == 0
    for name in (n for v in dropped.values() for n in v):  # not drawn, so not warned about, again
        assert name not in capsys.readouterr().err
    _assert_same_params(_params(tmp_path / "run" / "checkpoint"), _params(tmp_path / "ref" / "checkpoint"))


def test_resume_makes_up_the_heldout_loss_a_stop_skipped(sequences, tmp_path, capsys, monkeypatch):
    """A stop where the held-out loss was due skips it (a stop should be quick); --resume
    scores the same weights then, so the log has it as the run that was not stopped does."""
    from train_mx import train

    third = str(write_otb(make_sequence(n_frames=12, size=(160, 120), seed=3), tmp_path / "syn3", ext=".jpg"))
    base = ["--sequences", *sequences, third, *TINY, "--heldout-batches", "1", "--holdout", "syn3",
            "--iterations", "4"]
    assert train.main(base + ["--out", str(tmp_path / "ref")]) == 0
    _signal_at_step(monkeypatch, "SIGINT", 4)  # the last step: the held-out loss is due there
    assert train.main(base + ["--out", str(tmp_path / "run")]) == 130
    assert "heldout_loss" not in json.loads((tmp_path / "run" / "state.json").read_text())["log"][-1]
    monkeypatch.undo()
    capsys.readouterr()
    assert train.main(base + ["--out", str(tmp_path / "run"), "--resume"]) == 0
    assert "due when the run stopped" in capsys.readouterr().out
    ref = json.loads((tmp_path / "ref" / "state.json").read_text())["log"]
    log = json.loads((tmp_path / "run" / "state.json").read_text())["log"]
    assert log[-1]["heldout_loss"] == ref[-1]["heldout_loss"]
    assert [e["loss"] for e in log] == [e["loss"] for e in ref]
    _assert_same_params(_params(tmp_path / "run" / "checkpoint"), _params(tmp_path / "ref" / "checkpoint"))


def test_checkpoint_is_written_where_folders_cannot_be_flushed(sequences, tmp_path, monkeypatch):
    """Some file systems (network, FUSE) refuse fsync on a folder: the checkpoint is still
    written there (every run once ended at its first checkpoint with 'Invalid argument')."""
    import errno

    from train_mx import checkpoint, train

    real = os.fsync

    def fsync(fd):
        if os.path.isdir(f"/proc/self/fd/{fd}"):
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(fd)

    monkeypatch.setattr(checkpoint.os, "fsync", fsync)
    out = tmp_path / "run"
    assert train.main(["--sequences", *sequences, *TINY, "--iterations", "2", "--out", str(out)]) == 0
    assert _ckpt_iteration(out) == 2


def test_a_wrong_pretrained_file_is_one_error_line_before_the_data(sequences, tmp_path, capsys, monkeypatch):
    """--pretrained that is not the extractor's ImageNet weights (another HDF5, a .mat for
    squeezenet, something else for vggm, SqueezeNet v1.0's shapes) ends in one line naming the
    file and what it should be, before the data are loaded (it was a KeyError / ValueError
    traceback after data loading and network binding)."""
    import shutil

    import h5py
    import scipy.io

    from runtime.errors import TrackerInputError
    from train_mx import train
    from train_mx.weights import default_squeezenet_path, load_squeezenet_h5, load_vggm_mat

    def no_data(*a, **k):
        raise AssertionError("the data were loaded before the pretrained weights were checked")

    monkeypatch.setattr(train, "load_domains", no_data)
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["dense/kernel"] = np.zeros((4, 4), np.float32)
    v10 = tmp_path / "squeezenet_v1.0.h5"  # conv1 7x7x96, as SqueezeNet v1.0 has it
    shutil.copy(default_squeezenet_path(), v10)
    with h5py.File(v10, "r+") as f:
        del f["conv1"]
        f["conv1/kernel"] = np.zeros((7, 7, 3, 96), np.float32)
        f["conv1/bias"] = np.zeros(96, np.float32)
    text = tmp_path / "weights.mat"
    text.write_text("not a MATLAB file\n")
    other_mat = tmp_path / "other.mat"
    scipy.io.savemat(other_mat, {"net": np.zeros(3)})
    base = ["--sequences", *sequences, "--iterations", "2", "--epoch-size", "2", "--quiet"]
    for i, (extractor, path, words) in enumerate((
            ("squeezenet", other, ("SqueezeNet", "conv1")),
            ("squeezenet", v10, ("SqueezeNet", "conv1_weight", "(96, 3, 7, 7)")),
            ("squeezenet", text, ("SqueezeNet", "HDF5")),
            ("vggm", text, ("imagenet-vgg-m.mat",)),
            ("vggm", other_mat, ("imagenet-vgg-m.mat", "layers")),
            ("vggm", default_squeezenet_path(), ("imagenet-vgg-m.mat",)))):
        out = tmp_path / f"run{i}"
        _one_error_line(capsys, train.main([*base, "--extractor", extractor, "--pretrained", str(path),
                                            "--out", str(out)]), str(path), *words)
        assert not out.exists()
    with pytest.raises(TrackerInputError, match="other.h5"):
        load_squeezenet_h5(other)
    with pytest.raises(TrackerInputError, match="weights.mat"):
        load_vggm_mat(text)


def test_feature_stats_write_failure_is_one_error_line(tiny_model, tmp_path, capsys, monkeypatch):
    """A full disk while feature_stats rewrites the model (MXNet's MXNetError from mx.nd.save)
    is one error line naming the file, not a traceback; the model is untouched."""
    import shutil

    from runtime.model import load_model
    from train_mx import feature_stats

    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    seq = write_otb(make_sequence(n_frames=12, size=(160, 120), seed=5), tmp_path / "s", ext=".jpg")
    monkeypatch.setattr(feature_stats, "feature_moment", lambda m, domains, every=10: (np.eye(m.channels), 1))

    def full(fname, data):
        raise mx.base.MXNetError("[12:00:00] src/io/local_filesys.cc:209: Check failed\nStack trace:\n"
                                 "  [bt] (0) libmxnet.so\nNo space left on device")

    monkeypatch.setattr(mx.nd, "save", full)
    before = load_model(model).model_hash
    _one_error_line(capsys, feature_stats.main(["--model", str(model), "--sequences", str(seq)]),
                    str(model), "No space left on device")
    monkeypatch.undo()
    assert load_model(model).model_hash == before


def _two_target_folder(root) -> Path:
    """An OTB folder with one ground-truth file per target (OTB-100's Jogging)."""
    folder = write_otb(make_sequence(n_frames=12, size=(160, 120), seed=6), root / "Jog", ext=".jpg")
    gt = folder / "groundtruth_rect.txt"
    for k in (1, 2):
        (folder / f"groundtruth_rect.{k}.txt").write_text(gt.read_text())
    gt.unlink()
    return folder


def test_feature_stats_takes_a_per_target_sequence(tiny_model, tmp_path, monkeypatch):
    """feature_stats opens the training sequences as train_mx.train does: a per-target name
    (Jog.1 of an OTB folder with one ground truth per target) is a sequence, not 'not found';
    a missing one is refused with the runtime's message."""
    import shutil

    from runtime.errors import TrackerInputError
    from runtime.model import load_model, save_model
    from train_mx import feature_stats

    folder = _two_target_folder(tmp_path)
    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    m = load_model(model)
    target = f"{folder}.1"
    save_model(model, dict(m.config, training={"domains": ["Jog.1"], "sequences": [target]}), m.params)
    read = []

    def moment(m, domains, every=10):
        read.extend(d.name for d in domains)
        return np.eye(m.channels), 1

    monkeypatch.setattr(feature_stats, "feature_moment", moment)
    feature_stats.add_feature_stats(model)
    assert read == ["Jog.1"]
    assert load_model(model).config["feature_stats"]["sequences"] == ["Jog.1"]
    with pytest.raises(TrackerInputError, match=r"Jog\.3 does not exist.*its targets are Jog\.1, Jog\.2"):
        feature_stats.add_feature_stats(model, [f"{folder}.3"])
    with pytest.raises(TrackerInputError, match="gone does not exist; pass --sequences with the model's training"):
        feature_stats.add_feature_stats(model, [str(tmp_path / "gone")])
    (folder / "groundtruth_rect.1.txt").write_text("1,2,3\n")  # the tracker's advice (--init) does not apply
    with pytest.raises(TrackerInputError, match=r"groundtruth_rect\.1\.txt:1: expected.*; pass --sequences") as e:
        feature_stats.add_feature_stats(model)
    assert "--init" not in str(e.value)


def test_load_domains_keeps_the_runtimes_target_advice(tmp_path):
    """A folder with one ground truth per target given whole to --sequences: the runtime's
    advice (give Jog.1 or Jog.2) is kept, not replaced by a generic 'fix it'."""
    from runtime.errors import SequenceError

    folder = _two_target_folder(tmp_path)
    for given, advice in ((folder, f"{folder}.1 or {folder}.2"), (f"{folder}.3", "its targets are Jog.1, Jog.2")):
        with pytest.raises(SequenceError) as e:
            load_domains([str(given)])
        assert advice in str(e.value) and "fix it" not in str(e.value), str(e.value)
    (dom,) = load_domains([f"{folder}.2"])
    assert dom.name == "Jog.2"
    # a target whose own ground truth is bad: training's advice, not the tracker's --init
    (folder / "groundtruth_rect.1.txt").write_text("1,2,3\n")
    with pytest.raises(SequenceError) as e:
        load_domains([f"{folder}.1"])
    assert str(e.value).endswith("fix it, or leave Jog.1 out of --sequences") and "--init" not in str(e.value)


def test_training_and_tracking_normalise_patches_alike(sequences, monkeypatch):
    """The sampler's patches go through runtime.buckets.normalise, the step extractor_input
    ends with, so training and tracking cannot drift apart."""
    from runtime import buckets
    from train_mx import data

    calls = []

    def spy(patch, mean):
        calls.append(patch.shape)
        return buckets.normalise(patch, mean)

    monkeypatch.setattr(data, "normalise", spy)
    batch = BatchSampler(load_domains(sequences), SMALL, MEAN["squeezenet"], n_pos=4, n_neg=16, patches=3,
                         seed=0).sample()
    assert len(calls) == 3 and batch.data.shape[0] == 3
    rng = np.random.default_rng(0)
    patch = rng.integers(0, 256, (64, 96, 3), dtype=np.uint8)
    mean = np.array([104.0, 117.0, 123.0], np.float32)
    want = (patch.astype(np.float32) - mean.reshape(1, 1, 3)).transpose(2, 0, 1)
    got = buckets.normalise(patch, mean)
    assert got.dtype == np.float32 and got.flags.c_contiguous
    np.testing.assert_array_equal(got, want)


def test_train_records_the_roi_sample_ratio(sequences, tmp_path):
    """The model config records the RoIAlign sample ratio training pooled with, as
    network.roi_pool says."""
    from runtime.model import ROI_SAMPLE_RATIO, load_model
    from train_mx import train

    assert train.main(["--sequences", *sequences, *TINY, "--iterations", "2", "--out", str(tmp_path / "run"),
                       "--save-model", str(tmp_path / "model")]) == 0
    model = load_model(tmp_path / "model")
    assert model.config["roi_sample_ratio"] == ROI_SAMPLE_RATIO == model.roi_sample_ratio


# -- found in a training user's walk ------------------------------------------------------------

def test_values_no_tool_could_use_are_refused_before_the_data(sequences, tmp_path, capsys, monkeypatch):
    """Each ends in one error line naming the option, before the data are loaded: a negative
    --roi-shrink trained to the end and wrote a model nothing could load; a negative
    --instance-loss was an MXNet InferShape traceback; --kvstore dist_sync outside
    train_mx.launch an MXNet traceback; a misspelt --freeze froze nothing, silently;
    --save-model into the run's checkpoint replaced it with a model (a resume then restarted
    fc6 and the momentum), into a sequence folder mixed the model's files with the frames."""
    from train_mx import train

    def no_data(*a, **k):
        raise AssertionError("the data were loaded before the options were checked")

    monkeypatch.setattr(train, "load_domains", no_data)
    monkeypatch.delenv("DMLC_ROLE", raising=False)
    out = tmp_path / "run"
    base = ["--sequences", *sequences, *TINY, "--iterations", "2", "--out", str(out)]
    for extra, words in ((["--roi-shrink", "-5"], ("--roi-shrink", ">= 0", "-5.0")),
                         (["--roi-shrink", "40"], ("--roi-shrink", "half --target-size (32")),
                         (["--roi-shrink", "nan"], ("--roi-shrink",)),
                         (["--fc-lr-mult", "-1"], ("--fc-lr-mult must be positive",)),
                         (["--instance-loss", "-1"], ("--instance-loss must be >= 0",)),
                         (["--kvstore", "dist_sync"], ("--kvstore dist_sync", "train_mx.launch")),
                         (["--freeze", "conv1,conv9"], ("--freeze conv9", "fire2", "conv1")),
                         (["--save-model", str(out / "checkpoint")], ("inside --out",)),
                         (["--save-model", str(out)], ("inside --out",)),
                         (["--save-model", sequences[0]], ("is a sequence folder",))):
        _one_error_line(capsys, train.main([*base, *extra]), *words)
        assert not out.exists()
    with pytest.raises(SystemExit):
        train.main([*base, "--kvstore", "bogus"])  # argparse's choices
    assert "invalid choice: 'bogus'" in capsys.readouterr().err
    _one_error_line(capsys, train.main([*base, "--kvstore", "dist_device_sync"]), "train_mx.launch")


def test_a_resumed_recipe_is_checked_with_the_checkpoints_values(sequences, tmp_path, capsys):
    """--roi-shrink 40 is fine for a run trained at --target-size 128: resumed with the target
    size left out it was checked against the default 64 (below 32) and refused."""
    from train_mx import train

    base = ["--sequences", *sequences, *TINY, "--out", str(tmp_path / "run"), "--roi-shrink", "40"]
    assert train.main([*base, "--target-size", "128", "--iterations", "2"]) == 0
    capsys.readouterr()
    assert train.main([*base, "--iterations", "4", "--resume"]) == 0, capsys.readouterr().err
    _one_error_line(capsys, train.main([*base, "--iterations", "6", "--resume", "--target-size", "64"]),
                    "--roi-shrink", "half --target-size (32")


@pytest.mark.parametrize("nan_loss", [True, False])
def test_a_diverged_run_keeps_its_last_finite_checkpoint(sequences, tmp_path, capsys, monkeypatch, nan_loss):
    """A loss or weights that turn NaN stop the run with one error line: the checkpoint keeps
    the last finite weights and no --save-model is written (the NaN weights replaced both, and
    the run exited 0 with nothing left to resume or track from). An epoch's last update can
    make the weights NaN while its loss, computed before it, is finite."""
    from runtime.model import load_model
    from train_mx import train

    real_step = train.Trainer.step
    calls = []

    def step(self, batch):
        stats = real_step(self, batch)
        calls.append(1)
        if len(calls) == 4:  # the second epoch's last step diverges
            self.mod.set_params({k: v * np.nan for k, v in self.mod.get_params()[0].items()},
                                self.mod.get_params()[1])
            if nan_loss:
                stats["loss"] = float("nan")
        return stats

    monkeypatch.setattr(train.Trainer, "step", step)
    out, model = tmp_path / "run", tmp_path / "model"
    rc = train.main(["--sequences", *sequences, *TINY, "--iterations", "6", "--out", str(out),
                     "--save-model", str(model)])
    err = capsys.readouterr().err
    assert rc == 1 and "error: training diverged by iteration 4 (loss " in err, err
    assert ("(loss nan)" in err) == nan_loss
    assert "keeps iteration 2" in err and "lower --lr" in err and "Traceback" not in err
    assert _ckpt_iteration(out) == 2
    params = load_model(out / "checkpoint").params
    assert all(np.isfinite(v).all() for v in params.values())
    assert not model.exists()


def test_resume_keeps_the_seed_and_a_training_folder_is_named_as_such(sequences, tmp_path, capsys):
    """--seed and --heldout-batches define the run: left out on --resume they are the
    checkpoint's (a resumed --seed 1 run went on with seed 0's draws), given otherwise they are
    refused. --model at a run's --out names its checkpoint instead of advising a retrain."""
    from runtime.errors import ModelError
    from runtime.model import load_model
    from train_mx import train

    base = ["--sequences", *sequences, *TINY, "--out", str(tmp_path / "run")]
    assert train.main([*base, "--iterations", "2", "--seed", "1"]) == 0
    capsys.readouterr()
    _one_error_line(capsys, train.main([*base, "--iterations", "4", "--seed", "2", "--resume"]),
                    "--seed 2 (checkpoint: 1)")
    assert train.main([*base, "--iterations", "4", "--resume", "--save-model", str(tmp_path / "m")]) == 0
    assert load_model(tmp_path / "m").config["training"]["seed"] == 1
    with pytest.raises(ModelError, match=r"is a training run's folder, not a model: .*run/checkpoint"):
        load_model(tmp_path / "run")


def test_sequences_through_links_keep_their_names_for_feature_stats(sequences, tmp_path, monkeypatch, capsys):
    """A sequence given by a link of another name is recorded by the link (its name is the
    sequence's, fc6 branch and --holdout): feature_stats then finds it. Recorded resolved, it
    looked for the link's name in ../shared."""
    from runtime.model import load_model
    from train_mx import feature_stats, train

    links = tmp_path / "links"
    links.mkdir()
    for i, s in enumerate(sequences):
        (links / f"mine{i}").symlink_to(s)
    model = tmp_path / "model"
    (links / "list.txt").write_text("mine0\nmine1\n")  # what links/* also matches, skipped with a warning
    assert train.main(["--sequences", str(links / "mine0"), str(links / "mine1"), str(links / "list.txt"), *TINY,
                       "--iterations", "2", "--out", str(tmp_path / "run"), "--save-model", str(model),
                       "--holdout", " mine1"]) == 0
    assert f"skipping {links / 'list.txt'}: a file, not a sequence folder" in capsys.readouterr().err
    training = load_model(model).config["training"]
    assert training["sequences"] == [str(links / "mine0"), str(links / "mine1")]
    assert training["heldout"] == ["mine1"]
    read = []
    monkeypatch.setattr(feature_stats, "feature_moment",
                        lambda m, domains, every=10: (read.extend(d.name for d in domains), (np.eye(m.channels), 1))[1])
    feature_stats.add_feature_stats(model)
    assert read == ["mine0"]
