"""Multi-domain training data: sequences (domains), clean ground truth, and minibatches of
one patch per frame with positive and negative RoIs drawn as MDNet does."""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from runtime import sampling
from runtime.buckets import BucketPolicy, crop_patch, normalise
from runtime.errors import SequenceError, TrackerInputError
from runtime.sources import OTBSequence, open_listed_sequence, read_image


def clean_groundtruth(gt: np.ndarray, image_size, window: int = 5, max_ratio: float = 2.0) -> np.ndarray:
    """Boolean mask of ground-truth rows fit for training.

    Rejects absent rows (NaN), empty or non-finite boxes, boxes mostly outside the image,
    and outliers: a box whose area differs more than ``max_ratio`` times from the median
    of its neighbours (+-``window`` frames), or whose centre jumps more than the median
    box size from both neighbours (annotation glitches).
    """
    gt = np.asarray(gt, dtype=np.float64)
    n = len(gt)
    ok = np.all(np.isfinite(gt), axis=1)
    ok &= (gt[:, 2] >= 2) & (gt[:, 3] >= 2)
    w, h = float(image_size[0]), float(image_size[1])
    with np.errstate(invalid="ignore"):
        ix = np.clip(np.minimum(gt[:, 0] + gt[:, 2], w) - np.maximum(gt[:, 0], 0), 0, None)
        iy = np.clip(np.minimum(gt[:, 1] + gt[:, 3], h) - np.maximum(gt[:, 1], 0), 0, None)
        visible = ix * iy / np.maximum(gt[:, 2] * gt[:, 3], 1e-9)
    ok &= np.nan_to_num(visible) >= 0.5
    area = gt[:, 2] * gt[:, 3]
    centre = gt[:, :2] + gt[:, 2:] / 2
    for i in np.flatnonzero(ok):
        nb = [j for j in range(max(0, i - window), min(n, i + window + 1)) if j != i and ok[j]]
        if len(nb) < 2:
            continue
        med = np.median(area[nb])
        if not (1 / max_ratio <= area[i] / med <= max_ratio):
            ok[i] = False
            continue
        size = np.sqrt(med)
        prev = [j for j in nb if j < i]
        nxt = [j for j in nb if j > i]
        if prev and nxt:
            d1 = np.linalg.norm(centre[i] - centre[prev[-1]])
            d2 = np.linalg.norm(centre[i] - centre[nxt[0]])
            if d1 > size and d2 > size and np.linalg.norm(centre[prev[-1]] - centre[nxt[0]]) < size:
                ok[i] = False
    return ok


@dataclass
class Domain:
    name: str
    frames: list  # paths of the usable frames
    boxes: np.ndarray  # (n, 4)
    size: tuple | None = None  # (width, height) of every frame; the boxes are in it


def warn(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr, flush=True)


def header_size(path):
    """(width, height) of an image file from its header (no decoding), or None where the
    header cannot be read (the sampler checks such a frame when it decodes it)."""
    try:
        from PIL import Image
    except ImportError:  # pillow comes with matplotlib; without it the sampler checks
        return None
    try:
        with Image.open(path) as im:
            return tuple(int(v) for v in im.size)
    except Exception:  # corrupt, or a format PIL lacks: read_image decides when it is drawn
        return None


def sequence_size(sizes):
    """The sequence's frame size: the most common of ``sizes`` (None: unknown), the
    earliest on a tie."""
    known = [s for s in sizes if s is not None]
    return max(dict.fromkeys(known), key=known.count)


def load_domains(folders, min_frames: int = 10) -> list:
    """One domain per sequence folder, keeping only frames with clean ground truth. A folder
    left out (no ground truth, fewer than ``min_frames`` usable frames) and a ground truth
    whose row count does not match the frames are reported on stderr."""
    domains = []
    for folder in folders:
        seq = open_listed_sequence(folder)
        name = Path(folder).name
        for w in seq.warnings:
            warn(f"{name}: {w}")
        if seq.groundtruth is None:
            warn(f"{name} left out: no ground truth")
            continue
        paths = list(seq.frame_paths)
        n = min(len(paths), len(seq.groundtruth))
        unreadable = []
        for i in range(n):  # the first frame that can be read (the others are decoded when drawn)
            try:
                first = read_image(paths[i])
                break
            except SequenceError as e:
                warn(f"{name}: frame left out of training: {e}")
                unreadable.append(i)
        else:
            warn(f"{name} left out: none of its frames can be read")
            continue
        # Boxes are in the sequence's image size: a frame of another size (a resized or
        # foreign file among the frames) would be cropped with boxes outside it.
        headers = [None] * n
        headers[i] = (first.shape[1], first.shape[0])
        for j in range(i + 1, n):
            headers[j] = header_size(paths[j])
        size = sequence_size(headers)
        other = [j for j, s in enumerate(headers) if s is not None and s != size]
        if other:
            j = other[0]
            warn(f"{name}: {len(other)} frame(s) of another size than the sequence's {size[0]}x{size[1]} left "
                 f"out of training (the first: frame {j}, {Path(paths[j]).name}, {headers[j][0]}x{headers[j][1]})")
        mask = clean_groundtruth(seq.groundtruth[:n], size)
        mask[unreadable] = False
        mask[other] = False
        idx = np.flatnonzero(mask)
        if len(idx) >= min_frames:
            domains.append(Domain(name, [paths[i] for i in idx], seq.groundtruth[idx], size))
        else:
            warn(f"{name} left out: {len(idx)} of its {n} frames have a usable box (present, at least 2x2 px, "
                 f"mostly inside the image, not an outlier); at least {min_frames} are needed")
    return domains


@dataclass
class Batch:
    bucket: int
    data: np.ndarray   # (P, 3, H, W) float32, normalised
    pos: np.ndarray    # (P, n_pos, 4) patch-pixel boxes (x, y, w, h)
    neg: np.ndarray    # (P, n_neg, 4)
    domain: int


class BatchSampler:
    """Draws minibatches: P frames of one domain, one patch each, all in one bucket."""

    def __init__(self, domains, policy: BucketPolicy, mean_bgr, n_pos=32, n_neg=1024, patches=1,
                 seed=0, prev_jitter=0.3):
        self.domains = domains
        self.policy = policy
        self.mean = np.asarray(mean_bgr, np.float32).reshape(1, 1, 3)
        self.n_pos, self.n_neg, self.patches = n_pos, n_neg, patches
        self.rng = np.random.default_rng(seed)
        self.prev_jitter = prev_jitter
        self._order = []
        self._dropped = {}  # domain name -> file names of the frames left out while drawing

    def reseed(self, seed) -> None:
        """Start the draws afresh from ``seed``: the same batches again (a fixed held-out set)."""
        self.rng = np.random.default_rng(seed)
        self._order = []

    def state(self) -> dict:
        """Where the draws stand, as JSON-friendly values (a checkpoint keeps it): the random
        generator, the domain order, and the frames left out so far (which the draws index
        around)."""
        return {"rng": self.rng.bit_generator.state, "order": [int(d) for d in self._order],
                "dropped": self.dropped()}

    def set_state(self, state: dict) -> None:
        """Continue the draws from a :meth:`state`."""
        self.rng.bit_generator.state = state["rng"]
        self._order = [int(d) for d in state["order"]]
        self.drop(state.get("dropped") or {})

    def dropped(self) -> dict:
        """Domain name -> file names of the frames left out while drawing (unreadable, or of
        another size than their sequence's)."""
        return {name: list(files) for name, files in self._dropped.items()}

    def drop(self, dropped: dict) -> None:
        """Leave out the frames :meth:`dropped` named (a resumed run: they were left out before
        the checkpoint, so the draws index the same frames as the run that was not stopped)."""
        for dom in self.domains:
            names = set(dropped.get(dom.name, ()))
            if not names:
                continue
            keep = [i for i, f in enumerate(dom.frames) if Path(f).name not in names]
            if len(keep) < len(dom.frames):
                dom.frames, dom.boxes = [dom.frames[i] for i in keep], dom.boxes[keep]
            known = self._dropped.setdefault(dom.name, [])
            known += [n for n in dropped[dom.name] if n not in known]

    def next_domain(self) -> int:
        """Cycle through domains in a fresh random order each round (MDNet)."""
        if not self._order:
            self._order = list(self.rng.permutation(len(self.domains)))
        return int(self._order.pop())

    def sample(self, domain: int | None = None) -> Batch:
        d = self.next_domain() if domain is None else domain
        dom = self.domains[d]
        rng = self.rng
        frames = rng.choice(len(dom.frames), self.patches, replace=len(dom.frames) < self.patches)
        bucket = None
        data, pos_all, neg_all = [], [], []
        bad = set()
        for k in frames:
            image, k = self._read(dom, int(k), bad)
            gt = dom.boxes[k]
            # The tracker crops around its previous estimate, not the truth: jitter it.
            prev = sampling.gaussian(rng, gt, 1, trans=self.prev_jitter, scale=1.1)[0]
            region = self.policy.search_region(prev)
            geom = self.policy.select(prev, region) if bucket is None else self.policy.for_shape(prev, bucket, region)
            bucket = geom.bucket
            bounds = geom.sample_bounds((image.shape[1], image.shape[0]))
            pos, neg = sampling.first_frame_samples(rng, gt, self.n_pos, self.n_neg, bounds)
            pos = _fill(rng, pos, self.n_pos, gt)
            neg = _fill(rng, neg, self.n_neg, None)
            patch = crop_patch(image, geom, fill=self.mean.reshape(3))
            if rng.random() < 0.5:  # colour jitter keeps the head from keying on exact tones
                patch = cv2.convertScaleAbs(patch, alpha=float(rng.uniform(0.8, 1.2)), beta=float(rng.uniform(-20, 20)))
            data.append(normalise(patch, self.mean))
            pos_all.append(geom.to_patch(pos))
            neg_all.append(geom.to_patch(neg))
        if bad:  # dropped for good once this batch no longer indexes them
            self._dropped.setdefault(dom.name, []).extend(Path(dom.frames[i]).name for i in sorted(bad))
            keep = [i for i in range(len(dom.frames)) if i not in bad]
            dom.frames, dom.boxes = [dom.frames[i] for i in keep], dom.boxes[keep]
        return Batch(bucket, np.stack(data), np.stack(pos_all), np.stack(neg_all), d)

    def _read(self, dom, k: int, bad: set):
        """Frame ``k`` of ``dom``, or, when it cannot be read (a corrupt or truncated file met
        hours into a run), another frame of the domain; the bad one is reported once and added
        to ``bad``."""
        while True:
            if k not in bad:
                try:
                    image = read_image(dom.frames[k])
                except SequenceError as e:
                    warn(f"{dom.name}: frame left out of training: {e}")
                    bad.add(k)
                else:
                    size = (image.shape[1], image.shape[0])
                    if dom.size is None or size == tuple(dom.size):
                        return image, k
                    warn(f"{dom.name}: frame left out of training: {dom.frames[k]} is {size[0]}x{size[1]}, "
                         f"the sequence's frames {dom.size[0]}x{dom.size[1]}")
                    bad.add(k)
            if len(bad) >= len(dom.frames):
                raise TrackerInputError(f"{dom.name}: none of its frames can be read; fix them or leave "
                                        f"{dom.name} out of --sequences")
            k = int(self.rng.integers(len(dom.frames)))


def _fill(rng, boxes, n, fallback):
    """Pad a short sample set to exactly ``n`` by repetition (fixed shapes, no re-bind)."""
    if len(boxes) == 0:
        if fallback is None:
            raise ValueError("no samples could be drawn")
        boxes = np.asarray(fallback, np.float64).reshape(1, 4)
    if len(boxes) < n:
        boxes = boxes[rng.integers(0, len(boxes), n)]
    return boxes[:n]
