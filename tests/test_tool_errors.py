"""The tools besides runtime.track (export, tuning, training, benchmarks) meet a user's mistake
with one `error:` line and exit status 2, before anything slow runs and without touching what
is already on disk."""
import os

import pytest

from runtime.synthetic import make_sequence, write_otb
from conftest import expect_one_error_line as _expect


@pytest.fixture(scope="module")
def seq(tmp_path_factory):
    return write_otb(make_sequence(n_frames=12, size=(160, 120), seed=3), tmp_path_factory.mktemp("s") / "syn")


@pytest.fixture()
def afile(tmp_path):
    f = tmp_path / "afile"
    f.write_text("not a folder")
    return f


def test_training_refuses_bad_counts_and_paths(seq, tmp_path, afile, capsys):
    from train_mx import train

    base = ["--sequences", str(seq), "--quiet", "--out", str(tmp_path / "run")]
    for extra, words in (
        (["--epoch-size", "0"], ["--epoch-size"]),  # once looped forever
        (["--iterations", "-5"], ["--iterations"]),
        (["--target-size", "0"], ["--target-size"]),
        (["--mine-from", "10"], ["--mine-from", "96"]),
        (["--ctx", "gpu:x"], ["gpu:x"]),
        (["--pretrained", str(tmp_path / "none.h5")], ["none.h5"]),
        (["--save-model", str(afile / "m")], ["--save-model"]),
        (["--resume"], ["no checkpoint", "drop --resume"]),  # once started afresh, silently
    ):
        _expect(capsys, train.main(base + extra), *words)
    import mxnet as mx

    if mx.context.num_gpus() == 0:  # once a 48-line MXNetError from the first bind
        _expect(capsys, train.main(base + ["--ctx", "cpu:0,gpu:0"]), "--ctx gpu:0", "0 GPU(s)", "cpu:0,cpu:1")
    # vggm: no default ImageNet weights to look for, so this holds without ../shared too
    _expect(capsys, train.main(["--sequences", str(tmp_path / "nowhere"), "--quiet", "--out", str(tmp_path / "r2"),
                                "--extractor", "vggm"]), "nowhere")
    _expect(capsys, train.main(["--sequences", str(seq), "--quiet", "--out", str(afile)]), "is a file")
    assert not (tmp_path / "run").exists()


def test_training_without_sequences_or_shared_names_the_option(tmp_path, capsys, monkeypatch):
    """An installed copy, or a checkout without ../shared: the default data is absent."""
    from train_mx import train

    monkeypatch.setattr(train, "SHARED_SEQUENCES", tmp_path / "shared" / "data" / "sequences")
    _expect(capsys, train.main(["--quiet", "--out", str(tmp_path / "r"), "--extractor", "vggm"]),
            "no sequences", "is absent", "--sequences DIR", "MDTRACK_SHARED")


