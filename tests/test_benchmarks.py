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
    assert r["fc_head_near"] >= 0.8 and r["ridge_near"] >= 0.8, r  # each of the two classifiers alone too
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
    r = diagnose(open_sequence_folder(folder), model=tiny_model, frames=2)
    # --frames counts frames after the first tracked one (frame 3): frames 4 and 5 are scored
    assert log == [tuple(float(v) for v in rows[3].split(","))] and r["frames"] == 2


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
    """One error line, exit 2, before any tracking: a ground-truth file that cannot be read, a
    dataset root given for its sequences, a folder without ground truth, two sequences of one
    name (results are keyed by name)."""
    import shutil

    from benchmarks.accuracy import main

    root = tmp_path / "OTB"
    shutil.copytree(tiny_seq, root / "syn8")
    nogt = tmp_path / "nogt"
    shutil.copytree(tiny_seq, nogt)
    (nogt / "groundtruth_rect.txt").unlink()
    semi = tmp_path / "semi"
    shutil.copytree(tiny_seq, semi)
    gt = semi / "groundtruth_rect.txt"
    gt.write_text(gt.read_text().replace(",", ";"))
    base = ["--trackers", "ours", "--model", str(tiny_model), "--out", str(tmp_path / "acc")]
    cases = [([str(semi)], "fix it, or leave semi out of --sequences"),  # not runtime.track's --init
             ([str(root)], f"holds 1 sequence folders (syn8); give one ({root / 'syn8'}), or all of them "
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


def _has_kcf() -> bool:
    try:
        import cv2
    except ImportError:
        return False
    return hasattr(cv2, "TrackerKCF_create") or hasattr(getattr(cv2, "legacy", None), "TrackerKCF_create")


def _one_error(capsys, message):
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1, err


def test_outputs_may_not_overwrite_inputs_or_each_other(tiny_seq, tiny_model, tmp_path, capsys):
    """--json on a sequence's ground truth, or on a report file of --out, is refused with one
    error line before any work (runtime.outputs.check_outputs_apart, as runtime.track does)."""
    from benchmarks.accuracy import main as accuracy
    from benchmarks.per_frame import main as per_frame

    gt = tiny_seq / "groundtruth_rect.txt"
    before = gt.read_text()
    out = tmp_path / "out"
    base = ["--sequences", str(tiny_seq), "--model", str(tiny_model), "--out", str(out)]
    for main, json_path, message in [
            (accuracy, gt, "is one of the input files"),
            (accuracy, out / "results.json", "--out (results.json) and --json both name"),
            (accuracy, out / "boxes" / "ours" / "syn8.txt", "--out (boxes/ours/syn8.txt) and --json both name"),
            (per_frame, gt, "is one of the input files"),
            (per_frame, out / "per_frame.json", "--out (per_frame.json) and --json both name")]:
        (out / "boxes" / "ours").mkdir(parents=True, exist_ok=True)
        extra = ["--trackers", "ours"] if main is accuracy else ["--backends", "mxnet"]
        assert main([*base, *extra, "--json", str(json_path)]) == 2
        _one_error(capsys, message)
    assert gt.read_text() == before and not list(out.glob("*.json"))


def test_peers_start_from_the_ground_truth_box():
    """The peers get the first ground-truth box as the OTB protocol gives it: its visible
    part, in whole pixels; grown only below what each OpenCV tracker can start on (CSRT
    fails on 1x1, MIL never returns on 4x4). Ours grows tiny boxes itself; giving the peers
    that growth moved CSRT on uav_truck4_1's 5x4 truck from 0.04 to 0.34."""
    from benchmarks.common import OPENCV_MIN_SIZE, OpenCVTracker

    img = np.zeros((120, 160, 3), np.uint8)
    box = OpenCVTracker.opencv_box
    assert box(img, [10.4, 20.6, 30.2, 40.5], OPENCV_MIN_SIZE["csrt"]) == (10, 21, 30, 40)
    assert box(img, [406.5 - 400, 84, 5.5, 4], OPENCV_MIN_SIZE["csrt"]) == (6, 84, 6, 4)  # not grown
    assert box(img, [-10, -5, 30, 30], OPENCV_MIN_SIZE["kcf"]) == (0, 0, 20, 25)  # the visible part
    assert box(img, [50.3, 40.2, 0.4, 0.3], OPENCV_MIN_SIZE["csrt"]) == (50, 39, 2, 2)  # sub-pixel: grown
    assert box(img, [50.0, 40.0, 4.0, 4.0], OPENCV_MIN_SIZE["mil"]) == (50, 40, 5, 5)
    assert box(img, [159.5, 119.5, 0.4, 0.4], OPENCV_MIN_SIZE["mil"]) == (155, 115, 5, 5)  # kept inside
    with pytest.raises(Exception, match="outside"):
        box(img, [200, 10, 5, 5])


@pytest.mark.skipif(not _has_kcf(), reason="no OpenCV contrib trackers")
def test_peers_run_on_tiny_and_border_boxes(tiny_seq):
    """A box crossing the border and a sub-pixel box used to crash MIL / CSRT / KCF."""
    from benchmarks.common import OpenCVTracker
    from runtime.sources import open_sequence_folder

    frames = list(open_sequence_folder(tiny_seq))[:2]
    for kind in ("csrt", "kcf", "mil"):
        for box in ([150, 110, 30, 30], [50.3, 40.2, 0.4, 0.3], [-3.0, -2.0, 4.0, 3.0]):
            t = OpenCVTracker(kind)
            t.init(frames[0].image, box)
            b, _ = t.update(frames[1].image)
            assert np.all(np.isfinite(b)), (kind, box)


class _FailingCV:
    def __init__(self, when):
        self.when = when

    def init(self, image, box):
        import cv2

        if self.when == "init":
            raise cv2.error("bad_alloc in a peer")

    def update(self, image):
        import cv2

        raise cv2.error("OpenCV(4.x) error:\n  (-215:Assertion failed) in update")


def test_a_failing_peer_is_a_recorded_failed_run(tiny_seq, tiny_model, tmp_path, monkeypatch, capsys):
    """A cv2.error in a peer ends that tracker's run on that sequence: its later frames score
    as lost (NaN boxes), the error is in summary.json and results.md, and the other trackers
    and sequences run on (no traceback)."""
    pytest.importorskip("cv2")
    import benchmarks.accuracy as acc
    from benchmarks.common import OpenCVTracker

    def fake(kind):
        t = OpenCVTracker.__new__(OpenCVTracker)
        t.kind, t.t, t.box = kind, _FailingCV("init" if kind == "kcf" else "update"), None
        return t

    monkeypatch.setattr(acc, "OpenCVTracker", fake)
    out = tmp_path / "acc"
    assert acc.main(["--sequences", str(tiny_seq), "--trackers", "ours,kcf,csrt", "--model", str(tiny_model),
                     "--max-frames", "3", "--out", str(out)]) == 0
    s = json.loads((out / "summary.json").read_text())["trackers"]
    assert "error" not in s["ours"]["sequences"]["syn8"]
    assert s["kcf"]["sequences"]["syn8"]["error"].startswith("frame 0: kcf init on")
    assert s["kcf"]["sequences"]["syn8"]["auc"] == 0.0
    assert s["csrt"]["sequences"]["syn8"]["error"] == "frame 1: csrt update: cv2.error: OpenCV(4.x) error: (-215:Assertion failed) in update"
    rows = (out / "boxes" / "csrt" / "syn8.txt").read_text().splitlines()
    assert rows[0] != "nan,nan,nan,nan" and rows[1:] == ["nan,nan,nan,nan"] * 2
    assert "Failed runs" in (out / "results.md").read_text()
    assert "2 failed run(s)" in capsys.readouterr().out
    full = json.loads((out / "results.json").read_text())["trackers"]
    assert full["kcf"]["sequences"]["syn8"]["error"] == s["kcf"]["sequences"]["syn8"]["error"]
    assert "error" not in full["ours"]["sequences"]["syn8"]


def test_warnings_are_logged_and_two_target_folders_are_two_sequences(tiny_seq, tiny_model, tmp_path, caplog):
    """A sequence's warnings (fewer ground-truth rows than frames) are logged as warnings by
    every benchmark (common.check_inputs), and an OTB-100 folder with groundtruth_rect.1.txt /
    .2.txt (Jogging) runs as Jogging.1 and Jogging.2."""
    import logging
    import shutil

    from benchmarks.accuracy import main
    from benchmarks.common import check_inputs, resolve_sequences

    short = tmp_path / "short"
    shutil.copytree(tiny_seq, short)
    gt = short / "groundtruth_rect.txt"
    gt.write_text("".join(gt.read_text().splitlines(keepends=True)[:6]))
    jog = tmp_path / "Jogging"
    shutil.copytree(tiny_seq, jog)
    (jog / "groundtruth_rect.txt").rename(jog / "groundtruth_rect.1.txt")
    shutil.copy(jog / "groundtruth_rect.1.txt", jog / "groundtruth_rect.2.txt")
    seqs = resolve_sequences([str(short), str(jog)])
    assert seqs == [str(short), str(tmp_path / "Jogging.1"), str(tmp_path / "Jogging.2")]
    with caplog.at_level(logging.WARNING):
        assert check_inputs(seqs) == seqs
    assert [r.getMessage() for r in caplog.records] == [
        "short: groundtruth_rect.txt has 6 rows for 8 frames; frames 6-7 have no ground truth"]
    out = tmp_path / "acc"
    assert main(["--sequences", str(short), str(jog), "--trackers", "ours", "--model", str(tiny_model),
                 "--max-frames", "2", "--out", str(out)]) == 0
    assert set(json.loads((out / "summary.json").read_text())["trackers"]["ours"]["sequences"]) == {
        "short", "Jogging.1", "Jogging.2"}
    assert (out / "boxes" / "ours" / "Jogging.2.txt").is_file()


def test_files_among_several_sequences_are_skipped(tiny_seq, tmp_path, caplog):
    """``--sequences ROOT/*`` also matches the files beside the folders (GOT-10k's list.txt,
    the OTB zips the GOT-10k toolkit downloads): skipped with a warning. A file alone, or
    only files, is still the error that names it, never the development set instead."""
    import logging

    from benchmarks.common import resolve_sequences

    listing = tmp_path / "list.txt"
    listing.write_text("seq\n")
    with caplog.at_level(logging.WARNING):
        assert resolve_sequences([str(tiny_seq), str(listing)]) == [str(tiny_seq)]
    assert [r.getMessage() for r in caplog.records] == [f"skipping {listing}: a file, not a sequence folder"]
    assert resolve_sequences([str(listing)]) == [str(listing)]
    assert resolve_sequences([str(listing), str(listing)]) == [str(listing)] * 2


def test_per_frame_refuses_a_sequence_with_one_frame_to_time(tiny_seq, tiny_model, tmp_path, capsys):
    """The first usable box on the last frame (within --max-frames) leaves nothing to time:
    one error line naming the sequence, before any work (it used to be a traceback)."""
    from benchmarks.per_frame import main

    folder, _ = _absent_first(tiny_seq, tmp_path, 7)
    assert main(["--sequences", str(folder), "--backends", "mxnet", "--model", str(tiny_model),
                 "--out", str(tmp_path / "pf")]) == 2
    _one_error(capsys, "sequence late (")
    folder2, _ = _absent_first(tiny_seq, tmp_path, 3, name="late3")
    assert main(["--sequences", str(folder2), "--backends", "mxnet", "--max-frames", "4", "--model", str(tiny_model),
                 "--out", str(tmp_path / "pf")]) == 2
    _one_error(capsys, "has 1 frame(s) within --max-frames 4 from its first usable ground-truth box (frame 3)")
    assert not (tmp_path / "pf").exists()


def test_json_may_go_into_the_out_folder_the_run_creates(tiny_seq, tiny_model, tmp_path, capsys):
    """--json inside a new --out was refused ('folder does not exist; create it first') though
    the run creates --out; a folder inside --out that nothing creates is still refused."""
    from benchmarks.accuracy import main

    out = tmp_path / "new" / "acc"
    base = ["--sequences", str(tiny_seq), "--trackers", "ours", "--model", str(tiny_model), "--max-frames", "2"]
    assert main([*base, "--out", str(out), "--json", str(out / ".." / "acc" / "copy.json")]) == 0
    assert json.loads((out / "copy.json").read_text()) == json.loads((out / "summary.json").read_text())
    capsys.readouterr()
    out2 = tmp_path / "new2"
    assert main([*base, "--out", str(out2), "--json", str(out2 / "sub" / "copy.json")]) == 2
    _one_error(capsys, "does not exist; create it first")


def test_per_frame_force_keeps_the_last_results_when_a_sequence_has_too_few_readable_frames(
        tiny_seq, tiny_model, tmp_path, capsys):
    """Unreadable frames are found by decoding, not by counting files: a sequence with one
    readable frame is refused before --force deletes the previous run's results."""
    import shutil

    from benchmarks.per_frame import main

    out = tmp_path / "pf"
    base = ["--backends", "mxnet", "--model", str(tiny_model), "--max-frames", "3", "--out", str(out)]
    assert main(["--sequences", str(tiny_seq), *base]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert "per_frame.json" in before
    bad = tmp_path / "bad"
    shutil.copytree(tiny_seq, bad)
    for frame in sorted((bad / "img").iterdir())[1:]:
        frame.write_bytes(frame.read_bytes()[: frame.stat().st_size // 2])
    capsys.readouterr()
    assert main(["--sequences", str(tiny_seq), str(bad), *base, "--force"]) == 2
    _one_error(capsys, "sequence bad has 1 readable frame(s)")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_accuracy_keeps_the_last_box_on_an_unreadable_frame(tiny_seq, tiny_model, tmp_path, caplog):
    """A corrupt frame is skipped with a warning, every tracker keeping its last box there
    (runtime.track's rule): the run and its report complete."""
    import logging
    import shutil

    from benchmarks.accuracy import main

    bad = tmp_path / "bad"
    shutil.copytree(tiny_seq, bad)
    frame = sorted((bad / "img").iterdir())[2]
    frame.write_bytes(frame.read_bytes()[: frame.stat().st_size // 2])
    trackers = "ours,kcf" if _has_kcf() else "ours"
    out = tmp_path / "acc"
    with caplog.at_level(logging.WARNING):
        assert main(["--sequences", str(bad), "--trackers", trackers, "--model", str(tiny_model),
                     "--max-frames", "4", "--out", str(out)]) == 0
    for name in trackers.split(","):
        rows = (out / "boxes" / name / "bad.txt").read_text().splitlines()
        assert len(rows) == 4 and rows[2] == rows[1], name
        assert any(f"bad {name}: frame 2 skipped" in r.getMessage() for r in caplog.records), name
    assert (out / "results.json").is_file()


def test_rerun_into_a_used_out_needs_force(tiny_seq, tiny_model, tmp_path, capsys):
    """A second run into the same --out is refused (it would mix with the first's boxes);
    --force deletes the first run's files, only those, then runs."""
    import shutil

    from benchmarks.accuracy import main

    other = tmp_path / "other"
    shutil.copytree(tiny_seq, other)
    out = tmp_path / "acc"
    base = ["--trackers", "ours", "--model", str(tiny_model), "--max-frames", "2", "--out", str(out)]
    assert main(["--sequences", str(tiny_seq), str(other), *base]) == 0
    (out / "notes.txt").write_text("mine")
    (out / "boxes" / "notes.txt").write_text("mine too")
    capsys.readouterr()
    assert main(["--sequences", str(tiny_seq), *base]) == 2
    _one_error(capsys, f"--out {out} already holds a run's results")
    assert (out / "boxes" / "ours" / "other.txt").is_file()
    assert main(["--sequences", str(tiny_seq), *base, "--force"]) == 0
    assert sorted(p.name for p in (out / "boxes" / "ours").iterdir()) == ["syn8.txt"]  # other.txt was the old run's
    assert (out / "notes.txt").read_text() == "mine" and (out / "boxes" / "notes.txt").read_text() == "mine too"


def test_per_frame_and_oracle_refuse_two_sequences_of_one_name(tiny_seq, tiny_model, tmp_path, capsys):
    import shutil

    from benchmarks.oracle import main as oracle
    from benchmarks.per_frame import main as per_frame

    twin = tmp_path / "elsewhere" / "syn8"
    shutil.copytree(tiny_seq, twin)
    assert per_frame(["--sequences", str(tiny_seq), str(twin), "--backends", "mxnet", "--model", str(tiny_model),
                      "--out", str(tmp_path / "pf")]) == 2
    _one_error(capsys, "two sequences are named 'syn8'")
    assert oracle(["--sequences", str(tiny_seq), str(twin), "--model", str(tiny_model), "--frames", "1"]) == 2
    _one_error(capsys, "two sequences are named 'syn8'")


def test_names_in_refuses_a_name_twice(capsys):
    from benchmarks.common import names_in
    from benchmarks.per_frame import main
    from runtime.errors import TrackerInputError

    assert names_in("mxnet, tvm", ("mxnet", "tvm")) == ["mxnet", "tvm"]
    with pytest.raises(TrackerInputError, match="--backends names mxnet twice"):
        names_in("mxnet,tvm,mxnet", ("mxnet", "tvm"))
    assert main(["--backends", "mxnet,mxnet"]) == 2
    _one_error(capsys, "--backends names mxnet twice")


def test_oracle_reports_n_a_when_it_measured_nothing(tiny_seq, tiny_model, tmp_path, capsys):
    """--frames 1 has one scored frame and no previous true box to compare: similarity is
    n/a (null), not 0.00."""
    from benchmarks.oracle import main

    out = tmp_path / "oracle"
    assert main(["--sequences", str(tiny_seq), "--model", str(tiny_model), "--frames", "1", "--out", str(out)]) == 0
    r = json.loads((out / "oracle.json").read_text())["sequences"]["syn8"]
    assert r["frames"] == 1 and r["similarity_near"] is None and r["head_near"] is not None
    assert "similarity near truth n/a" in capsys.readouterr().out
    assert (out / "oracle.md").read_text().splitlines()[-1].endswith("| n/a |")


def test_saved_boxes_rescore_to_the_report_exactly(tmp_path, tiny_model):
    """Rescoring boxes/<tracker>/<sequence>.txt against the sequence's ground truth gives
    results.json's scores exactly (2-decimal rows moved an AUC by 0.002)."""
    from benchmarks.accuracy import main
    from runtime.evaluation import evaluate_sequence
    from runtime.sources import open_sequence_folder

    seq = write_otb(make_sequence(n_frames=6, size=(160, 120), seed=7, distractors=0), tmp_path / "syn6")
    out = tmp_path / "acc"
    trackers = "ours,kcf" if _has_kcf() else "ours"
    assert main(["--sequences", str(seq), "--trackers", trackers, "--model", str(tiny_model), "--out", str(out)]) == 0
    report = json.loads((out / "results.json").read_text())["trackers"]
    gt = open_sequence_folder(seq).groundtruth
    for name in trackers.split(","):
        boxes = np.loadtxt(out / "boxes" / name / "syn6.txt", delimiter=",")
        score = evaluate_sequence(boxes, gt)
        want = report[name]["sequences"]["syn6"]["score"]
        assert (score.auc, score.precision, score.mean_iou) == (want["auc"], want["precision"], want["mean_iou"])


def test_force_never_deletes_through_a_linked_folder(tmp_path):
    """--force deletes the files a run wrote in --out; a folder linked into it leads out of
    it, and its files are not this tool's."""
    from benchmarks.common import prepare_out

    out, elsewhere = tmp_path / "out", tmp_path / "precious"
    (out / "boxes" / "csrt").mkdir(parents=True)
    elsewhere.mkdir()
    (elsewhere / "notes.txt").write_text("keep")
    (out / "boxes" / "ours").symlink_to(elsewhere)
    (out / "boxes" / "csrt" / "seq.txt").write_text("1,2,3,4")
    prepare_out(out, ["boxes/*/*.txt"], force=True)
    assert (elsewhere / "notes.txt").read_text() == "keep"
    assert not (out / "boxes" / "csrt" / "seq.txt").exists()
