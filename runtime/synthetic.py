"""Seeded synthetic tracking sequences, for tests and the demo (the project ships no images).

A textured target moves smoothly over a slowly panned textured background, with optional
smooth scale change, a bar that partly occludes the target now and then, a global
illumination change and distractor objects of similar size. Frames are rendered on the fly
from a few precomputed textures, so a 10,000-frame sequence costs no memory, and the same
seed always gives the same pixels.

Coordinates are continuous with pixel ``j`` covering ``[j, j + 1)``; the target is drawn with
exact (anti-aliased) coverage of its box, so the ground truth is the true box, not a rounded one.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from runtime.errors import SequenceError, TrackerInputError
from runtime.sources import Frame, SequenceSource

__all__ = ["SyntheticSequence", "make_sequence", "write_otb"]

_SCALE_MIN, _SCALE_MAX = 0.7, 1.4


# --------------------------------------------------------------------------- textures


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cells: int) -> np.ndarray:
    """Low-frequency colour noise in [0, 1]: a small random grid upsampled with cubic interpolation."""
    gh = max(2, int(round(cells * height / max(height, width))))
    gw = max(2, int(round(cells * width / max(height, width))))
    grid = rng.random((gh, gw, 3), dtype=np.float32)
    return cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC)


def _background_texture(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Muted, low-saturation texture (several octaves) so saturated objects stand out."""
    tex = 0.6 * _smooth_noise(rng, height, width, 6) + 0.3 * _smooth_noise(rng, height, width, 24)
    tex += 0.1 * rng.random((height, width, 3), dtype=np.float32)
    grey = tex.mean(axis=2, keepdims=True)
    tex = grey + 0.35 * (tex - grey)  # desaturate
    tex = 60.0 + 110.0 * (tex - tex.min()) / max(float(np.ptp(tex)), 1e-6)
    return tex.astype(np.float32)