def test_the_shared_folder_can_be_named_for_an_installed_package(tmp_path):
    """An installed package has no ../shared beside it: MDTRACK_SHARED names the folder that
    training and the benchmarks read their default data from, and the messages name it."""
    import subprocess
    import sys

    from conftest import child_env

    env = child_env(dict(os.environ, MDTRACK_SHARED=str(tmp_path / "data-here")))
    code = "from runtime.model import SHARED_SEQUENCES as S; print(S)"
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == str(tmp_path / "data-here" / "data" / "sequences"), r.stderr
    r = subprocess.run([sys.executable, "-m", "benchmarks.accuracy", "--trackers", "csrt", "--out", str(tmp_path / "o")],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and r.stderr.startswith(f"error: no sequences ({tmp_path / 'data-here'}"), r.stderr
    assert "MDTRACK_SHARED" in r.stderr and r.stderr.count("\n") == 1, r.stderr


def test_resume_with_a_damaged_state_refused(seq, tmp_path, capsys):
    from train_mx import train

    out = tmp_path / "run"
    base = ["--sequences", str(seq), "--quiet", "--out", str(out), "--iterations", "2", "--epoch-size", "2",
            "--pretrained", "", "--extractor", "vggm"]
    assert train.main(base) == 0
    (out / "state.json").write_text("{")  # the report's copy: --resume reads the checkpoint's own
    (out / "checkpoint" / "state.json").write_text("{")
    _expect(capsys, train.main(base[:-4] + ["--iterations", "4", "--resume", "--extractor", "vggm"]),
            "state.json", "new --out")


@pytest.mark.parametrize("argv,words", [
    (["--benchmark", "accuracy", "--trackers", "foo"], ["'foo'", "csrt"]),
    (["--benchmark", "accuracy", "--trackers", ","], ["--trackers"]),
    (["--benchmark", "accuracy", "--backend", "bogus"], ["bogus"]),
    (["--benchmark", "accuracy", "--model", "NOWHERE"], ["nowhere"]),
    (["--benchmark", "accuracy", "--max-frames", "0"], ["--max-frames", "at least 1"]),
    (["--benchmark", "per_frame", "--backends", "foo"], ["'foo'"]),
    (["--benchmark", "per_frame", "--max-frames", "1"], ["--max-frames", "at least 2"]),
    (["--benchmark", "per_frame", "--out", "AFILE"], ["is a file"]),
    (["--benchmark", "accuracy", "--json", "AFILE/x.json"], ["--json"]),
])
def test_benchmarks_refuse_bad_input_before_tracking(seq, tmp_path, afile, capsys, argv, words):
    import importlib

    name = argv[1]
    main = importlib.import_module(f"benchmarks.{name}").main
    rest = [a.replace("AFILE", str(afile)).replace("NOWHERE", str(tmp_path / "nowhere")) for a in argv[2:]]
    if "--out" not in rest:
        rest += ["--out", str(tmp_path / "o")]
    _expect(capsys, main(["--sequences", str(seq)] + rest), *words)
    _expect(capsys, main(["--sequences", str(tmp_path / "missing")] + rest[-2:]), "missing")
    assert not (tmp_path / "o").exists()


def test_export_and_tuning_refuse_bad_input(tmp_path, afile, capsys, no_cost_model):
    # (the tuning mistakes are found before any search: no cost model needed)
    pytest.importorskip("tvm")
    from export import tune
    from export.__main__ import main as export

    for argv, words in (
        (["--targets", "llvm:bogus"], ["bogus"]),  # LLVM would build for generic x86-64
        (["--targets", "llvm:"], ["CPU name"]),
        (["--targets", "cuda:sm_1"], ["sm_1"]),
        (["--targets", ","], ["no target"]),
        (["--targets", "bogus"], ["unknown target 'bogus'", "use onnx (the ONNX set alone), llvm"]),
        (["--out", str(afile)], ["is a file"]),
        (["--model", str(tmp_path / "nowhere")], ["nowhere"]),
    ):
        _expect(capsys, export(argv), *words)
    bad_log = tmp_path / "db"
    bad_log.mkdir()
    (bad_log / "tuning_log.json").write_text("{")
    for argv, words in (
        (["--trials", "0"], ["--trials"]),
        (["--top", "0"], ["--top"]),
        (["--max-minutes", "-1"], ["--max-minutes"]),
        (["--model", str(tmp_path / "nowhere")], ["nowhere"]),
        (["--db", str(afile)], ["is a file"]),
        (["--db", str(bad_log)], ["tuning_log.json"]),
    ):
        _expect(capsys, tune.main(argv), *words)
    assert (bad_log / "tuning_log.json").read_text() == "{"
    assert afile.read_text() == "not a folder"


def test_tools_name_a_missing_package_and_its_extra(tmp_path, monkeypatch, capsys):
    """Without the export extra, export and tuning stop with the pip command, not an import
    traceback; the feature benchmark passes on its worker's one-line error."""
    import importlib.util

    from benchmarks.features import main as features
    from export import tune
    from export.__main__ import main as export

    real = importlib.util.find_spec
    with monkeypatch.context() as m:
        m.setattr(importlib.util, "find_spec", lambda name, *a: None if name in ("onnx", "tvm") else real(name, *a))
        _expect(capsys, export(["--targets", "llvm", "--out", str(tmp_path / "x")]), "onnx, apache-tvm not installed",
                "onnxruntime==", "pip install -e '.[export]'")
        _expect(capsys, export(["--targets", "onnx", "--out", str(tmp_path / "x")]), "onnx not installed")
        _expect(capsys, tune.main(["--trials", "1"]), "onnx, apache-tvm", "not installed", "xgboost==", "'.[tune]'")
    assert not (tmp_path / "x").exists()
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "onnxruntime.py").write_text("raise ImportError('simulated: not installed')\n")
    monkeypatch.setenv("PYTHONPATH", f"{fake}:{os.environ.get('PYTHONPATH', '')}")
    _expect(capsys, features(["--backends", "onnxruntime", "--repeat", "1", "--out", str(tmp_path / "o")]),
            "needs onnxruntime", "pip install")


