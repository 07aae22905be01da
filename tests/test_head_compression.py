"""fc4 factored through a 1x1 channel projection (runtime.head.factor_fc4) and the feature
statistics that weigh it (train_mx.feature_stats)."""
import numpy as np
import pytest

mx = pytest.importorskip("mxnet")

from runtime.head import OnlineHead, factor_fc4  # noqa: E402
from runtime.params import TrackerParams  # noqa: E402


def _pool_fc4(w4, f):
    """fc4 of pooled features f (N, C, 9) with weights (512, C*9)."""
    return f.reshape(len(f), -1) @ w4.T


def _correlated(rng, basis, n):
    """n feature vectors living mostly in the span of ``basis`` (C, r)."""
    c, r = basis.shape
    return rng.normal(0, 1, (n, r)) @ basis.T + 0.01 * rng.normal(0, 1, (n, c))


def test_full_rank_factorisation_is_exact():
    rng = np.random.default_rng(0)
    c = 12
    w4 = rng.normal(0, 0.1, (512, c * 9)).astype(np.float32)
    x = _correlated(rng, rng.normal(0, 1, (c, c)), 2000)
    cov = x.T @ x / len(x)
    p, w = factor_fc4(w4, c, cov)
    assert p.shape == (c, c) and w.shape == (512, c * 9)
    f = rng.normal(0, 1, (5, c, 9))
    projected = np.einsum("kc,ncb->nkb", p, f)
    np.testing.assert_allclose(_pool_fc4(w, projected), _pool_fc4(w4, f), rtol=1e-3, atol=1e-3)


def test_data_aware_factorisation_beats_data_free_and_improves_with_rank():
    rng = np.random.default_rng(1)
    c, r = 32, 6
    w4 = rng.normal(0, 0.1, (512, c * 9))
    basis = rng.normal(0, 1, (c, r))
    x = _correlated(rng, basis, 4000)
    cov = x.T @ x / len(x)
    f = _correlated(rng, basis, 9 * 300).reshape(300, 9, c).transpose(0, 2, 1)  # (N, C, 9) cells
    exact = _pool_fc4(w4, f)

    def error(rank, cov_or_none):
        p, w = factor_fc4(w4.astype(np.float32), rank, cov_or_none)
        approx = _pool_fc4(w, np.einsum("kc,ncb->nkb", p, f))
        return np.linalg.norm(approx - exact) / np.linalg.norm(exact)

    aware = [error(k, cov) for k in (2, 4, 6)]
    assert aware[0] > aware[1] > aware[2] and aware[2] < 0.02  # the subspace's rank recovers fc4
    assert error(6, None) > 5 * aware[2]  # the data-free projection misses the subspace


class SubspaceModel:
    """Head-only model whose features span a known low-rank channel subspace."""

    def __init__(self, c=16, r=4, seed=0):
        rng = np.random.default_rng(seed)
        self.channels, self.roi_sample_ratio, self.roi_shrink, self.roi_offset = c, 2, 0.0, 0.0
        self.basis = rng.normal(0, 1, (c, r)).astype(np.float32)
        self.feature_cov = self.basis @ self.basis.T
        p = {"fc4_weight": rng.normal(0, 0.05, (512, c * 9)), "fc4_bias": rng.normal(0, 0.1, 512),
             "fc5_weight": rng.normal(0, 0.05, (512, 512)), "fc5_bias": rng.normal(0, 0.1, 512)}
        self._p = {k: v.astype(np.float32) for k, v in p.items()}

    def head_params(self):
        return dict(self._p)


def test_factored_head_embeds_like_the_exact_head_on_subspace_features():
    model = SubspaceModel()
    rng = np.random.default_rng(3)
    feat = np.einsum("cr,rhw->chw", model.basis, rng.normal(0, 1, (4, 10, 12)).astype(np.float32))[None]
    boxes = np.array([[8, 8, 30, 24], [20, 16, 40, 40], [0, 0, 80, 72]], np.float32)
    out = {}
    for rank in (0, 4):
        params = TrackerParams(n_candidates=8, n_pos_update=2, n_neg_update=2, fc4_rank=rank)
        head = OnlineHead(model, mx.cpu(), params, np.random.default_rng(0))
        pooled, emb = head.embed(feat.astype(np.float32), boxes)
        assert pooled.shape == (3, (rank or model.channels) * 9)
        out[rank] = emb
    np.testing.assert_allclose(out[4], out[0], rtol=1e-3, atol=1e-3 * np.abs(out[0]).max())


