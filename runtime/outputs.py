"""Where the tools write: checks made before anything slow runs, so a bad path costs
nothing and a one-line error says what to do, and the result rows and the line writer."""
from __future__ import annotations

import os
import sys
from pathlib import Path

from .errors import TrackerInputError
from .sources import DEFAULT_FPS, frame_rate
from .stopping import StdoutClosed, stdout_failure, stdout_gone

STDOUT = "-"  # as an output path: the result rows go to stdout
STDOUT_FLAGS = ("--out", "--jsonl")  # the line outputs; a video or a PNG is no stream of lines


def check_output_path(path, flag: str) -> None:
    """A file the tool will write: not a folder, in a folder that exists and is writable."""
    p = Path(path).expanduser()
    if p.is_dir():
        raise TrackerInputError(f"{flag} {p} is a folder; give a file path")
    parent = p.parent
    if parent.exists() and not parent.is_dir():
        raise TrackerInputError(f"{flag} {p}: {parent} is a file, not a folder; give a path in a folder")
    if not parent.is_dir():
        raise TrackerInputError(f"{flag} {p}: folder {parent} does not exist; create it first")
    if not os.access(parent, os.W_OK):
        raise TrackerInputError(f"{flag} {p}: folder {parent} is not writable")


def check_output_folder(path, flag: str) -> None:
    """A folder the tool will create or write into: not a file, and creatable and writable."""
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise TrackerInputError(f"{flag} {p} is a file; give a folder")
    nearest = next((q for q in [p, *p.parents] if q.exists()), None)
    if nearest is None or not nearest.is_dir() or not os.access(nearest, os.W_OK | os.X_OK):
        raise TrackerInputError(f"{flag} {p} cannot be created or written (nearest existing: {nearest}); "
                                "give a writable folder")


def box_line(box) -> str:
    """One result row, OTB convention: ``x,y,w,h`` in pixels, 2 decimals, ``nan`` where the
    frame has no box (before the start, or a lost frame). The toolkits read it with numpy."""
    return ",".join(f"{float(v):.2f}" for v in box)


VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".m4v", ".mkv")  # containers OpenCV writes with the mp4v codec


VIDEO_FOURCC = "mp4v"


def open_video_writer(path, fps: float, size):
    """OpenCV's writer for ``path`` (``size`` = (w, h)), or None where it cannot open one."""
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*VIDEO_FOURCC), fps, size)
    if writer.isOpened():
        return writer
    writer.release()
    return None


def check_output(path, flag: str) -> None:
    """Refuse an output path that cannot be written, before anything slow runs. A video is
    tried with a small writer on a scratch name beside it (deleted again): OpenCV's writer
    can only be opened with the frame size, known after the first frame is tracked."""
    p = Path(path).expanduser()
    if flag == "--save-video" and not p.is_dir() and p.suffix.lower() not in VIDEO_SUFFIXES:
        raise TrackerInputError(f"--save-video {p}: OpenCV cannot write a video named {p.suffix or 'without an extension'}; "
                                f"use {' or '.join(VIDEO_SUFFIXES[:2])}")
    if flag == "--plot" and (p.is_file() or not p.exists()) and p.suffix.lower() != ".png":  # (a device: as asked)
        raise TrackerInputError(f"--plot {p}: the plot is a PNG image; give a name ending in .png")
    check_output_path(p, flag)
    if flag == "--save-video":
        probe = p.with_name(f".{p.stem}.probe{os.getpid()}{p.suffix}")
        writer = open_video_writer(probe, DEFAULT_FPS, (16, 16))
        try:
            if writer is None:
                raise TrackerInputError(f"--save-video {p}: OpenCV cannot open a video writer there "
                                        f"({VIDEO_FOURCC} in {p.suffix}); use a .mp4 or .avi path in a writable folder")
            writer.release()
        finally:
            try:
                probe.unlink()
            except OSError:
                pass


def check_stdout_outputs(outputs) -> None:
    """``-`` (stdout) for at most one of the line outputs, and for no other output."""
    flags = [flag for flag, path in outputs if path == STDOUT]
    for flag in flags:
        if flag not in STDOUT_FLAGS:
            raise TrackerInputError(f"{flag} -: only --out and --jsonl can write to stdout; give a file "
                                    "(./- for a file named '-')")
    if len(flags) > 1:
        raise TrackerInputError(f"{' and '.join(flags)} both write to stdout (-); give one of them a file")


