"""Per-frame cost of the whole tracker, backend by backend, on the same frames.

    python -m benchmarks.per_frame [--sequences DIR ...] [--backends mxnet,onnxruntime,tvm] [--out DIR]

Each backend tracks the same frames (decoded once, held in memory) with the same seed.
The ``mxnet-unbucketed`` baseline crops the exact patch each frame needs and binds new
executors for every new shape, as the original prototype did. Reports first-frame ms,
median / p95 / max of the other frames, fps and a stage breakdown; writes per_frame.json,
per_frame.md and per_frame.png (cost over the sequence per backend: spikes show). An --out
that holds a previous run's results is refused unless --force, which deletes those files first.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from runtime.evaluation import cost_stats, evaluate_sequence, stage_stats
from runtime.report import markdown_table, plot_frame_costs
from runtime.sources import open_sequence_folder, usable_box
from runtime.tracker import STAGES

from .common import (check_inputs, command, dump_json, log, machine, machine_line, names_in, prepare_out, reports_user_errors,
                     resolve_sequences)

BASELINE = "mxnet-unbucketed"
REPORT_FILES = ("per_frame.json", "per_frame.md", "per_frame.png")


class _Frames:
    """A sequence decoded once so every backend sees identical frames without I/O. It starts
    where tracking starts (``common.run_sequence``'s rule): at the first frame whose own
    ground-truth box is usable. A frame that cannot be read (``seq`` opened with
    ``on_bad_frame="skip"``) is left out, with a warning: this benchmark times frames.
    ``limit``: stop after that many frames (``main`` checks every sequence with 2 before it
    clears a previous run's results, so that ``--force`` loses nothing on a bad sequence)."""

    def __init__(self, seq, max_frames, limit=None):
        from runtime.errors import TrackerInputError

        self.name = seq.name
        has_gt = seq.groundtruth is not None
        self.frames = []
        for f in seq:
            if (max_frames is not None and f.index >= max_frames) or (limit is not None and len(self.frames) >= limit):
                break
            if f.image is None:
                if self.frames and limit is None:
                    log.warning("%s: frame %d left out: %s", seq.name, f.index, f.error)
                continue
            if self.frames and f.image.shape != self.frames[0].image.shape:
                if limit is None:
                    log.warning("%s: frame %d left out: its size is not the sequence's", seq.name, f.index)
                continue
            if self.frames or not has_gt or usable_box(f.gt):
                self.frames.append(f)
        if len(self.frames) < 2:
            raise TrackerInputError(f"sequence {seq.name} has {len(self.frames)} readable frame(s) from its first "
                                    "usable ground-truth box; this benchmark needs 2 (the first initialises)")
        self.init_box = np.asarray(self.frames[0].gt, float) if has_gt else seq.init_box

    def __iter__(self):
        return iter(self.frames)


def run_backend(name, frames, model, seed):
    from runtime.tracker import Tracker

    backend = "mxnet" if name == BASELINE else name
    tracker = Tracker(model, backend=backend, seed=seed, bucketed=name != BASELINE)
    ms, stages, boxes, gts, buckets = [], {s: [] for s in STAGES + ("other",)}, [], [], []
    for f in frames:
        r = tracker.update(f.image) if f is not frames.frames[0] else tracker.init(f.image, frames.init_box)
        ms.append(r.ms)
        for s in stages:
            stages[s].append(r.stages.get(s, 0.0))
        boxes.append(r.box)
        buckets.append(r.bucket)
        gts.append(f.gt if f.gt is not None else np.full(4, np.nan))
    binds = getattr(tracker.backend, "binds", None)
    return {"ms": ms, "stages": stages, "boxes": np.array(boxes), "gt": np.array(gts),
            "binds": {"features": binds, "head": tracker.head.binds},
            "bucket_use": {str(b): buckets.count(b) for b in sorted(set(buckets))}}


@reports_user_errors
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.per_frame", description=__doc__.splitlines()[0])
    ap.add_argument("--sequences", nargs="+", default=None, help="sequence folders (default: the dev set in ../shared)")
    ap.add_argument("--backends", default=f"mxnet,onnxruntime,tvm,{BASELINE}",
                    help=f"comma-separated from mxnet, onnxruntime, tvm, {BASELINE}")
    ap.add_argument("--model", default=None, help="model folder (default: the shipped models/default)")
    ap.add_argument("--max-frames", type=int, default=None, help="first N frames of each sequence (default: all)")
    ap.add_argument("--seed", type=int, default=0, help="tracker seed (candidate sampling)")
    ap.add_argument("--out", default="benchmarks/results/per_frame", help="report folder")
    ap.add_argument("--json", default=None, help="also write the JSON (per_frame.json) here")
    ap.add_argument("--force", action="store_true",
                    help="replace the results of a previous run in --out (deletes only the files this tool writes)")
    args = ap.parse_args(argv)
    seqs = resolve_sequences(args.sequences)
    if not seqs:
        return 2
    from runtime.backends import BACKENDS
    from runtime.model import DEFAULT_MODEL

    backends = names_in(args.backends, BACKENDS + (BASELINE,))
    out = Path(args.out)
    seqs = check_inputs(seqs, [args.model or DEFAULT_MODEL], args.max_frames, args.out, [("--json", args.json)],
                        min_frames=2, min_tracked=2,
                        outputs=lambda names: [(f"--out ({f})", out / f) for f in REPORT_FILES] + [("--json", args.json)])
    for path in seqs:  # decode until 2 frames can be timed: a sequence that has not fails before --force deletes
        seq = open_sequence_folder(path, on_bad_frame="skip")
        try:
            _Frames(seq, args.max_frames, limit=2)
        finally:
            seq.close()
    prepare_out(out, REPORT_FILES, args.force)
    out.mkdir(parents=True, exist_ok=True)
    result = {"machine": machine(), "command": command("benchmarks.per_frame", argv),
              "sequences": {}, "backends": {}}
    all_ms = {b: [] for b in backends}
    all_stages = {b: {} for b in backends}
    firsts = {b: [] for b in backends}
    curves = {}
    for path in seqs:
        frames = _Frames(open_sequence_folder(path, on_bad_frame="skip"), args.max_frames)
        result["sequences"][frames.name] = {}
        for b in backends:
            r = run_backend(b, frames, args.model, args.seed)
            c = cost_stats(r["ms"])
            score = evaluate_sequence(r["boxes"], r["gt"])
            result["sequences"][frames.name][b] = {"cost": c, "stages": stage_stats(r["stages"]),
                                                   "auc": score.auc, "binds": r["binds"],
                                                   "bucket_use": r["bucket_use"]}
            all_ms[b].extend(r["ms"][1:])
            firsts[b].append(r["ms"][0])
            for s, v in r["stages"].items():
                all_stages[b].setdefault(s, []).extend(v[1:])
            curves.setdefault(b, []).extend(r["ms"])
            print(f"{frames.name:18s} {b:18s} first {c['first_ms']:7.0f} ms  median {c['median_ms']:6.1f}  "
                  f"p95 {c['p95_ms']:6.1f}  max {c['max_ms']:7.1f}  fps {c['fps']:5.1f}  AUC {score.auc:.3f}", flush=True)
    rows = []
    for b in backends:
        ms = np.array(all_ms[b])
        st = {s: float(np.median(v)) for s, v in all_stages[b].items()}
        summary = {"first_ms_median": float(np.median(firsts[b])), "median_ms": float(np.median(ms)),
                   "p95_ms": float(np.percentile(ms, 95)), "max_ms": float(ms.max()),
                   "fps": float(1000.0 / ms.mean()), "stage_median_ms": st,
                   "max_over_median": float(ms.max() / np.median(ms))}
        result["backends"][b] = summary
        rows.append([b, summary["first_ms_median"], summary["median_ms"], summary["p95_ms"], summary["max_ms"],
                     summary["fps"]] + [st.get(s, 0.0) for s in STAGES + ("other",)])
    ref = result["backends"].get("mxnet", {}).get("median_ms")
    table = markdown_table(["backend", "first ms", "median ms", "p95 ms", "max ms", "fps"]
                           + [f"{s} ms" for s in STAGES + ("other",)], rows)
    text = [f"# Per-frame cost\n", machine_line(result['machine']),
            f"Command: `{result['command']}`\n", "Frames after the first, all sequences pooled; stage columns are medians.\n",
            table]
    if ref:
        text.append("\nRatio of median to mxnet: " + ", ".join(
            f"{b} {v['median_ms'] / ref:.2f}x" for b, v in result["backends"].items()))
    (out / "per_frame.md").write_text("\n".join(text) + "\n")
    dump_json(result, out / "per_frame.json")
    if args.json:
        dump_json(result, args.json)
    plot_frame_costs(curves, out / "per_frame.png", title="Per-frame cost (sequences back to back)")
    print("\n".join(text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
