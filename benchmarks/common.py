"""Shared pieces of the benchmarks: which sequences, the dev split, tracker adapters and
the loop that runs one tracker over one sequence timing every frame."""
from __future__ import annotations

import json
import logging
import os
import platform
import time
from pathlib import Path

import numpy as np

from runtime.model import SHARED_SEQUENCES as SHARED

log = logging.getLogger("benchmarks")

# Held out of training (see models/default/TRAINING.md): the development set.
DEV_SEQUENCES = ("vot_bolt1", "vot_traffic", "uav_person12_1", "dtb_Surfing06", "uav_truck4_1")


def default_sequences() -> list:
    return [str(SHARED / n) for n in DEV_SEQUENCES if (SHARED / n).is_dir()]


def resolve_sequences(given) -> list:
    """The folders asked for, else the development set; an empty list (after printing the
    error) when neither exists, for the caller to exit 2."""
    import sys

    from runtime.sources import target_sequences, without_files

    given, files = without_files(given or [])
    for f in files:
        log.warning("skipping %s: a file, not a sequence folder", f)
    # an OTB folder with several targets (Jogging, Skating2) is one sequence per target
    seqs = [t for s in (given or default_sequences()) for t in target_sequences(s)]
    if not seqs:
        why = f"none of the development set in {SHARED}" if SHARED.is_dir() else f"{SHARED} is absent"
        print(f"error: no sequences ({why}); pass --sequences DIR ..., or set MDTRACK_SHARED to the shared "
              "folder that holds data/sequences", file=sys.stderr)
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
    twice = next((b for i, b in enumerate(names) if b in names[:i]), None)
    if twice:  # results are keyed by name: the second run would be merged into the first
        raise TrackerInputError(f"{flag} names {twice} twice; name each {kind} once")
    return names


def check_distinct_names(opened) -> list:
    """``opened``: (path, open sequence) pairs. The pairs with repeats of one folder dropped;
    two folders of one name refused.

    Results are keyed by the sequence's name, so a second ``Bolt`` (``OTB/Bolt`` beside
    ``UAV/Bolt``) would silently replace the first in every table and mean.
    """
    from runtime.errors import TrackerInputError

    seen, out = {}, []
    for p, seq in opened:
        real = Path(p).expanduser().resolve()
        if seq.name in seen:
            if seen[seq.name] == real:
                continue
            raise TrackerInputError(f"two sequences are named {seq.name!r} ({seen[seq.name]} and {real}); results "
                                    "are keyed by folder name: evaluate them in separate runs")
        seen[seq.name] = real
        out.append((p, seq))
    return out


