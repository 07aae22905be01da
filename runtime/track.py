"""Track one object through a sequence, a video, images or a camera.

    python -m runtime.track --demo
    python -m runtime.track --sequence DIR [--out results.txt] [--save-video out.mp4]
    python -m runtime.track --video clip.mp4 --init x,y,w,h
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time

import numpy as np

from .backends import BACKENDS
from .errors import TrackerInputError, cli_logging
from .outputs import (STDOUT, LineWriter, StdoutLines, VideoOut, box_line, check_output, check_outputs_apart,
                      check_stdout_outputs)
from .stopping import Interrupted, StdoutClosed, StopRequest, stdout_failure, stdout_gone, stopped_by

log = logging.getLogger("runtime.track")


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (``error: ...``, exit 2) instead of usage + error."""

    def error(self, message):
        head = "unrecognized arguments: "
        if message.startswith(head):
            extra = message[len(head):].split(" ")
            if len(extra) > 3:
                message = head + " ".join(extra[:3]) + f" and {len(extra) - 3} more"
            if any(os.path.isfile(a) for a in extra[:3]):  # the shell expanded an unquoted --images glob
                message += "; quote the --images glob ('frames/*.jpg') so that the shell leaves it to the tracker"
        self.exit(2, f"error: {message} (see --help)\n")


def _positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {n}")
    return n


def _device(text: str) -> str:
    from .devices import parse_device

    try:
        return parse_device(text)
    except TrackerInputError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="python -m runtime.track", description="MDNet-family single-object tracker.",
                 formatter_class=argparse.RawDescriptionHelpFormatter,
                 epilog="Exactly one input: --demo, --sequence, --video, --images or --camera.\n"
                        "Ctrl-C, SIGTERM or SIGHUP stops after the frame in hand: the outputs end on that "
                        "frame,\nthe summary is printed, the exit status is 128 + the signal (130, 143, 129).")
    src = ap.add_argument_group("input")
    src.add_argument("--demo", action="store_true", help="track the built-in synthetic demo sequence (300 frames)")
    src.add_argument("--sequence", metavar="DIR", help="OTB or VOT folder; its first ground-truth box initialises")
    src.add_argument("--video", metavar="FILE", help="a video file OpenCV can read (needs --init)")
    src.add_argument("--images", metavar="GLOB", help="an image glob such as 'frames/*.jpg' (needs --init)")
    src.add_argument("--camera", metavar="N|URL", help="camera index or stream URL (needs --init)")
    src.add_argument("--init", metavar="X,Y,W,H", help="initial box in pixels of the first frame")
    src.add_argument("--select", action="store_true",
                     help="draw the initial box on the first frame with the mouse (needs a display)")
    src.add_argument("--realtime", action="store_true",
                     help="keep pace with the source's frame rate (camera, stream, video): frames that "
                          "arrive while the tracker is still busy are dropped and counted")
    m = ap.add_argument_group("model and backend")
    m.add_argument("--model", default=None, help="model folder (default: the shipped models/default)")
    m.add_argument("--backend", default="mxnet", choices=BACKENDS,
                   help="feature backend (default mxnet); the fc head always runs in MXNet")
    m.add_argument("--device", default="cpu", type=_device, help="cpu or cuda[:N] (default cpu)")
    m.add_argument("--artifacts", metavar="DIR", default=None, help="prebuilt compiled artifact set (onnxruntime/tvm)")
    m.add_argument("--seed", type=int, default=0, help="random seed (same seed, same boxes)")
    o = ap.add_argument_group("output")
    o.add_argument("--out", metavar="FILE", help="write one x,y,w,h line per frame (OTB convention); "
                   "'-' writes them to stdout (the log and the summary then go to stderr)")
    o.add_argument("--jsonl", metavar="FILE", help="write one JSON object per frame: frame, box, score, ok, ms; "
                   "'-' writes them to stdout")
    o.add_argument("--save-video", metavar="FILE", help="write an annotated video (box, score, ms; ground truth when known)")
    o.add_argument("--show", action="store_true", help="show a live window (needs a display)")
    o.add_argument("--plot", metavar="PNG", help="write a plot of the target score over the frames (failures marked)")
    o.add_argument("--max-frames", type=_positive_int, default=None, help="stop after this many frames")
    v = o.add_mutually_exclusive_group()
    v.add_argument("--quiet", action="store_true", help="print only the summary")
    v.add_argument("--verbose", action="store_true", help="print a log line for every frame")
    return ap


