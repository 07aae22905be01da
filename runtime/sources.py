"""Sequence sources: OTB / VOT folders, video files, image globs and cameras behind one interface.

Every source yields :class:`Frame` objects in order, one at a time (sequences can be long,
so nothing is decoded ahead), with the image already normalised by
:func:`runtime.imageops.to_bgr8`. Every problem a user can fix (missing folder, malformed
ground-truth row, corrupt frame, camera that does not open) raises
:class:`runtime.errors.SequenceError` naming the file and, where it applies, the line.

Ground truth is an ``(N, 4)`` float64 array of ``x, y, w, h`` rows aligned with the frames;
a NaN row means the target is absent in that frame (the evaluation skips it).
"""
from __future__ import annotations

import glob as _glob
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import cv2
import numpy as np

from runtime.errors import SequenceError, TrackerInputError
from runtime.geometry import is_valid_box
from runtime.imageops import to_bgr8

__all__ = [
    "Frame",
    "SequenceSource",
    "FileSequenceSource",
    "OTBSequence",
    "VOTSequence",
    "VideoSource",
    "ImageGlobSource",
    "CameraSource",
    "open_sequence_folder",
    "parse_box",
    "read_image",
    "load_groundtruth",
    "natural_key",
    "IMAGE_EXTENSIONS",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
_BAD_FRAME_MODES = ("raise", "skip")
# A video whose decoder fails this many frames in a row has ended (or is unreadable from
# there on); fewer failures followed by a good frame are skipped frames in the middle.
MAX_VIDEO_GAP = 30
MAX_GLOB_MATCHES = 1_000_000  # more paths than any image sequence: a pattern too wide


@dataclass
class Frame:
    """One frame of a sequence.

    ``image`` is HxWx3 uint8 BGR, or None only when the frame could not be read and the
    source runs with ``on_bad_frame="skip"`` (then ``error`` says why). ``gt`` is the
    ``(4,)`` float64 ``x, y, w, h`` box (all NaN = target absent) or None when the source
    has no ground truth.
    """

    index: int
    image: np.ndarray | None
    gt: np.ndarray | None = None
    path: str | None = None
    error: str | None = None


# --------------------------------------------------------------------------- helpers


def natural_key(name: str):
    """Sort key that orders ``img2.jpg`` before ``img10.jpg`` (digit runs compare as numbers)."""
    parts = re.split(r"(\d+)", str(name))
    # re.split with one capture group alternates text, digits, text, ...: the positions
    # line up between names, so ints are only ever compared with ints.
    return [int(p) if i % 2 else p.lower() for i, p in enumerate(parts)], str(name)


def _is_truncated_jpeg(data: np.ndarray) -> bool:
    """True when a JPEG stream has no end-of-image marker after its last scan.

    libjpeg decodes a truncated file anyway (the missing part comes out grey) and only
    prints a warning, so ``imdecode`` alone cannot tell. 0xFFD9 / 0xFFDA cannot occur inside
    entropy-coded data (0xFF is byte-stuffed), and an embedded EXIF thumbnail's markers come
    before the main image's last scan, so comparing the last positions is reliable.
    """
    raw = data.tobytes()
    if not raw.startswith(b"\xff\xd8"):
        return False
    return raw.rfind(b"\xff\xd9") < raw.rfind(b"\xff\xda")


def read_image(path) -> np.ndarray:
    """Read an image file as HxWx3 uint8 BGR (grey, RGBA and 16-bit files are converted).

    Raises :class:`SequenceError` naming the file when it is missing, unreadable, corrupt
    or truncated. The bytes are read with numpy and decoded with ``cv2.imdecode`` (same
    decoder as ``cv2.imread(path, IMREAD_UNCHANGED)``), which also works for non-ASCII
    paths on Windows and lets a truncated JPEG be told apart from a complete one.
    """
    path = str(path)
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise SequenceError(f"cannot read image {path}: {exc.strerror or exc}") from exc
    if data.size == 0:
        raise SequenceError(f"cannot decode image {path}: the file is empty")
    try:
        image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:
        raise SequenceError(f"cannot decode image {path}: {exc}") from exc
    if image is None:
        raise SequenceError(f"cannot decode image {path}: corrupt or not an image file")
    if _is_truncated_jpeg(data):
        raise SequenceError(f"cannot decode image {path}: truncated JPEG (no end-of-image marker)")
    try:
        return to_bgr8(image)
    except TrackerInputError as exc:
        raise SequenceError(f"cannot use image {path}: {exc}") from exc


def _box_from_user(box) -> np.ndarray | None:
    """Validate a user-given init box (string or 4 numbers); None stays None."""
    if box is None:
        return None
    if isinstance(box, str):
        return parse_box(box)
    try:
        raw = np.asarray(box)
        b = np.asarray(box, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise TrackerInputError(f"init box must be 4 numbers x,y,w,h, got {box!r}") from exc
    # (4,) or one row (1, 4), as runtime.tracker.start_box takes it: a (2, 2) corner pair
    # flattened would be read as x,y,w,h, and booleans are no coordinates
    if b.shape not in ((4,), (1, 4)) or raw.dtype == np.bool_:
        raise TrackerInputError(f"init box must be 4 numbers x,y,w,h, got {box!r}")
    return _check_box(b.reshape(4), repr(box))


def _check_box(b: np.ndarray, shown: str) -> np.ndarray:
    if b.shape != (4,):
        raise TrackerInputError(f"init box must be 4 numbers x,y,w,h, got {shown}")
    if not np.all(np.isfinite(b)):
        raise TrackerInputError(f"init box must be finite numbers x,y,w,h, got {shown}")
    if b[2] <= 0 or b[3] <= 0:
        raise TrackerInputError(f"init box needs a positive width and height, got {shown}")
    return b.astype(np.float64)


def parse_box(text) -> np.ndarray:
    """Parse a user-given box such as ``"10,20,30,40"`` or ``"10 20 30 40"`` into ``(4,)`` float64.

    Raises :class:`TrackerInputError` unless it is exactly four finite numbers with a
    positive width and height.
    """
    if not isinstance(text, str):
        raise TrackerInputError(f'init box must be a string "x,y,w,h", got {text!r}')
    # one comma (with any spaces) or spaces alone between numbers: "40,,40,31,41" has an empty field
    tokens = re.split(r"\s*,\s*|\s+", re.sub(r"[\s,]*,$", "", text.strip()))  # a trailing comma is harmless
    if len(tokens) != 4:
        raise TrackerInputError(
            f'init box must be 4 numbers "x,y,w,h" (comma or space separated), got {text!r}'
        )
    # plain ASCII decimals: float() also takes "1_0" and other scripts' digits
    if not all(_NUMBER.fullmatch(t) for t in tokens):
        raise TrackerInputError(f'init box must be 4 numbers "x,y,w,h" such as 10,20,30.5,40, got {text!r}')
    return _check_box(np.array([float(t) for t in tokens], dtype=np.float64), repr(text))


_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|[+-]?(?:nan|inf|infinity)",
                     re.IGNORECASE)


def load_groundtruth(path, allow_polygon: bool = False) -> np.ndarray:
    """Parse a ground-truth file into an ``(N, 4)`` float64 ``x, y, w, h`` array.

    Values may be separated by commas, tabs or spaces (mixed allowed). A row with any NaN
    (any spelling: ``NaN``, ``nan``) is stored as all-NaN: target absent. Blank trailing
    lines are ignored. With ``allow_polygon`` (VOT), 8-value rows ``x1,y1,...,x4,y4`` become
    their axis-aligned bounding box, and VOT's absent markers (a single ``0`` special code
    or an all-zero row) become NaN rows. Anything else raises :class:`SequenceError` with
    ``<file>:<line>`` in the message.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise SequenceError(f"{path}: not a text file ({exc.reason})") from exc
    except OSError as exc:
        raise SequenceError(f"cannot read ground truth {path}: {exc.strerror or exc}") from exc
    expected = "4 values x,y,w,h or 8 values x1,y1,...,x4,y4" if allow_polygon else "4 values x,y,w,h"
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    rows = []
    for lineno, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line:
            raise SequenceError(
                f"{path}:{lineno}: expected {expected}, got a blank line before the end of the file"
            )
        if allow_polygon and line.lower().startswith("m"):
            raise SequenceError(
                f"{path}:{lineno}: expected {expected}, got a VOT segmentation mask row "
                "(masks are not supported; use the bounding-box ground truth)"
            )
        tokens = re.split(r"\s*,\s*|\s+", line.rstrip(",").strip())
        try:
            values = [float(t) for t in tokens]
        except ValueError:
            bad = next(t for t in tokens if not _is_float(t))
            raise SequenceError(
                f"{path}:{lineno}: expected {expected}, got non-numeric value {bad!r} in {line!r}"
            ) from None
        arr = np.array(values, dtype=np.float64)
        if np.isinf(arr).any():
            raise SequenceError(f"{path}:{lineno}: expected {expected}, got an infinite value in {line!r}")
        if allow_polygon and len(values) == 1 and values[0] == 0:
            rows.append(np.full(4, np.nan))  # VOT special code: no region in this frame
            continue
        if len(values) == 4:
            box = arr
        elif allow_polygon and len(values) == 8:
            xs, ys = arr[0::2], arr[1::2]
            box = np.array([xs.min(), ys.min(), xs.max() - xs.min(), ys.max() - ys.min()])
        else:
            raise SequenceError(f"{path}:{lineno}: expected {expected}, got {len(values)}: {line!r}")
        if np.isnan(arr).any() or (allow_polygon and not np.any(arr)):
            box = np.full(4, np.nan)
        elif box[2] < 0 or box[3] < 0:
            raise SequenceError(f"{path}:{lineno}: negative width or height in {line!r}; rows are x,y,w,h "
                                "(is the file x1,y1,x2,y2?)")
        rows.append(box)
    if not rows:
        return np.zeros((0, 4), dtype=np.float64)
    return np.vstack(rows).astype(np.float64)


def _is_float(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def _frame_entry(p: Path) -> bool:
    """A file, or a link, that may be a frame. A broken link still counts: it is a frame
    that cannot be read (skipped with a warning), not one to drop silently, which would
    shift every later frame against its ground-truth row."""
    return p.is_file() or p.is_symlink()


def _list_images(folder: Path) -> list[Path]:
    """Image files (and links, even broken ones) directly in ``folder``, natural-sorted;
    hidden files (``._x.jpg``) and folders named like images skipped."""
    try:
        files = [
            p
            for p in folder.iterdir()
            if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".") and _frame_entry(p)
        ]
    except OSError as exc:
        raise SequenceError(f"cannot list {folder}: {exc.strerror or exc}; check its permissions") from None
    return sorted(files, key=lambda p: natural_key(p.name))


def _frame_ranges(start: int, stop: int) -> str:
    return f"frame {start}" if stop - start == 1 else f"frames {start}-{stop - 1}"


def usable_box(box) -> bool:
    """A ground-truth box tracking can start from: present, finite, with w and h > 0."""
    return box is not None and is_valid_box(box)


def _first_valid(boxes: np.ndarray | None) -> np.ndarray | None:
    if boxes is None:
        return None
    for row in boxes:
        if usable_box(row):
            return row.copy()
    return None


# --------------------------------------------------------------------------- base classes


class SequenceSource:
    """Base of every sequence source.

    Subclasses implement :meth:`_frames`. ``on_bad_frame`` says what a frame that cannot be
    decoded does: ``"raise"`` raises :class:`SequenceError` naming the file, ``"skip"``
    yields ``Frame(image=None, error=...)`` and goes on, so frame indices stay aligned with
    the ground truth. ``warnings`` collects human-readable notes (length mismatches,
    skipped frames, a video that ended early) for the CLI to print.
    """

    def __init__(self, name: str, init_box=None, on_bad_frame: str = "raise"):
        if on_bad_frame not in _BAD_FRAME_MODES:
            raise TrackerInputError(
                f"on_bad_frame must be one of {', '.join(_BAD_FRAME_MODES)}, got {on_bad_frame!r}"
            )
        self.name = name
        self.on_bad_frame = on_bad_frame
        self.warnings: list[str] = []
        self._user_box = _box_from_user(init_box)
        self._closed = False

    # -- interface
    @property
    def groundtruth(self) -> np.ndarray | None:
        """``(N, 4)`` float64 boxes aligned with the frames, or None when none are known."""
        return None

    @property
    def init_box(self) -> np.ndarray | None:
        """The box to start tracking from: the user's box if given, else the first usable
        ground-truth row (finite, w and h > 0); None if neither exists."""
        if self._user_box is not None:
            return self._user_box.copy()
        return _first_valid(self.groundtruth)

    def __iter__(self) -> Iterator[Frame]:
        if self._closed:
            raise SequenceError(f"sequence {self.name} is closed")
        return self._frames()

    def _frames(self) -> Iterator[Frame]:  # pragma: no cover - abstract
        raise NotImplementedError

    def __len__(self) -> int:
        raise TypeError(f"{type(self).__name__} {self.name!r} has no known length")

    def close(self) -> None:
        """Release any open file or device. Safe to call twice."""
        self._closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"

    # -- shared helpers
    def _gt_row(self, index: int) -> np.ndarray | None:
        gt = self.groundtruth
        if gt is None:
            return None
        return gt[index].copy() if index < len(gt) else np.full(4, np.nan)

    def _bad_frame(self, index: int, path: str | None, exc: SequenceError) -> Frame:
        if self.on_bad_frame == "raise":
            raise exc
        msg = str(exc)
        self.warnings.append(f"skipped frame {index}: {msg}")
        return Frame(index=index, image=None, gt=self._gt_row(index), path=path, error=msg)


class FileSequenceSource(SequenceSource):
    """A sequence of image files, known up front: ``len()`` and ``frame_paths`` cost no decoding,
    and :meth:`read_frame` gives random access."""

    def __init__(self, name: str, frame_paths: Sequence, groundtruth: np.ndarray | None = None,
                 init_box=None, on_bad_frame: str = "raise"):
        super().__init__(name, init_box=init_box, on_bad_frame=on_bad_frame)
        self.frame_paths: list[str] = [str(p) for p in frame_paths]
        self._gt = groundtruth

    @property
    def groundtruth(self) -> np.ndarray | None:
        return None if self._gt is None else self._gt.copy()

    def __len__(self) -> int:
        return len(self.frame_paths)

    def read_frame(self, index: int) -> Frame:
        """Decode frame ``index`` (negative counts from the end), honouring ``on_bad_frame``."""
        n = len(self.frame_paths)
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError(f"frame {index} out of range for {n} frames")
        path = self.frame_paths[index]
        try:
            image = read_image(path)
        except SequenceError as exc:
            return self._bad_frame(index, path, exc)
        gt = None if self._gt is None else self._gt[index].copy()
        return Frame(index=index, image=image, gt=gt, path=path)

    __getitem__ = read_frame

    def _frames(self) -> Iterator[Frame]:
        for i in range(len(self.frame_paths)):
            yield self.read_frame(i)

    def _load_groundtruth(self, gt_path: Path, allow_polygon: bool) -> None:
        """Read the folder's ground truth. Unreadable, it stops the sequence unless an initial
        box was given: then the ground truth only scores the run, so it is dropped with a warning."""
        try:
            gt = load_groundtruth(gt_path, allow_polygon=allow_polygon)
        except SequenceError as exc:
            if self._user_box is None:
                raise SequenceError(str(exc), "fix the file, or pass --init x,y,w,h to track without it") from None
            self.warnings.append(f"{exc}; tracking from the given initial box without ground truth")
            return
        self._gt = self._align_groundtruth(gt, gt_path)

    def _align_groundtruth(self, gt: np.ndarray, gt_path: Path) -> np.ndarray:
        """Pad with NaN rows / drop extra rows so ``gt`` has one row per frame, with a warning.
        Numbered frames with a gap (0001, 0003) and not one row per frame take the rows of
        their numbers: by position every frame after the gap would be scored against its
        predecessor's box."""
        n, rows = len(self.frame_paths), len(gt)
        stems = [Path(p).stem for p in self.frame_paths]
        # one row per frame file is read in order, gaps or not (a clip thinned to every
        # other frame keeps its file names and its rows)
        if rows != n and n > 1 and all(s.isdigit() for s in stems):
            nums = np.array([int(s) for s in stems])
            rel = nums - nums[0]
            if np.all(np.diff(nums) > 0) and rel[-1] != n - 1:
                missing = sorted(set(range(int(nums[0]), int(nums[-1]) + 1)) - set(nums.tolist()))
                shown = ", ".join(map(str, missing[:5])) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
                self.warnings.append(f"frames numbered {shown} are missing: {gt_path.name}'s rows are matched to "
                                     "the frames by their numbers")
                out = np.full((n, 4), np.nan)
                ok = rel < rows
                out[ok] = gt[rel[ok]]
                if not ok.all():
                    self.warnings.append(f"{gt_path.name} has {rows} rows; the frames numbered from "
                                         f"{int(nums[~ok][0])} have no ground truth")
                return out
        if rows < n:
            self.warnings.append(
                f"{gt_path.name} has {rows} rows for {n} frames; "
                f"{_frame_ranges(rows, n)} {'has' if n - rows == 1 else 'have'} no ground truth"
            )
            gt = np.vstack([gt, np.full((n - rows, 4), np.nan)])
        elif rows > n:
            self.warnings.append(
                f"{gt_path.name} has {rows} rows for {n} frames; "
                f"the last {rows - n} rows are ignored"
            )
            gt = gt[:n]
        return gt


def _require_folder(folder) -> Path:
    folder = Path(folder).expanduser()
    try:
        os.stat(folder)
    except PermissionError as exc:
        raise SequenceError(f"cannot open {folder}: {exc.strerror}; check its permissions") from None
    except OSError:
        pass  # reported below
    if not folder.exists():
        base, n, targets = _target_name(folder)
        if targets and n not in targets:  # Jogging.3 where Jogging has targets 1 and 2
            names = ", ".join(f"{base.name}.{k}" for k in targets)
            raise SequenceError(f"sequence folder {folder} does not exist, and {base} has no target {n}",
                                f"its targets are {names}", names_targets=True)
        raise SequenceError(
            f"sequence folder {folder} does not exist",
            "pass a folder that holds the frames (OTB: img/ and groundtruth_rect.txt, VOT: color/ and groundtruth.txt)"
        )
    if not folder.is_dir():
        raise SequenceError(f"{folder} is not a folder", "pass a sequence folder (or use a video / glob source)")
    return folder


# --------------------------------------------------------------------------- folders


# OTB-100 folders with more frames than their annotation covers: the OTB benchmark (and the
# GOT-10k toolkit after it) evaluates only these frames, first and last counted from 1.
# David's annotation starts at frame 300; the others' ends early.
OTB_ANNOTATED_FRAMES = {"david": (300, 770), "football1": (1, 74), "freeman3": (1, 460),
                        "freeman4": (1, 283), "diving": (1, 215)}


class OTBSequence(FileSequenceSource):
    """An OTB-style folder: ``img/*.jpg|jpeg|png|bmp`` (natural-sorted) and
    ``groundtruth_rect.txt`` (falling back to ``groundtruth.txt``; neither = no ground truth)."""

    GT_NAMES = ("groundtruth_rect.txt", "groundtruth.txt")

    def __init__(self, folder, init_box=None, on_bad_frame: str = "raise", name: str | None = None,
                 groundtruth_name: str | None = None):
        folder = _require_folder(folder)
        img = folder / "img"
        if not img.is_dir():
            raise SequenceError(
                f"{folder} has no img/ folder; an OTB sequence keeps its frames as img/0001.jpg, "
                "img/0002.jpg, ... next to groundtruth_rect.txt"
            )
        paths = _list_images(img)
        if not paths:
            raise SequenceError(
                f"{img} holds no images ({', '.join(IMAGE_EXTENSIONS)}); put the frames there"
            )
        super().__init__(name or folder.name, paths, None, init_box=init_box, on_bad_frame=on_bad_frame)
        self.folder = folder
        names = (groundtruth_name,) if groundtruth_name else self.GT_NAMES
        self.groundtruth_path: Path | None = next(
            (folder / n for n in names if os.path.lexists(folder / n)), None
        )
        targets = groundtruth_targets(folder) if self.groundtruth_path is None else {}
        if len(targets) == 1:  # OTB-100's Human4: groundtruth_rect.2.txt alone (beside an empty .1)
            self.groundtruth_path = next(iter(targets.values()))
        elif targets:  # Jogging, Skating2: one file per target, no groundtruth_rect.txt
            shown = ", ".join(p.name for p in targets.values())
            picks = " or ".join(f"{folder}.{k}" for k in targets)
            if self._user_box is None:
                raise SequenceError(f"{folder} holds the ground truth of {len(targets)} targets ({shown}) and no "
                                    f"groundtruth_rect.txt", f"give one target's sequence as {picks} (the "
                                    "GOT-10k toolkit's names)", names_targets=True)
            self.warnings.append(f"{folder} holds the ground truth of {len(targets)} targets ({shown}); tracking "
                                 f"from the given initial box without ground truth (give {picks} to score one)")
        if self.groundtruth_path is None:
            if not targets:
                self.warnings.append(f"{folder} has no groundtruth_rect.txt; the sequence has no ground truth")
        else:
            self._load_groundtruth(self.groundtruth_path, allow_polygon=False)

    def _align_groundtruth(self, gt: np.ndarray, gt_path: Path) -> np.ndarray:
        """OTB-100's partly annotated folders are cut to the frames their rows belong to
        (padding David's 471 rows after frame 1 would start it from frame 300's box)."""
        span = OTB_ANNOTATED_FRAMES.get(self.folder.name.lower())
        if span is not None:
            first, last = span
            n = len(self.frame_paths)
            if len(gt) == last - first + 1 and n >= last and (n > last or first > 1):
                self.frame_paths = self.frame_paths[first - 1:last]
                self.warnings.append(f"{gt_path.name} annotates frames {first}-{last} of {n} (OTB-100's "
                                     f"{self.folder.name}); the sequence is those frames, as the OTB benchmark "
                                     "evaluates it")
        return super()._align_groundtruth(gt, gt_path)


class VOTSequence(FileSequenceSource):
    """A VOT-style folder: frames in ``color/`` (or directly in the folder) and
    ``groundtruth.txt`` with 4-value ``x,y,w,h`` or 8-value polygon rows (converted to the
    axis-aligned min/max box)."""

    def __init__(self, folder, init_box=None, on_bad_frame: str = "raise", name: str | None = None):
        folder = _require_folder(folder)
        img = folder / "color" if (folder / "color").is_dir() else folder
        paths = _list_images(img)
        if not paths:
            raise SequenceError(
                f"{img} holds no images ({', '.join(IMAGE_EXTENSIONS)}); a VOT sequence keeps its "
                "frames in color/ or directly in the sequence folder"
            )
        super().__init__(name or folder.name, paths, None, init_box=init_box, on_bad_frame=on_bad_frame)
        self.folder = folder
        gt_path = folder / "groundtruth.txt"
        # a name that exists but is not a readable file is an error (via load_groundtruth), not "no ground truth"
        self.groundtruth_path: Path | None = gt_path if os.path.lexists(gt_path) else None
        if self.groundtruth_path is None:
            self.warnings.append(f"{folder} has no groundtruth.txt; the sequence has no ground truth")
        else:
            self._load_groundtruth(gt_path, allow_polygon=True)


def open_sequence_folder(folder, init_box=None, on_bad_frame: str = "raise") -> FileSequenceSource:
    """Open ``folder`` with the right reader: OTB when it has ``img/`` or
    ``groundtruth_rect.txt``, VOT when it has ``groundtruth.txt`` or ``color/``."""
    target = _target_sequence(folder)
    if target is not None:  # Jogging.1: the first target of OTB's Jogging folder
        base, gt_name = target
        return OTBSequence(base, init_box=init_box, on_bad_frame=on_bad_frame, name=Path(folder).name,
                           groundtruth_name=gt_name)
    folder = _require_folder(folder)
    try:
        # OTB when img/ holds the frames (an empty img/ beside a VOT color/ is not OTB)
        otb = ((folder / "img").is_dir() and (not (folder / "color").is_dir() or _list_images(folder / "img"))) \
            or (folder / "groundtruth_rect.txt").is_file()
        vot = (folder / "groundtruth.txt").is_file() or (folder / "color").is_dir()
    except PermissionError as exc:
        raise SequenceError(f"cannot look into {folder}: {exc.strerror}; check its permissions") from None
    if otb:
        return OTBSequence(folder, init_box=init_box, on_bad_frame=on_bad_frame)
    if vot:
        return VOTSequence(folder, init_box=init_box, on_bad_frame=on_bad_frame)
    inner = sequence_subfolders(folder)
    if inner:
        # a dataset root (data/OTB) where one of its sequences belongs: the image-glob hint would mislead
        shown = ", ".join(p.name for p in inner[:3]) + (", ..." if len(inner) > 3 else "")
        raise SequenceError(f"{folder} is not a sequence but holds {len(inner)} sequence folders ({shown}); "
                            f"give one ({inner[0]}), or all of them ({folder / '*'}) where a command takes several "
                            "(benchmarks.accuracy, train_mx.train --sequences)")
    raise SequenceError(
        f"{folder} is neither an OTB sequence (img/ + groundtruth_rect.txt) nor a VOT sequence "
        "(color/ + groundtruth.txt)",
        f"for a plain folder of images use an image glob such as '{folder / '*.jpg'}'"
    )


# OTB-100's folders with several targets (Jogging, Skating2) ship one ground-truth file per
# target, groundtruth_rect.1.txt and groundtruth_rect.2.txt, and no groundtruth_rect.txt.
_TARGET_GT = re.compile(r"groundtruth_rect\.(\d+)\.txt")


def groundtruth_targets(folder) -> dict:
    """``{"1": path, "2": path}``: the non-empty ``groundtruth_rect.N.txt`` files of an OTB
    folder that has neither ``groundtruth_rect.txt`` nor ``groundtruth.txt``, by N in natural
    order; empty otherwise. (Human4 ships an empty one beside the real one; the GOT-10k
    toolkit skips empty files too.)"""
    folder = Path(folder).expanduser()
    try:
        if any(os.path.lexists(folder / n) for n in OTBSequence.GT_NAMES):
            return {}
        found = [(m.group(1), p) for p in folder.iterdir() if (m := _TARGET_GT.fullmatch(p.name))]
    except OSError:
        return {}
    found = [(k, p) for k, p in found if p.is_file() and p.stat().st_size > 0 and p.read_bytes().strip()]
    return dict(sorted(found, key=lambda kp: int(kp[0])))


def target_sequences(folder) -> list:
    """The sequence paths ``folder`` stands for: ``[folder]``, or one per target for an OTB
    folder with several (``Jogging`` -> ``Jogging.1``, ``Jogging.2``, as the GOT-10k toolkit
    names them); each opens with :func:`open_sequence_folder`."""
    targets = groundtruth_targets(folder)
    if len(targets) < 2 or not (Path(folder).expanduser() / "img").is_dir():
        return [folder]
    base = Path(folder).expanduser().absolute()
    if not base.name or base.name in (".", ".."):  # "." or "..": name it by the folder itself
        base = base.resolve()
    paths = [base.parent / f"{base.name}.{k}" for k in targets]
    taken = [p for p in paths if os.path.lexists(p)]
    if taken:
        raise SequenceError(f"{base} has one ground-truth file per target, and {taken[0]} already exists beside "
                            f"it: that name would stand for target {taken[0].name.rsplit('.', 1)[1]} of {base.name}",
                            f"rename {taken[0]}")
    return [str(p) for p in paths]


def _target_sequence(folder):
    """``(base folder, ground-truth file name)`` for a path ``BASE.N`` that does not exist
    where ``BASE`` is an OTB folder with per-target ground truth and ``N`` one of its targets
    (``Jogging.1``; also ``Human4.2``, the GOT-10k toolkit's name for OTB's Human4, whose one
    target is its ``groundtruth_rect.2.txt``); else None."""
    p = Path(folder).expanduser()
    if os.path.lexists(p):
        return None
    base, n, targets = _target_name(p)
    return (base, targets[n].name) if n in targets else None


def _target_name(path: Path):
    """``(BASE, N, BASE's targets)`` for a path named ``BASE.N``; ``(None, None, {})`` else."""
    m = re.fullmatch(r"(.+)\.(\d+)", path.name)
    if m is None:
        return None, None, {}
    base = path.parent / m.group(1)
    return base, m.group(2), groundtruth_targets(base) if base.is_dir() else {}


SEQUENCE_MARKS = ("img", "color", "groundtruth_rect.txt", "groundtruth.txt")  # what open_sequence_folder looks for


def without_files(paths) -> tuple:
    """``(paths, skipped files)``: the plain files among ``paths`` left out when something
    else is given too (``ROOT/*`` also matches GOT-10k's list.txt and the zips the GOT-10k
    toolkit leaves beside OTB's folders); a file alone, or only files, stays for its error."""
    paths = list(paths)
    files = [p for p in paths if os.path.isfile(os.path.expanduser(str(p)))]
    if not files or len(files) == len(paths):
        return paths, []
    return [p for p in paths if p not in files], files


SEQUENCE_LAYOUT = "OTB: img/ + groundtruth_rect.txt, VOT: color/ + groundtruth.txt"


def open_listed_sequence(folder, on_bad_frame: str = "raise") -> FileSequenceSource:
    """``open_sequence_folder`` for an entry of a --sequences list (training, the benchmarks),
    with the errors worded for it: the problem with that list's advice where the tracker's (an
    image glob, --init) does not apply; the advice naming a dataset's sequences or a folder's
    targets to give is kept."""
    p = Path(folder).expanduser()
    if p.exists() and not p.is_dir():
        raise TrackerInputError(f"--sequences {folder} is not a folder; every entry must be a sequence folder "
                                f"({SEQUENCE_LAYOUT})")
    if p.is_dir() and not looks_like_sequence(p) and not sequence_subfolders(p):
        raise TrackerInputError(f"--sequences {folder} is not a sequence folder ({SEQUENCE_LAYOUT}); "
                                "leave it out of --sequences")
    try:
        return open_sequence_folder(folder, on_bad_frame=on_bad_frame)
    except SequenceError as e:
        # a dataset root: the message names its sequences; Jogging: the advice names its targets
        if sequence_subfolders(p) or e.names_targets:
            raise
        raise SequenceError(e.problem, f"fix it, or leave {Path(folder).name} out of --sequences") from None


def looks_like_sequence(folder) -> bool:
    """Whether ``folder`` has what an OTB or VOT sequence folder has (frames may still be bad)."""
    return any((Path(folder) / m).exists() for m in SEQUENCE_MARKS)


def sequence_subfolders(folder) -> list:
    """The subfolders of ``folder`` laid out as sequences, natural-sorted; empty when
    ``folder`` cannot be listed."""
    try:
        subs = [p for p in Path(folder).expanduser().iterdir() if p.is_dir()]
    except OSError:
        return []
    return sorted((p for p in subs if looks_like_sequence(p)), key=lambda p: natural_key(p.name))


# --------------------------------------------------------------------------- globs


def _expand(pattern: str):
    """The paths a glob pattern matches. ``**`` goes through pathlib, which does not follow
    links to folders (glob.glob(recursive=True) does: a link loop repeats frames or never ends)."""
    if "**" not in pattern:
        return _glob.iglob(pattern)
    parts = Path(pattern).parts
    i = next(k for k, part in enumerate(parts) if re.search(r"[*?[]", part))
    root = Path(*parts[:i]) if i else Path(".")
    return (str(p) for p in root.glob(str(Path(*parts[i:]))))


class ImageGlobSource(FileSequenceSource):
    """Images matching a glob pattern (``~`` expanded, ``**`` allowed), natural-sorted."""

    def __init__(self, pattern: str, init_box=None, on_bad_frame: str = "raise", name: str | None = None):
        pattern = os.path.expanduser(str(pattern))
        found, seen, others, folders = [], set(), 0, 0
        for i, p in enumerate(_expand(pattern)):
            if i >= MAX_GLOB_MATCHES:
                raise SequenceError(f"{pattern!r} matches over {MAX_GLOB_MATCHES} paths; narrow the pattern")
            path = Path(p)
            if not _frame_entry(path):
                folders += path.is_dir()
                continue
            if path.suffix.lower() not in IMAGE_EXTENSIONS:
                others += 1
                continue
            real = os.path.realpath(p)
            if real not in seen:  # the same file reached through a link
                seen.add(real)
                found.append(p)
        if not found:
            if not (folders or others):
                folder, name = os.path.split(pattern)
                if folder and os.path.isdir(folder) and any(c in folder for c in "*?["):
                    # a folder named data[1] exists, but as a pattern it matches data1
                    raise SequenceError(f"no files match {pattern!r}: the folder's name holds glob characters "
                                        f"(* ? [); escape them: {os.path.join(_glob.escape(folder), name)!r}")
                raise SequenceError(f"no files match {pattern!r}; check the folder and the pattern")
            why = (f"matches only {folders} folder(s); use DIR/*.jpg or --sequence DIR" if not others else
                   f"matches no image ({', '.join(IMAGE_EXTENSIONS)}), only {others} other file(s)")
            raise SequenceError(f"{pattern!r} {why}")
        found.sort(key=natural_key)
        super().__init__(name or pattern, found, None, init_box=init_box, on_bad_frame=on_bad_frame)
        if others:
            self.warnings.append(f"{pattern!r}: {others} file(s) that are not images ignored")
        self.pattern = pattern


# --------------------------------------------------------------------------- captures


class _CaptureSource(SequenceSource):
    def _capture_frame(self, raw, index: int, where: str) -> Frame:
        try:
            image = to_bgr8(raw)
        except TrackerInputError as exc:
            return self._bad_frame(index, None, SequenceError(f"{where}: frame {index}: {exc}"))
        return Frame(index=index, image=image, gt=None, path=None)


class VideoSource(_CaptureSource):
    """Any video file ``cv2.VideoCapture`` opens. The length comes from
    ``CAP_PROP_FRAME_COUNT`` where it is positive.

    A frame the decoder cannot decode (a corrupt packet in the middle) is a bad frame: the
    reader goes on with the next one, so later frames keep their indices. Up to
    :data:`MAX_VIDEO_GAP` failures in a row followed by a good frame are skipped frames; a
    failure that lasts to the end (a truncated file, or a container that claims more
    frames than it holds) ends the sequence and records a warning."""

    def __init__(self, path, init_box=None, on_bad_frame: str = "raise", name: str | None = None):
        path = Path(path).expanduser()
        if not path.exists():
            raise SequenceError(f"video file {path} does not exist")
        if not path.is_file():
            raise SequenceError(f"{path} is not a video file (a folder? use --sequence DIR or --images GLOB)")
        if path.stat().st_size == 0:
            raise SequenceError(f"video file {path} is empty (0 bytes); was it copied or written completely?")
        super().__init__(name or path.stem, init_box=init_box, on_bad_frame=on_bad_frame)
        self.path = str(path)
        cap = self._open()
        first = None
        try:
            count = cap.get(cv2.CAP_PROP_FRAME_COUNT)
            self.fps = _fps(cap)
            for _ in range(MAX_VIDEO_GAP + 1):
                ok, first = cap.read()
                if ok and first is not None:
                    break
                first = None
        finally:
            cap.release()
        if first is None:
            raise SequenceError(f"{path}: empty video (no frame could be decoded)")
        self._count = int(count) if count and count > 0 and math.isfinite(count) else None
        self.frame_size = (int(first.shape[1]), int(first.shape[0]))

    def _open(self) -> cv2.VideoCapture:
        cap = cv2.VideoCapture(self.path)
        if not cap.isOpened():
            cap.release()
            raise SequenceError(
                f"cannot open video {self.path}: not a video OpenCV can decode (try converting to .mp4 / .avi)"
            )
        return cap

    def __len__(self) -> int:
        if self._count is None:
            raise TypeError(f"video {self.path} does not report its frame count")
        return self._count

    def _frames(self) -> Iterator[Frame]:
        cap = self._open()
        try:
            index = 0
            failed = []  # indices of the undecodable frames since the last good one
            while self._count is None or index < self._count:
                ok, raw = cap.read()
                if not ok or raw is None:
                    failed.append(index)
                    index += 1
                    if len(failed) > MAX_VIDEO_GAP:
                        break
                    continue
                of = f" of {self._count}" if self._count is not None else ""
                for j in failed:  # a gap in the middle: bad frames, indices kept
                    yield self._bad_frame(j, None, SequenceError(f"{self.path}: could not decode frame {j}{of}"))
                failed = []
                yield self._capture_frame(raw, index, self.path)
                index += 1
            if failed and self._count is not None:
                self.warnings.append(
                    f"{self.path}: could not decode frame {failed[0]} of {self._count}; "
                    f"the sequence ends after {failed[0]} frames"
                )
        finally:
            cap.release()


DEFAULT_FPS = 30.0  # a source that reports no frame rate (a glob of images, some cameras)


def frame_rate(value) -> float | None:
    """A frame rate as reported (by a container, a camera), or None where it is none or nonsense."""
    return float(value) if value and math.isfinite(value) and 0 < value < 1000 else None


def _fps(cap) -> float | None:
    return frame_rate(cap.get(cv2.CAP_PROP_FPS))


class CameraSource(_CaptureSource):
    """A live camera (int index, or a string of digits) or a stream URL (rtsp://, http://).

    Has no length (``len()`` raises TypeError); iteration ends only when the device stops
    delivering frames (recorded in ``warnings``) or the caller stops.

    ``live``: a frame arrives when the device delivers it, and frames the device discards
    while the reader is busy never get an index (``--realtime`` paces by arrival).
    """

    live = True

    def __init__(self, index_or_url, init_box=None, on_bad_frame: str = "raise",
                 name: str | None = None, open_timeout_s: float = 10.0, read_timeout_s: float = 5.0):
        target = index_or_url
        if isinstance(target, str) and target.strip().isdigit():
            target = int(target.strip())
        if not isinstance(target, (int, str)) or isinstance(target, bool):
            raise SequenceError(f"camera must be an index or a stream URL, got {index_or_url!r}")
        super().__init__(name or f"camera:{target}", init_box=init_box, on_bad_frame=on_bad_frame)
        self.target = target
        if isinstance(target, int):
            cap = cv2.VideoCapture(target)
        else:
            # A stalled stream ends after read_timeout_s (FFmpeg's default is 30 s): a signal
            # cannot stop the run while OpenCV waits inside a read, and docker stop kills at 10 s.
            cap = cv2.VideoCapture(
                target, cv2.CAP_ANY, [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(open_timeout_s * 1000),
                                      cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(read_timeout_s * 1000)]
            )
        if not cap.isOpened():
            cap.release()
            kind = f"camera index {target}" if isinstance(target, int) else f"stream {target}"
            raise SequenceError(f"cannot open {kind}; check that the device exists / the URL is reachable")
        self._cap = cap
        self.fps = _fps(cap)

    def _frames(self) -> Iterator[Frame]:
        index = 0
        while not self._closed:
            ok, raw = self._cap.read()
            if not ok or raw is None:
                self.warnings.append(f"{self.name}: stopped delivering frames after {index} frames")
                return
            yield self._capture_frame(raw, index, self.name)
            index += 1

    def close(self) -> None:
        if not self._closed:
            self._cap.release()
        super().close()
