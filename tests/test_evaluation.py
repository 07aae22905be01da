"""One-pass evaluation metrics, cost statistics and the report writer (hand-computed)."""
import json
import math
import os

import numpy as np
import pytest

from runtime.evaluation import (
    PRECISION_AT,
    PRECISION_THRESHOLDS,
    SUCCESS_THRESHOLDS,
    SequenceScore,
    cost_stats,
    evaluate_sequence,
    mean_scores,
    stage_stats,
)
from runtime import report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

GT_BOX = (0.0, 0.0, 10.0, 10.0)
# Predictions with IoU 1.0, 0.5, 0.0, 0.75 against GT_BOX (area 100):
#   identical; (0,0,10,5): 50/100; disjoint; (0,0,10,7.5): 75/100.
PRED_4 = [(0, 0, 10, 10), (0, 0, 10, 5), (50, 50, 10, 10), (0, 0, 10, 7.5)]
GT_4 = [GT_BOX] * 4
# Success at t = share of IoUs {1, .5, 0, .75} strictly above t:
#   t in [0, 0.45]   (10 thresholds): 3/4   (1, .5, .75)
#   t in [0.5, 0.7]  (5):             2/4   (0.5 is not > 0.5)
#   t in [0.75, 0.95] (5):            1/4
#   t = 1            (1):             0
SUCCESS_4 = [0.75] * 10 + [0.5] * 5 + [0.25] * 5 + [0.0]
AUC_4 = (7.5 + 2.5 + 1.25) / 21  # 11.25 / 21


def test_constants():
    assert len(SUCCESS_THRESHOLDS) == 21
    assert SUCCESS_THRESHOLDS[0] == 0 and SUCCESS_THRESHOLDS[-1] == 1
    np.testing.assert_array_equal(PRECISION_THRESHOLDS, np.arange(51))
    assert PRECISION_AT == 20


def test_success_curve_hand_computed():
    s = evaluate_sequence(PRED_4, GT_4)
    assert s.n_frames == 4 and s.n_evaluated == 4
    assert list(s.success_curve) == SUCCESS_4
    assert s.auc == pytest.approx(AUC_4, abs=1e-12)
    assert s.auc == pytest.approx(0.5357142857142857, abs=1e-12)
    assert s.mean_iou == pytest.approx((1.0 + 0.5 + 0.0 + 0.75) / 4)
    # centre errors: 0, 2.5 (centre (5, 2.5)), sqrt(50^2 + 50^2) = 70.7, 1.25
    assert s.precision == 0.75
    pc = np.array(s.precision_curve)
    assert len(pc) == 51
    assert pc[0] == 0.25  # only the exact match at 0 px
    assert pc[1] == 0.25  # 1.25 > 1
    assert pc[2] == 0.5  # 1.25 <= 2
    assert pc[3] == 0.75  # 2.5 <= 3
    assert np.all(pc[3:] == 0.75)  # 70.7 px stays out up to 50


def test_precision_at_20_boundary():
    gt = [GT_BOX] * 5
    # centre of GT is (5, 5); shift the prediction by these centre errors
    pred = [
        (20, 0, 10, 10),  # 20.0 exactly: success
        (12, 16, 10, 10),  # (12, 16) -> 20.0 exactly (3-4-5 triangle x4): success
        (19.99, 0, 10, 10),  # just under
        (20.01, 0, 10, 10),  # just over: failure
        (0, 21, 10, 10),  # 21: failure
    ]
    s = evaluate_sequence(pred, gt)
    assert s.precision == pytest.approx(3 / 5)
    assert s.precision_curve[20] == s.precision
    assert s.precision_curve[19] == 0.0
    assert s.precision_curve[21] == pytest.approx(5 / 5)


def test_nan_ground_truth_rows_are_skipped():
    gt = GT_4 + [(np.nan, np.nan, np.nan, np.nan), (0, 0, np.nan, 10)]
    pred = PRED_4 + [(0, 0, 10, 10), (100, 100, 1, 1)]
    s = evaluate_sequence(pred, gt)
    assert s.n_frames == 6 and s.n_evaluated == 4
    assert list(s.success_curve) == SUCCESS_4
    assert s.auc == pytest.approx(AUC_4)
    assert s.precision == 0.75