def test_feature_timing_refuses_bad_input(tmp_path, afile, capsys):
    from benchmarks.features import main

    for argv, words in ((["--backends", "foo"], ["'foo'"]), (["--repeat", "0"], ["--repeat"]),
                        (["--out", str(afile)], ["is a file"])):
        _expect(capsys, main(argv + ([] if "--out" in argv else ["--out", str(tmp_path / "o")])), *words)


def test_training_report_and_feature_stats_refuse_bad_input(tmp_path, afile, capsys):
    from train_mx import feature_stats, report

    run = tmp_path / "run"
    run.mkdir()
    (run / "state.json").write_text('{"log": []}')
    _expect(capsys, report.main([str(tmp_path / "nowhere"), "--out", str(tmp_path / "r")]), "state.json")
    _expect(capsys, report.main([str(run), "--out", str(tmp_path / "r")]), "no training log")
    assert not (tmp_path / "r").exists()  # nothing written before the runs are read
    with pytest.raises(SystemExit) as e:
        feature_stats.main(["--model", str(tmp_path), "--every", "0"])
    assert e.value.code == 2 and "--every" in capsys.readouterr().err


@pytest.mark.parametrize("argv,words", [
    (["-n", "1", "--port", "99999"], ["--port"]),
    (["-n", "1", "--threads", "-3"], ["--threads"]),
    (["-n", "1", "--timeout", "nan"], ["--timeout"]),
    (["-n", "1", "--ssh", "'ssh"], ["--ssh", "quotation"]),
    (["-n", "1", "--python", "/nonexistent/python"], ["no such program"]),
])
def test_launcher_refuses_bad_options_before_starting(argv, words, capsys):
    from train_mx import launch

    with pytest.raises(SystemExit) as e:
        launch.main(argv + ["--dry-run", "--", "--iterations", "1"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback" not in err and all(w in err for w in words), err


@pytest.mark.parametrize("var,value", [("MDTRACK_SEED", "abc"), ("MDTRACK_VOT_HANDLE", "bogus"),
                                       ("MDTRACK_BACKEND", "bogus")])
def test_vot_entry_checks_its_environment(monkeypatch, capsys, var, value):
    from runtime.integrations import vot

    monkeypatch.setenv(var, value)
    with pytest.raises(SystemExit) as e:
        vot.main([])
    err = capsys.readouterr().err
    assert e.value.code == 2 and value in err and var in err


def test_gpu_pack_checks_before_touching_the_old_pack(tmp_path, capsys):
    from benchmarks.gpu_pack import PACK_MARKER, main

    old = tmp_path / "pack"
    old.mkdir()
    (old / PACK_MARKER).write_text("{}")
    (old / "results.json").write_text("kept")
    for extra, words in ((["--buckets", "99"], ["0 to 7"]), (["--cpu-target", "bogus"], ["bogus"]),
                         (["--max-mb", "0"], ["--max-mb"]), (["--model", str(tmp_path / "nowhere")], ["nowhere"]),
                         (["--sequence", str(tmp_path / "noseq")], ["noseq"])):
        _expect(capsys, main(["--out", str(old)] + extra), *words)
    assert (old / "results.json").read_text() == "kept"


def test_gpu_pack_outside_a_checkout_stops_before_building(tmp_path, capsys, monkeypatch):
    """An installed copy has no CMakeLists.txt for the runner: said at once, not after minutes
    of export and nvcc."""
    from benchmarks import gpu_pack

    monkeypatch.setattr(gpu_pack, "ROOT", tmp_path / "site-packages")
    _expect(capsys, gpu_pack.main(["--out", str(tmp_path / "pack")]), "CMakeLists.txt", "from a clone")
    assert not (tmp_path / "pack").exists()


def test_peer_tracker_missing_from_opencv_names_the_installed_builds(monkeypatch):
    """A plain OpenCV build (installed for --show) has no CSRT: one line naming what is installed."""
    import types

    import cv2

    from benchmarks.common import OpenCVTracker
    from runtime.errors import TrackerInputError

    monkeypatch.delattr(cv2, "TrackerCSRT_create", raising=False)
    monkeypatch.setattr(cv2, "legacy", types.SimpleNamespace(), raising=False)
    with pytest.raises(TrackerInputError, match="no TrackerCSRT_create: installed: .*opencv") as e:
        OpenCVTracker("csrt")
    assert "\n" not in str(e.value)
