"""`python -m runtime.track`: outputs, frame limits, bad frames and user errors."""
import contextlib
import io
import json
import os
import shutil

import numpy as np
import pytest

from conftest import child_env, expect_one_error_line
from runtime import track
from runtime.synthetic import make_sequence, write_otb

N_FRAMES = 15


@pytest.fixture(scope="module")
def otb(tmp_path_factory):
    return write_otb(make_sequence(n_frames=N_FRAMES, size=(320, 240), seed=1),
                     tmp_path_factory.mktemp("cli") / "synth")


def _run(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = track.main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def _boxes(path):
    lines = path.read_text().splitlines()
    return lines, np.array([[float(v) for v in line.split(",")] for line in lines])


@pytest.fixture(scope="module")
def full_run(otb, tiny_model, tmp_path_factory):
    d = tmp_path_factory.mktemp("full")
    paths = {"out": d / "res.txt", "jsonl": d / "res.jsonl", "video": d / "res.mp4"}
    code, out, err = _run(["--sequence", otb, "--model", tiny_model, "--out", paths["out"],
                           "--jsonl", paths["jsonl"], "--save-video", paths["video"]])
    return dict(paths, code=code, stdout=out, stderr=err)


def test_sequence_outputs(full_run):
    assert full_run["code"] == 0, full_run["stderr"]
    lines, boxes = _boxes(full_run["out"])
    assert len(lines) == N_FRAMES
    assert boxes.shape == (N_FRAMES, 4) and np.isfinite(boxes).all() and (boxes[:, 2:] > 0).all()
    rows = [json.loads(line) for line in full_run["jsonl"].read_text().splitlines()]
    assert len(rows) == N_FRAMES
    for i, row in enumerate(rows):
        assert {"frame", "box", "score", "ok", "ms"} <= set(row)
        assert row["frame"] == i and len(row["box"]) == 4 and isinstance(row["ok"], bool)
        assert row["ms"] >= 0
        np.testing.assert_allclose(row["box"], boxes[i], atol=0.011)
    assert all(isinstance(r["score"], float) for r in rows[1:])
    summary = full_run["stdout"].strip().splitlines()[-1]
    assert "AUC" in summary and f"frames {N_FRAMES}" in summary


def test_save_video_matches_input(full_run):
    import cv2

    assert full_run["code"] == 0
    cap = cv2.VideoCapture(str(full_run["video"]))
    assert cap.isOpened()
    frames = []
    while True:
        ok, img = cap.read()
        if not ok:
            break
        frames.append(img.shape)
    cap.release()
    assert len(frames) == N_FRAMES
    assert set(frames) == {(240, 320, 3)}


def test_max_frames(otb, tiny_model, tmp_path):
    out = tmp_path / "res.txt"
    code, _, err = _run(["--sequence", otb, "--model", tiny_model, "--out", out, "--max-frames", 5, "--quiet"])
    assert code == 0, err
    assert len(out.read_text().splitlines()) == 5


def test_corrupt_frame_keeps_last_box(otb, tiny_model, tmp_path, caplog):
    seq = tmp_path / "seq"
    shutil.copytree(otb, seq)
    bad = seq / "img" / "0005.png"
    bad.write_bytes(b"this is not a png at all")
    out = tmp_path / "res.txt"
    with caplog.at_level("WARNING"):
        code, _, err = _run(["--sequence", seq, "--model", tiny_model, "--out", out, "--quiet"])
    assert code == 0, err
    lines, boxes = _boxes(out)
    assert len(lines) == N_FRAMES
    assert lines[4] == lines[3]  # the unreadable frame repeats the previous box
    assert "0005.png" in caplog.text + err


def test_warnings_are_printed_like_errors(otb, tiny_model, tmp_path):
    """The command line prints ``warning: ...`` beside its ``error: ...`` (it printed ``WARNING:``)."""
    import subprocess
    import sys

    seq = tmp_path / "seq"
    shutil.copytree(otb, seq)
    (seq / "img" / "0003.png").write_bytes(b"")
    r = subprocess.run([sys.executable, "-m", "runtime.track", "--sequence", str(seq), "--model", str(tiny_model),
                        "--max-frames", "4", "--quiet"], capture_output=True, text=True, timeout=300, env=child_env())
    assert r.returncode == 0, r.stderr
    assert any(line.startswith("warning: frame 2 skipped: cannot decode image") for line in r.stderr.splitlines())
    assert "WARNING" not in r.stderr, r.stderr


def _error(code, err, *words):
    assert code == 2
    assert err.startswith("error:") or "\nerror:" in err
    assert "Traceback" not in err
    for w in words:
        assert w in err, err


def test_missing_folder(tmp_path, tiny_model, capsys):
    code = track.main(["--sequence", str(tmp_path / "nope"), "--model", str(tiny_model)])
    err = capsys.readouterr().err
    _error(code, err, "nope")


def test_video_needs_init(tmp_path, tiny_model, capsys):
    code = track.main(["--video", str(tmp_path / "clip.mp4"), "--model", str(tiny_model)])
    _error(code, capsys.readouterr().err, "--init")


def test_bad_init_box(otb, tiny_model, capsys):
    code = track.main(["--sequence", str(otb), "--init", "1,2,3", "--model", str(tiny_model)])
    _error(code, capsys.readouterr().err, "1,2,3")


def test_missing_model(otb, tmp_path, capsys):
    missing = tmp_path / "no_model_here"
    code = track.main(["--sequence", str(otb), "--model", str(missing)])
    _error(code, capsys.readouterr().err, str(missing))


def test_modified_weights_refused(otb, tiny_model, tmp_path, capsys):
    m = tmp_path / "model"
    shutil.copytree(tiny_model, m)
    with open(m / "weights.params", "ab") as f:
        f.write(b"\0")
    code = track.main(["--sequence", str(otb), "--model", str(m)])
    _error(code, capsys.readouterr().err, "sha256", "weights.params")


def test_show_without_display(otb, tiny_model, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    code = track.main(["--sequence", str(otb), "--model", str(tiny_model), "--show", "--quiet"])
    _error(code, capsys.readouterr().err, "DISPLAY")


def test_unknown_backend_is_a_usage_error(otb, capsys):
    with pytest.raises(SystemExit) as e:
        track.main(["--sequence", str(otb), "--backend", "bogus"])
    assert e.value.code == 2
    assert "bogus" in capsys.readouterr().err


def test_select_without_display_is_a_clear_error(otb, tiny_model, monkeypatch, capsys):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    code = track.main(["--sequence", str(otb), "--select", "--model", str(tiny_model)])
    _error(code, capsys.readouterr().err, "--select", "display", "--init")


@pytest.mark.parametrize("flag", ["--show", "--select"])
def test_window_flags_with_a_headless_opencv_are_a_clear_error(otb, tiny_model, monkeypatch, capsys, flag):
    """With a display but the headless OpenCV the project installs, --show and --select used
    to end in a cv2.error traceback (--show after tracking the first frame)."""
    if track.opencv_has_windows():
        pytest.skip("this OpenCV build has windows")
    monkeypatch.setenv("DISPLAY", ":0")
    code = track.main(["--sequence", str(otb), flag, "--model", str(tiny_model), "--quiet"])
    _error(code, capsys.readouterr().err, flag, "headless", "pip install opencv-contrib-python==4.10.0.84")


def test_drawn_ground_truth_stays_visible_over_a_close_box():
    """The 1-px ground truth is drawn over the 2-px tracked box: with the track close it was
    painted over in the video the README describes."""
    frame = np.zeros((60, 80, 3), np.uint8)
    img = track.draw(frame, np.array([10.0, 10, 40, 30]), np.array([10.0, 10, 40, 30]), 1.0, True, 5.0, 0)
    bottom = 40  # the top edge runs under the text line
    assert (img[bottom, 20:40] == (0, 0, 255)).all()
    assert (img[bottom - 1, 20:40] == (0, 255, 0)).all() and (img[bottom + 1, 20:40] == (0, 255, 0)).all()


def test_a_video_writer_that_cannot_open_is_refused_before_tracking(otb, tiny_model, tmp_path, monkeypatch, capsys):
    """OpenCV opens its writer with the frame size, so a writer that fails (a codec missing
    from the build) surfaced only after the first frame was tracked and --out begun: it is
    tried on a scratch name first, and the outputs are left as they were."""
    from runtime import outputs

    monkeypatch.setattr(outputs, "open_video_writer", lambda path, fps, size: None)
    out = tmp_path / "boxes.txt"
    out.write_text("previous run\n")
    code = track.main(["--sequence", str(otb), "--model", str(tiny_model), "--out", str(out),
                       "--save-video", str(tmp_path / "v.mp4"), "--quiet"])
    _error(code, capsys.readouterr().err, "--save-video", "cannot open a video writer")
    assert out.read_text() == "previous run\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["boxes.txt"]


def test_the_video_check_leaves_no_file(tmp_path):
    from runtime.outputs import check_output

    check_output(tmp_path / "v.mp4", "--save-video")
    assert list(tmp_path.iterdir()) == []


FAST_FPS = 120


@pytest.fixture(scope="module")
def fast_video(tmp_path_factory):
    """A 40-frame, 120 fps video for --realtime (the pacing runs on a fake clock)."""
    import cv2

    seq = make_sequence(n_frames=40, size=(320, 240), seed=1)
    path = tmp_path_factory.mktemp("rt") / "fast.avi"
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), FAST_FPS, (320, 240))
    for f in seq:
        w.write(f.image)
    w.release()
    return path, seq.init_box