def test_zero_size_ground_truth_is_skipped():
    gt = [(0, 0, 0, 0), (0, 0, 10, 0), (5, 5, -3, 4)] + GT_4
    pred = [(0, 0, 0, 0)] * 3 + PRED_4
    s = evaluate_sequence(pred, gt)
    assert s.n_frames == 7 and s.n_evaluated == 4
    assert s.auc == pytest.approx(AUC_4)
    assert s.mean_iou == pytest.approx(2.25 / 4)


def test_nan_prediction_is_a_failure():
    gt = [GT_BOX, GT_BOX]
    pred = [(0, 0, 10, 10), (np.nan, np.nan, np.nan, np.nan)]
    s = evaluate_sequence(pred, gt)
    assert s.n_evaluated == 2
    assert s.mean_iou == 0.5
    assert s.precision == 0.5
    assert list(s.success_curve) == [0.5] * 20 + [0.0]  # identical box: IoU 1 is not > 1
    assert s.auc == pytest.approx(10 / 21)
    assert all(v == 0.5 for v in s.precision_curve)
    # partly NaN prediction fails too
    s2 = evaluate_sequence([(0, 0, np.nan, 10)], [GT_BOX])
    assert s2.auc == 0.0 and s2.precision == 0.0 and s2.mean_iou == 0.0


def test_all_frames_absent():
    s = evaluate_sequence([(0, 0, 1, 1)], [(np.nan,) * 4])
    assert s.n_frames == 1 and s.n_evaluated == 0
    assert math.isnan(s.auc) and math.isnan(s.precision)
    d = s.to_dict()
    assert d["auc"] is None and d["success_curve"] == [None] * 21
    json.dumps(d, allow_nan=False)


def test_length_mismatch_raises():
    with pytest.raises(ValueError, match="frames"):
        evaluate_sequence(PRED_4[:3], GT_4)
    with pytest.raises(ValueError, match="shape"):
        evaluate_sequence(np.zeros((4, 5)), np.zeros((4, 5)))


def test_to_dict_is_plain_json_and_round_trips():
    s = evaluate_sequence(np.array(PRED_4, np.float32), np.array(GT_4))
    d = s.to_dict()
    text = json.dumps(d, allow_nan=False)
    back = json.loads(text)
    assert back["auc"] == pytest.approx(AUC_4)
    assert back["n_frames"] == 4 and isinstance(back["n_frames"], int)
    assert back["success_curve"] == SUCCESS_4
    assert len(back["precision_curve"]) == 51
    assert SequenceScore.from_dict(back) == s


def test_mean_scores_per_sequence_average():
    a = evaluate_sequence(PRED_4, GT_4)  # auc 11.25/21, precision .75, mIoU .5625
    b = evaluate_sequence([GT_BOX] * 10, [GT_BOX] * 10)  # every frame exact
    empty = evaluate_sequence([GT_BOX], [(np.nan,) * 4])
    m = mean_scores([a, b.to_dict(), empty])
    assert m["n_sequences"] == 2 and m["n_skipped"] == 1
    # per-sequence mean, not pooled over 14 frames
    assert m["auc"] == pytest.approx((AUC_4 + 20 / 21) / 2)
    assert m["precision"] == pytest.approx((0.75 + 1.0) / 2)
    assert m["mean_iou"] == pytest.approx((0.5625 + 1.0) / 2)
    expected_curve = (np.array(SUCCESS_4) + np.array([1.0] * 20 + [0.0])) / 2
    np.testing.assert_allclose(m["success_curve"], expected_curve)
    assert m["auc"] == pytest.approx(np.mean(m["success_curve"]))
    assert m["precision_curve"][20] == pytest.approx(m["precision"])
    json.dumps(m, allow_nan=False)
    none = mean_scores([empty])
    assert none["n_sequences"] == 0 and none["auc"] is None


