"""The shipped model tracks synthetic sequences (seeded): the tracker-level acceptance."""
from pathlib import Path

import numpy as np
import pytest

from runtime.geometry import iou
from runtime.model import DEFAULT_MODEL, load_model
from runtime.synthetic import make_sequence
from runtime.tracker import Tracker


def track(model, seq, **kw):
    t = Tracker(model, seed=0, **kw)
    out = []
    for f in seq:
        r = t.init(f.image, f.gt) if f.index == 0 else t.update(f.image)
        out.append(float(iou(r.box, f.gt)))
    return np.array(out), t


def test_default_model_loads_and_matches_manifest():
    m = load_model(DEFAULT_MODEL)
    assert m.extractor in ("squeezenet", "vggm")
    assert len(m.policy.shapes) <= 8
    assert Path(m.path) == DEFAULT_MODEL
    # fc6 branches belong to training sequences; the tracker starts a fresh fc6
    assert not any(k.startswith("fc6") for k in m.params)


@pytest.mark.slow
def test_keeps_target_through_scale_change_and_occlusion():
    seq = make_sequence(n_frames=300, size=(320, 240), seed=0, scale_change=True, occlusion=True,
                        illumination=True, distractors=0)
    assert seq.occlusion.max() > 0.2  # the sequence really has partial occlusion
    s = seq.groundtruth[:, 2] * seq.groundtruth[:, 3]
    assert s.max() / s.min() > 1.5  # ... and scale change
    ious, tracker = track(DEFAULT_MODEL, seq)
    assert ious.mean() >= 0.6, f"mean IoU {ious.mean():.3f}"
    assert tracker.updates["long"] >= 25  # long-term updates ran every 10 frames
