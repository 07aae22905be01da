"""Determinism and independent instances, for every CPU feature backend.

* the same seed gives bit-identical boxes and scores: two runs in one process (fresh
  trackers, and one tracker initialised twice) and a run in another process;
* several trackers in one process (different backends, bucket sets, seeds and sequences)
  keep independent state: interleaving their updates gives the boxes each gives alone.

The onnxruntime and tvm backends build their artifacts on first use; ``MDTRACK_CACHE``
points at one folder for the whole test session (the same one tests/test_reliability.py
uses), so the build happens once (TVM llvm, 8 buckets: about half a minute).
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from runtime.synthetic import make_sequence

ROOT = Path(__file__).resolve().parents[1]
BACKENDS = ("mxnet", "onnxruntime", "tvm")
SEQ = dict(n_frames=15, size=(160, 120))
# Cheap first-frame training; 15 frames still cover per-frame sample collection, a
# long-term update (frame 10) spread over frames, and possibly short-term updates.
CHEAP = dict(n_pos_init=100, n_neg_init=600, iters_init=5, n_bbreg=200)


@pytest.fixture(scope="module")
def model(tiny_model):
    from runtime.model import load_model

    return load_model(tiny_model)


def _frames(seed):
    seq = make_sequence(seed=seed, **SEQ)
    return [f.image for f in seq], seq.init_box


def run_tracker(tracker, frames, init_box):
    """Boxes (N, 4) and scores (N,) of one pass; frame 0's score is +inf."""
    boxes, scores = [], []
    for i, image in enumerate(frames):
        r = tracker.init(image, init_box) if i == 0 else tracker.update(image)
        boxes.append(r.box)
        scores.append(r.score)
    return np.array(boxes), np.array(scores)


def _same_bits(a, b):
    a, b = np.ascontiguousarray(a, np.float64), np.ascontiguousarray(b, np.float64)
    return a.shape == b.shape and a.tobytes() == b.tobytes()


@pytest.fixture(scope="module")
def trackers(model, artifact_cache):
    """One tracker per backend (building artifacts on first use)."""
    from runtime.tracker import Tracker

    return {b: Tracker(model, backend=b, seed=7, **CHEAP) for b in BACKENDS}


@pytest.fixture(scope="module")
def first_runs(trackers):
    frames, box = _frames(seed=3)
    return {b: run_tracker(t, frames, box) for b, t in trackers.items()}


@pytest.mark.parametrize("backend", BACKENDS)
def test_same_seed_same_boxes_in_one_process(backend, model, trackers, first_runs):
    from runtime.tracker import Tracker

    frames, box = _frames(seed=3)
    boxes, scores = first_runs[backend]
    assert np.isfinite(boxes).all() and boxes.shape == (SEQ["n_frames"], 4)
    # the same instance, initialised again
    again = run_tracker(trackers[backend], frames, box)
    assert _same_bits(again[0], boxes) and _same_bits(again[1], scores)
    # a fresh instance
    fresh = run_tracker(Tracker(model, backend=backend, seed=7, **CHEAP), frames, box)
    assert _same_bits(fresh[0], boxes) and _same_bits(fresh[1], scores)


def test_another_seed_gives_other_boxes(model, first_runs):
    from runtime.tracker import Tracker

    frames, box = _frames(seed=3)
    other, _ = run_tracker(Tracker(model, backend="mxnet", seed=8, **CHEAP), frames, box)
    assert not _same_bits(other, first_runs["mxnet"][0])


CHILD = r"""
import json, sys
import numpy as np
sys.path.insert(0, {tests!r})
import test_determinism as td
from runtime.model import load_model
from runtime.tracker import Tracker

model = load_model({model!r})
frames, box = td._frames(seed=3)
out = {{}}
for backend in td.BACKENDS:
    boxes, scores = td.run_tracker(Tracker(model, backend=backend, seed=7, **td.CHEAP), frames, box)
    out[backend] = {{"boxes": [float(v).hex() for v in boxes.ravel()],
                    "scores": [float(v).hex() for v in scores]}}
print("RESULT " + json.dumps(out))
"""


@pytest.fixture(scope="module")
def child_runs(tiny_model, artifact_cache, trackers):
    """All backends tracked in a second Python process (after the builds: it reuses them)."""
    code = CHILD.format(tests=str(Path(__file__).resolve().parent), model=str(tiny_model))
    env = dict(os.environ, MDTRACK_CACHE=str(artifact_cache), PYTHONPATH=str(ROOT))
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    line = next(x for x in p.stdout.splitlines() if x.startswith("RESULT "))
    out = json.loads(line[len("RESULT "):])
    return {b: (np.array([float.fromhex(v) for v in r["boxes"]]).reshape(-1, 4),
                np.array([float.fromhex(v) for v in r["scores"]])) for b, r in out.items()}


@pytest.mark.parametrize("backend", BACKENDS)
def test_same_seed_same_boxes_across_processes(backend, first_runs, child_runs):
    boxes, scores = first_runs[backend]
    assert _same_bits(child_runs[backend][0], boxes)
    assert _same_bits(child_runs[backend][1], scores)


# --------------------------------------------------------------------------- instances


@pytest.fixture(scope="module")
def other_buckets_model(model, tmp_path_factory):
    """The same weights with another bucket set (fewer, different shapes)."""
    from runtime.buckets import BucketPolicy
    from runtime.model import load_model, save_model

    config = dict(model.config)
    config["buckets"] = BucketPolicy(shapes=((160, 160), (224, 224), (160, 288), (288, 160))).to_dict()
    path = save_model(tmp_path_factory.mktemp("other_buckets") / "model", config, model.params)
    m = load_model(path)
    assert m.policy.shapes != model.policy.shapes and m.model_hash != model.model_hash
    return m


def test_interleaved_instances_match_separate_runs(model, other_buckets_model, artifact_cache, trackers):
    """Six trackers (three backends, two bucket sets, two on the same model and backend)
    on two sequences: stepping them in turn gives bit for bit what each gives alone."""
    from runtime.tracker import Tracker

    seqs = {1: _frames(seed=1), 2: _frames(seed=2)}
    specs = [  # (model, backend, seed, sequence)
        (model, "mxnet", 0, 1),
        (model, "mxnet", 1, 2),  # same model and backend as the first: nothing may be shared
        (other_buckets_model, "mxnet", 2, 1),
        (model, "onnxruntime", 3, 2),
        (model, "tvm", 4, 1),
        (other_buckets_model, "mxnet", 5, 2),
    ]

    def make(spec):
        m, backend, seed, _ = spec
        return Tracker(m, backend=backend, seed=seed, **CHEAP)

    alone = [run_tracker(make(s), *seqs[s[3]]) for s in specs]

    live = [make(s) for s in specs]
    boxes = [[] for _ in specs]
    scores = [[] for _ in specs]
    for i in range(SEQ["n_frames"]):
        order = range(len(specs)) if i % 2 == 0 else reversed(range(len(specs)))
        for k in order:
            frames, box = seqs[specs[k][3]]
            r = live[k].init(frames[i], box) if i == 0 else live[k].update(frames[i])
            boxes[k].append(r.box)
            scores[k].append(r.score)
    for k, spec in enumerate(specs):
        assert _same_bits(np.array(boxes[k]), alone[k][0]), f"tracker {k} ({spec[1]}, seed {spec[2]}) differs"
        assert _same_bits(np.array(scores[k]), alone[k][1]), f"tracker {k} ({spec[1]}, seed {spec[2]}) differs"
    # the instances did see different inputs, so identical results would be suspicious
    assert not _same_bits(alone[0][0], alone[1][0])
