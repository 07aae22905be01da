"""Oracle-label diagnosis: can the online head pick the target when every label is right?

The tracker runs with its box forced to the ground truth after every frame, so every sample
it stores and every update it makes is labelled correctly. Before each update, boxes of the
true size on a grid around the truth (+-15 x +-8 steps of 8% of the target size) are scored
as the tracker ranks its candidates (fc head plus ridge classifier). Per sequence: how often
the best-ranked box lies within 0.36 target sizes of the truth (``head_near``; by the fc
head's score alone ``fc_head_near``, by the ridge classifier's alone ``ridge_near``, null
with ``ridge_weight=0``), how often the true box scores above 0 (``truth_positive``), and
how often the pooled features most similar to the previous frame's true box lie that near
(``similarity_near``). A tracker that loses a sequence whose ``head_near`` is high drifts
on its own labels; where it is low, ``fc_head_near`` and ``ridge_near`` tell whether one of the
two classifiers, or the features under both, fall short. (``head_near`` and
``truth_positive`` were the fc head's alone before the ridge classifier: runs before
2026-11-27 17:45 UTC.) A share with
no frame to measure (``--frames 1`` has no previous true box to compare with) is n/a (null
in oracle.json).

    python -m benchmarks.oracle --frames 150 --out benchmarks/results/oracle
"""
from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

import numpy as np

NEAR = 0.36  # target sizes: a box this close to the truth overlaps it by IoU >= ~0.5
STEP = 0.08  # grid step in target sizes


@contextlib.contextmanager
def _box_follows(truth: dict):
    """Make the tracker's box (and so its samples and next search) the ground truth."""
    import runtime.tracker as T

    orig = T.keep_center_inside
    T.keep_center_inside = lambda box, size, min_size: truth["box"].copy()
    try:
        yield
    finally:
        T.keep_center_inside = orig


def _grid(gt: np.ndarray) -> np.ndarray:
    k = STEP * gt[2:].mean()
    xs, ys = np.arange(-15, 16) * k, np.arange(-8, 9) * k
    return np.array([[gt[0] + dx, gt[1] + dy, gt[2], gt[3]] for dy in ys for dx in xs])


def _share(k: int, n: int):
    return k / n if n else None


def diagnose(seq, model=None, frames: int | None = None, seed: int = 0) -> dict:
    """The shares for one sequence: over the ``frames`` frames after the first tracked
    one (all when None), those with ground truth; None where no frame was measured."""
    from runtime.buckets import extractor_input
    from runtime.sources import usable_box
    from runtime.tracker import Tracker

    t = Tracker(model, seed=seed)
    truth, prev = {}, None
    start = None  # index of the first tracked frame
    n = head_near = fc_near = ridge_near = positive = sim_near = n_sim = 0
    with _box_follows(truth):
        for frame in seq:
            if frames is not None and start is not None and frame.index > start + frames:
                break
            usable = frame.image is not None and usable_box(frame.gt)
            if t.head is None:  # tracking starts at the first frame with a usable box (run_sequence's rule)
                if usable:
                    t.init(frame.image, frame.gt)
                    start = frame.index
                continue
            if not usable:
                continue  # no truth to force: skip the frame, as evaluation does
            gt = np.asarray(frame.gt, float)
            geom = t._geometry(t.box, t.policy.search_region(t.box))
            feat = t.backend.extract(geom.bucket, extractor_input(frame.image, geom, t.model.mean))
            boxes = _grid(gt)
            scores, fc, ridge, pooled = [], [], [], []
            for i in range(0, len(boxes), t.head.chunk):
                p, e, r = t.head.embed_all(feat, geom.to_patch(boxes[i:i + t.head.chunk]), want_ridge=t.ridge is not None)
                scores.append(t._scores(e, r))  # as the tracker ranks its candidates
                fc.append(t.head.score(e))
                if t.ridge is not None:
                    ridge.append(t.ridge.score(r))
                pooled.append(p)
            s = np.concatenate(scores)
            p = np.concatenate(pooled)
            p /= np.maximum(np.linalg.norm(p, axis=1, keepdims=True), 1e-12)
            c = len(boxes) // 2  # the true box
            near = np.hypot(*(boxes[:, :2] - boxes[c, :2]).T) <= NEAR * gt[2:].mean()
            n += 1
            head_near += bool(near[np.argmax(s)])
            fc_near += bool(near[np.argmax(np.concatenate(fc))])
            ridge_near += bool(ridge) and bool(near[np.argmax(np.concatenate(ridge))])
            positive += bool(s[c] > 0)
            if prev is not None:
                n_sim += 1
                sim_near += bool(near[np.argmax(p @ prev)])
            prev = p[c].copy()
            truth["box"] = gt
            t.update(frame.image)
    return {"frames": n, "head_near": _share(head_near, n), "fc_head_near": _share(fc_near, n),
            "ridge_near": _share(ridge_near, n) if t.ridge is not None else None, "truth_positive": _share(positive, n),
            "similarity_near": _share(sim_near, n_sim)}


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def main(argv=None) -> int:
    from benchmarks.common import reports_user_errors

    return reports_user_errors(_main)(argv)