class _FakeClock:
    """Stands in for the ``time`` module runtime.track paces --realtime with: ``perf_counter``
    reads a clock that only moves when the test moves it; everything else is the real module."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self):
        return self.now

    def __getattr__(self, name):
        import time

        return getattr(time, name)


# Tracker.update costs 2.52 frame periods of the fake clock, frames arrive at once and
# everything else costs nothing. The clock starts at 0 when frame 0 is initialised; a frame
# i >= 1 is dropped when the clock has passed (i + 1) periods (its successor is due), else
# tracked: frame 1 at 0 (tracked, clock 2.52), 2 at 2.52 <= 3 (tracked, 5.04), 3 at 5.04 > 4
# and 4 at 5.04 > 5 (dropped), 5 at 5.04 <= 6 (tracked, 7.56), 6 (dropped), 7 (tracked, 10.08),
# 8 and 9 (dropped), 10 (tracked), ... No frame is within 0.04 periods of its deadline.
SLOW_DROPS = [3, 4, 6, 8, 9, 11, 13, 14, 16, 18, 19, 21, 23, 24, 26, 28, 29, 31, 33, 34, 36, 38, 39]


@pytest.mark.parametrize("periods, expected", [(2.52, SLOW_DROPS), (0.48, [])], ids=["slower", "faster"])
def test_realtime_drops_and_counts_frames_and_keeps_rows_aligned(fast_video, tiny_model, tmp_path,
                                                                 monkeypatch, periods, expected):
    from runtime.tracker import Tracker

    clock = _FakeClock()
    monkeypatch.setattr(track, "time", clock)
    updated = []
    update = Tracker.update

    def timed_update(self, image, *a, **kw):
        r = update(self, image, *a, **kw)
        updated.append(clock.now)
        clock.now += periods / FAST_FPS
        return r

    monkeypatch.setattr(Tracker, "update", timed_update)
    path, box = fast_video
    init = ",".join(f"{v:.1f}" for v in box)
    code, out, err = _run(["--video", path, "--init", init, "--realtime", "--model", tiny_model,
                           "--out", tmp_path / "r.txt", "--jsonl", tmp_path / "r.jsonl", "--quiet"])
    assert code == 0, err
    rows = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert [r["frame"] for r in rows] == list(range(40))  # one row per frame, dropped or not
    assert [r["frame"] for r in rows if r.get("dropped")] == expected
    assert len(updated) == 39 - len(expected)  # a dropped frame is not tracked
    for r in rows:
        if r.get("dropped"):
            assert r["box"] == rows[r["frame"] - 1]["box"] and r["ms"] == 0  # keeps the last box
    assert f"dropped {len(expected)}" in out.strip().splitlines()[-1]
    lines, boxes = _boxes(tmp_path / "r.txt")
    assert len(lines) == 40
    np.testing.assert_allclose(boxes, [r["box"] for r in rows], atol=0.011)  # --out row i is frame i


class _FakeCamera:
    """A live source on the fake clock: frame k is produced at k * ``period`` s; a read
    returns the newest produced frame (a one-frame buffer: older ones are lost unindexed, as
    a device discards them) or waits (moves the clock) for the next one. Reports ``fps``."""

    live = True

    def __init__(self, clock, images, period, fps, init_box):
        from runtime.sources import parse_box

        self.clock, self.images, self.period, self.fps = clock, images, period, fps
        self.init_box, self.warnings, self.name = parse_box(init_box), [], "camera:0"

    def __iter__(self):
        from runtime.sources import Frame

        k = index = 0
        while k < len(self.images):
            newest = int(self.clock.now / self.period + 1e-9)
            if newest < k:
                self.clock.now = k * self.period  # wait for it
            else:
                k = newest
            yield Frame(index=index, image=self.images[k])
            index, k = index + 1, k + 1

    def close(self):
        pass


# Reported 30 fps (P = 1/30 s). "slow device": it really delivers 15 fps and tracking costs
# 1.2 P, faster than the frames come: nothing may be dropped (pacing by index dropped every
# frame from the 2nd on). "stall": 30 fps, tracking 0.4 P but frame 10's update takes 10 P;
# the device meanwhile discards frames 11-19, the stale frame 20 read next is dropped and
# tracking goes on (pacing by index dropped every frame after the stall).
@pytest.mark.parametrize("actual, cost, stall_at, expected",
                         [(2, 1.2, None, []), (1, 0.4, 10, [11])], ids=["slow device", "stall"])
def test_realtime_live_source_paces_by_arrival(otb, tiny_model, tmp_path, monkeypatch, actual, cost, stall_at,
                                               expected):
    from runtime import sources
    from runtime.tracker import Tracker

    P = 1 / 30
    clock = _FakeClock()
    monkeypatch.setattr(track, "time", clock)
    seq = make_sequence(n_frames=40, size=(320, 240), seed=1)
    images = [f.image for f in seq]
    monkeypatch.setattr(sources, "CameraSource",
                        lambda target, init_box, **kw: _FakeCamera(clock, images, actual * P, 30.0, init_box))
    update = Tracker.update

    def timed_update(self, image, *a, **kw):
        r = update(self, image, *a, **kw)
        clock.now += (10 if self.frame == stall_at else cost) * P
        return r

    monkeypatch.setattr(Tracker, "update", timed_update)
    init = ",".join(f"{v:.1f}" for v in seq.init_box)
    code, out, err = _run(["--camera", "0", "--init", init, "--realtime", "--model", tiny_model,
                           "--jsonl", tmp_path / "r.jsonl", "--quiet"])
    assert code == 0, err
    rows = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert [r["frame"] for r in rows] == list(range(len(rows)))
    assert [r["frame"] for r in rows if r.get("dropped")] == expected
    assert f"dropped {len(expected)}" in out.strip().splitlines()[-1]


def _video_frames(path):
    import cv2

    cap = cv2.VideoCapture(str(path))
    n, fps, sizes = 0, cap.get(cv2.CAP_PROP_FPS), set()
    while True:
        ok, img = cap.read()
        if not ok:
            break
        n += 1
        sizes.add(img.shape[:2])
    cap.release()
    return n, fps, sizes


def test_save_video_keeps_the_source_frame_rate(fast_video, tiny_model, tmp_path):
    """A 120 fps input saved at a fixed 30 fps plays 4x slow and drifts from any timestamps."""
    path, box = fast_video
    video = tmp_path / "t.mp4"
    code, out, err = _run(["--video", path, "--init", ",".join(f"{v:.1f}" for v in box), "--model", tiny_model,
                           "--max-frames", 5, "--save-video", video, "--quiet"])
    assert code == 0, err
    n, fps, _ = _video_frames(video)
    assert n == 5 and fps == pytest.approx(FAST_FPS, abs=0.5)


def test_save_video_has_one_picture_per_frame(otb, tiny_model, tmp_path):
    """A frame of another size and an unreadable frame still get their picture: OpenCV's writer
    dropped them silently, so picture i no longer showed frame i."""
    import cv2

    seq = shutil.copytree(otb, tmp_path / "seq")
    frames = sorted(os.listdir(os.path.join(seq, "img")))
    img = cv2.imread(os.path.join(seq, "img", frames[4]))
    cv2.imwrite(os.path.join(seq, "img", frames[4]), cv2.resize(img, (160, 120)))
    with open(os.path.join(seq, "img", frames[7]), "wb") as f:
        f.write(b"not an image")
    video = tmp_path / "t.mp4"
    code, out, err = _run(["--sequence", seq, "--model", tiny_model, "--save-video", video,
                           "--out", tmp_path / "t.txt", "--quiet"])
    assert code == 0, err
    n, _, sizes = _video_frames(video)
    assert n == N_FRAMES == len((tmp_path / "t.txt").read_text().splitlines())
    assert sizes == {(240, 320)}


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_plot_on_a_full_disk_is_one_error_line(otb, tiny_model, tmp_path, capsys):
    code = track.main([str(a) for a in ["--sequence", otb, "--model", tiny_model, "--max-frames", 3,
                                        "--out", tmp_path / "r.txt", "--plot", "/dev/full", "--quiet"]])
    expect_one_error_line(capsys, code, "--plot", "/dev/full", "No space left")
    assert len((tmp_path / "r.txt").read_text().splitlines()) == 3


def test_plot_writes_score_png(otb, tiny_model, tmp_path):
    code, _, _ = _run(["--sequence", otb, "--model", tiny_model, "--plot", tmp_path / "score.png",
                       "--max-frames", 6, "--quiet"])
    assert code == 0
    assert (tmp_path / "score.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# -- bad input found in review: each a one-line error (or a warning) and nothing lost ------------

@pytest.mark.parametrize("device", ["cuda:x", "tpu", "gpu:-1"])
def test_malformed_device_is_a_usage_error(otb, device, capsys):
    with pytest.raises(SystemExit) as e:
        track.main(["--sequence", str(otb), "--device", device])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert device in err and "cuda:N" in err and "Traceback" not in err


def test_parse_device_normalises():
    from runtime.devices import parse_device

    assert [parse_device(d) for d in ("cpu", "cpu:0", "CUDA", "cuda:1", "gpu", "gpu:2")] == \
        ["cpu", "cpu", "cuda:0", "cuda:1", "cuda:0", "cuda:2"]


def test_model_config_missing_a_key(otb, tiny_model, tmp_path, capsys):
    from runtime.model import load_model, save_model

    m = load_model(tiny_model)
    config = {k: v for k, v in m.config.items() if k != "buckets"}
    bad = save_model(tmp_path / "model", config, m.params)  # hashes match: only the content is wrong
    code = track.main(["--sequence", str(otb), "--model", str(bad)])
    _error(code, capsys.readouterr().err, "config.json", "'buckets'", "retrain")


@pytest.mark.parametrize("flags", [("--out", "--jsonl"), ("--out", "--plot")])
def test_two_outputs_on_one_file_refused(otb, tiny_model, tmp_path, capsys, flags):
    same = tmp_path / "same.png"  # (a --plot is a PNG)
    code = track.main(["--sequence", str(otb), "--model", str(tiny_model), flags[0], str(same), flags[1], str(same)])
    _error(code, capsys.readouterr().err, flags[0], flags[1], "own file")
    assert not same.exists()


def test_output_over_an_input_file_refused(otb, tiny_model, tmp_path, capsys):
    seq = tmp_path / "seq"
    shutil.copytree(otb, seq)
    gt = seq / "groundtruth_rect.txt"
    before = gt.read_bytes()
    code = track.main(["--sequence", str(seq), "--model", str(tiny_model), "--out", str(gt)])
    _error(code, capsys.readouterr().err, "input files")
    assert gt.read_bytes() == before
    frame = seq / "img" / "0003.png"
    code = track.main(["--sequence", str(seq), "--model", str(tiny_model), "--jsonl", str(frame)])
    _error(code, capsys.readouterr().err, "--jsonl", "0003.png")


def test_plot_needs_a_png_name(otb, tiny_model, tmp_path, capsys):
    code = track.main(["--sequence", str(otb), "--model", str(tiny_model), "--plot", str(tmp_path / "p.txt")])
    _error(code, capsys.readouterr().err, "--plot", "PNG image", ".png")
    assert not (tmp_path / "p.txt").exists()


def test_save_video_needs_a_video_extension(otb, tiny_model, tmp_path, capsys):
    code = track.main(["--sequence", str(otb), "--model", str(tiny_model), "--save-video", str(tmp_path / "v.txt")])
    _error(code, capsys.readouterr().err, "--save-video", ".mp4")


def test_frame_of_another_size_is_skipped(otb, tiny_model, tmp_path, caplog):
    import cv2

    seq = tmp_path / "seq"
    shutil.copytree(otb, seq)
    cv2.imwrite(str(seq / "img" / "0006.png"), np.zeros((40, 100, 3), np.uint8))
    out = tmp_path / "res.txt"
    with caplog.at_level("WARNING"):
        code, stdout, err = _run(["--sequence", seq, "--model", tiny_model, "--out", out, "--quiet"])
    assert code == 0, err
    lines, boxes = _boxes(out)
    assert len(lines) == N_FRAMES and lines[5] == lines[4]
    assert "100x40" in caplog.text and "skipped 1" in stdout
    assert boxes[6:, 2:].min() > 4  # tracking goes on at the sequence's size


def test_tracker_refuses_a_resized_frame(tiny_model):
    from runtime.errors import TrackerInputError
    from runtime.tracker import Tracker

    seq = make_sequence(n_frames=2, size=(160, 120), seed=2)
    t = Tracker(tiny_model, seed=0)
    f0 = seq.read_frame(0)
    t.init(f0.image, f0.gt)
    with pytest.raises(TrackerInputError, match="160x120"):
        t.update(np.zeros((60, 80, 3), np.uint8))


def test_unreadable_frames_before_the_start_are_named(otb, tiny_model, tmp_path, capsys):
    seq = tmp_path / "seq"
    shutil.copytree(otb, seq)
    for p in (seq / "img").iterdir():
        p.write_bytes(b"garbage")
    code = track.main(["--sequence", str(seq), "--model", str(tiny_model), "--quiet"])
    err = capsys.readouterr().err
    _error(code, err, "could be read", "0001.png")
    assert "--init" not in err  # an initial box cannot help when nothing decodes


def test_malformed_groundtruth_with_init_tracks_without_it(otb, tiny_model, tmp_path, caplog):
    seq = tmp_path / "seq"
    shutil.copytree(otb, seq)
    gt = seq / "groundtruth_rect.txt"
    rows = gt.read_text().splitlines()
    first = rows[0]
    rows[3] = "oops"
    gt.write_text("\n".join(rows) + "\n")
    out = tmp_path / "res.txt"
    code, stdout, err = _run(["--sequence", seq, "--model", tiny_model, "--out", out, "--quiet"])
    assert code == 2 and "groundtruth_rect.txt:4" in err and "--init" in err
    with caplog.at_level("WARNING"):
        code, stdout, err = _run(["--sequence", seq, "--model", tiny_model, "--out", out, "--quiet",
                                  "--init", first])
    assert code == 0, err
    assert len(out.read_text().splitlines()) == N_FRAMES
    assert "without ground truth" in caplog.text and "AUC" not in stdout


def test_artifacts_with_the_mxnet_backend_refused(otb, tiny_model, tmp_path, capsys):
    code = track.main(["--sequence", str(otb), "--model", str(tiny_model), "--artifacts", str(tmp_path)])
    _error(code, capsys.readouterr().err, "--artifacts", "mxnet")


def test_one_frame_summary_says_n_a(otb, tiny_model):
    code, stdout, err = _run(["--sequence", otb, "--model", tiny_model, "--max-frames", 1, "--quiet"])
    assert code == 0, err
    assert "median n/a" in stdout and "0.0 ms" not in stdout


def test_a_dataset_root_names_its_sequences(otb, tmp_path):
    """--sequence data/OTB (the dataset, not one sequence): the error names the sequences it
    holds and the commands that take them, not the generic image-glob hint."""
    root = tmp_path / "OTB"
    shutil.copytree(otb, root / "synth")
    code, out, err = _run(["--sequence", root])
    assert code == 2 and out == "" and err.count("\n") == 1
    assert err.startswith(f"error: {root} is not a sequence but holds 1 sequence folders (synth); "
                          f"give one ({root / 'synth'})")
    assert f"({root / '*'}) where a command takes several" in err and "*.jpg" not in err


def test_unreachable_stream_is_one_error_line():
    """FFmpeg's own log line (connection refused) no longer precedes the tool's one line."""
    import subprocess
    import sys

    env = child_env({k: v for k, v in os.environ.items() if not k.startswith("OPENCV_")})
    r = subprocess.run([sys.executable, "-m", "runtime.track", "--camera", "rtsp://127.0.0.1:9/stream",
                        "--init", "1,2,3,4"], capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 2 and r.stderr.splitlines() == [
        "error: cannot open stream rtsp://127.0.0.1:9/stream; check that the device exists / the URL is reachable"]


def test_out_to_stdout_holds_only_the_rows(otb, tiny_model, tmp_path, full_run):
    """``--out -``: stdout holds exactly the rows --out writes to a file (same seed, same
    boxes), so ``| tee`` or a toolkit can read them; the per-frame log and the summary move
    to stderr."""
    code, stdout, err = _run(["--sequence", otb, "--model", tiny_model, "--out", "-", "--verbose"])
    assert code == 0, err
    assert stdout.splitlines() == full_run["out"].read_text().splitlines()
    assert "frame 3 (4/" in err and f"frames {N_FRAMES} " in err.strip().splitlines()[-1]


def test_jsonl_to_stdout_beside_a_file_out(otb, tiny_model, tmp_path, full_run):
    out = tmp_path / "res.txt"
    code, stdout, err = _run(["--sequence", otb, "--model", tiny_model, "--jsonl", "-", "--out", out, "--quiet"])
    assert code == 0, err
    assert [json.loads(line)["frame"] for line in stdout.splitlines()] == list(range(N_FRAMES))
    boxes = np.array([json.loads(line)["box"] for line in stdout.splitlines()], dtype=float)
    np.testing.assert_allclose(boxes, _boxes(full_run["out"])[1], atol=0.006)
    assert out.read_text() == full_run["out"].read_text() and f"frames {N_FRAMES} " in err


@pytest.mark.parametrize("flags, words", [
    (["--out", "-", "--jsonl", "-"], ["--out and --jsonl", "stdout"]),
    (["--save-video", "-"], ["--save-video -", "only --out and --jsonl"]),
    (["--plot", "-"], ["--plot -", "./-"]),
])
def test_stdout_for_the_wrong_outputs_refused(otb, tiny_model, capsys, flags, words):
    code = track.main(["--sequence", str(otb), "--model", str(tiny_model), *flags])
    expect_one_error_line(capsys, code, *words)


def test_signal_while_stdout_reader_goes_away_is_an_interruption(otb, tiny_model, tmp_path, monkeypatch, capsys):
    """Ctrl-C on ``--out - | tee`` reaches tee too, so the frame in hand finds stdout closed:
    that is the interruption (exit 130, the summary on stderr), not an error (it was exit 2)."""
    import signal

    from runtime import outputs

    calls = {"n": 0}
    real = outputs.StdoutLines.write

    def write(self, line):
        calls["n"] += 1
        if calls["n"] == 4:
            os.kill(os.getpid(), signal.SIGINT)  # the tracker's handler only records it
            raise outputs.StdoutClosed("stdout was closed")
        return real(self, line)

    monkeypatch.setattr(outputs.StdoutLines, "write", write)
    jl = tmp_path / "r.jsonl"
    code = track.main([str(a) for a in ["--sequence", otb, "--model", tiny_model, "--out", "-", "--jsonl", jl,
                                        "--quiet"]])
    out, err = capsys.readouterr()
    assert code == 130, err
    assert len(out.splitlines()) == 3 and "error:" not in err
    assert "frames 4 " in err and "interrupted (SIGINT) after 4 frames" in err and "stdout was closed at frame 3" in err
    assert [json.loads(line)["frame"] for line in jl.read_text().splitlines()] == [0, 1, 2, 3]


def test_no_progress_bar_beside_rows_on_stdout(otb, tiny_model, monkeypatch, capsys):
    """``--out -`` on a terminal: the rows show the progress; a bar on stderr ran into them."""
    import sys

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    code = track.main(["--sequence", str(otb), "--model", str(tiny_model), "--out", "-", "--max-frames", "5"])
    out, err = capsys.readouterr()
    assert code == 0 and len(out.splitlines()) == 5
    assert "it/s" not in err and "frame/s" not in err and "%|" not in err, err


# -- found in a video user's walk -----------------------------------------------------------------

def _video(path, n=8, size=(160, 120)):
    import cv2

    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, size)
    for i in range(n):
        img = np.full((size[1], size[0], 3), 60, np.uint8)
        img[40:80, 40 + i:80 + i] = (0, 200, 255)
        w.write(img)
    w.release()
    return path


def test_a_run_refused_at_its_first_frame_keeps_earlier_outputs(tiny_model, tmp_path, capsys, monkeypatch):
    """A box off a video's frames is refused before the model loads; an unreadable first
    image after it. Either way the files of an earlier run are left as they were (they were
    truncated when the outputs opened, before the first frame was checked)."""
    video = _video(tmp_path / "v.avi")
    out, jsonl = tmp_path / "res.txt", tmp_path / "res.jsonl"
    out.write_text("earlier run\n")
    jsonl.write_text('{"frame": 0}\n')
    from runtime import tracker as tracker_mod

    def no_model(*a, **k):
        raise AssertionError("the model was loaded before the box was checked")

    with monkeypatch.context() as m:
        m.setattr(tracker_mod.Tracker, "__init__", no_model)
        expect_one_error_line(capsys, track.main(["--video", str(video), "--init", "400,100,40,50", "--out", str(out),
                                                   "--jsonl", str(jsonl), "--model", str(tiny_model)]),
                              "lies outside the 160x120 image")
    frames = tmp_path / "frames"
    frames.mkdir()
    (frames / "0001.png").write_bytes(b"not a picture")
    import cv2

    cv2.imwrite(str(frames / "0002.png"), np.zeros((120, 160, 3), np.uint8))
    expect_one_error_line(capsys, track.main(["--images", str(frames / "*.png"), "--init", "40,40,30,30", "--out",
                                              str(out), "--jsonl", str(jsonl), "--model", str(tiny_model)]),
                          "the first frame cannot be read")
    assert out.read_text() == "earlier run\n" and jsonl.read_text() == '{"frame": 0}\n'


def test_an_output_hard_linked_to_the_input_is_refused(tiny_model, tmp_path, capsys):
    """A hard link has a path of its own: the output was written over the input video."""
    video = _video(tmp_path / "v.avi")
    before = video.read_bytes()
    os.link(video, tmp_path / "copy.avi")
    expect_one_error_line(capsys, track.main(["--video", str(video), "--init", "40,40,30,30", "--save-video",
                                              str(tmp_path / "copy.avi"), "--model", str(tiny_model)]),
                          "--save-video", "is a hard link to the input file", str(video))
    os.link(tmp_path / "copy.avi", tmp_path / "third.txt")
    expect_one_error_line(capsys, track.main(["--video", str(video), "--init", "40,40,30,30", "--out",
                                              str(tmp_path / "third.txt"), "--jsonl", str(tmp_path / "copy.avi"),
                                              "--model", str(tiny_model)]), "name one file (hard links)")
    assert video.read_bytes() == before
    (tmp_path / "empty.mp4").write_bytes(b"")
    expect_one_error_line(capsys, track.main(["--video", str(tmp_path / "empty.mp4"), "--init", "1,1,5,5"]),
                          "is empty (0 bytes)")


def test_streams_stop_waiting_for_a_stalled_read(monkeypatch):
    """A stream URL opens with a read timeout (5 s): FFmpeg's own is 30 s, during which no
    signal can stop the run (docker stop kills at 10 s)."""
    import cv2

    from runtime import sources

    seen = []

    class Capture:
        def __init__(self, *args):
            seen.append(args)

        def isOpened(self):
            return True

        def get(self, prop):
            return 0.0

    monkeypatch.setattr(sources.cv2, "VideoCapture", Capture)
    sources.CameraSource("http://127.0.0.1:9/x.mjpg", init_box="1,1,4,4")
    params = list(seen[0][2])
    assert params[params.index(cv2.CAP_PROP_READ_TIMEOUT_MSEC) + 1] == 5000


def test_opencv_log_lines_do_not_precede_the_error_line():
    """OpenCV reads OPENCV_LOG_LEVEL when it loads, which the tool's imports did before main()
    set it: a camera index that does not exist printed OpenCV's WARN / ERROR lines first."""
    import subprocess
    import sys

    env = child_env({k: v for k, v in os.environ.items() if not k.startswith("OPENCV_")})
    r = subprocess.run([sys.executable, "-m", "runtime.track", "--camera", "97", "--init", "1,2,3,4"],
                       capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 2 and r.stderr.splitlines() == [
        "error: cannot open camera index 97; check that the device exists / the URL is reachable"], r.stderr


# -- found in a hostile-input walk ------------------------------------------------------------------

def test_an_output_inside_the_model_folder_is_refused(otb, tiny_model, tmp_path, capsys):
    """--out over the model's manifest.json (or --jsonl over its weights) tracked, then every
    later run with the model failed its check: the model folder is an input too."""
    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    before = {p.name: p.read_bytes() for p in model.iterdir()}
    for flag, name in (("--out", "manifest.json"), ("--jsonl", "weights.params"), ("--out", "new.txt")):
        expect_one_error_line(capsys, track.main(["--sequence", str(otb), "--model", str(model), flag,
                                                  str(model / name), "--max-frames", "2"]),
                              flag, "is inside the model folder", "write the output somewhere else")
    # a hard link to one of its files, outside it
    os.link(model / "manifest.json", tmp_path / "res.txt")
    expect_one_error_line(capsys, track.main(["--sequence", str(otb), "--model", str(model), "--out",
                                              str(tmp_path / "res.txt"), "--max-frames", "2"]),
                          "is a hard link to", "manifest.json, a file of the model folder")
    # --model "" is the current folder, as the tracker loads it
    cwd = os.getcwd()
    try:
        os.chdir(model)
        expect_one_error_line(capsys, track.main(["--sequence", str(otb), "--model", "", "--out", "res.txt",
                                                  "--max-frames", "2"]), "is inside the model folder")
    finally:
        os.chdir(cwd)
    assert {p.name: p.read_bytes() for p in model.iterdir()} == before


def test_a_run_that_tracks_nothing_keeps_earlier_outputs(otb, tiny_model, tmp_path, capsys):
    """Rows of the frames before tracking starts (NaN) wait until it does: a run that never
    starts (no frame readable, no usable ground-truth box) leaves an earlier run's files."""
    out, jsonl = tmp_path / "res.txt", tmp_path / "res.jsonl"
    out.write_text("earlier run\n")
    jsonl.write_text('{"frame": 0}\n')
    unreadable = tmp_path / "unreadable"
    shutil.copytree(otb, unreadable)
    for f in (unreadable / "img").iterdir():
        f.write_bytes(b"")
    expect_one_error_line(capsys, track.main(["--sequence", str(unreadable), "--model", str(tiny_model), "--out",
                                              str(out), "--jsonl", str(jsonl), "--max-frames", "3"]),
                          "nothing tracked")
    absent = tmp_path / "absent"
    shutil.copytree(otb, absent)
    gt = absent / "groundtruth_rect.txt"
    gt.write_text("NaN,NaN,NaN,NaN\n" + "".join(gt.read_text().splitlines(True)[1:]))
    expect_one_error_line(capsys, track.main(["--sequence", str(absent), "--model", str(tiny_model), "--out",
                                              str(out), "--jsonl", str(jsonl), "--max-frames", "1"]),
                          "nothing tracked")
    assert out.read_text() == "earlier run\n" and jsonl.read_text() == '{"frame": 0}\n'
    # once tracking starts, the waiting rows come first, in frame order
    code, _, err = _run(["--sequence", absent, "--model", tiny_model, "--out", out, "--max-frames", "3", "--quiet"])
    assert code == 0, err
    lines, boxes = _boxes(out)
    assert len(lines) == 3 and np.isnan(boxes[0]).all() and np.isfinite(boxes[1:]).all()


def test_frames_of_another_size_after_the_first_are_one_warning_and_an_error(otb, tiny_model, tmp_path, capsys,
                                                                             caplog):
    """Every frame after the first of another size: one warning, a count at the end, and an
    error (exit 2), not a results file with the first box on every row and exit 0."""
    import cv2

    seq = tmp_path / "seq"
    shutil.copytree(otb, seq)
    for f in sorted((seq / "img").iterdir())[1:]:
        cv2.imwrite(str(f), np.zeros((120, 160, 3), np.uint8))
    out = tmp_path / "res.txt"
    with caplog.at_level("WARNING"):
        code = track.main(["--sequence", str(seq), "--model", str(tiny_model), "--out", str(out), "--max-frames", "6",
                           "--quiet"])
    warned = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(warned) == 2, warned  # the first one, then the count
    assert warned[1] == "5 frames skipped for a size other than 320x240: 1-5"
    expect_one_error_line(capsys, code, "only the first frame was tracked", "give frames of one size")
    assert len(out.read_text().splitlines()) == 6


def test_frames_of_another_size_here_and_there_list_five_ranges(otb, tiny_model, tmp_path, caplog):
    """Every other frame of another size: the count names five ranges and how many more,
    and the frames between them are tracked (no error)."""
    import cv2

    seq = tmp_path / "seq"
    shutil.copytree(otb, seq)
    for f in sorted((seq / "img").iterdir())[1:15:2]:  # frames 1, 3, ..., 13
        cv2.imwrite(str(f), np.zeros((120, 160, 3), np.uint8))
    with caplog.at_level("WARNING"):
        code, _, err = _run(["--sequence", seq, "--model", tiny_model, "--out", tmp_path / "r.txt", "--max-frames", "15",
                             "--quiet"])
    assert code == 0, err
    assert "7 frames skipped for a size other than 320x240: 1, 3, 5, 7, 9 and 2 more ranges" in caplog.text


def test_an_interrupted_run_is_not_refused_for_frames_of_another_size(otb, tiny_model, tmp_path, monkeypatch, capsys):
    """A signal after frame 1 (of another size): the run ends as interrupted (130, its summary),
    not with the error for a run where nothing after the first frame could be tracked."""
    import signal

    import cv2

    from runtime import outputs

    seq = tmp_path / "seq"
    shutil.copytree(otb, seq)
    for f in sorted((seq / "img").iterdir())[1:]:
        cv2.imwrite(str(f), np.zeros((120, 160, 3), np.uint8))
    real, calls = outputs.LineWriter.write, {"n": 0}

    def write(self, line):
        calls["n"] += 1
        if calls["n"] == 2:  # frame 1's row
            os.kill(os.getpid(), signal.SIGINT)  # the tracker's handler only records it
        return real(self, line)

    monkeypatch.setattr(outputs.LineWriter, "write", write)
    code = track.main([str(a) for a in ["--sequence", seq, "--model", tiny_model, "--out", tmp_path / "r.txt",
                                        "--quiet"]])
    err = capsys.readouterr().err
    assert code == 130 and "interrupted (SIGINT) after 2 frames" in err and "error:" not in err, err


def test_an_unquoted_images_glob_is_named_in_one_short_line(tmp_path, capsys):
    """The shell expands an unquoted --images glob into every file: argparse listed them all
    as unrecognized arguments, on one line as long as the folder."""
    import cv2

    for i in range(12):
        cv2.imwrite(str(tmp_path / f"{i:04d}.png"), np.zeros((8, 8, 3), np.uint8))
    files = sorted(str(p) for p in tmp_path.glob("*.png"))
    with pytest.raises(SystemExit) as e:
        track.main(["--images", *files, "--init", "1,1,5,5"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and "and 8 more" in err and files[-1] not in err, err
    assert "quote the --images glob" in err


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_stdout_on_a_full_disk_says_so(otb, tiny_model, tmp_path):
    """Rows to stdout redirected to a full disk: the error said the stdout's reader had closed it."""
    import subprocess
    import sys

    with open("/dev/full", "w") as full:
        r = subprocess.run([sys.executable, "-m", "runtime.track", "--sequence", str(otb), "--model", str(tiny_model),
                            "--out", "-", "--max-frames", "3", "--quiet"], stdout=full, stderr=subprocess.PIPE,
                           text=True, timeout=300, env=child_env())
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert lines[0].startswith("error: stdout could not be written (No space left on device) at frame 0"), r.stderr
