"""Long-run soak: memory and per-frame cost over a long synthetic sequence.

    python -m benchmarks.soak --frames 10000 --json soak.json [--backend mxnet] [--strict]

Tracks one seeded synthetic sequence (frames rendered on the fly, so the sequence itself
costs no memory) and measures

* memory: resident set size (``/proc/self/statm``; peak RSS from ``resource`` where there
  is no ``/proc``) after frame ``ref`` (500 for 10,000 frames) and after the last frame;
  the run passes when the growth is at most ``--max-growth-mb`` (100 MB);
* cost drift: the median per-frame cost of the last window (the last 1,000 of 10,000
  frames) against that of the reference window (frames 500-1,500); the run passes when
  the ratio is at most ``--max-cost-ratio`` (1.25).

For other lengths the windows scale with the run: reference frame 5 %, reference window
5-15 %, last window 90-100 % of the frames. Prints the figures; ``--json`` writes them
with an RSS curve (every ``--rss-every`` frames) and the per-frame cost in 100-frame
medians. ``--strict`` exits with 1 when a check fails (the figures depend on the machine
being otherwise idle: a busy machine inflates the cost ratio).
"""
from __future__ import annotations

import argparse
import gc
import os
import sys
import time

import numpy as np

from runtime.backends import BACKENDS
from runtime.errors import TrackerInputError, cli_logging

MAX_GROWTH_MB = 100.0
MAX_COST_RATIO = 1.25