def test_cost_stats_known_list():
    frame_ms = [500.0, 10.0, 20.0, 30.0, 40.0, 100.0]
    c = cost_stats(frame_ms)
    rest = np.array([10.0, 20.0, 30.0, 40.0, 100.0])
    assert c["n_frames"] == 6
    assert c["first_ms"] == 500.0
    assert c["median_ms"] == 30.0
    # linear percentile: rank 0.95 * 4 = 3.8 -> 40 + 0.8 * (100 - 40) = 88
    assert c["p95_ms"] == pytest.approx(88.0)
    assert c["p95_ms"] == pytest.approx(np.percentile(rest, 95))
    assert c["max_ms"] == 100.0
    assert c["mean_ms"] == 40.0
    assert c["fps"] == pytest.approx(25.0)
    json.dumps(c, allow_nan=False)


def test_cost_stats_short_lists():
    one = cost_stats([123.0])
    assert one == {"n_frames": 1, "first_ms": 123.0, "median_ms": None, "p95_ms": None,
                   "max_ms": None, "mean_ms": None, "fps": None}
    two = cost_stats(np.array([7.0, 4.0]))
    assert two["median_ms"] == two["p95_ms"] == two["max_ms"] == two["mean_ms"] == 4.0
    assert two["fps"] == 250.0
    assert cost_stats([])["first_ms"] is None
    with pytest.raises(ValueError):
        cost_stats([1.0, float("nan")])


def test_stage_stats():
    st = stage_stats({"features": [300.0, 5.0, 7.0, 6.0], "head": [50.0, 1.0, 1.0, 4.0],
                      "init_only": [9.0]})
    f = st["features"]
    assert f["first_ms"] == 300.0 and f["median_ms"] == 6.0 and f["max_ms"] == 7.0
    assert f["mean_ms"] == pytest.approx(6.0)
    # [1, 1, 4]: rank 0.95 * 2 = 1.9 -> 1 + 0.9 * 3 = 3.7
    assert st["head"]["p95_ms"] == pytest.approx(3.7)
    assert st["head"]["median_ms"] == 1.0
    assert st["init_only"]["first_ms"] == 9.0 and st["init_only"]["median_ms"] is None


# ---------------------------------------------------------------------------- report


def test_markdown_table_format():
    text = report.markdown_table(["name", "auc", "n"], [["seq|a", 0.53571, 4], ["b", None, 10]])
    lines = text.strip().splitlines()
    assert len(lines) == 4
    assert lines[0].split("|")[1].strip() == "name"
    sep = [c.strip() for c in lines[1].strip("|").split("|")]
    assert sep[0].startswith(":") and sep[1].endswith(":") and sep[2].endswith(":")
    assert "0.536" in lines[2] and "seq\\|a" in lines[2]
    assert lines[2].endswith(" 4 |")
    cells = [c for c in lines[3].strip("|").split("|")]
    assert cells[1].strip() == "-"
    # right alignment: numbers end at the column border
    assert cells[1].endswith("- ") and cells[2].endswith("10 ")
    with pytest.raises(ValueError):
        report.markdown_table(["a", "b"], [[1]])


def _results():
    a1 = evaluate_sequence(PRED_4, GT_4)
    a2 = evaluate_sequence([GT_BOX] * 3, [GT_BOX] * 3)
    b1 = evaluate_sequence([(50, 50, 10, 10)] * 4, GT_4)
    return {
        "mdnet": {
            "Basketball": {"score": a1, "cost": cost_stats([500.0, 10.0, 20.0, 30.0, 40.0, 100.0]),
                           "stages": stage_stats({"features": [300.0, 5.0, 7.0]})},
            "Car4": {"score": a2.to_dict(), "cost": cost_stats([100.0, 50.0])},
        },
        "kcf": {"Basketball": {"score": b1}},
    }


