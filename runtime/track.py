"""Track one object through a sequence, a video, images or a camera.

    python -m runtime.track --demo
    python -m runtime.track --sequence DIR [--out results.txt] [--save-video out.mp4]
    python -m runtime.track --video clip.mp4 --init x,y,w,h
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from .errors import TrackerInputError

log = logging.getLogger("runtime.track")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m runtime.track", description="MDNet-family single-object tracker.",
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="Exactly one input: --demo, --sequence, --video, --images or --camera.")
    src = ap.add_argument_group("input")
    src.add_argument("--demo", action="store_true", help="track the built-in synthetic demo sequence (300 frames)")
    src.add_argument("--sequence", metavar="DIR", help="OTB or VOT folder; its first ground-truth box initialises")
    src.add_argument("--video", metavar="FILE", help="a video file OpenCV can read (needs --init)")
    src.add_argument("--images", metavar="GLOB", help="an image glob such as 'frames/*.jpg' (needs --init)")
    src.add_argument("--camera", metavar="N|URL", help="camera index or stream URL (needs --init)")
    src.add_argument("--init", metavar="X,Y,W,H", help="initial box in pixels of the first frame")
    m = ap.add_argument_group("model and backend")
    m.add_argument("--model", default=None, help="model folder (default: the shipped models/default)")
    m.add_argument("--backend", default="mxnet", choices=("mxnet", "onnxruntime", "tvm"),
                   help="feature backend (default mxnet); the fc head always runs in MXNet")
    m.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    m.add_argument("--artifacts", metavar="DIR", default=None, help="prebuilt compiled artifact set (onnxruntime/tvm)")
    m.add_argument("--seed", type=int, default=0, help="random seed (same seed, same boxes)")
    o = ap.add_argument_group("output")
    o.add_argument("--out", metavar="FILE", help="write one x,y,w,h line per frame (OTB convention)")
    o.add_argument("--jsonl", metavar="FILE", help="write one JSON object per frame: frame, box, score, ok, ms")
    o.add_argument("--save-video", metavar="FILE", help="write an annotated video (box, score, ms; ground truth when known)")
    o.add_argument("--show", action="store_true", help="show a live window (needs a display)")
    o.add_argument("--max-frames", type=int, default=None, help="stop after this many frames")
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
    if args.init is None:
        raise TrackerInputError(f"--{given[0]} needs --init x,y,w,h (the target's box in the first frame)")
    if args.video:
        return sources.VideoSource(args.video, init_box=args.init, on_bad_frame="skip")
    if args.images:
        return sources.ImageGlobSource(args.images, init_box=args.init, on_bad_frame="skip")
    cam = int(args.camera) if str(args.camera).isdigit() else args.camera
    return sources.CameraSource(cam, init_box=args.init, on_bad_frame="skip")


class LineWriter:
    """Appends whole lines and flushes each, so a crash never leaves half a line."""

    def __init__(self, path):
        self.f = open(path, "w", buffering=1)

    def write(self, line: str) -> None:
        self.f.write(line + "\n")
        self.f.flush()

    def close(self) -> None:
        self.f.close()


def draw(frame, box, gt, score, ok, ms, index):
    import cv2

    img = frame.copy()
    if gt is not None and np.all(np.isfinite(gt)):
        x, y, w, h = (int(round(v)) for v in gt)
        cv2.rectangle(img, (x, y), (x + w, y + h), (0, 0, 255), 1)
    x, y, w, h = (int(round(v)) for v in box)
    cv2.rectangle(img, (x, y), (x + w, y + h), (0, 255, 0) if ok else (0, 200, 255), 2)
    cv2.putText(img, f"#{index} score {score:.2f} {ms:.1f} ms", (5, 15), cv2.FONT_HERSHEY_SIMPLEX, 0.45,
                (255, 255, 255), 1, cv2.LINE_AA)
    return img


def run(args) -> dict:
    from .evaluation import cost_stats, evaluate_sequence
    from .geometry import iou
    from .tracker import Tracker

    show = args.show
    if show:
        import os

        if not os.environ.get("DISPLAY") and sys.platform.startswith("linux"):
            raise TrackerInputError("--show needs a display (DISPLAY is not set); use --save-video instead")
    model = args.model
    if model is None:
        from .model import DEFAULT_MODEL

        model = DEFAULT_MODEL
    tracker = Tracker(model, backend=args.backend, device=args.device, seed=args.seed, artifacts=args.artifacts)
    source = open_source(args)
    for w in source.warnings:
        log.warning("%s", w)
    out = jsonl = writer = bar = None
    preds, gts, ms, scores, oks = [], [], [], [], []
    box = None
    try:
        out = LineWriter(args.out) if args.out else None
        jsonl = LineWriter(args.jsonl) if args.jsonl else None
        try:
            total = len(source)
        except TypeError:
            total = None
        if args.max_frames is not None:
            total = min(total, args.max_frames) if total is not None else args.max_frames
        per_frame = args.verbose or (not args.quiet and not sys.stderr.isatty())
        if not args.quiet and not per_frame:
            from tqdm import tqdm

            bar = tqdm(total=total, unit="frame", file=sys.stderr)
        for frame in source:
            if args.max_frames is not None and frame.index >= args.max_frames:
                break
            if frame.image is None:
                if box is None:
                    raise TrackerInputError(f"the first frame cannot be read: {frame.error}")
                log.warning("frame %d skipped: %s (keeping the last box)", frame.index, frame.error)
                score, ok, t = float("nan"), False, 0.0
            elif box is None:
                init = source.init_box
                if init is None:
                    raise TrackerInputError("no initial box: the sequence has no ground truth for its first frame; pass --init x,y,w,h")
                r = tracker.init(frame.image, init)
                box, score, ok, t = r.box, float("nan"), True, r.ms
            else:
                r = tracker.update(frame.image)
                box, score, ok, t = r.box, r.score, r.ok, r.ms
            preds.append(box.copy())
            gts.append(frame.gt if frame.gt is not None else np.full(4, np.nan))
            ms.append(t)
            scores.append(score)
            oks.append(ok)
            if out:
                out.write(",".join(f"{v:.2f}" for v in box))
            if jsonl:
                jsonl.write(json.dumps({"frame": frame.index, "box": [round(float(v), 2) for v in box],
                                        "score": None if not np.isfinite(score) else round(score, 4),
                                        "ok": bool(ok), "ms": round(t, 3)}))
            ov = float(iou(box, frame.gt)) if frame.gt is not None else float("nan")
            if per_frame:
                line = f"frame {frame.index + 1}/{total or '?'}  score {score:7.3f}  {'ok  ' if ok else 'lost'}  {t:7.1f} ms"
                if np.isfinite(ov):
                    line += f"  iou {ov:.3f}"
                print(line, flush=True)
            elif bar is not None:
                bar.update(1)
                bar.set_postfix_str(f"score {score:.2f} {t:.0f} ms" + (f" iou {ov:.2f}" if np.isfinite(ov) else ""))
            if (args.save_video or show) and frame.image is not None:
                import cv2

                img = draw(frame.image, box, frame.gt, score, ok, t, frame.index)
                if args.save_video:
                    if writer is None:
                        writer = cv2.VideoWriter(args.save_video, cv2.VideoWriter_fourcc(*"mp4v"), 30,
                                                 (img.shape[1], img.shape[0]))
                        if not writer.isOpened():
                            raise TrackerInputError(f"cannot write video {args.save_video}; use a .mp4 or .avi path in a writable folder")
                    writer.write(img)
                if show:
                    cv2.imshow("runtime.track", img)
                    if cv2.waitKey(1) & 0xFF in (27, ord("q")):
                        break
    finally:
        if bar is not None:
            bar.close()
        for f in (out, jsonl):
            if f:
                f.close()
        if writer is not None:
            writer.release()
        source.close()
    if not preds:
        raise TrackerInputError("the input has no frames")
    summary = {"frames": len(preds), "cost": cost_stats(ms)}
    gt = np.array(gts)
    if np.isfinite(gt).any():
        s = evaluate_sequence(np.array(preds), gt)
        summary.update(auc=s.auc, precision=s.precision, mean_iou=s.mean_iou)
    summary["lost_frames"] = int(len(oks) - sum(oks))
    return summary


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    if args.max_frames is not None and args.max_frames < 1:
        print("error: --max-frames must be at least 1", file=sys.stderr)
        return 2
    try:
        s = run(args)
    except TrackerInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    c = s["cost"]
    line = (f"frames {s['frames']}  first {c['first_ms']:.0f} ms  median {c['median_ms'] or 0:.1f} ms  "
            f"p95 {c['p95_ms'] or 0:.1f} ms  max {c['max_ms'] or 0:.1f} ms  lost {s['lost_frames']}")
    if "auc" in s:
        line += f"  AUC {s['auc']:.3f}  precision@20 {s['precision']:.3f}  mean IoU {s['mean_iou']:.3f}"
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