def rss_mb() -> float:
    """Current resident set size in MiB (peak RSS where /proc is missing)."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def windows(n_frames: int) -> dict:
    """Frame indices of the RSS reference point and the two cost windows for a run of ``n_frames``."""
    if n_frames < 20:
        raise TrackerInputError(f"a soak needs at least 20 frames, got {n_frames}")
    ref = max(1, round(0.05 * n_frames))
    return {"rss_ref_frame": ref, "rss_last_frame": n_frames - 1,
            "ref_window": [ref, max(ref + 1, round(0.15 * n_frames))],
            "last_window": [min(n_frames - 1, round(0.9 * n_frames)), n_frames]}


def _size(text: str):
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT such as 320x240, got {text!r}") from None
    if w < 64 or h < 64:
        raise argparse.ArgumentTypeError(f"frames must be at least 64x64, got {text!r}")
    return w, h


def _frames(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of frames, got {text!r}") from None
    if n < 20:
        raise argparse.ArgumentTypeError(f"a soak needs at least 20 frames, got {n}")
    return n


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=_frames, default=10000, help="sequence length (default 10000)")
    ap.add_argument("--size", type=_size, default=(320, 240), help="frame size WxH (default 320x240)")
    ap.add_argument("--seed", type=int, default=0, help="sequence and tracker seed")
    ap.add_argument("--model", default=None, help="model folder (default: the shipped models/default)")
    ap.add_argument("--backend", default="mxnet", choices=BACKENDS, help="feature backend (default mxnet)")
    ap.add_argument("--json", metavar="FILE", help="write the figures (and RSS / cost curves) as JSON")
    ap.add_argument("--rss-every", type=int, default=100, help="sample RSS every N frames (default 100)")
    ap.add_argument("--max-growth-mb", type=float, default=MAX_GROWTH_MB,
                    help=f"RSS growth allowed between the two windows (default {MAX_GROWTH_MB})")
    ap.add_argument("--max-cost-ratio", type=float, default=MAX_COST_RATIO,
                    help=f"last window's median cost over the first's allowed (default {MAX_COST_RATIO})")
    ap.add_argument("--strict", action="store_true", help="exit 1 when a check fails")
    ap.add_argument("--quiet", action="store_true", help="no progress lines")
    return ap


def soak(n_frames: int, size=(320, 240), seed: int = 0, model=None, backend: str = "mxnet",
         rss_every: int = 100, max_growth_mb: float = MAX_GROWTH_MB, max_cost_ratio: float = MAX_COST_RATIO,
         progress=None, **params_kw) -> dict:
    """Run the soak and return its figures (see the module docstring)."""
    from runtime.evaluation import evaluate_sequence
    from runtime.synthetic import make_sequence
    from runtime.tracker import Tracker

    win = windows(n_frames)
    seq = make_sequence(n_frames=n_frames, size=size, seed=seed)
    tracker = Tracker(model, backend=backend, seed=seed, **params_kw)
    ms = np.zeros(n_frames)
    boxes = np.zeros((n_frames, 4))
    ok = np.zeros(n_frames, bool)
    rss_curve = []
    rss_start = rss_mb()
    t_start = time.perf_counter()
    for frame in seq:
        i = frame.index
        r = tracker.init(frame.image, seq.init_box) if i == 0 else tracker.update(frame.image)
        ms[i], boxes[i], ok[i] = r.ms, r.box, r.ok
        if i % rss_every == 0 or i in (win["rss_ref_frame"], win["rss_last_frame"]):
            gc.collect()  # count what is alive, not what the collector has yet to free
            rss_curve.append([i, round(rss_mb(), 2)])
        if progress is not None and i and i % 1000 == 0:
            progress(f"frame {i}/{n_frames}  rss {rss_curve[-1][1]:.0f} MB  "
                     f"median {np.median(ms[max(1, i - 1000):i]):.1f} ms")
    wall = time.perf_counter() - t_start
    rss = dict((f, v) for f, v in rss_curve)
    rss_ref, rss_last = rss[win["rss_ref_frame"]], rss[win["rss_last_frame"]]
    a, b = win["ref_window"]
    c, d = win["last_window"]
    ref_ms, last_ms = float(np.median(ms[a:b])), float(np.median(ms[c:d]))
    growth = rss_last - rss_ref
    ratio = last_ms / ref_ms if ref_ms > 0 else float("inf")
    score = evaluate_sequence(boxes, seq.groundtruth)
    curve_ms = [[s, round(float(np.median(ms[max(1, s):s + 100])), 3)] for s in range(0, n_frames, 100)
                if len(ms[max(1, s):s + 100])]
    return {
        "frames": n_frames,
        "size": list(size),
        "seed": seed,
        "backend": backend,
        "wall_s": round(wall, 2),
        "first_ms": round(float(ms[0]), 3),
        "median_ms": round(float(np.median(ms[1:])), 3),
        "p95_ms": round(float(np.percentile(ms[1:], 95)), 3),
        "max_ms": round(float(ms[1:].max()), 3),
        "lost_frames": int((~ok).sum()),
        "auc": round(float(score.auc), 4),
        "windows": win,
        "memory": {"rss_start_mb": round(rss_start, 2), "rss_ref_mb": rss_ref, "rss_last_mb": rss_last,
                   "rss_max_mb": max(v for _, v in rss_curve), "growth_mb": round(growth, 2),
                   "limit_mb": max_growth_mb, "ok": bool(growth <= max_growth_mb)},
        "cost": {"ref_median_ms": round(ref_ms, 3), "last_median_ms": round(last_ms, 3),
                 "ratio": round(ratio, 4), "limit_ratio": max_cost_ratio, "ok": bool(ratio <= max_cost_ratio)},
        "updates": dict(tracker.updates),
        "rss_curve": rss_curve,
        "cost_curve_ms": curve_ms,
    }


def summary_lines(r: dict) -> list:
    m, c, w = r["memory"], r["cost"], r["windows"]
    return [
        f"soak: {r['frames']} frames {r['size'][0]}x{r['size'][1]} ({r['backend']}) in {r['wall_s']:.0f} s; "
        f"median {r['median_ms']:.1f} ms  p95 {r['p95_ms']:.1f} ms  max {r['max_ms']:.1f} ms  "
        f"lost {r['lost_frames']}  AUC {r['auc']:.3f}",
        f"memory: RSS {m['rss_ref_mb']:.1f} MB after frame {w['rss_ref_frame']}, {m['rss_last_mb']:.1f} MB after "
        f"frame {w['rss_last_frame']} (growth {m['growth_mb']:+.1f} MB, limit {m['limit_mb']:.0f}): "
        f"{'ok' if m['ok'] else 'FAIL'}",
        f"cost: median {c['ref_median_ms']:.2f} ms over frames {w['ref_window'][0]}-{w['ref_window'][1] - 1}, "
        f"{c['last_median_ms']:.2f} ms over frames {w['last_window'][0]}-{w['last_window'][1] - 1} "
        f"(ratio {c['ratio']:.3f}, limit {c['limit_ratio']}): {'ok' if c['ok'] else 'FAIL'}",
    ]


def main(argv=None) -> int:
    import json

    ap = build_parser()
    args = ap.parse_args(argv)
    cli_logging()
    import math

    if args.seed < 0:
        ap.error(f"--seed must be >= 0, got {args.seed}")
    if args.rss_every < 1:
        ap.error(f"--rss-every must be >= 1, got {args.rss_every}")
    if not (math.isfinite(args.max_growth_mb) and math.isfinite(args.max_cost_ratio)):
        ap.error("--max-growth-mb and --max-cost-ratio must be finite numbers")
    progress = None if args.quiet else (lambda m: print(m, file=sys.stderr, flush=True))
    try:
        if args.json:
            from runtime.outputs import check_output_path

            check_output_path(args.json, "--json")  # before minutes of frames, not after
        r = soak(args.frames, size=args.size, seed=args.seed, model=args.model, backend=args.backend,
                 rss_every=args.rss_every, max_growth_mb=args.max_growth_mb,
                 max_cost_ratio=args.max_cost_ratio, progress=progress)
    except TrackerInputError as e:  # a bad model or artifact set
        print(f"error: {e}", file=sys.stderr)
        return 2
    for line in summary_lines(r):
        print(line)
    if args.json:
        from benchmarks.common import command, machine

        r = {"machine": machine(), "command": command("benchmarks.soak", argv), **r}
        try:
            with open(args.json, "w") as f:
                json.dump(r, f, indent=1)
                f.write("\n")
        except OSError as e:  # checked up front, but permissions can still refuse (root, /sys)
            print(f"error: cannot write {args.json}: {e.strerror or e} (the figures are printed above)", file=sys.stderr)
            return 2
    if args.strict and not (r["memory"]["ok"] and r["cost"]["ok"]):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
