"""Shared pieces of the benchmarks: which sequences, the dev split, tracker adapters and
the loop that runs one tracker over one sequence timing every frame."""
from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import numpy as np

from runtime.model import SHARED_SEQUENCES as SHARED

# Held out of training (see models/default/TRAINING.md): the development set.
DEV_SEQUENCES = ("vot_bolt1", "vot_traffic", "uav_person12_1", "dtb_Surfing06", "uav_truck4_1")


def default_sequences() -> list:
    return [str(SHARED / n) for n in DEV_SEQUENCES if (SHARED / n).is_dir()]


def resolve_sequences(given) -> list:
    """The folders asked for, else the development set; an empty list (after printing the
    error) when neither exists, for the caller to exit 2."""
    import sys

    seqs = list(given or default_sequences())
    if not seqs:
        print("error: no sequences (../shared is absent); pass --sequences DIR ...", file=sys.stderr)
    return seqs


def reports_user_errors(main):
    """A benchmark's ``main`` that turns a user's mistake (a missing sequence or model, a bad
    name, an unwritable output) into one ``error:`` line and exit status 2."""
    import functools
    import sys

    from runtime.errors import TrackerInputError, cli_logging

    @functools.wraps(main)
    def wrapper(argv=None):
        cli_logging()
        try:
            return main(argv)
        except TrackerInputError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2

    return wrapper


def names_in(text: str, allowed, flag: str = "--backends", kind: str = "backend") -> list:
    """The comma-separated names of ``flag``, each one of ``allowed``, at least one."""
    from runtime.errors import TrackerInputError

    names = [b.strip() for b in text.split(",") if b.strip()]
    bad = [b for b in names if b not in allowed]
    if bad or not names:
        what = f"unknown {kind} {bad[0]!r} in {flag}" if bad else f"{flag} names none"
        raise TrackerInputError(f"{what}; use {', '.join(allowed)}")
    return names


def check_inputs(seqs, models=(), max_frames=None, out_dir=None, out_files=(), min_frames: int = 1) -> None:
    """Open every sequence and model, and check the outputs, before the first frame is
    tracked: a mistake in the last one should not surface after minutes of work."""
    from runtime.errors import TrackerInputError
    from runtime.model import load_model
    from runtime.outputs import check_output_folder, check_output_path
    from runtime.sources import open_sequence_folder

    if max_frames is not None and max_frames < min_frames:
        why = " (the first frame initialises; costs are of the frames after it)" if min_frames > 1 else ""
        raise TrackerInputError(f"--max-frames must be at least {min_frames}{why}, got {max_frames}")
    for s in seqs:
        seq = open_sequence_folder(s)
        try:
            # every benchmark starts from the ground truth (or scores against it)
            if seq.groundtruth is None or seq.init_box is None:
                raise TrackerInputError(f"{s} has no usable ground-truth box (groundtruth_rect.txt or "
                                        "groundtruth.txt, x,y,w,h per frame); the benchmarks start from it")
        finally:
            seq.close()
    for m in models:
        load_model(m)
    if out_dir is not None:
        check_output_folder(out_dir, "--out")
    for flag, path in out_files:
        if path:
            check_output_path(path, flag)


def machine() -> dict:
    import os

    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "system": platform.system()}


def opencv_builds() -> str:
    """The installed OpenCV distributions: several share the one cv2 module, and the last
    installed decides which build it is (a plain build has no contrib trackers)."""
    from importlib import metadata

    names = sorted({d.metadata["Name"] for d in metadata.distributions()
                    if (d.metadata["Name"] or "").lower().startswith("opencv")})
    return "installed: " + (", ".join(names) if names else "none")


class OpenCVTracker:
    """OpenCV's CSRT / KCF / MIL behind the same init/update shape as ours."""

    def __init__(self, kind: str):
        import cv2

        from runtime.errors import TrackerInputError

        make = {"csrt": "TrackerCSRT_create", "kcf": "TrackerKCF_create", "mil": "TrackerMIL_create"}[kind]
        fn = getattr(cv2, make, None) or getattr(getattr(cv2, "legacy", None), make, None)
        if fn is None:
            raise TrackerInputError(f"OpenCV has no {make}: {opencv_builds()}; the peer trackers are in the contrib "
                                    "builds, which share the one cv2 module with the others: pip install "
                                    f"--force-reinstall --no-deps opencv-contrib-python-headless=={cv2.__version__}")
        self.t = fn()
        self.box = None

    def init(self, image, box):
        self.t.init(image, tuple(int(round(v)) for v in box))
        self.box = np.asarray(box, float)

    def update(self, image):
        ok, box = self.t.update(image)
        if ok:
            self.box = np.asarray(box, float)
        return self.box, bool(ok)


def run_sequence(make_tracker, seq, max_frames=None, on_frame=None) -> dict:
    """Run one tracker over ``seq``; return boxes, per-frame ms, scores, ok flags and stages.

    With ground truth, tracking starts at the first frame whose own box is usable (finite,
    w and h > 0), as ``runtime.track`` does: ``seq.init_box`` is the first usable row of *any*
    frame, and initialising frame 0 with a later frame's box (a target absent at the start)
    would start the tracker on the wrong pixels. Frames before the start get NaN boxes (their
    ground truth is absent, so no score counts them) and no time: ``ms`` holds the tracked
    frames only, its first entry the initialisation. Without ground truth, frame 0 starts
    from ``seq.init_box``.
    """
    from runtime.sources import usable_box

    tracker = make_tracker()
    boxes, ms, scores, oks, stages = [], [], [], [], []
    gts = []
    has_gt = seq.groundtruth is not None
    started = False
    for frame in seq:
        if max_frames is not None and frame.index >= max_frames:
            break
        gt = frame.gt if frame.gt is not None else np.full(4, np.nan)
        if not started and has_gt and not usable_box(frame.gt):
            boxes.append(np.full(4, np.nan))
            scores.append(float("nan"))
            oks.append(False)
            stages.append(None)
            gts.append(gt)
            continue
        t = time.perf_counter()
        if not started:
            start_box = np.asarray(frame.gt if has_gt else seq.init_box, float)
            r = tracker.init(frame.image, start_box)
        else:
            r = tracker.update(frame.image)
        dt = (time.perf_counter() - t) * 1e3
        if not started:
            box, score, ok = start_box, float("nan"), True
            st = getattr(r, "stages", None)
            started = True
        elif hasattr(r, "box"):
            box, score, ok, st = r.box, r.score, r.ok, r.stages
        else:
            (box, ok), score, st = r, float("nan"), None
        boxes.append(np.asarray(box, float))
        ms.append(dt)
        scores.append(score)
        oks.append(ok)
        stages.append(st)
        gts.append(gt)
        if on_frame:
            on_frame(frame, box, dt)
    return {"boxes": np.array(boxes), "gt": np.array(gts), "ms": ms, "scores": scores, "ok": oks, "stages": stages}


def dump_json(obj, path) -> None:
    def default(o):
        if isinstance(o, (np.floating, np.integer)):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
        raise TypeError(type(o))

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(obj, indent=1, default=default, allow_nan=False) + "\n")