def open_source(args):
    from . import sources

    given = [n for n in ("demo", "sequence", "video", "images", "camera") if getattr(args, n)]
    if len(given) != 1:
        raise TrackerInputError("give exactly one input: --demo, --sequence, --video, --images or --camera")
    if args.demo:
        from .synthetic import make_sequence

        return make_sequence(n_frames=300, size=(320, 240), seed=0)
    if args.sequence:
        return sources.open_sequence_folder(args.sequence, init_box=args.init, on_bad_frame="skip")
    if args.init is None and not args.select:
        raise TrackerInputError(f"--{given[0]} needs --init x,y,w,h or --select (the target's box in the first frame)")
    if args.video:
        return sources.VideoSource(args.video, init_box=args.init, on_bad_frame="skip")
    if args.images:
        return sources.ImageGlobSource(args.images, init_box=args.init, on_bad_frame="skip")
    cam = int(args.camera) if str(args.camera).isdigit() else args.camera
    return sources.CameraSource(cam, init_box=args.init, on_bad_frame="skip")


def draw(frame, box, gt, score, ok, ms, index):
    import cv2

    img = frame.copy()
    if np.all(np.isfinite(box)):  # NaN before tracking starts
        x, y, w, h = (int(round(v)) for v in box)
        cv2.rectangle(img, (x, y), (x + w, y + h), (0, 255, 0) if ok else (0, 200, 255), 2)
    if gt is not None and np.all(np.isfinite(gt)):  # over the box: a close track hid it
        x, y, w, h = (int(round(v)) for v in gt)
        cv2.rectangle(img, (x, y), (x + w, y + h), (0, 0, 255), 1)
    cv2.putText(img, f"#{index} score {score:.2f} {ms:.1f} ms", (5, 15), cv2.FONT_HERSHEY_SIMPLEX, 0.45,
                (255, 255, 255), 1, cv2.LINE_AA)
    return img


def _has_display() -> bool:
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")) or not sys.platform.startswith("linux")


def opencv_has_windows() -> bool:
    """Whether this OpenCV build can open windows: the headless builds the project installs
    (servers, CI) report ``GUI: NONE`` and fail in imshow / selectROI with a traceback."""
    import cv2

    for line in cv2.getBuildInformation().splitlines():
        if line.strip().startswith("GUI:"):
            return line.split(":", 1)[1].strip().upper() != "NONE"
    return True  # a build that does not say: let OpenCV try


GUI_OPENCV = ("this OpenCV build is headless (no windows); for a window: pip uninstall -y opencv-python-headless "
              "opencv-contrib-python-headless && pip install opencv-contrib-python==4.10.0.84 (README, Dependencies)")


def _select_box(image):
    """Let the user draw the initial box (OpenCV's ROI selector; Enter/Space confirms)."""
    import cv2

    x, y, w, h = cv2.selectROI("select the target, then press Enter", image, showCrosshair=True, fromCenter=False)
    cv2.destroyWindow("select the target, then press Enter")
    if w <= 0 or h <= 0:
        raise TrackerInputError("no box selected (draw a box, then press Enter or Space)")
    return np.array([x, y, w, h], dtype=np.float64)


def _ranges(indices) -> str:
    """[0, 1, 2, 5] -> '0-2, 5'."""
    out, start, prev = [], None, None
    for i in list(indices) + [None]:
        if start is not None and (i is None or i != prev + 1):
            out.append(f"{start}" if start == prev else f"{start}-{prev}")
            start = None
        if i is not None and start is None:
            start = i
        prev = i
    return ", ".join(out)


