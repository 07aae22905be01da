"""The benchmark modules run end to end on a tiny synthetic sequence (structure only: no
time thresholds in tests; the figures live in benchmarks/README.md)."""
import json

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


def test_per_frame_benchmark_schema(tiny_seq, tiny_model, tmp_path):
    from benchmarks.per_frame import main

    out = tmp_path / "pf"
    assert main(["--sequences", str(tiny_seq), "--backends", "mxnet,mxnet-unbucketed", "--model", str(tiny_model),
                 "--out", str(out)]) == 0
    r = json.loads((out / "per_frame.json").read_text())
    assert set(r) >= {"machine", "command", "sequences", "backends"}
    for b in ("mxnet", "mxnet-unbucketed"):
        s = r["backends"][b]
        assert set(s) >= {"first_ms_median", "median_ms", "p95_ms", "max_ms", "fps", "stage_median_ms", "max_over_median"}
        assert set(s["stage_median_ms"]) == {"crop", "features", "head", "bbreg", "update", "other"}
        per = r["sequences"]["syn8"][b]
        assert per["cost"]["n_frames"] == 8 and per["binds"]["features"] >= 1
    # the bucketed path binds once per bucket, the baseline once per new patch shape
    assert r["sequences"]["syn8"]["mxnet"]["binds"]["features"] == 8
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
