"""The tools besides runtime.track (export, tuning, training, benchmarks) meet a user's mistake
with one `error:` line and exit status 2, before anything slow runs and without touching what
is already on disk."""
import pytest

from runtime.synthetic import make_sequence, write_otb


@pytest.fixture(scope="module")
def seq(tmp_path_factory):
    return write_otb(make_sequence(n_frames=12, size=(160, 120), seed=3), tmp_path_factory.mktemp("s") / "syn")


@pytest.fixture()
def afile(tmp_path):
    f = tmp_path / "afile"
    f.write_text("not a folder")
    return f


def _expect(capsys, code, *words):
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("error:") and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for w in words:
        assert w in err, err


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
    _expect(capsys, train.main(["--sequences", str(tmp_path / "nowhere"), "--quiet", "--out", str(tmp_path / "r2")]),
            "nowhere")
    _expect(capsys, train.main(["--sequences", str(seq), "--quiet", "--out", str(afile)]), "is a file")
    assert not (tmp_path / "run").exists()


def test_resume_with_a_damaged_state_refused(seq, tmp_path, capsys):
    from train_mx import train

    out = tmp_path / "run"
    base = ["--sequences", str(seq), "--quiet", "--out", str(out), "--iterations", "2", "--epoch-size", "2",
            "--pretrained", "", "--extractor", "vggm"]
    assert train.main(base) == 0
    (out / "state.json").write_text("{")
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


def test_export_and_tuning_refuse_bad_input(tmp_path, afile, capsys):
    pytest.importorskip("tvm")
    from export import tune
    from export.__main__ import main as export

    for argv, words in (
        (["--targets", "llvm:bogus"], ["bogus"]),  # LLVM would build for generic x86-64
        (["--targets", "llvm:"], ["CPU name"]),
        (["--targets", "cuda:sm_1"], ["sm_1"]),
        (["--targets", ","], ["no target"]),
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


def test_feature_timing_refuses_bad_input(tmp_path, afile, capsys):
    from benchmarks.features import main

    for argv, words in ((["--backends", "foo"], ["'foo'"]), (["--repeat", "0"], ["--repeat"]),
                        (["--out", str(afile)], ["is a file"])):
        _expect(capsys, main(argv + ([] if "--out" in argv else ["--out", str(tmp_path / "o")])), *words)