def run(args, stop: StopRequest | None = None) -> dict:
    """Track ``args``' input; returns the summary. Raises :class:`TrackerInputError` for
    anything the user can fix.

    With ``stop`` (installed as the signal handler), a signal while tracking ends the run
    after the frame in hand, like the end of the input; the summary then has
    ``interrupted`` (the signal's name).

    Every frame gets one output row, in frame order. A frame that cannot be read keeps the
    last box (with a warning). When the initial box comes from the ground truth, tracking
    starts at the first frame that can be read and has a usable ground-truth box; frames
    before it are written as NaN (with a warning). With ``--init`` the box belongs to the
    first frame, which must then be readable.
    """
    from .evaluation import cost_stats, evaluate_sequence
    from .geometry import iou
    from .sources import DEFAULT_FPS, frame_rate, usable_box
    from .tracker import Tracker, start_box

    show = args.show
    if show and not _has_display():
        raise TrackerInputError("--show needs a display (DISPLAY is not set); use --save-video instead")
    if args.select:
        if args.init is not None:
            raise TrackerInputError("give either --init or --select, not both")
        if not _has_display():
            raise TrackerInputError("--select needs a display to draw the box on (DISPLAY is not set); "
                                    "pass --init x,y,w,h instead")
    for flag, wanted in (("--show", show), ("--select", args.select)):
        if wanted and not opencv_has_windows():
            instead = "pass --init x,y,w,h" if flag == "--select" else "use --save-video"
            raise TrackerInputError(f"{flag}: {GUI_OPENCV}; or {instead}")
    outputs = [(flag, path) for flag, path in (("--out", args.out), ("--jsonl", args.jsonl),
                                               ("--save-video", args.save_video), ("--plot", args.plot)) if path]
    check_stdout_outputs(outputs)
    outputs = [(flag, path) for flag, path in outputs if path != STDOUT]
    for flag, path in outputs:
        check_output(path, flag)
    log_to = _log_stream(args)
    # The input first: its errors are cheap to find, building the tracker may not be
    # (the first use of a compiled backend exports and compiles).
    source = open_source(args)
    out = jsonl = writer = bar = None
    try:
        from .model import DEFAULT_MODEL

        # (--model "" is the current folder, as Tracker loads it)
        check_outputs_apart(outputs, source, [(DEFAULT_MODEL if args.model is None else args.model, "the model folder")] +
                            ([(args.artifacts, "the artifact set")] if args.artifacts is not None else []))
    except TrackerInputError:
        source.close()
        raise
    preds, gts, ms, oks, scores = [], [], [], [], []
    pace = None  # --realtime: (clock at the first tracked frame, its index, frame period)
    # A live source's frames arrive when the device delivers them; the ones it discards while
    # the tracker is busy never get an index, so its reported rate cannot pace by index alone.
    live = getattr(source, "live", False)
    stdout_closed = None  # index of the frame whose line found stdout closed
    stdout_why = "stdout was closed"  # (or its disk full)
    dropped = 0
    box = None
    size = None  # (h, w) of the first tracked frame
    waiting = []  # (index, why) of the frames before tracking starts
    pending = []  # ("out" | "jsonl", row) not yet written: every row until tracking starts
    start_pace = False
    off_size = []  # indices of the frames skipped for a size other than the first tracked frame's
    try:
        for w in source.warnings:
            log.warning("%s", w)
        n_warned = len(source.warnings)
        from_gt = args.init is None and not args.select
        if source.init_box is None and not args.select:
            raise TrackerInputError("no initial box: the sequence has no usable ground-truth box; pass --init x,y,w,h")
        if args.init is not None and getattr(source, "frame_size", None) is not None:
            start_box(source.init_box, source.frame_size)  # a box off a video's frames: before the model loads
        tracker = Tracker(args.model, backend=args.backend, device=args.device, seed=args.seed, artifacts=args.artifacts)
        writer = VideoOut(args.save_video, getattr(source, "fps", None)) if args.save_video else None
        try:
            total = len(source)
        except TypeError:
            total = None
        if args.max_frames is not None:
            total = min(total, args.max_frames) if total is not None else args.max_frames
        per_frame = args.verbose or (not args.quiet and not sys.stderr.isatty())
        # rows on stdout show the progress; a bar on the same terminal would run into them
        if not args.quiet and not per_frame and log_to is sys.stdout:
            from tqdm import tqdm

            bar = tqdm(total=total, unit="frame", file=sys.stderr)
        if stop is not None:
            stop.deferred = True
        read_from = time.perf_counter()
        for frame in source:
            if stop is not None and stop.signum is not None:
                break
            if args.max_frames is not None and frame.index >= args.max_frames:
                break
            arrived = time.perf_counter()
            if live and pace is not None and arrived - read_from > pace[2] / 2:
                # we waited for this frame: it is fresh, whatever its index says (the device
                # discarded frames during a stall, or runs slower than it reports)
                pace = (arrived, frame.index, pace[2])
            score, ok, t, tracked, was_dropped = float("nan"), False, 0.0, True, False
            late = pace is not None and time.perf_counter() > pace[0] + (frame.index - pace[1] + 1) * pace[2]
            if box is not None and late and frame.image is not None:
                # --realtime: this frame's successor is already due; drop it, keep the box
                dropped += 1
                shown, tracked, was_dropped = box, False, True
            elif box is None:
                if args.select and frame.image is not None:
                    start = _select_box(frame.image)
                else:
                    start = source.init_box if not from_gt else (frame.gt if usable_box(frame.gt) else None)
                if frame.image is None or start is None:
                    if not from_gt:
                        raise TrackerInputError(f"the first frame cannot be read: {frame.error}")
                    waiting.append((frame.index, frame.error if frame.image is None else None))
                    tracked = False
                    shown = np.full(4, np.nan)
                else:
                    try:
                        r = tracker.init(frame.image, start)
                    except TrackerInputError as e:
                        where = f"frame {frame.index}: " if from_gt else ""
                        hint = " (the box comes from the ground truth; pass --init x,y,w,h to override)" if from_gt else ""
                        raise TrackerInputError(f"{where}{e}{hint}") from None
                    box, ok, t = r.box, True, r.ms
                    shown = box
                    size = frame.image.shape[:2]
                    start_pace = args.realtime  # once the rows waiting for this frame are written
                    if waiting:
                        log.warning("tracking starts at frame %d; NaN rows for %s %s (%s)", frame.index,
                                    "frames" if len(waiting) > 1 else "frame", _ranges([i for i, _ in waiting]),
                                    _why_waiting(waiting))
            elif frame.image is None:
                log.warning("frame %d skipped: %s (keeping the last box)", frame.index, frame.error)
                shown, tracked = box, False
            elif frame.image.shape[:2] != size:
                if not off_size:  # the others are counted at the end: a resized video has thousands
                    log.warning("frame %d skipped: %dx%d pixels, not the %dx%d of the frame tracking started on "
                                "(keeping the last box)", frame.index, frame.image.shape[1], frame.image.shape[0],
                                size[1], size[0])
                off_size.append(frame.index)
                shown, tracked = box, False
            else:
                r = tracker.update(frame.image)
                box, score, ok, t = r.box, r.score, r.ok, r.ms
                shown = box
            preds.append(np.array(shown, dtype=np.float64))
            gts.append(frame.gt if frame.gt is not None else np.full(4, np.nan))
            if tracked:
                ms.append(t)
            if box is not None and tracked:
                oks.append(ok)
                scores.append(score)
            if args.out:
                pending.append(("out", box_line(shown)))
            if args.jsonl:
                pending.append(("jsonl", json.dumps({"frame": frame.index,
                                                     "box": [round(float(v), 2) if np.isfinite(v) else None
                                                             for v in shown],
                                                     "score": None if not np.isfinite(score) else round(score, 4),
                                                     "ok": bool(ok), "ms": round(t, 3),
                                                     **({"dropped": True} if was_dropped else {})})))
            # The files are opened once tracking has started, not before: a run that tracks
            # nothing (its box refused, no frame readable, interrupted while it waits for a
            # usable ground-truth box) leaves the files of an earlier run as they were. The
            # rows of the frames before it wait in ``pending``.
            if box is not None:
                if out is None and args.out:
                    out = _line_writer(args.out)
                if jsonl is None and args.jsonl:
                    jsonl = _line_writer(args.jsonl)
                for which, row in pending:
                    try:
                        (out if which == "out" else jsonl).write(row)
                    except StdoutClosed as e:  # the results' reader went away; the files still get this row
                        stdout_closed, stdout_why = frame.index, str(e)
                pending.clear()
            if start_pace:
                fps = frame_rate(getattr(source, "fps", None)) or DEFAULT_FPS
                pace, start_pace = (time.perf_counter(), frame.index, 1.0 / fps), False
            ov = float(iou(shown, frame.gt)) if frame.gt is not None and box is not None else float("nan")
            if per_frame:
                state = ("ok  " if ok else "lost") if tracked else ("drop" if was_dropped else "skip")
                line = (f"frame {frame.index} ({frame.index + 1}/{total or '?'})  score {score:7.3f}  {state}  "
                        f"{t:7.1f} ms")
                if np.isfinite(ov):
                    line += f"  iou {ov:.3f}"
                try:
                    print(line, file=log_to, flush=True)
                except OSError as e:  # a closed pipe, a hung-up terminal (EIO), a full disk
                    per_frame = False
                    if log_to is sys.stdout:
                        stdout_gone()
                        stdout_closed, stdout_why = frame.index, stdout_failure(e)
            elif bar is not None:
                bar.update(1)
                bar.set_postfix_str(f"score {score:.2f} {t:.0f} ms" + (f" iou {ov:.2f}" if np.isfinite(ov) else ""))
            if (args.save_video or show) and frame.image is not None:
                import cv2

                resized = size is not None and frame.image.shape[:2] != size
                # a resized frame's box belongs to the other size: not drawn
                img = draw(frame.image, np.full(4, np.nan) if resized else shown, None if resized else frame.gt,
                           score, ok, t, frame.index)
                if args.save_video:
                    writer.write(img)
                if show:
                    cv2.imshow("runtime.track", img)
                    if cv2.waitKey(1) & 0xFF in (27, ord("q")):
                        break
            elif args.save_video:
                writer.write(None, f"#{frame.index} could not be read")
            if stdout_closed is not None:
                break
            read_from = time.perf_counter()
        for w in source.warnings[n_warned:]:
            if not w.startswith("skipped frame"):  # skipped frames were reported as they came
                log.warning("%s", w)
        if len(off_size) > 1:
            ranges = _ranges(off_size).split(", ")
            listed = ", ".join(ranges[:5]) + (f" and {len(ranges) - 5} more ranges" if len(ranges) > 5 else "")
            log.warning("%d frames skipped for a size other than %dx%d: %s", len(off_size), size[1], size[0], listed)
    finally:
        if bar is not None:
            bar.close()
        for f in (out, jsonl):
            if f:
                f.close()
        if writer is not None:
            writer.close()
        source.close()
    interrupted = signal.Signals(stop.signum).name if stop is not None and stop.signum is not None else None
    # A reader of stdout that went away stops the run with an error, unless a signal stopped
    # it too (Ctrl-C reaches the whole pipeline, ``| tee`` first): that is an interruption.
    if stdout_closed is not None and not interrupted and box is None:
        raise StdoutClosed(_closed_message(args, stdout_closed, stdout_why))
    if interrupted and box is None:
        raise Interrupted(interrupted)  # nothing tracked yet: nothing to sum up
    if not preds:
        raise TrackerInputError("the input has no frames")
    if box is None:
        unread = [w for w in waiting if w[1] is not None]
        if len(unread) == len(waiting):
            raise TrackerInputError(f"nothing tracked: none of the {len(preds)} frames could be read "
                                    f"(first: {unread[0][1]})")
        hint = f"; {len(unread)} could not be read (first: {unread[0][1]})" if unread else ""
        raise TrackerInputError(f"nothing tracked: no readable frame has a usable ground-truth box{hint}; "
                                "pass --init x,y,w,h")
    if off_size and len(ms) == 1 and not interrupted and stdout_closed is None:  # the first box on every row
        raise TrackerInputError(f"only the first frame was tracked: the {len(off_size)} frames after it are not "
                                f"{size[1]}x{size[0]} pixels as it is; give frames of one size (the outputs hold "
                                "its box on every row)")
    summary = {"frames": len(preds), "cost": cost_stats(ms)}
    gt = np.array(gts)
    if np.isfinite(gt).any():
        s = evaluate_sequence(np.array(preds), gt)
        summary.update(auc=s.auc, precision=s.precision, mean_iou=s.mean_iou)
    summary["lost_frames"] = int(len(oks) - sum(oks))
    if args.realtime:
        summary["dropped_frames"] = dropped
    if args.plot:
        from .report import plot_scores

        try:
            plot_scores(scores, args.plot, ok=oks, title=f"Target score: {source.name}",
                        threshold=tracker.params.success_threshold)
        except OSError as e:
            raise TrackerInputError(f"cannot write --plot {args.plot}: {e.strerror or e}; the other outputs "
                                    "are complete") from None
    if waiting:
        summary["untracked_frames"] = len(waiting)
    summary["skipped_frames"] = len(preds) - len(waiting) - len(ms) - dropped
    # last, so that the plot is written whatever they say
    if writer is not None:
        writer.check()
    if stdout_closed is not None:
        if not interrupted:
            raise StdoutClosed(_closed_message(args, stdout_closed, stdout_why))
        summary["stdout_closed"], summary["stdout_why"] = stdout_closed, stdout_why
    if interrupted:
        summary["interrupted"] = interrupted
    return summary