def test_write_report(tmp_path):
    paths = report.write_report(tmp_path / "out", _results(), title="Unit test")
    assert set(paths) == {"json", "markdown", "success", "precision"}
    for key in ("success", "precision"):
        data = paths[key].read_bytes()
        assert len(data) > 1000 and data[:8] == PNG_SIGNATURE

    data = json.loads(paths["json"].read_text())
    mdn = data["trackers"]["mdnet"]
    assert mdn["sequences"]["Basketball"]["score"]["auc"] == pytest.approx(AUC_4)
    assert mdn["sequences"]["Basketball"]["cost"]["fps"] == pytest.approx(25.0)
    assert mdn["sequences"]["Basketball"]["stages"]["features"]["median_ms"] == 6.0
    assert mdn["mean"]["auc"] == pytest.approx((AUC_4 + 20 / 21) / 2)
    assert mdn["mean"]["fps"] == pytest.approx((25.0 + 20.0) / 2)
    assert data["trackers"]["kcf"]["mean"]["auc"] == 0.0
    assert data["trackers"]["kcf"]["sequences"]["Basketball"]["cost"] is None
    assert len(data["success_thresholds"]) == 21

    md = paths["markdown"].read_text()
    assert md.startswith("# Unit test")
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.strip().strip("|").split("|")]
            for line in md.splitlines() if line.startswith("|")}
    header = rows["Sequence"]
    assert header[1:5] == ["mdnet AUC", "mdnet P@20", "mdnet mIoU", "mdnet fps"]
    assert header[5:9] == ["kcf AUC", "kcf P@20", "kcf mIoU", "kcf fps"]
    assert rows["Basketball"][1:] == ["0.536", "0.750", "0.562", "25.000",
                                      "0.000", "0.000", "0.000", "-"]
    assert rows["Car4"][1:] == ["0.952", "1.000", "1.000", "20.000", "-", "-", "-", "-"]
    mean_auc = f"{(AUC_4 + 20 / 21) / 2:.3f}"
    assert rows["Mean"][1:5] == [mean_auc, "0.875", "0.781", "22.500"]
    assert rows["Mean"][5:] == ["0.000", "0.000", "0.000", "-"]
    # cost section: first / median / p95 / max
    assert "500.000" in md and "88.000" in md and "features" in md


def test_plot_helpers(tmp_path):
    p = report.plot_frame_costs({"mxnet": [4700.0, 12.0, 11.0, 2500.0, 12.0],
                                 "tvm": [800.0, 5.0, 5.5, 5.0, 5.2]},
                                tmp_path / "costs.png", log_y=True)
    assert p.read_bytes()[:8] == PNG_SIGNATURE and p.stat().st_size > 1000
    q = report.plot_scores([3.0, 2.0, -1.0, 0.5], tmp_path / "sub" / "scores.png",
                           ok=[True, True, False, True])
    assert q.read_bytes()[:8] == PNG_SIGNATURE and q.stat().st_size > 1000
    with pytest.raises(ValueError):
        report.plot_scores([1.0, 2.0], tmp_path / "bad.png", ok=[True])


def test_plots_in_a_read_only_home_say_nothing_about_matplotlibs_config(tmp_path):
    """A container with a home folder nobody can write: matplotlib keeps its config in a
    temporary folder and warns about it on every run; the plots are the same, so the report
    keeps that out of the tracker's output."""
    import subprocess
    import sys

    blocked = tmp_path / "file"
    blocked.write_text("")  # a home folder below a file cannot be made, even by root
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MPL", "XDG_", "MATPLOTLIB"))}
    env["HOME"] = str(blocked / "home")
    code = ("from runtime import report; "
            f"report.plot_scores([3.0, 2.0, -1.0], {str(tmp_path / 'scores.png')!r}, ok=[True, True, False])")

    def run(env):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                             cwd=str(__import__("pathlib").Path(__file__).parents[1]))
        assert out.returncode == 0, out.stderr
        assert (tmp_path / "scores.png").read_bytes()[:8] == PNG_SIGNATURE
        return out.stderr

    assert run(env) == ""
    # only the folder warnings go: a mistake in the user's matplotlibrc is still reported
    (tmp_path / "matplotlibrc").write_text("lines.linewidth: thick\n")
    assert "Bad value in file" in run({**env, "MATPLOTLIBRC": str(tmp_path / "matplotlibrc")})