def check_inputs(seqs, models=(), max_frames=None, out_dir=None, out_files=(), min_frames: int = 1,
                 min_tracked: int = 0, outputs=None) -> list:
    """Open every sequence and model, and check the outputs, before the first frame is
    tracked: a mistake in the last one should not surface after minutes of work. Returns the
    sequence folders to run (one folder given twice runs once; two folders of one name are
    refused: results are keyed by name).

    Each sequence's warnings (ground truth shorter than the frames, ...) are logged as
    ``warning:`` lines. ``min_tracked``: frames each sequence must have from its first
    usable ground-truth box on (within ``max_frames``). ``outputs(names)``: every
    ``(flag, path)`` the tool will write, given the sequences' names; none may name one of
    a sequence's files or another output (``runtime.outputs.check_outputs_apart``, as
    ``runtime.track`` checks its outputs).
    """
    from runtime.errors import TrackerInputError
    from runtime.model import load_model
    from runtime.outputs import check_output_folder, check_output_path, check_outputs_apart
    from runtime.sources import open_listed_sequence, usable_box

    if max_frames is not None and max_frames < min_frames:
        why = " (the first frame initialises; costs are of the frames after it)" if min_frames > 1 else ""
        raise TrackerInputError(f"--max-frames must be at least {min_frames}{why}, got {max_frames}")
    opened = []
    try:
        for s in seqs:
            seq = open_listed_sequence(s, on_bad_frame="skip")
            opened.append((s, seq))
            # every benchmark starts from the ground truth (or scores against it)
            if seq.groundtruth is None or seq.init_box is None:
                raise TrackerInputError(f"{s} has no usable ground-truth box (groundtruth_rect.txt or "
                                        "groundtruth.txt, x,y,w,h per frame); the benchmarks start from it")
            if min_tracked:
                gt = seq.groundtruth
                start = next(i for i, g in enumerate(gt) if usable_box(g))
                n = len(seq) if max_frames is None else min(len(seq), max_frames)
                if n - start < min_tracked:
                    within = f" within --max-frames {max_frames}" if max_frames is not None and max_frames < len(seq) else ""
                    raise TrackerInputError(
                        f"sequence {seq.name} ({s}) has {max(n - start, 0)} frame(s){within} from its first usable "
                        f"ground-truth box (frame {start}); this benchmark needs {min_tracked} (the first initialises)")
        opened = check_distinct_names(opened)
        for _, seq in opened:
            for w in seq.warnings:
                log.warning("%s: %s", seq.name, w)
        for m in models:
            load_model(m)
        if out_dir is not None:
            check_output_folder(out_dir, "--out")
        for flag, path in out_files:
            if path and out_dir is not None and os.path.abspath(Path(path).expanduser().parent) == \
                    os.path.abspath(Path(out_dir).expanduser()) and not Path(out_dir).expanduser().exists():
                check_output_folder(out_dir, flag)  # in --out, which the tool creates
            elif path:
                check_output_path(path, flag)
        if outputs is not None:
            wanted = [(flag, path) for flag, path in outputs([seq.name for _, seq in opened]) if path]
            check_outputs_apart(wanted, None)  # two outputs on one file
            for _, seq in opened:
                check_outputs_apart(wanted, seq)
    finally:
        for _, seq in opened:
            seq.close()
    return [s for s, _ in opened]


def prepare_out(out_dir, patterns, force: bool) -> None:
    """Refuse an ``--out`` folder that holds a previous run's results (files matching
    ``patterns``, the ones this tool writes, relative to it): a new run would mix with them
    (a sequence or tracker of the old run left behind) or overwrite them. With ``force``,
    delete those files, and the folders they leave empty, and nothing else."""
    from runtime.errors import TrackerInputError

    out = Path(out_dir).expanduser()
    if not out.is_dir():
        return
    # a match reached through a linked folder lies outside --out: never this tool's, never deleted
    found = sorted({p for pat in patterns for p in out.glob(pat)
                    if (p.is_file() or p.is_symlink())
                    and not any((out / q).is_symlink() for q in p.relative_to(out).parents if str(q) != ".")})
    if not found:
        return
    if not force:
        shown = ", ".join(str(p.relative_to(out)) for p in found[:3]) + (", ..." if len(found) > 3 else "")
        raise TrackerInputError(f"--out {out} already holds a run's results ({len(found)} file(s): {shown}); "
                                "pass --force to replace them (only the files this tool writes are deleted), "
                                "or give another --out")
    try:
        for p in found:
            p.unlink()
        for d in sorted({q for p in found for q in p.relative_to(out).parents if str(q) != "."},
                        key=lambda q: -len(q.parts)):
            try:
                (out / d).rmdir()  # only when empty: anything else there stays
            except OSError:
                pass
    except OSError as e:
        raise TrackerInputError(f"--force: cannot delete the previous run's files in {out}: {e.strerror or e}") from None


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
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "system": platform.system(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "commit": _commit(),
            "versions": _versions()}


def command(module: str, argv=None) -> str:
    """The command line a result came from, quoted so it can be run again."""
    import shlex
    import sys

    return f"python -m {module} " + shlex.join(sys.argv[1:] if argv is None else [str(a) for a in argv])


def machine_line(m: dict) -> str:
    """The machine block as the reports' first line: what, when, which code."""
    return (f"Machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}; {m.get('date', '?')}, "
            f"commit {m.get('commit') or '?'}; " + ", ".join(f"{k} {v}" for k, v in m.get("versions", {}).items()) + ".")