def _closed_message(args, index: int, why: str = "stdout was closed") -> str:
    """The run stopped at frame ``index`` because stdout's reader went away (``why``)."""
    files = [f for f in (args.out, args.jsonl, args.save_video) if f and f != STDOUT]
    if STDOUT in (args.out, args.jsonl):  # the rows: that frame's did not get out
        return f"{why} at frame {index}; stopped there" + (
            f", with the output files holding frames 0-{index}" if files else "")
    return f"{why} at frame {index}; stopped there, with the outputs holding frames 0-{index}"


def _line_writer(path):
    """The writer of ``--out`` / ``--jsonl``: a file, or stdout for ``-``."""
    if not path:
        return None
    return StdoutLines() if path == STDOUT else LineWriter(path)


def _log_stream(args):
    """Where the per-frame log and the summary go: stdout, unless the results go there."""
    return sys.stderr if STDOUT in (args.out, args.jsonl) else sys.stdout


def _why_waiting(waiting, show: int = 3) -> str:
    """Why the frames before the start were not tracked: decode errors, missing boxes."""
    parts = [f"frame {i}: {why}" for i, why in waiting if why is not None][:show]
    boxless = [i for i, why in waiting if why is None]
    if boxless:
        parts.append(f"{'frames' if len(boxless) > 1 else 'frame'} {_ranges(boxless)}: no usable ground-truth box")
    more = sum(why is not None for _, why in waiting) - show
    return "; ".join(parts) + (f"; {more} more unreadable" if more > 0 else "")