def test_report_import_is_lazy():
    import subprocess
    import sys

    code = ("import sys, runtime.report, runtime.evaluation; "
            "print(any(m == 'matplotlib' or m.startswith('matplotlib.') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=str(__import__("pathlib").Path(__file__).parents[1]))
    assert out.stdout.strip() == "False"


# -- found in review: bad input named, not averaged into nonsense --------------------------------

def test_scores_with_wrong_curves_or_fields_are_refused():
    from runtime.errors import TrackerInputError
    from runtime.evaluation import evaluate_sequence, mean_scores

    g = np.array([[10.0, 10, 20, 20]] * 5)
    s = evaluate_sequence(g, g)
    short = s.to_dict()
    short["success_curve"] = short["success_curve"][:10]  # once averaged into a 31-point curve
    with pytest.raises(TrackerInputError, match="points"):
        mean_scores([s, short])
    with pytest.raises(TrackerInputError, match="lacks 'auc'"):
        mean_scores([{k: v for k, v in s.to_dict().items() if k != "auc"}])
    with pytest.raises(TrackerInputError, match="4 numbers"):
        evaluate_sequence([g[0], None, g[0]], g[:3])
    with pytest.raises(TrackerInputError, match="frame 1"):
        from runtime.evaluation import cost_stats

        cost_stats([1.0, float("nan")])


def test_report_into_a_file_is_a_clear_error(tmp_path):
    from runtime.errors import TrackerInputError
    from runtime.evaluation import evaluate_sequence
    from runtime.report import write_report

    g = np.array([[10.0, 10, 20, 20]] * 5)
    f = tmp_path / "afile"
    f.write_text("x")
    with pytest.raises(TrackerInputError, match="is a file"):
        write_report(f, {"t": {"s": {"score": evaluate_sequence(g, g)}}})


def test_matches_the_got10k_toolkit_on_random_boxes():
    """Cross-check with the GOT-10k toolkit's own OTB-protocol code (UAV123's variant, which
    drops NaN ground-truth rows as DESIGN.md section 4 does): random boxes, exact-threshold
    integer boxes, absent targets, lost (NaN) and degenerate predictions. Degenerate *ground
    truth* (w or h 0) is left out: the toolkit scores it as a failed frame, we skip it."""
    pytest.importorskip("got10k")
    from types import SimpleNamespace

    from got10k.experiments.otb import ExperimentOTB
    from got10k.experiments.uav123 import ExperimentUAV123

    curves = SimpleNamespace(nbins_iou=len(SUCCESS_THRESHOLDS), nbins_ce=len(PRECISION_THRESHOLDS))
    rng = np.random.default_rng(0)
    for trial in range(200):
        n = int(rng.integers(2, 40))
        gt = np.c_[rng.uniform(0, 100, (n, 2)), rng.uniform(1, 50, (n, 2))]
        pred = gt + rng.normal(0, rng.uniform(0.5, 30), (n, 4))
        if trial % 2:
            gt, pred = np.round(gt), np.round(pred)  # IoUs and errors land on the thresholds
        gt[rng.choice(n, n // 4, replace=False)] = np.nan
        pred[rng.choice(n, n // 5, replace=False)] = np.nan
        bad = rng.choice(n, n // 5, replace=False)
        pred[bad, 2] = -rng.uniform(0, 5, len(bad))
        if np.isnan(gt).any(axis=1).all():
            continue
        ious, errors = ExperimentUAV123._calc_metrics(None, pred.copy(), gt.copy())
        success, precision = ExperimentOTB._calc_curves(curves, ious, errors)
        s = evaluate_sequence(pred, gt)
        np.testing.assert_allclose(s.success_curve, success, atol=1e-12)
        np.testing.assert_allclose(s.precision_curve, precision, atol=1e-12)
        assert s.auc == pytest.approx(np.mean(success), abs=1e-12)
        assert s.precision == pytest.approx(precision[PRECISION_AT], abs=1e-12)