def check_outputs_apart(outputs, source, folders=()) -> None:
    """Refuse two outputs on one file, an output on one of the input's files (the ground
    truth, a frame, the video), or one inside ``folders`` ((folder, what) pairs: the model, an
    artifact set, whose files are checked by sha256): each would silently destroy what is there."""
    named = {}
    for flag, path in outputs:
        p = Path(path).expanduser().resolve()
        if p in named:
            raise TrackerInputError(f"{named[p]} and {flag} both name {p}; give each output its own file")
        named[p] = flag
    roots = [(Path(folder).expanduser().resolve(), what) for folder, what in folders]
    for root, what in roots:
        for p, flag in named.items():
            if root in p.parents:
                raise TrackerInputError(f"{flag} {p} is inside {what} {root}, whose files it would overwrite or "
                                        "join; write the output somewhere else")
    inputs = {Path(p).resolve() for p in (getattr(source, "path", None), getattr(source, "groundtruth_path", None)) if p}
    folder = getattr(source, "folder", None)
    if folder:  # every target's ground truth of the folder (OTB's Jogging: groundtruth_rect.1.txt, .2.txt)
        inputs |= {p.resolve() for p in Path(folder).glob("groundtruth*.txt")}
    # frames: resolve each folder once (a long sequence has tens of thousands of frames)
    by_dir = {}
    for f in getattr(source, "frame_paths", ()):
        d, name = os.path.split(f)
        by_dir.setdefault(d, set()).add(name)
    frames = {}
    for d, names in by_dir.items():
        frames.setdefault(Path(d or ".").resolve(), set()).update(names)
    for p, flag in named.items():
        if p in inputs or p.name in frames.get(p.parent, ()):
            raise TrackerInputError(f"{flag} {p} is one of the input files and would be overwritten; "
                                    "write the output somewhere else")
    # A hard link has its own path: only the file's identity tells (an existing output with
    # more than one link is rare, so the inputs are looked at only then).
    linked = {}  # (device, inode) -> (flag, path)
    for p, flag in named.items():
        st = _stat(p)
        if st is not None and st.st_nlink > 1:
            key = (st.st_dev, st.st_ino)
            if key in linked:
                raise TrackerInputError(f"{linked[key][0]} and {flag} name one file (hard links); give each output "
                                        "its own file")
            linked[key] = (flag, p)
    if linked:
        files = [(f, f"the input file {f}") for f in (*inputs, *(d / n for d, names in frames.items() for n in names))]
        files += [(f, f"{f}, a file of {what}") for root, what in roots if root.is_dir() for f in root.rglob("*")]
        for f, label in files:
            st = _stat(f)
            if st is not None and (st.st_dev, st.st_ino) in linked:
                flag, p = linked[(st.st_dev, st.st_ino)]
                raise TrackerInputError(f"{flag} {p} is a hard link to {label} and would overwrite it; "
                                        "write the output somewhere else")


def _stat(path):
    try:
        return os.stat(path)
    except OSError:
        return None


class LineWriter:
    """Writes whole lines, each with one unbuffered ``write`` call, so the file on disk
    always ends with a complete line: a crash or a kill at frame N leaves frames 0..N-1."""

    def __init__(self, path):
        self.path = str(path)
        try:
            self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
        except OSError as e:
            raise TrackerInputError(f"cannot write {self.path}: {e.strerror or e}") from None

    def write(self, line: str) -> None:
        data = memoryview((line + "\n").encode())
        try:
            while data:  # a regular file takes a short line in one call; loop for the rare partial write
                data = data[os.write(self.fd, data):]
        except OSError as e:
            raise TrackerInputError(f"cannot write {self.path}: {e.strerror or e}") from None

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class StdoutLines:
    """:class:`LineWriter` for stdout (``--out -``): a line at a time, flushed, so a reader
    downstream gets each frame's row as it is tracked. A reader that went away is
    :class:`StdoutClosed`, and stdout then points at /dev/null."""

    path = "stdout"

    def write(self, line: str) -> None:
        try:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()
        except OSError as e:  # a closed pipe, a hung-up terminal (EIO), a full disk
            stdout_gone()
            raise StdoutClosed(stdout_failure(e)) from None

    def close(self) -> None:
        try:
            sys.stdout.flush()
        except OSError:
            stdout_gone()


class VideoOut:
    """The annotated video: one picture per input frame, at the source's frame rate, so the
    video's time line is the input's and picture i is frame i, as row i of ``--out`` is.

    OpenCV's writer silently drops a picture of another size than its first, which would
    shift every later picture; a frame that changed size is scaled to the video's size, and a
    frame that could not be read becomes a black picture saying so (those before the first
    readable frame are written once its size is known).
    """

    def __init__(self, path, fps: float | None = None):
        self.path = str(path)
        self.fps = frame_rate(fps) or DEFAULT_FPS
        self._writer = None
        self._size = None  # (w, h)
        self._pending = []  # notes of the unreadable frames before the first picture
        self.pictures = 0  # handed to the writer, to check the finished file against

    def write(self, image, note: str | None = None) -> None:
        """Add frame ``image`` (BGR), or, when it is None, a black picture with ``note``."""
        import cv2

        if image is None:
            if self._writer is None:
                self._pending.append(note)
                return
            self._writer.write(self._blank(note))
            self.pictures += 1
            return
        if self._writer is None:
            h, w = image.shape[:2]
            self._writer = open_video_writer(self.path, self.fps, (w, h))
            if self._writer is None:
                raise TrackerInputError(f"cannot write video {self.path}; use a .mp4 or .avi path in a writable folder")
            self._size = (w, h)
            for n in self._pending:
                self._writer.write(self._blank(n))
            self.pictures += len(self._pending)
            self._pending = []
        if (image.shape[1], image.shape[0]) != self._size:
            image = cv2.resize(image, self._size, interpolation=cv2.INTER_AREA)
        self._writer.write(image)
        self.pictures += 1

    def _blank(self, note):
        import cv2
        import numpy as np

        img = np.zeros((self._size[1], self._size[0], 3), np.uint8)
        if note:
            cv2.putText(img, note, (5, 15), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
        return img

    def close(self) -> None:
        """Finish the file (an mp4 is unplayable until its index is written here)."""
        if self._writer is not None:
            self._writer.release()
            self._writer = None

    def check(self) -> None:
        """After :meth:`close`: the file must hold every picture. OpenCV's writer ignores
        write errors (a full disk, a file-size limit), so the only sign of one is a file
        that reads back short or not at all."""
        import cv2

        if not self.pictures:
            return
        cap = cv2.VideoCapture(self.path)
        n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) if cap.isOpened() else 0
        cap.release()
        if n != self.pictures:
            raise TrackerInputError(f"--save-video {self.path} is incomplete: {n} of {self.pictures} pictures read "
                                    "back (a full disk?); the other outputs are complete")
