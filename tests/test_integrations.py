"""Toolkit integrations: the GOT-10k toolkit adapter (driven through its experiments on
synthetic sequences laid out in the toolkit's folder formats) and the VOT / TraX entry
(its loop against a stub handle, and the real protocol through vot-trax when installed)."""
import collections
import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from runtime.synthetic import make_sequence, write_otb

ROOT = Path(__file__).resolve().parents[1]
N_FRAMES = 20
SIZE = (160, 120)


def _seq(seed, n=N_FRAMES):
    return make_sequence(n_frames=n, size=SIZE, seed=seed, distractors=0)


# --------------------------------------------------------------------------- GOT-10k toolkit


@pytest.fixture(scope="module")
def got10k_tracker(tiny_model):
    pytest.importorskip("got10k")
    from runtime.integrations.got10k import GOT10kTracker

    return GOT10kTracker(model=tiny_model, seed=0, name="mdtrack_test")


@pytest.fixture()
def no_download(monkeypatch):
    """Any download attempt by the toolkit fails the test instead of reaching the network."""
    import got10k.datasets.otb as otb_mod

    def refuse(*args, **kwargs):
        raise AssertionError(f"the toolkit tried to download {args}")

    monkeypatch.setattr(otb_mod, "download", refuse)


@pytest.fixture(scope="module")
def otb_root(tmp_path_factory):
    """An OTB2013 root: every sequence folder exists (so nothing is downloaded), two hold
    synthetic sequences; the empty ones have no groundtruth and the toolkit skips them."""
    pytest.importorskip("got10k")
    from got10k.datasets import OTB

    root = tmp_path_factory.mktemp("otb")
    names = OTB._OTB__version_dict[2013]
    for name in names:
        (root / name).mkdir()
    for seed, name in enumerate(["Basketball", "Bolt"], start=1):
        write_otb(_seq(seed), root / name, ext=".jpg")
    return root


def _write_got10k(root: Path, subset: str, names_seeds) -> Path:
    """GOT-10k layout: <subset>/list.txt and <seq>/00000001.jpg, groundtruth.txt, meta_info.ini, labels."""
    sub = root / subset
    sub.mkdir(parents=True)
    for name, seed in names_seeds:
        seq = _seq(seed)
        d = sub / name
        d.mkdir()
        for f in seq:
            cv2.imwrite(str(d / f"{f.index + 1:08d}.jpg"), f.image)
        np.savetxt(d / "groundtruth.txt", seq.groundtruth, fmt="%.4f", delimiter=",")
        (d / "meta_info.ini").write_text(
            "[METAINFO]\n"
            f"url: synthetic\nbegin_frame: 0\nend_frame: {N_FRAMES - 1}\n"
            "object_class: synthetic\nmotion_class: synthetic\nmajor_class: synthetic\nroot_class: synthetic\n"
            f"motion_adverb: smoothly\nresolution: ({SIZE[0]}, {SIZE[1]})\n")
        np.savetxt(d / "cover.label", np.full(N_FRAMES, 8), fmt="%d")
        np.savetxt(d / "absence.label", np.zeros(N_FRAMES), fmt="%d")
        np.savetxt(d / "cut_by_image.label", np.zeros(N_FRAMES), fmt="%d")
    (sub / "list.txt").write_text("\n".join(n for n, _ in names_seeds) + "\n")
    return root


def test_to_bgr_converts_pil_rgb_and_grey():
    pytest.importorskip("got10k")
    from PIL import Image

    from runtime.integrations.got10k import to_bgr

    rgb = np.zeros((4, 5, 3), np.uint8)
    rgb[..., 0] = 200  # red
    out = to_bgr(Image.fromarray(rgb))
    assert out.shape == (4, 5, 3) and out.dtype == np.uint8 and out.flags.c_contiguous
    assert (out[..., 2] == 200).all() and (out[..., :2] == 0).all()
    grey = to_bgr(Image.fromarray(np.full((4, 5), 7, np.uint8)))  # mode "L" -> RGB -> BGR
    assert grey.shape == (4, 5, 3) and (grey == 7).all()