def _ms(v) -> str:
    return "n/a" if v is None else f"{v:.1f} ms"


def _negative_init(argv):
    """``--init -20,-10,60,50`` (a box starting left of the image) as ``--init=-20,...``:
    argparse would take the value for an unknown option."""
    out, i = [], 0
    while i < len(argv):
        a = argv[i]
        v = argv[i + 1] if i + 1 < len(argv) else ""
        if a == "--init" and len(v) > 1 and v[0] == "-" and (v[1].isdigit() or v[1] == "."):
            out.append(f"--init={v}")
            i += 2
        else:
            out.append(a)
            i += 1
    return out


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # OpenCV's own log lines (a codec it lacks, a camera index out of range, a stalled stream)
    # would precede this tool's one-line messages. OpenCV reads OPENCV_LOG_LEVEL when it
    # loads, which this module's imports already did: set its level too. OPENCV_LOG_LEVEL=INFO
    # shows them.
    if "OPENCV_LOG_LEVEL" not in os.environ:
        import cv2

        os.environ["OPENCV_LOG_LEVEL"] = "SILENT"  # and for child processes
        cv2.setLogLevel(0)  # SILENT
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # FFmpeg's own (a stream URL that does not resolve): quiet
    args = build_parser().parse_args(_negative_init(argv))
    cli_logging()
    stop = StopRequest()
    old = stop.install()  # None off the main thread: signals stay as they are
    try:
        s = run(args, stop=stop if old is not None else None)
        return _report(s, stop, _log_stream(args))
    except (KeyboardInterrupt, Exception) as e:
        name = stopped_by(e, stop)  # first: a signal inside TVM can come back as another error
        if name is not None:
            _to_stderr(f"interrupted ({name})")
            return 128 + getattr(signal, name)
        if not isinstance(e, (TrackerInputError, StdoutClosed)):
            raise
        one_line = " ".join(line.strip() for line in str(e).splitlines() if line.strip())
        _to_stderr(f"error: {one_line}")
        return 2
    finally:  # a first signal stays deferred until the summary is out
        if old is not None:
            stop.deferred = False
            StopRequest.restore(old)