def _object_texture(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """Saturated blob texture: a coloured base, several rectangles and ellipses, fine noise."""
    tex = np.empty((height, width, 3), np.float32)
    tex[:] = rng.uniform(30, 230, size=3)
    for _ in range(int(rng.integers(4, 8))):
        colour = tuple(float(c) for c in rng.uniform(0, 255, size=3))
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        if rng.random() < 0.5:
            ax = (int(rng.uniform(0.1, 0.35) * width) + 1, int(rng.uniform(0.1, 0.35) * height) + 1)
            cv2.ellipse(tex, (int(cx), int(cy)), ax, float(rng.uniform(0, 180)), 0, 360, colour, -1,
                        cv2.LINE_AA)
        else:
            hw, hh = rng.uniform(0.08, 0.3) * width, rng.uniform(0.08, 0.3) * height
            cv2.rectangle(tex, (int(cx - hw), int(cy - hh)), (int(cx + hw), int(cy + hh)), colour, -1)
    # a dark outline gives the object a crisp, trackable edge
    cv2.rectangle(tex, (0, 0), (width - 1, height - 1), (20.0, 20.0, 20.0), max(1, width // 20))
    tex += rng.normal(0.0, 12.0, size=tex.shape).astype(np.float32)
    return np.clip(tex, 0, 255)


def _occluder_texture(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A dark striped bar, unlike both the target and the background."""
    tex = np.empty((height, width, 3), np.float32)
    tex[:] = rng.uniform(25, 60, size=3)
    for y in range(0, height, 8):
        tex[y:y + 3] += 40.0
    return tex


# --------------------------------------------------------------------------- motion


class _Path:
    """Smooth 1-D trajectory: a sum of sinusoids (periods in frames) around a centre."""

    def __init__(self, rng: np.random.Generator, centre: float, amplitude: float, periods,
                 zero_phase: bool = False):
        self.centre = centre
        weights = rng.uniform(0.5, 1.0, size=len(periods))
        self.amps = amplitude * weights / weights.sum()
        self.periods = np.asarray(periods, dtype=np.float64)
        if zero_phase:  # starts at the centre, heading up or down at random
            self.phases = np.where(rng.random(len(periods)) < 0.5, 0.0, math.pi)
        else:
            self.phases = rng.uniform(0, 2 * math.pi, size=len(periods))

    def __call__(self, t: np.ndarray) -> np.ndarray:
        t = np.asarray(t, dtype=np.float64)[..., None]
        return self.centre + (self.amps * np.sin(2 * math.pi * t / self.periods + self.phases)).sum(-1)


def _boxes_on_path(rng, n, frame_w, frame_h, size, scale, margin=2.0):
    """Boxes (N, 4) whose centres follow smooth paths that keep the largest box inside the frame."""
    t = np.arange(n, dtype=np.float64)
    w = size[0] * scale
    h = size[1] * scale
    max_w, max_h = size[0] * float(np.max(scale, initial=1.0)), size[1] * float(np.max(scale, initial=1.0))
    amp_x = max(0.0, frame_w / 2 - max_w / 2 - margin)
    amp_y = max(0.0, frame_h / 2 - max_h / 2 - margin)
    # periods in frames: fast wobble, medium sweep, slow drift (max speed a few px/frame)
    px = _Path(rng, frame_w / 2, amp_x, rng.uniform([90, 220, 900], [140, 320, 1500]))
    py = _Path(rng, frame_h / 2, amp_y, rng.uniform([80, 200, 800], [130, 300, 1400]))
    cx, cy = px(t), py(t)
    return np.stack([cx - w / 2, cy - h / 2, w, h], axis=1)


# --------------------------------------------------------------------------- rendering


def _paste(frame: np.ndarray, tex: np.ndarray, box) -> None:
    """Draw ``tex`` scaled onto the continuous box ``(x, y, w, h)`` with exact edge coverage."""
    x, y, w, h = (float(v) for v in box)
    if not all(math.isfinite(v) for v in (x, y, w, h)):
        return  # an absent object (NaN box) is not drawn
    fh, fw = frame.shape[:2]
    x0, y0 = max(int(math.floor(x)), 0), max(int(math.floor(y)), 0)
    x1, y1 = min(int(math.ceil(x + w)), fw), min(int(math.ceil(y + h)), fh)
    if x1 <= x0 or y1 <= y0 or w <= 0 or h <= 0:
        return
    th, tw = tex.shape[:2]
    sx, sy = w / tw, h / th
    # pixel centres: dst j + 0.5 = x + sx * (i + 0.5)
    m = np.array([[sx, 0.0, x + 0.5 * sx - 0.5 - x0], [0.0, sy, y + 0.5 * sy - 0.5 - y0]])
    patch = cv2.warpAffine(tex, m, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_REPLICATE)
    jx = np.arange(x0, x1, dtype=np.float32)
    jy = np.arange(y0, y1, dtype=np.float32)
    ax = np.clip(np.minimum(jx + 1, x + w) - np.maximum(jx, x), 0, 1)
    ay = np.clip(np.minimum(jy + 1, y + h) - np.maximum(jy, y), 0, 1)
    alpha = (ay[:, None] * ax[None, :])[..., None]
    roi = frame[y0:y1, x0:x1]
    roi += (patch - roi) * alpha


class SyntheticSequence(SequenceSource):
    """A deterministic synthetic sequence; build it with :func:`make_sequence`.

    ``groundtruth`` is the exact float box of the target per frame, ``occlusion`` the share
    of the target box covered by the occluder per frame (0 when none), ``frame_size`` is
    ``(width, height)``. Frames are rendered on demand: :meth:`read_frame` gives random
    access and :meth:`background` the same frame without any object.
    """

    def __init__(self, n_frames: int = 300, size=(320, 240), seed: int = 0, scale_change: bool = True,
                 occlusion: bool = True, illumination: bool = True, distractors: int = 1,
                 target_size=(40, 32), on_bad_frame: str = "raise"):
        n_frames = int(n_frames)
        width, height = (int(v) for v in size)
        tw, th = (float(v) for v in target_size)
        if n_frames < 1:
            raise TrackerInputError(f"n_frames must be at least 1, got {n_frames}")
        if width < 16 or height < 16:
            raise TrackerInputError(f"frame size must be at least 16x16, got {width}x{height}")
        if not (2 <= tw <= width / _SCALE_MAX and 2 <= th <= height / _SCALE_MAX):
            raise TrackerInputError(
                f"target_size {target_size} must be at least 2 px and fit the {width}x{height} "
                f"frame at {_SCALE_MAX}x scale"
            )
        if int(distractors) < 0:
            raise TrackerInputError(f"distractors must be >= 0, got {distractors}")
        super().__init__(f"synthetic-seed{seed}", on_bad_frame=on_bad_frame)
        self.seed = seed
        self.n_frames = n_frames
        self.frame_size = (width, height)
        self.options = dict(scale_change=bool(scale_change), occlusion=bool(occlusion),
                            illumination=bool(illumination), distractors=int(distractors),
                            target_size=(tw, th))
        # One independent stream per component, so switching one effect off (or adding a
        # distractor) leaves every other pixel of the sequence unchanged.
        streams = np.random.SeedSequence(int(seed)).spawn(5)
        rng = np.random.default_rng(streams[0])
        t = np.arange(n_frames, dtype=np.float64)

        # background: larger than the frame, panned slowly with sub-pixel steps
        self._pad = pad = max(16, min(width, height) // 4)
        self._bg = _background_texture(rng, height + 2 * pad, width + 2 * pad)
        pan_x = _Path(rng, 0.0, 0.8 * pad, rng.uniform([300, 700], [500, 1100]))
        pan_y = _Path(rng, 0.0, 0.8 * pad, rng.uniform([300, 700], [500, 1100]))
        self._pan = np.stack([pan_x(t), pan_y(t)], axis=1)

        # target: texture at 2x nominal size so scaling up to 1.4x stays sharp
        self.target_texture = _object_texture(rng, int(round(2 * tw)), int(round(2 * th)))
        if scale_change:
            period = float(np.clip(n_frames, 120, 600))
            log_amp = 0.5 * (math.log(_SCALE_MAX) - math.log(_SCALE_MIN))
            scale = np.exp(math.log(_SCALE_MIN) + log_amp + log_amp * np.sin(2 * math.pi * t / period))
            scale = np.clip(scale / scale[0], _SCALE_MIN, _SCALE_MAX)  # frame 0 at nominal size
        else:
            scale = np.ones(n_frames)
        self._gt = _boxes_on_path(rng, n_frames, width, height, (tw, th), scale)

        # distractors: similar size, their own textures and paths
        self._distractors = []
        for child in streams[1].spawn(int(distractors)):
            rng = np.random.default_rng(child)
            dsize = (tw * rng.uniform(0.8, 1.2), th * rng.uniform(0.8, 1.2))
            dtex = _object_texture(rng, int(round(2 * dsize[0])), int(round(2 * dsize[1])))
            dscale = np.exp(0.15 * np.sin(2 * math.pi * t / rng.uniform(150, 400) + rng.uniform(0, 6.3)))
            self._distractors.append((dtex, _boxes_on_path(rng, n_frames, width, height, dsize, dscale)))

        # occlusion: a vertical bar (40% of the target width) sweeps across the target
        rng = np.random.default_rng(streams[2])
        self._occluder_tex = _occluder_texture(rng, 16, 64)
        self._occ_boxes = np.full((n_frames, 4), np.nan)
        self.occlusion = np.zeros(n_frames)
        if occlusion:
            start = int(rng.integers(40, 70))
            while start < n_frames:
                dur = int(rng.integers(25, 45))
                direction = 1.0 if rng.random() < 0.5 else -1.0
                for k in range(dur):
                    i = start + k
                    if i >= n_frames:
                        break
                    x, y, w, h = self._gt[i]
                    bw = 0.4 * w
                    u = (k + 0.5) / dur  # 0 -> 1 across the event
                    u = u if direction > 0 else 1.0 - u
                    bx = x - bw + u * (w + bw)
                    bar = np.array([bx, y - 0.15 * h, bw, 1.3 * h])
                    self._occ_boxes[i] = bar
                    cover = max(0.0, min(bx + bw, x + w) - max(bx, x))
                    self.occlusion[i] = cover / w
                start += dur + int(rng.integers(90, 160))

        # illumination: smooth global gain and offset
        if illumination:
            rng = np.random.default_rng(streams[3])
            # zero phase: frame 0 is unlit (gain 1, offset 0); gain stays in [0.7, 1.3]
            g = _Path(rng, 1.0, 0.3, rng.uniform([120, 300], [200, 500]), zero_phase=True)
            o = _Path(rng, 0.0, 20.0, rng.uniform([150, 350], [250, 600]), zero_phase=True)
            self._gain, self._offset = g(t), o(t)
        else:
            self._gain, self._offset = np.ones(n_frames), np.zeros(n_frames)

    # -- SequenceSource
    @property
    def groundtruth(self) -> np.ndarray:
        return self._gt.copy()

    def __len__(self) -> int:
        return self.n_frames

    def _frames(self) -> Iterator[Frame]:
        for i in range(self.n_frames):
            yield self.read_frame(i)

    def read_frame(self, index: int) -> Frame:
        """Render frame ``index`` (negative counts from the end)."""
        if index < 0:
            index += self.n_frames
        if not 0 <= index < self.n_frames:
            raise IndexError(f"frame {index} out of range for {self.n_frames} frames")
        return Frame(index=index, image=self._render(index, objects=True), gt=self._gt[index].copy())

    __getitem__ = read_frame

    def background(self, index: int) -> np.ndarray:
        """Frame ``index`` with no target, distractor or occluder (illumination applied)."""
        return self._render(index, objects=False)

    # -- rendering
    def _render(self, i: int, objects: bool) -> np.ndarray:
        width, height = self.frame_size
        centre = (self._pad + width / 2 - 0.5 + self._pan[i, 0], self._pad + height / 2 - 0.5 + self._pan[i, 1])
        frame = cv2.getRectSubPix(self._bg, (width, height), centre)
        if objects:
            for tex, boxes in self._distractors:
                _paste(frame, tex, boxes[i])
            _paste(frame, self.target_texture, self._gt[i])
            if not np.isnan(self._occ_boxes[i, 0]):
                _paste(frame, self._occluder_tex, self._occ_boxes[i])
        gain, offset = self._gain[i], self._offset[i]
        if gain != 1.0 or offset != 0.0:
            frame *= gain
            frame += offset
        frame += 0.5
        np.clip(frame, 0, 255, out=frame)
        return frame.astype(np.uint8)


def make_sequence(n_frames: int = 300, size=(320, 240), seed: int = 0, scale_change: bool = True,
                  occlusion: bool = True, illumination: bool = True, distractors: int = 1,
                  target_size=(40, 32)) -> SyntheticSequence:
    """Build a deterministic synthetic sequence of ``n_frames`` ``size = (width, height)`` frames.

    ``init_box`` is frame 0's box and ``groundtruth`` the exact box per frame. Nothing is
    rendered until frames are read, so the length costs no memory.
    """
    return SyntheticSequence(n_frames=n_frames, size=size, seed=seed, scale_change=scale_change,
                             occlusion=occlusion, illumination=illumination, distractors=distractors,
                             target_size=target_size)


def write_otb(sequence: SequenceSource, folder, ext: str = ".png") -> Path:
    """Write ``sequence`` as an OTB folder: ``img/0001<ext> ...`` and ``groundtruth_rect.txt``
    (``x,y,w,h`` with 6 decimals, ``NaN,NaN,NaN,NaN`` for absent rows). Returns the folder."""
    if not ext.startswith("."):
        ext = "." + ext
    folder = Path(folder)
    img = folder / "img"
    img.mkdir(parents=True, exist_ok=True)
    gt = sequence.groundtruth
    try:
        digits = max(4, len(str(len(sequence))))
    except TypeError:
        digits = 4
    count = 0
    for frame in sequence:
        if frame.image is None:
            raise SequenceError(f"cannot write frame {frame.index} of {sequence.name}: {frame.error}")
        ok, buf = cv2.imencode(ext, frame.image)
        if not ok:
            raise SequenceError(f"cannot encode frame {frame.index} as {ext}")
        buf.tofile(str(img / f"{frame.index + 1:0{digits}d}{ext}"))
        count += 1
    if gt is not None:
        lines = []
        for row in gt[:count]:
            if np.isnan(row).any():
                lines.append("NaN,NaN,NaN,NaN")
            else:
                lines.append(",".join(f"{v:.6f}" for v in row))
        (folder / "groundtruth_rect.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder
