"""One-pass accuracy of our tracker against OpenCV's trackers on the same frames.

    python -m benchmarks.accuracy [--sequences DIR ...] [--trackers ours,csrt,kcf,mil] [--out DIR]

Prints AUC / precision@20 / fps per sequence and on average, and writes results.json,
results.md, success.png, precision.png (OTB style) and summary.json into --out, with every
run's boxes in boxes/<tracker>/<sequence>.txt (``runtime.track --out``'s rows, with every
digit of the boxes scored, so rescoring them reproduces results.json; the first tracked frame
holds its ground-truth box, as the OTB toolkits record it, where ``runtime.track`` writes the
box the tracker started from: the same but for a box crossing the image border). An --out that holds a
previous run's results is refused unless --force, which deletes those files first.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from runtime.evaluation import cost_stats, evaluate_sequence, mean_scores
from runtime.report import write_report
from runtime.sources import open_sequence_folder

from runtime.errors import TrackerInputError

from .common import (OpenCVTracker, check_inputs, command, dump_json, machine, machine_line, prepare_out,
                     reports_user_errors, resolve_sequences, run_sequence)

PEERS = ("csrt", "kcf", "mil")
REPORT_FILES = ("results.json", "results.md", "success.png", "precision.png", "summary.json")


def tracker_factories(names, model, backend, seed):
    out = {}
    for name in names:
        if not (name in ("ours",) + PEERS or name.startswith("ours:")):
            raise TrackerInputError(f"unknown tracker {name!r} in --trackers; use ours, ours:MODEL_DIR, "
                                    f"{', '.join(PEERS)}")
        if name == "ours" or name.startswith("ours:"):
            path = model if name == "ours" else name.split(":", 1)[1]
            label = "ours" if name == "ours" else f"ours[{Path(path).name}]"
            if label in out:  # results are keyed by label: the second would replace the first
                raise TrackerInputError(f"--trackers names {label} twice (models are labelled by folder name); "
                                        "evaluate models of one name in separate runs")

            def make(path=path):
                from runtime.tracker import Tracker

                return Tracker(path, backend=backend, seed=seed)

            out[label] = make
        else:
            out[name] = (lambda n=name: OpenCVTracker(n))
    return out


def _finite(x):
    return float(x) if x is not None and np.isfinite(x) else None


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def box_row(box) -> str:
    """One x,y,w,h row as ``runtime.track --out`` writes it, but with each value's shortest
    exact decimal form (``repr``) instead of 2 decimals: rows read back (numpy) are the very
    boxes scored, so rescoring them reproduces results.json exactly (2 decimals moved a
    sequence's AUC by 0.0017). ``nan`` where the frame has no box."""
    return ",".join(repr(float(v)) for v in box)


def write_boxes(path: Path, boxes) -> None:
    """Each run's boxes, one x,y,w,h row per frame (``nan`` before the start), so other
    toolkits can score the same runs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(box_row(b) + "\n" for b in boxes))


def _outputs(out, json_path, trackers):
    """Every file a run writes, for common.check_inputs: none may be an input or another output."""
    out = Path(out)

    def outputs(names):
        files = [(f"--out ({f})", out / f) for f in REPORT_FILES]
        files += [(f"--out (boxes/{t}/{n}.txt)", out / "boxes" / t / f"{n}.txt") for t in trackers for n in names]
        return files + [("--json", json_path)]

    return outputs


@reports_user_errors
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.accuracy", description=__doc__.splitlines()[0])
    ap.add_argument("--sequences", nargs="+", default=None, help="sequence folders (default: the dev set in ../shared)")
    ap.add_argument("--trackers", default="ours,csrt,kcf",
                    help="comma-separated: ours, ours:MODEL_DIR (another model), csrt, kcf, mil")
    ap.add_argument("--model", default=None, help="model folder (default: the shipped models/default)")
    ap.add_argument("--backend", default="mxnet", help="feature backend of ours: mxnet, onnxruntime or tvm (default mxnet)")
    ap.add_argument("--seed", type=int, default=0, help="seed of ours (candidate sampling); CSRT and KCF are deterministic, MIL depends on the MIL runs before it in the process (OpenCV keeps its random state)")
    ap.add_argument("--max-frames", type=int, default=None, help="first N frames of each sequence (default: all)")
    ap.add_argument("--out", default="benchmarks/results/accuracy", help="report folder")
    ap.add_argument("--json", default=None, help="also write the JSON (summary.json) here")
    ap.add_argument("--force", action="store_true",
                    help="replace the results of a previous run in --out (deletes only the files this tool writes)")
    args = ap.parse_args(argv)
    seqs = resolve_sequences(args.sequences)
    if not seqs:
        return 2
    from runtime.backends import BACKENDS
    from runtime.model import DEFAULT_MODEL

    names = [t.strip() for t in args.trackers.split(",") if t.strip()]
    if not names:
        raise TrackerInputError("--trackers names none; use e.g. ours,csrt,kcf")
    if args.backend not in BACKENDS:
        raise TrackerInputError(f"unknown --backend {args.backend!r}; use one of {', '.join(BACKENDS)}")
    factories = tracker_factories(names, args.model, args.backend, args.seed)
    models = [args.model or DEFAULT_MODEL if n == "ours" else n.split(":", 1)[1] for n in names if n.startswith("ours")]
    seqs = check_inputs(seqs, models, args.max_frames, args.out, [("--json", args.json)],
                        outputs=_outputs(args.out, args.json, list(factories)))
    prepare_out(args.out, REPORT_FILES + ("boxes/*/*.txt",), args.force)
    results = {name: {} for name in factories}
    failed = []
    for path in seqs:
        for name, make in factories.items():
            # a frame that cannot be read keeps the last box (with a warning), for every tracker
            seq = open_sequence_folder(path, on_bad_frame="skip")
            r = run_sequence(make, seq, args.max_frames, label=name)
            seq.close()
            score = evaluate_sequence(r["boxes"], r["gt"])
            results[name][seq.name] = {"score": score, "cost": cost_stats(r["ms"])}
            if r["error"]:
                results[name][seq.name]["error"] = r["error"]
                failed.append(f"{name} on {seq.name}: {r['error']}")
            write_boxes(Path(args.out) / "boxes" / name / f"{seq.name}.txt", r["boxes"])
            fps = results[name][seq.name]["cost"]["fps"]
            print(f"{seq.name:18s} {name:22s} AUC {_fmt(_finite(score.auc))}  P@20 {_fmt(_finite(score.precision))}  "
                  f"fps {'n/a' if fps is None else f'{fps:.1f}'}", flush=True)
    # "dev sequences" only when they are (the default): a report on a user's OTB folders must not say so
    title = "One-pass evaluation" + ("" if args.sequences else " (dev sequences)")
    m = machine()
    paths = write_report(args.out, results, title=title, preface=machine_line(m))
    summary = {"machine": m, "command": command("benchmarks.accuracy", argv), "trackers": {}}
    for name, per in results.items():
        # The OTB mean over sequences, as in results.json (mean_scores): a sequence with no
        # frame to score (ground truth absent in every frame run) has NaN scores; it is left
        # out of the mean, and written as null (strict JSON has no NaN).
        mean = mean_scores(v["score"] for v in per.values())
        fps = [v["cost"]["fps"] for v in per.values() if v["cost"]["fps"]]
        summary["trackers"][name] = {"mean_auc": mean["auc"], "mean_precision": mean["precision"],
                                     "mean_fps": float(np.mean(fps)) if fps else None,
                                     "sequences": {k: {"auc": _finite(v["score"].auc),
                                                       "precision": _finite(v["score"].precision),
                                                       "fps": v["cost"]["fps"],
                                                       **({"error": v["error"]} if "error" in v else {})}
                                                   for k, v in per.items()}}
        print(f"MEAN {name:22s} AUC {_fmt(mean['auc'])}  P@20 {_fmt(mean['precision'])}"
              + (f"  ({mean['n_skipped']} sequence(s) with no scored frame left out)" if mean["n_skipped"] else ""))
    if failed:
        # a peer that failed (cv2.error) scores its frames from the failure on as lost
        with open(paths["markdown"], "a") as f:
            f.write("\nFailed runs (the frames from the failure on score as lost):\n\n"
                    + "".join(f"- {line}\n" for line in failed))
        print(f"{len(failed)} failed run(s) (scored as lost from the failure on): " + "; ".join(failed))
    dump_json(summary, Path(args.out) / "summary.json")
    if args.json:
        dump_json(summary, args.json)
    print(f"report: {paths['markdown']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