def test_got10k_adapter_matches_runtime_tracker(got10k_tracker, tiny_model, tmp_path):
    """PIL RGB in, [x, y, w, h] out, and the same boxes as runtime.Tracker on the BGR frames."""
    from runtime.tracker import Tracker

    seq = _seq(5, n=6)
    files = []
    for f in seq:
        p = tmp_path / f"{f.index:04d}.jpg"
        cv2.imwrite(str(p), f.image)
        files.append(str(p))
    boxes, times = got10k_tracker.track(files, seq.groundtruth[0])
    assert boxes.shape == (6, 4) and np.isfinite(boxes).all() and (boxes[1:, 2:] > 0).all()
    assert times.shape == (6,) and (times > 0).all()
    ref = Tracker(tiny_model, seed=0)
    ref.init(cv2.imread(files[0]), seq.groundtruth[0])
    expected = [ref.update(cv2.imread(p)).box for p in files[1:]]
    np.testing.assert_allclose(boxes[1:], np.array(expected), atol=1e-4)


def test_got10k_adapter_keeps_16_bit_frames(got10k_tracker, tiny_model, tmp_path):
    """A 16-bit PNG sequence (thermal data) is tracked on its real pixels: the toolkit's own
    loop converts every PIL image to RGB, which clips 16-bit values to white."""
    from PIL import Image

    from runtime.imageops import to_bgr8
    from runtime.integrations.got10k import to_bgr
    from runtime.sources import read_image
    from runtime.tracker import Tracker

    seq = _seq(6, n=5)
    files = []
    for f in seq:
        p = tmp_path / f"{f.index:04d}.png"
        cv2.imwrite(str(p), cv2.cvtColor(f.image, cv2.COLOR_BGR2GRAY).astype(np.uint16) * 257)
        files.append(str(p))
    pil = Image.open(files[0])
    assert pil.mode in ("I", "I;16")
    for im in (pil, pil.convert("I"), Image.fromarray(read_image(files[0]))):
        np.testing.assert_array_equal(to_bgr8(to_bgr(im)), to_bgr8(read_image(files[0])))
    assert 20 < to_bgr8(to_bgr(pil)).mean() < 235
    # a mode "I" image of 8-bit values (an "L" frame converted) stays 8-bit, not 1/257 of it
    grey = np.tile(np.arange(256, dtype=np.uint8), (4, 1))
    np.testing.assert_array_equal(to_bgr8(to_bgr(Image.fromarray(grey).convert("I"))), to_bgr8(grey))
    boxes, _ = got10k_tracker.track(files, seq.groundtruth[0])
    ref = Tracker(tiny_model, seed=0)
    ref.init(read_image(files[0]), seq.groundtruth[0])
    expected = [ref.update(read_image(p)).box for p in files[1:]]
    np.testing.assert_allclose(boxes[1:], np.array(expected), atol=1e-4)


def test_got10k_adapter_reports_a_bad_box_as_the_runtime_does(got10k_tracker):
    from runtime.errors import TrackerInputError

    image = np.zeros((40, 50, 3), np.uint8)
    for box, shown in (("1,2,3,4", "'1,2,3,4'"), (None, "None")):
        with pytest.raises(TrackerInputError, match="initial box must be 4 finite numbers") as e:
            got10k_tracker.init(image, box)
        assert shown in str(e.value)


def _write_vot(root: Path, name: str, seed: int, n: int = 12) -> Path:
    """GOT-10k toolkit's VOT layout: ROOT/list.txt, ROOT/<seq>/00000001.jpg and an 8-value polygon groundtruth.txt."""
    seq = _seq(seed, n=n)
    d = root / name
    d.mkdir(parents=True)
    for f in seq:
        cv2.imwrite(str(d / f"{f.index + 1:08d}.jpg"), f.image)
    x, y, w, h = seq.groundtruth.T
    np.savetxt(d / "groundtruth.txt", np.stack([x, y, x + w, y, x + w, y + h, x, y + h], axis=1), fmt="%.2f",
               delimiter=",")
    (root / "list.txt").write_text(name + "\n")
    return root