def test_rank_needs_a_frozen_fc4():
    with pytest.raises(ValueError, match="fc4_rank"):
        OnlineHead(SubspaceModel(), mx.cpu(), TrackerParams(online_layers=("fc4", "fc5", "fc6"), fc4_rank=4),
                   np.random.default_rng(0))


def test_samples_use_their_own_smaller_executor():
    params = TrackerParams(n_candidates=16, n_pos_update=3, n_neg_update=5, fc4_rank=4)
    head = OnlineHead(SubspaceModel(), mx.cpu(), params, np.random.default_rng(0))
    assert head.chunks == (8, 16)
    feat = np.ones((1, 16, 6, 6), np.float32)
    head.prepare([feat.shape])
    binds = head.binds
    for n in (8, 16, 20, 3):  # 20 rows run as two chunks of 16
        pooled, emb = head.embed(feat, np.tile([[4.0, 4.0, 20.0, 20.0]], (n, 1)))
        assert emb.shape == (n, 512)
        np.testing.assert_allclose(emb, emb[:1].repeat(n, 0), rtol=1e-5)
    assert head.binds == binds


def test_feature_stats_are_stored_hashed_and_kept_out_of_the_extractor(tiny_model, tmp_path, caplog, monkeypatch):
    """A model without statistics tracks, with a warning naming the command that adds them."""
    from runtime import Tracker
    from runtime.model import FEATURE_COV, load_model, save_model
    from runtime.synthetic import make_sequence, write_otb
    from train_mx.feature_stats import add_feature_stats, main

    tiny = load_model(tiny_model)
    model_dir = save_model(tmp_path / "model", tiny.config,
                           {k: v for k, v in tiny.params.items() if k != FEATURE_COV})
    seq = write_otb(make_sequence(n_frames=12, seed=4), tmp_path / "syn")
    before = load_model(model_dir)
    assert before.feature_cov is None
    monkeypatch.setattr("runtime.tracker._WARNED_NO_STATS", set())
    with caplog.at_level("WARNING", logger="runtime.tracker"):
        Tracker(model_dir)
        Tracker(model_dir)  # once per model, not once per sequence of a benchmark
        Tracker(model_dir, fc4_rank=0)  # the exact fc4 needs none
    assert len(caplog.records) == 1
    assert "no feature statistics" in caplog.text and f"feature_stats --model {model_dir}" in caplog.text
    add_feature_stats(model_dir, [seq], every=4)
    after = load_model(model_dir)  # the manifest was rewritten: hashes verify
    caplog.clear()
    with caplog.at_level("WARNING", logger="runtime.tracker"):
        Tracker(model_dir)
    assert not caplog.records
    cov = after.feature_cov
    assert cov.shape == (256, 256) and np.allclose(cov, cov.T, atol=1e-5 * np.abs(cov).max())
    assert np.linalg.eigvalsh(cov.astype(np.float64)).min() > -1e-4 * np.abs(cov).max()
    assert FEATURE_COV not in after.extractor_params() and FEATURE_COV not in after.head_params()
    assert after.config["feature_stats"]["cells"] > 0 and after.model_hash != before.model_hash
    assert main(["--model", str(model_dir), "--sequences", str(tmp_path / "missing")]) == 2


@pytest.mark.parametrize("rank", [0, 4])
def test_each_box_embeds_the_same_alone_or_in_a_padded_chunk(rank):
    """Rows past the boxes must not disturb the others (MXNet's RoIAlign does not skip a
    batch index of -1: padding with it once corrupted the first rows)."""
    params = TrackerParams(n_candidates=8, n_pos_update=2, n_neg_update=2, fc4_rank=rank)
    head = OnlineHead(SubspaceModel(), mx.cpu(), params, np.random.default_rng(0))
    feat = np.random.default_rng(5).normal(0, 1, (1, 16, 10, 12)).astype(np.float32)
    boxes = np.array([[8, 8, 30, 24], [20, 16, 40, 40], [0, 0, 80, 72]], np.float32)
    pooled, emb = head.embed(feat, boxes)
    for i, b in enumerate(boxes):
        p1, e1 = head.embed(feat, b[None])
        np.testing.assert_allclose(p1[0], pooled[i], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(e1[0], emb[i], rtol=1e-5, atol=1e-5)
