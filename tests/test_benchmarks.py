"""The benchmark modules run end to end on a tiny synthetic sequence (structure only: no
time thresholds in tests; the figures live in benchmarks/README.md)."""
import json

import numpy as np
import pytest

from runtime.synthetic import make_sequence, write_otb


@pytest.fixture(scope="module")
def tiny_seq(tmp_path_factory):
    return write_otb(make_sequence(n_frames=8, size=(160, 120), seed=5, distractors=0),
                     tmp_path_factory.mktemp("seq") / "syn8", ext=".jpg")


def test_accuracy_benchmark_schema(tiny_seq, tiny_model, tmp_path, capsys):
    from benchmarks.accuracy import main

    trackers = "ours"
    try:
        import cv2

        if hasattr(cv2, "TrackerKCF_create") or hasattr(getattr(cv2, "legacy", None), "TrackerKCF_create"):
            trackers += ",kcf"
    except ImportError:
        pass
    out = tmp_path / "acc"
    assert main(["--sequences", str(tiny_seq), "--trackers", trackers, "--model", str(tiny_model),
                 "--out", str(out)]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert set(s) >= {"machine", "command", "trackers"}
    for name in trackers.split(","):
        t = s["trackers"][name]
        assert 0.0 <= t["mean_auc"] <= 1.0 and 0.0 <= t["mean_precision"] <= 1.0 and t["mean_fps"] > 0
        assert set(t["sequences"]["syn8"]) == {"auc", "precision", "fps"}
    for f in ("results.json", "results.md", "success.png", "precision.png"):
        assert (out / f).stat().st_size > 0
    assert "MEAN ours" in capsys.readouterr().out
    # every run's boxes, readable by other toolkits, score what the summary says
    from runtime.evaluation import evaluate_sequence
    from runtime.sources import load_groundtruth

    gt = load_groundtruth(tiny_seq / "groundtruth_rect.txt")
    for name in trackers.split(","):
        boxes = np.loadtxt(out / "boxes" / name / "syn8.txt", delimiter=",")
        assert boxes.shape == gt.shape and np.allclose(boxes[0], gt[0], atol=0.005)
        auc = evaluate_sequence(boxes, gt).auc
        assert auc == pytest.approx(s["trackers"][name]["sequences"]["syn8"]["auc"], abs=0.02)


@pytest.fixture(scope="module")
def small_target_seq(tmp_path_factory):
    """8 frames with a 10x8 target: tiny targets are upscaled at most 6x (the cap binds), so the
    unbucketed patch follows the box size and the baseline meets several patch shapes."""
    return write_otb(make_sequence(n_frames=8, size=(160, 120), seed=5, distractors=0, target_size=(10, 8)),
                     tmp_path_factory.mktemp("seq") / "small8", ext=".jpg")


def test_per_frame_benchmark_schema(small_target_seq, tiny_model, tmp_path, monkeypatch):
    from benchmarks.per_frame import main
    from runtime.backends.mxnet_backend import MXNetBackend

    shapes = []  # the patch shape of every unbucketed extraction, in order
    extract_any = MXNetBackend.extract_any

    def spy(self, patch):
        shapes.append(tuple(patch.shape[2:]))
        return extract_any(self, patch)

    monkeypatch.setattr(MXNetBackend, "extract_any", spy)
    out = tmp_path / "pf"
    assert main(["--sequences", str(small_target_seq), "--backends", "mxnet,mxnet-unbucketed",
                 "--model", str(tiny_model), "--out", str(out)]) == 0
    r = json.loads((out / "per_frame.json").read_text())
    assert set(r) >= {"machine", "command", "sequences", "backends"}
    for b in ("mxnet", "mxnet-unbucketed"):
        s = r["backends"][b]
        assert set(s) >= {"first_ms_median", "median_ms", "p95_ms", "max_ms", "fps", "stage_median_ms", "max_over_median"}
        assert set(s["stage_median_ms"]) == {"crop", "features", "head", "bbreg", "update", "other"}
        assert r["sequences"]["small8"][b]["cost"]["n_frames"] == 8
    bucketed = r["sequences"]["small8"]["mxnet"]
    baseline = r["sequences"]["small8"]["mxnet-unbucketed"]
    # the bucketed path binds once per bucket, up front, and never per shape
    assert bucketed["binds"]["features"] == 8 and "-1" not in bucketed["bucket_use"]
    assert baseline["bucket_use"] == {"-1": 8}  # no frame of the baseline went through a bucket
    # the baseline binds the same 8 at construction, then once per *new* patch shape: measured
    # 8 extractions in 3 shapes, 11 binds (binding every frame would make 16, binding once 9)
    assert len(shapes) == 8 and 1 < len(set(shapes)) < len(shapes), shapes
    assert baseline["binds"]["features"] == 8 + len(set(shapes)), shapes
    for f in ("per_frame.md", "per_frame.png"):
        assert (out / f).stat().st_size > 0


def test_features_benchmark_schema(tiny_model, tmp_path):
    from benchmarks.features import main

    out = tmp_path / "feat"
    assert main(["--model", str(tiny_model), "--backends", "mxnet", "--repeat", "2", "--out", str(out)]) == 0
    r = json.loads((out / "features.json").read_text())
    assert len(r["backends"]["mxnet"]) == 8
    assert all(v["median_ms"] > 0 for v in r["backends"]["mxnet"].values())


def test_oracle_diagnosis_finds_a_lone_target(tmp_path):
    """With right labels and no look-alikes, the shipped head's best box sits on the target."""
    from benchmarks.oracle import diagnose, main
    from runtime.sources import open_sequence_folder

    seq = write_otb(make_sequence(n_frames=16, size=(240, 180), seed=6, distractors=0), tmp_path / "syn16")
    r = diagnose(open_sequence_folder(seq), frames=15)
    assert r["frames"] == 15
    assert r["head_near"] >= 0.8 and r["truth_positive"] >= 0.8, r
    out = tmp_path / "oracle"
    assert main(["--sequences", str(seq), "--frames", "5", "--out", str(out)]) == 0
    rows = json.loads((out / "oracle.json").read_text())["sequences"]
    assert rows["syn16"]["frames"] == 5 and "| syn16 | 5 |" in (out / "oracle.md").read_text()


def _absent_first(seq_dir, tmp_path, n_absent: int, name: str = "late"):
    """A copy of an OTB folder whose first ``n_absent`` ground-truth rows are NaN (target absent)."""
    import shutil

    out = tmp_path / name
    shutil.copytree(seq_dir, out)
    gt = out / "groundtruth_rect.txt"
    rows = gt.read_text().splitlines()
    gt.write_text("\n".join(["NaN,NaN,NaN,NaN"] * n_absent + rows[n_absent:]) + "\n")
    return out, rows


class _RecordingTracker:
    def __init__(self, log):
        self.log = log

    def init(self, image, box):
        self.log.append(("init", tuple(float(v) for v in box)))

    def update(self, image):
        self.log.append(("update",))
        return np.array([1.0, 2.0, 3.0, 4.0]), True


def test_run_sequence_starts_at_the_first_frame_with_a_box(tiny_seq, tmp_path):
    """A target absent at the start: the tracker starts on the first frame that has a box, with
    that frame's own box (as runtime.track does), not on frame 0 with a later frame's box."""
    from benchmarks.common import run_sequence
    from runtime.sources import open_sequence_folder

    folder, rows = _absent_first(tiny_seq, tmp_path, 3)
    log = []
    r = run_sequence(lambda: _RecordingTracker(log), open_sequence_folder(folder), max_frames=6)
    frame3 = tuple(float(v) for v in rows[3].split(","))
    assert log == [("init", frame3)] + [("update",)] * 2
    assert np.isnan(r["boxes"][:3]).all() and tuple(r["boxes"][3]) == frame3
    assert len(r["boxes"]) == len(r["gt"]) == 6 and len(r["ms"]) == 3  # ms: tracked frames, init first


def test_per_frame_and_oracle_start_where_tracking_starts(tiny_seq, tiny_model, tmp_path, monkeypatch):
    """benchmarks.per_frame and benchmarks.oracle start on the first frame with a box too
    (they once initialised frame 0 with a later frame's box)."""
    from benchmarks.oracle import diagnose
    from benchmarks.per_frame import _Frames
    from runtime.sources import open_sequence_folder

    folder, rows = _absent_first(tiny_seq, tmp_path, 3)
    frames = _Frames(open_sequence_folder(folder), 8)
    assert [f.index for f in frames] == [3, 4, 5, 6, 7]
    assert tuple(frames.init_box) == tuple(float(v) for v in rows[3].split(","))
    import runtime.tracker as T

    log, orig = [], T.Tracker.init
    monkeypatch.setattr(T.Tracker, "init",
                        lambda self, image, box: (log.append(tuple(np.asarray(box, float))), orig(self, image, box))[1])
    r = diagnose(open_sequence_folder(folder), model=tiny_model, frames=6)
    assert log == [tuple(float(v) for v in rows[3].split(","))] and r["frames"] == 3  # frames 4-6 scored


def test_accuracy_summary_with_a_sequence_without_scored_frames(tiny_seq, tiny_model, tmp_path, capsys):
    """A sequence whose run has no frame with ground truth scores n/a, is left out of the mean
    (as in results.json), and summary.json stays strict JSON (it used to raise on NaN)."""
    from benchmarks.accuracy import main

    folder, _ = _absent_first(tiny_seq, tmp_path, 3)
    out = tmp_path / "acc"
    assert main(["--sequences", str(tiny_seq), str(folder), "--trackers", "ours", "--model", str(tiny_model),
                 "--max-frames", "2", "--out", str(out)]) == 0
    s = json.loads((out / "summary.json").read_text())["trackers"]["ours"]
    assert s["sequences"]["late"] == {"auc": None, "precision": None, "fps": None}
    assert s["mean_auc"] == s["sequences"]["syn8"]["auc"]
    assert "1 sequence(s) with no scored frame left out" in capsys.readouterr().out
    assert (out / "boxes" / "ours" / "late.txt").read_text() == "nan,nan,nan,nan\n" * 2
    # the user's sequences: the report does not call them the development set
    assert (out / "results.md").read_text().startswith("# One-pass evaluation\n")


def test_accuracy_refuses_inputs_it_cannot_score(tiny_seq, tiny_model, tmp_path, capsys):
    """One error line, exit 2, before any tracking: a dataset root given for its sequences, a
    folder without ground truth, two sequences of one name (results are keyed by name)."""
    import shutil

    from benchmarks.accuracy import main

    root = tmp_path / "OTB"
    shutil.copytree(tiny_seq, root / "syn8")
    nogt = tmp_path / "nogt"
    shutil.copytree(tiny_seq, nogt)
    (nogt / "groundtruth_rect.txt").unlink()
    base = ["--trackers", "ours", "--model", str(tiny_model), "--out", str(tmp_path / "acc")]
    cases = [([str(root)], f"holds 1 sequence folders (syn8); give one ({root / 'syn8'}), or all of them "
                           f"({root / '*'}) where a command takes several"),
             ([str(nogt)], "has no usable ground-truth box"),
             ([str(tiny_seq), str(root / "syn8")], "two sequences are named 'syn8'"),
             ([str(tiny_seq), "--trackers", f"ours:{tiny_model},ours:{tiny_model}"], "names ours[model] twice")]
    for seqs, message in cases:
        capsys.readouterr()
        assert main([*base, "--sequences", *seqs]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
    # the same folder twice is one sequence, not a clash
    assert main(["--sequences", str(tiny_seq), str(tiny_seq), "--max-frames", "2", *base]) == 0
    assert len(json.loads((tmp_path / "acc" / "summary.json").read_text())["trackers"]["ours"]["sequences"]) == 1