def test_experiment_vot_with_paths_tracks_as_with_images(got10k_tracker, tmp_path):
    """ExperimentVOT(read_image=False) hands init/update file paths, not PIL images: they are
    read, and the records (re-initialisations included) equal those of read_image=True."""
    from got10k.experiments import ExperimentVOT

    root = _write_vot(tmp_path / "vot", "seq", seed=3)
    records = []
    for read_image in (True, False):
        exp = ExperimentVOT(str(root), version=2017, read_image=read_image, experiments=("supervised",),
                            result_dir=str(tmp_path / f"results{int(read_image)}"), report_dir=str(tmp_path / "reports"))
        exp.run(got10k_tracker)
        rec = tmp_path / f"results{int(read_image)}" / "VOT2017" / "mdtrack_test" / "baseline" / "seq" / "seq_001.txt"
        records.append(rec.read_text().splitlines())
    assert len(records[1]) == 12 and records[1][0] == "1"
    assert records[1] == records[0]
    from runtime.errors import SequenceError
    from runtime.integrations.got10k import to_bgr

    with pytest.raises(SequenceError, match="nowhere.jpg"):
        to_bgr(str(tmp_path / "nowhere.jpg"))


def test_experiment_otb_runs_and_reports(got10k_tracker, otb_root, tmp_path, no_download):
    from got10k.experiments import ExperimentOTB

    exp = ExperimentOTB(str(otb_root), version=2013, result_dir=str(tmp_path / "results"),
                        report_dir=str(tmp_path / "reports"))
    assert exp.dataset.seq_names == ["Basketball", "Bolt"]
    exp.run(got10k_tracker)
    for name in exp.dataset.seq_names:
        boxes = np.loadtxt(tmp_path / "results" / "OTB2013" / "mdtrack_test" / f"{name}.txt", delimiter=",")
        assert boxes.shape == (N_FRAMES, 4) and np.isfinite(boxes).all()
    import matplotlib.pyplot as plt

    with plt.rc_context():  # the report changes global font sizes and leaves its figures open
        perf = exp.report([got10k_tracker.name])["mdtrack_test"]
        plt.close("all")
    overall = perf["overall"]
    assert set(perf["seq_wise"]) == {"Basketball", "Bolt"}
    assert 0.0 <= overall["success_score"] <= 1.0 and 0.0 <= overall["precision_score"] <= 1.0
    # a tracker that works keeps most of these short, distractor-free sequences
    assert overall["success_score"] > 0.3, overall["success_score"]
    assert overall["speed_fps"] > 0
    assert (tmp_path / "reports" / "OTB2013" / "mdtrack_test" / "performance.json").is_file()
    assert (tmp_path / "reports" / "OTB2013" / "mdtrack_test" / "success_plots.png").is_file()