def _to_stderr(line: str) -> None:
    """A closing line on stderr; where stderr shares a pipe whose reader went away
    (``2>&1 | head``) there is nowhere to say it, and the exit status says it instead."""
    try:
        print(line, file=sys.stderr)
    except OSError:
        pass


def _report(s: dict, stop: StopRequest, stream) -> int:
    """Print the summary line; the exit status (128 + a signal that stopped the run)."""
    c = s["cost"]
    line = (f"frames {s['frames']}  first {c['first_ms']:.0f} ms  median {_ms(c['median_ms'])}  "
            f"p95 {_ms(c['p95_ms'])}  max {_ms(c['max_ms'])}  lost {s['lost_frames']}")
    if s.get("skipped_frames"):
        line += f"  skipped {s['skipped_frames']}"
    if "dropped_frames" in s:
        line += f"  dropped {s['dropped_frames']}"
    if s.get("untracked_frames"):
        line += f"  untracked {s['untracked_frames']}"
    if "auc" in s:
        line += f"  AUC {s['auc']:.3f}  precision@20 {s['precision']:.3f}  mean IoU {s['mean_iou']:.3f}"
    name = s.get("interrupted") or (signal.Signals(stop.signum).name if stop.signum is not None else None)
    try:
        print(line, file=stream, flush=True)
    except OSError as e:  # a closed pipe, a hung-up terminal (EIO), a full disk
        if stream is sys.stdout:
            stdout_gone()
            if not name:
                raise StdoutClosed(f"{stdout_failure(e, reason=True)} before the summary; the outputs are "
                                   "complete") from None
        # stderr gone, the results went to stdout whole: only the exit status can tell more
    if name:
        closed = f"; {s.get('stdout_why', 'stdout was closed')} at frame {s['stdout_closed']}" \
            if "stdout_closed" in s else ""
        _to_stderr(f"interrupted ({name}) after {s['frames']} frames; the outputs hold frames 0-{s['frames'] - 1}"
                   f"{closed}")
        return 128 + getattr(signal, name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