REPORT_FILES = ("oracle.json", "oracle.md")


def _main(argv=None) -> int:
    from benchmarks.common import check_inputs, command, dump_json, machine, machine_line, prepare_out, resolve_sequences
    from runtime.model import DEFAULT_MODEL
    from runtime.sources import open_sequence_folder

    ap = argparse.ArgumentParser(prog="python -m benchmarks.oracle", description=__doc__.splitlines()[0])
    ap.add_argument("--sequences", nargs="*", help="sequence folders (default: the development set in ../shared)")
    ap.add_argument("--model", default=None, help="model folder (default: the shipped models/default)")
    ap.add_argument("--frames", type=int, default=150, help="frames per sequence after the first tracked one")
    ap.add_argument("--seed", type=int, default=0, help="tracker seed (candidate sampling)")
    ap.add_argument("--out", default=None, help="folder for oracle.json and oracle.md")
    ap.add_argument("--force", action="store_true",
                    help="replace the results of a previous run in --out (deletes only the files this tool writes)")
    args = ap.parse_args(argv)
    seqs = resolve_sequences(args.sequences)
    if not seqs:
        return 2
    if args.frames < 1:
        from runtime.errors import TrackerInputError

        raise TrackerInputError(f"--frames must be at least 1, got {args.frames}")
    out = Path(args.out) if args.out else None
    seqs = check_inputs(seqs, [args.model or DEFAULT_MODEL], out_dir=args.out,
                        outputs=(lambda names: [(f"--out ({f})", out / f) for f in REPORT_FILES]) if out else None)
    if out:
        prepare_out(out, REPORT_FILES, args.force)
    rows = {}
    for path in seqs:
        seq = open_sequence_folder(path, on_bad_frame="skip")  # an unreadable frame is skipped, as evaluation does
        rows[seq.name] = diagnose(seq, args.model, args.frames, args.seed)
        r = rows[seq.name]
        print(f"{seq.name:16s} frames {r['frames']:4d}  best box near truth {_fmt(r['head_near'])} (fc head alone "
              f"{_fmt(r['fc_head_near'])}, ridge alone {_fmt(r['ridge_near'])})  "
              f"truth scored > 0 {_fmt(r['truth_positive'])}  similarity near truth {_fmt(r['similarity_near'])}",
              flush=True)
    if out:
        m = machine()
        dump_json({"machine": m, "command": command("benchmarks.oracle", argv), "frames": args.frames,
                   "seed": args.seed, "sequences": rows}, out / "oracle.json")
        lines = [machine_line(m), "", "| sequence | frames | best-ranked box near the truth | by the fc head alone | "
                 "by the ridge classifier alone | true box scored > 0 | "
                 "similarity to the previous true box near the truth |", "|---|---:|---:|---:|---:|---:|---:|"]
        lines += [f"| {k} | {r['frames']} | {_fmt(r['head_near'])} | {_fmt(r['fc_head_near'])} | {_fmt(r['ridge_near'])} | "
                  f"{_fmt(r['truth_positive'])} | {_fmt(r['similarity_near'])} |" for k, r in rows.items()]
        (out / "oracle.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