def _load_example():
    spec = importlib.util.spec_from_file_location("got10k_eval", ROOT / "examples" / "got10k_eval.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_example_runs_experiment_got10k(tiny_model, tmp_path, capsys):
    """examples/got10k_eval.py drives ExperimentGOT10k (val subset) end to end."""
    pytest.importorskip("got10k")
    root = _write_got10k(tmp_path / "GOT-10k", "val", [("GOT-10k_Val_000001", 7)])
    import matplotlib.pyplot as plt

    example = _load_example()
    with plt.rc_context():
        code = example.main(["--dataset", "got10k", "--root", str(root), "--subset", "val", "--model", str(tiny_model),
                             "--results", str(tmp_path / "results"), "--reports", str(tmp_path / "reports")])
        plt.close("all")
    assert code == 0
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    scores = json.loads(summary)
    assert 0.0 <= scores["ao"] <= 1.0 and 0.0 <= scores["sr"] <= 1.0
    rec = tmp_path / "results" / "GOT-10k" / "mdtrack" / "GOT-10k_Val_000001" / "GOT-10k_Val_000001_001.txt"
    assert np.loadtxt(rec, delimiter=",").shape == (N_FRAMES, 4)
    # deterministic: one repetition, not the toolkit's three
    assert not rec.with_name("GOT-10k_Val_000001_002.txt").exists()


def test_example_refuses_to_download_missing_otb(tmp_path, capsys):
    pytest.importorskip("got10k")
    (tmp_path / "otb" / "Basketball").mkdir(parents=True)
    example = _load_example()
    from runtime.errors import TrackerInputError

    with pytest.raises(TrackerInputError, match="missing"):
        example.make_experiment(example.build_parser().parse_args(["--root", str(tmp_path / "otb"), "--version", "2013"]))
    # through main: one line, exit 2, and the output folders are checked before any of it
    assert example.main(["--root", str(tmp_path / "otb"), "--version", "2013", "--results", str(tmp_path / "r"),
                         "--reports", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "missing" in err and "Traceback" not in err
    f = tmp_path / "afile"
    f.write_text("x")
    assert example.main(["--root", str(tmp_path / "otb"), "--reports", str(f)]) == 2
    assert "--reports" in capsys.readouterr().err


def test_example_without_the_toolkit_is_one_error_line(tmp_path, capsys, monkeypatch):
    """Without the toolkits extra, the adapter's ImportError (which says what to install) is
    one error line and exit 2, not a traceback; --backend offers the runtime's backends."""
    from runtime.backends import BACKENDS

    for name in [m for m in sys.modules if m == "got10k" or m.startswith("got10k.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.delitem(sys.modules, "runtime.integrations.got10k", raising=False)
    monkeypatch.setitem(sys.modules, "got10k", None)  # import got10k... raises ImportError
    example = _load_example()
    code = example.main(["--root", str(tmp_path / "otb"), "--results", str(tmp_path / "r"),
                         "--reports", str(tmp_path / "p")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error:") and len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err and "toolkits" in err, err
    backend = next(a for a in example.build_parser()._actions if a.dest == "backend")
    assert tuple(backend.choices) == tuple(BACKENDS)


# --------------------------------------------------------------------------- VOT / TraX


class StubHandle:
    """The vot helper's interface with frames from a list; records every report."""

    def __init__(self, region, frames):
        self._region = region
        self._frames = list(frames)
        self.reports = []

    def region(self):
        return self._region

    def frame(self):
        return self._frames.pop(0) if self._frames else None

    def report(self, region, confidence=None):
        self.reports.append((region, confidence))


@pytest.fixture(scope="module")
def vot_frames(tmp_path_factory):
    seq = _seq(9, n=8)
    folder = write_otb(seq, tmp_path_factory.mktemp("vot") / "seq", ext=".jpg")
    return seq, sorted(str(p) for p in (folder / "img").glob("*.jpg"))


@pytest.fixture(scope="module")
def vot_tracker(tiny_model):
    from runtime.tracker import Tracker

    return Tracker(tiny_model, seed=0)


def test_vot_loop_reports_each_frame(vot_frames, vot_tracker):
    from runtime.integrations import vot

    seq, files = vot_frames
    handle = StubHandle(vot.Rectangle(*seq.groundtruth[0]), files)
    assert vot.track(handle, vot_tracker) == len(files) - 1
    assert len(handle.reports) == len(files) - 1  # the first frame is answered at the handshake
    for region, confidence in handle.reports:
        assert isinstance(region, vot.Rectangle)
        assert all(isinstance(v, float) and math.isfinite(v) for v in region)
        assert region.width > 0 and region.height > 0
        assert isinstance(confidence, float) and math.isfinite(confidence)


def test_vot_loop_uses_the_given_rectangle_type_and_ends_on_none(vot_frames, vot_tracker):
    import collections

    from runtime.integrations import vot

    seq, files = vot_frames
    HelperRect = collections.namedtuple("Rectangle", ["x", "y", "width", "height"])
    handle = StubHandle(HelperRect(*seq.groundtruth[0]), files[:3] + [None] + files[3:])
    assert vot.track(handle, vot_tracker, rectangle=HelperRect) == 2  # stops at the None frame
    assert all(type(r) is HelperRect for r, _ in handle.reports)
    # no frame at all: nothing reported, the tracker is not initialised
    empty = StubHandle(HelperRect(*seq.groundtruth[0]), [])
    inits = []

    class Spy:
        def init(self, *a):
            inits.append(a)

        def update(self, *a):
            raise AssertionError("update without a frame")

    assert vot.track(empty, Spy()) == 0 and empty.reports == [] and inits == []


def test_vot_loop_keeps_box_on_unreadable_frame(vot_frames, vot_tracker, tmp_path):
    from runtime.integrations import vot

    seq, files = vot_frames
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    handle = StubHandle(vot.Rectangle(*seq.groundtruth[0]), files[:3] + [str(bad)] + files[3:5])
    assert vot.track(handle, vot_tracker) == 5  # 2 frames, the broken one, 2 more
    (before, _), (kept, conf) = handle.reports[1], handle.reports[2]
    assert kept == before and conf == vot.UNREADABLE_CONFIDENCE


def test_vot_loop_keeps_box_on_a_frame_of_another_size(vot_frames, vot_tracker, tmp_path):
    import cv2

    from runtime.integrations import vot

    seq, files = vot_frames
    small = tmp_path / "small.jpg"
    cv2.imwrite(str(small), np.zeros((30, 40, 3), np.uint8))
    handle = StubHandle(vot.Rectangle(*seq.groundtruth[0]), files[:3] + [str(small)] + files[3:5])
    assert vot.track(handle, vot_tracker) == 5  # the session goes on
    (before, _), (kept, conf) = handle.reports[1], handle.reports[2]
    assert kept == before and conf == vot.UNREADABLE_CONFIDENCE


def _fake_trax(monkeypatch, requests):
    """A ``trax`` module whose Server replays ``requests`` and logs wait/status/quit into the returned list."""
    import types

    events = []

    class Rect(collections.namedtuple("Rect", "x y w h")):
        def bounds(self):
            return tuple(self)

    class Img:
        def __init__(self, path):
            self._path = path

        def path(self):
            return self._path

    class Server:
        def __init__(self, *args, **kwargs):
            events.append(("server", kwargs.get("metadata")))

        def wait(self):
            events.append(("wait",))
            return requests.pop(0)

        def status(self, objects):
            events.append(("status", tuple(round(v, 3) for v in objects[0][0].bounds())))

        def quit(self, reason=None):
            events.append(("quit", reason))

    fake = types.ModuleType("trax")
    fake.Region = types.SimpleNamespace(RECTANGLE="rectangle")
    fake.Image = types.SimpleNamespace(PATH="path")
    fake.TraxException = type("TraxException", (Exception,), {})
    fake.Rectangle = types.SimpleNamespace(create=lambda x, y, w, h: Rect(x, y, w, h))
    fake.Server = Server
    monkeypatch.setitem(sys.modules, "trax", fake)
    Request = collections.namedtuple("Request", "type image objects properties")

    def initialize(path, box):
        return Request("initialize", {"color": Img(path)}, [(Rect(*box), {})], {})

    def frame(path):
        return Request("frame", {"color": Img(path)}, None, {})

    return events, initialize, frame, Request("quit", None, None, {})


def test_trax_handle_answers_initialize_after_init_and_takes_a_new_one(monkeypatch):
    """The initialize reply follows tracker.init (the toolkit times the reply: answered first,
    the initialisation was recorded as 0 s and charged to the next frame), and a second
    initialize in the session (VOT re-initialising after a failure) restarts the tracker
    instead of ending the session."""
    from types import SimpleNamespace

    from runtime.integrations import vot

    requests = []
    events, initialize, frame, quit_ = _fake_trax(monkeypatch, requests)
    requests += [initialize("f0", (10, 20, 30, 40)), frame("f1"), initialize("f2", (50, 60, 30, 40)), frame("f3"),
                 quit_]

    class Recorder:
        def init(self, image, box):
            events.append(("init", tuple(box)))
            return SimpleNamespace(box=np.array(box))

        def update(self, image):
            events.append(("update",))
            return SimpleNamespace(box=np.array([1.0, 2.0, 3.0, 4.0]), score=1.5)

    handle = vot.TraxHandle()
    assert vot.track(handle, Recorder(), read=lambda path: np.zeros((100, 100, 3), np.uint8)) == 2
    assert events[0] == ("server", None)  # not a `vot` wrapper: the toolkit keeps the process
    assert events[1:] == [("wait",), ("init", (10, 20, 30, 40)), ("status", (10, 20, 30, 40)),
                          ("wait",), ("update",), ("status", (1, 2, 3, 4)),
                          ("wait",), ("init", (50, 60, 30, 40)), ("status", (50, 60, 30, 40)),
                          ("wait",), ("update",), ("status", (1, 2, 3, 4)),
                          ("wait",)]


def test_vot_entry_tells_the_toolkit_why_it_stops(monkeypatch, vot_frames, tiny_model, capsys):
    """An initial region the tracker refuses ends the session with the reason, which the
    toolkit shows, rather than a bare "server terminated the session"."""
    from runtime.integrations import vot

    seq, files = vot_frames
    requests = []
    events, initialize, _, _ = _fake_trax(monkeypatch, requests)
    requests.append(initialize(files[0], (5000, 5000, 30, 40)))
    monkeypatch.setattr(sys, "stdout", sys.stdout)  # main() points it at stderr
    for k in ("MDTRACK_BACKEND", "MDTRACK_DEVICE", "MDTRACK_ARTIFACTS", "MDTRACK_VOT_HANDLE", "MDTRACK_SEED"):
        monkeypatch.delenv(k, raising=False)
    assert vot.main(["--model", str(tiny_model)]) == 2
    assert events[-1][0] == "quit" and "outside" in events[-1][1]
    assert not any(e[0] == "status" for e in events)  # the refused region is not acknowledged
    assert "error:" in capsys.readouterr().err


def test_open_handle_choices(monkeypatch):
    """builtin -> TraxHandle; helper -> vot.VOT, refusing a `vot` module without VOT (the toolkit package)."""
    import types

    from runtime.integrations import vot

    monkeypatch.setattr(vot, "TraxHandle", lambda fmt: ("trax-handle", fmt))
    assert vot.open_handle("rectangle") == (("trax-handle", "rectangle"), vot.Rectangle)

    helper = types.ModuleType("vot")
    helper.Rectangle = object()
    helper.VOT = lambda fmt: ("helper-handle", fmt)
    monkeypatch.setitem(sys.modules, "vot", helper)
    assert vot.open_handle("rectangle", "helper") == (("helper-handle", "rectangle"), helper.Rectangle)

    monkeypatch.setitem(sys.modules, "vot", types.ModuleType("vot"))  # the toolkit itself
    with pytest.raises(ImportError, match="not the integration helper"):
        vot.open_handle("rectangle", "helper")
    with pytest.raises(ValueError):
        vot.open_handle("rectangle", "other")


def test_vot_help():
    r = subprocess.run([sys.executable, "-m", "runtime.integrations.vot", "--help"], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "MDTRACK_MODEL" in r.stdout


def test_vot_entry_speaks_trax(vot_frames, tiny_model, tmp_path):
    """The real protocol (vot-trax's client, as the VOT toolkit drives it): handshake,
    initialise, one rectangle with a confidence per frame, re-initialise in the same session
    (as after a failure) with the boxes of a fresh tracker, quit."""
    trax = pytest.importorskip("trax")
    from trax.client import Client
    from trax.image import FileImage

    seq, files = vot_frames
    env = dict(os.environ, TRAX="1", MDTRACK_MODEL=str(tiny_model),
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    for k in [k for k in env if k.startswith("MDTRACK_") and k != "MDTRACK_MODEL"]:  # MDTRACK_SEED too
        env.pop(k)
    proc = subprocess.Popen([sys.executable, "-m", "runtime.integrations.vot"], cwd=tmp_path, env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            bufsize=0, close_fds=False)
    messages = []
    try:
        client = Client(stream=(proc.stdin.fileno(), proc.stdout.fileno()), timeout=60, log=messages.append)
        # no `vot` wrapper flag: the toolkit would restart the process (reloading the model) per initialisation
        assert client.get("vot") is None and client.region_formats == ["rectangle"]
        x, y, w, h = (float(v) for v in seq.groundtruth[0])
        objects, _ = client.initialize({"color": FileImage.create(files[0])}, [(trax.Rectangle.create(x, y, w, h), {})], {})
        assert len(objects) == 1
        for path in files[1:]:
            objects, _ = client.frame({"color": FileImage.create(path)}, {}, [])
            assert len(objects) == 1
            region, props = objects[0]
            bx, by, bw, bh = region.bounds()
            assert bw > 0 and bh > 0 and all(math.isfinite(v) for v in (bx, by, bw, bh))
            assert math.isfinite(float(props["confidence"]))
        restart = np.round(seq.groundtruth[2], 4)  # TraX carries a region's numbers with 4 decimals
        objects, _ = client.initialize({"color": FileImage.create(files[2])},
                                       [(trax.Rectangle.create(*restart), {})], {})
        assert len(objects) == 1
        boxes = [client.frame({"color": FileImage.create(p)}, {}, [])[0][0][0].bounds() for p in files[3:6]]
        client.quit()
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        err = proc.stderr.read().decode(errors="replace")
        proc.stdin.close()
        proc.stdout.close()
        proc.stderr.close()
    assert "Traceback" not in err, err
    from runtime.tracker import Tracker

    fresh = Tracker(tiny_model, seed=0)
    fresh.init(cv2.imread(files[2]), restart)
    np.testing.assert_allclose(boxes, [fresh.update(cv2.imread(p)).box for p in files[3:6]], atol=1e-3)