# the libraries a figure depends on (the OpenCV trackers' figures on OpenCV's version)
_PACKAGES = ("numpy", "mxnet", "opencv-python-headless", "opencv-contrib-python-headless", "opencv-python",
             "opencv-contrib-python", "onnxruntime", "apache-tvm")


def _versions() -> dict:
    from importlib import metadata

    out = {}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def _commit() -> str | None:
    """The checkout's commit, with "+changes" when files differ from it; None outside git."""
    import subprocess

    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                              text=True, timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")


def opencv_builds() -> str:
    """The installed OpenCV distributions: several share the one cv2 module, and the last
    installed decides which build it is (a plain build has no contrib trackers)."""
    from importlib import metadata

    names = sorted({d.metadata["Name"] for d in metadata.distributions()
                    if (d.metadata["Name"] or "").lower().startswith("opencv")})
    return "installed: " + (", ".join(names) if names else "none")


# The smallest box each OpenCV tracker starts on: CSRT raises cv2.error on 1x1, and MIL never
# returns from init on 4x4 (its Haar features are drawn at random until they fit). Only a box
# below it is grown; every other one is the ground truth's, as the OTB protocol gives it.
OPENCV_MIN_SIZE = {"csrt": 2, "kcf": 2, "mil": 5}


class PeerFailed(Exception):
    """An OpenCV tracker raised cv2.error: its run on this sequence ends there."""


class OpenCVTracker:
    """OpenCV's CSRT / KCF / MIL behind the same init/update shape as ours.

    They start from the first ground-truth box, as ours does, clipped to the image (the
    visible part: OpenCV's MIL fails on a box crossing the border) and rounded to whole
    pixels; a box smaller than ``OPENCV_MIN_SIZE`` (sub-pixel, or tiny for MIL) is grown about
    its centre to it and kept inside the image. Ours grows a box below 4 px itself
    (``runtime.tracker.start_box``); the peers do not get that growth, which moved CSRT on
    the 5x4-pixel truck of uav_truck4_1 from 0.04 to 0.34. A ``cv2.error`` in ``init`` or
    ``update`` is :class:`PeerFailed`: ``run_sequence`` records the failure and scores the
    rest of the sequence as lost, instead of stopping the whole comparison."""

    def __init__(self, kind: str):
        import cv2

        from runtime.errors import TrackerInputError

        make = {"csrt": "TrackerCSRT_create", "kcf": "TrackerKCF_create", "mil": "TrackerMIL_create"}[kind]
        fn = getattr(cv2, make, None) or getattr(getattr(cv2, "legacy", None), make, None)
        if fn is None:
            raise TrackerInputError(f"OpenCV has no {make}: {opencv_builds()}; the peer trackers are in the contrib "
                                    "builds, which share the one cv2 module with the others: pip install "
                                    f"--force-reinstall --no-deps opencv-contrib-python-headless=={cv2.__version__}")
        self.kind = kind
        self.t = fn()
        self.box = None

    @staticmethod
    def opencv_box(image, box, min_size: int = 1) -> tuple:
        """The ground-truth ``box`` as an OpenCV tracker takes it: its visible part, in whole
        pixels, at least ``min_size`` a side, inside the image. Refuses what ours refuses."""
        from runtime.tracker import start_box

        h, w = image.shape[:2]
        b = start_box(box, (w, h), min_size=min_size)  # ours' checks and clipping, the peer's minimum
        bw, bh = (max(min_size, 1, min(int(round(v)), lim)) for v, lim in ((b[2], w), (b[3], h)))
        x = min(max(int(round(b[0])), 0), w - bw)
        y = min(max(int(round(b[1])), 0), h - bh)
        return x, y, bw, bh

    def init(self, image, box):
        import cv2

        b = self.opencv_box(image, box, OPENCV_MIN_SIZE[self.kind])
        try:
            self.t.init(image, b)
        except cv2.error as e:
            raise PeerFailed(f"{self.kind} init on {list(b)}: cv2.error: {_cv2_message(e)}") from None
        self.box = np.asarray(b, float)

    def update(self, image):
        import cv2

        try:
            ok, box = self.t.update(image)
        except cv2.error as e:
            raise PeerFailed(f"{self.kind} update: cv2.error: {_cv2_message(e)}") from None
        if ok:
            self.box = np.asarray(box, float)
        return self.box, bool(ok)


def _cv2_message(e) -> str:
    """cv2.error's message on one line (its str is a multi-line report)."""
    text = " ".join(str(getattr(e, "err", "") or e).split())
    return text[:200] or type(e).__name__


def run_sequence(make_tracker, seq, max_frames=None, on_frame=None, label: str = "") -> dict:
    """Run one tracker over ``seq``; return boxes, per-frame ms, scores, ok flags, stages
    and ``error`` (None, or why a peer tracker failed).

    With ground truth, tracking starts at the first readable frame whose own box is usable
    (finite, w and h > 0), as ``runtime.track`` does: ``seq.init_box`` is the first usable
    row of *any* frame, and initialising frame 0 with a later frame's box (a target absent
    at the start) would start the tracker on the wrong pixels. Frames before the start get
    NaN boxes (their ground truth is absent, so no score counts them) and no time: ``ms``
    holds the tracked frames only, its first entry the initialisation. Without ground truth,
    frame 0 starts from ``seq.init_box``.

    After the start, a frame that cannot be read (``seq`` opened with ``on_bad_frame="skip"``)
    or that changed size keeps the last box, untimed, with a warning (``runtime.track``'s
    rule), for every tracker alike. A peer tracker that fails (:class:`PeerFailed`) gets NaN
    boxes from that frame on (lost, where there is ground truth) and ``error`` says why.
    """
    from runtime.sources import usable_box

    tracker = make_tracker()
    boxes, ms, scores, oks, stages = [], [], [], [], []
    gts = []
    has_gt = seq.groundtruth is not None
    started = False
    size = None
    error = None
    who = f"{seq.name} {label}".strip()
    for frame in seq:
        if max_frames is not None and frame.index >= max_frames:
            break
        gt = frame.gt if frame.gt is not None else np.full(4, np.nan)
        skip = None
        if error is not None:
            skip = np.full(4, np.nan)
        elif not started and (frame.image is None or (has_gt and not usable_box(frame.gt))):
            skip = np.full(4, np.nan)
        elif started and frame.image is None:
            log.warning("%s: frame %d skipped: %s (keeping the last box)", who, frame.index, frame.error)
            skip = boxes[-1]
        elif started and frame.image.shape[:2] != size:
            log.warning("%s: frame %d skipped: %dx%d pixels, not the sequence's %dx%d (keeping the last box)", who,
                        frame.index, frame.image.shape[1], frame.image.shape[0], size[1], size[0])
            skip = boxes[-1]
        if skip is not None:
            boxes.append(np.array(skip, float))
            scores.append(float("nan"))
            oks.append(False)
            stages.append(None)
            gts.append(gt)
            continue
        t = time.perf_counter()
        try:
            if not started:
                start_box = np.asarray(frame.gt if has_gt else seq.init_box, float)
                r = tracker.init(frame.image, start_box)
            else:
                r = tracker.update(frame.image)
        except PeerFailed as e:
            error = f"frame {frame.index}: {e}"
            log.warning("%s failed at %s; its later frames score as lost", who, error)
            boxes.append(np.full(4, np.nan))
            scores.append(float("nan"))
            oks.append(False)
            stages.append(None)
            gts.append(gt)
            continue
        dt = (time.perf_counter() - t) * 1e3
        if not started:
            box, score, ok = start_box, float("nan"), True
            st = getattr(r, "stages", None)
            started = True
            size = frame.image.shape[:2]
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
    return {"boxes": np.array(boxes), "gt": np.array(gts), "ms": ms, "scores": scores, "ok": oks, "stages": stages,
            "error": error}


def dump_json(obj, path) -> None:
    def default(o):
        if isinstance(o, (np.floating, np.integer)):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
        raise TypeError(type(o))

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(obj, indent=1, default=default, allow_nan=False) + "\n")
