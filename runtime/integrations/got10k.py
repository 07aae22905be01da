"""The tracker for the GOT-10k toolkit (``pip install got10k``, extra ``toolkits``).

    from got10k.experiments import ExperimentOTB
    from runtime.integrations.got10k import GOT10kTracker

    tracker = GOT10kTracker()                      # the shipped model, MXNet, CPU
    experiment = ExperimentOTB("data/OTB", version=2015)
    experiment.run(tracker)
    experiment.report([tracker.name])

The toolkit hands ``init`` / ``update`` PIL images (``ExperimentVOT(read_image=False)``: file
paths; this class's ``track`` keeps each frame's mode, where the toolkit's converts to RGB) and expects ``[x, y, w, h]`` back; this class converts to the BGR arrays
:class:`runtime.Tracker` takes and returns its box as a float array. ``examples/got10k_eval.py``
is a command-line front end.
"""
from __future__ import annotations

import os
import time

import cv2
import numpy as np

from ..extras import install_hint

try:
    from got10k.trackers import Tracker as _ToolkitTracker
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        f"runtime.integrations.got10k needs the GOT-10k toolkit: {install_hint('toolkits')} ({e})"
    ) from e

__all__ = ["GOT10kTracker", "to_bgr"]


def to_bgr(image) -> np.ndarray:
    """A PIL image (any mode), an RGB / grey array or an image path as the BGR array the
    runtime takes (uint8, or a 16-bit grey frame as uint16, which the runtime scales).

    Paths because ``ExperimentVOT(read_image=False)`` hands ``init`` / ``update`` the frame's
    file name instead of an image; they are read as ``runtime.track`` reads frames.
    16-bit PIL images (modes ``I;16*``, and ``I`` holding values above 255, as PIL opens a
    16-bit PGM) keep their depth: ``convert("RGB")`` clips them to white.
    ``cv2.cvtColor`` rather than a reversed-axis copy: the toolkit times this conversion as
    part of every frame, and the copy costs 2.8 ms on a 576x432 frame, cvtColor 0.6 ms.
    """
    if isinstance(image, (str, os.PathLike)):
        from runtime.sources import read_image

        return read_image(image)  # BGR already; a missing or corrupt file raises SequenceError naming it
    if not isinstance(image, np.ndarray):  # PIL.Image.Image (the toolkit's convention)
        mode = getattr(image, "mode", "RGB")
        if mode.startswith("I;16") or mode == "I":
            return _grey16(np.asarray(image), mode)
        if mode != "RGB":
            image = image.convert("RGB")
        image = np.asarray(image)
    if image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8:
        return cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2BGR)
    if image.ndim == 3 and image.shape[2] == 3:
        return np.ascontiguousarray(image[:, :, ::-1])
    if image.ndim == 3 and image.shape[2] == 4:  # RGBA -> BGRA; the runtime drops alpha
        return np.ascontiguousarray(image[:, :, [2, 1, 0, 3]])
    return image  # grey: the runtime converts it


def _grey16(a: np.ndarray, mode: str) -> np.ndarray:
    from runtime.errors import TrackerInputError

    if a.dtype.kind == "u":
        return a
    if mode == "I" and a.size and 0 <= a.min() and a.max() <= 255:  # 8-bit values (an "L" frame converted)
        return a.astype(np.uint8)
    if a.size and (a.min() < 0 or a.max() > 65535):  # a 32-bit "I" image that is no 16-bit frame
        raise TrackerInputError(f"PIL image of mode {mode} holds values {a.min()}..{a.max()}, outside 16 bits; "
                                "pass a uint8 or uint16 array")
    return a.astype(np.uint16)


class GOT10kTracker(_ToolkitTracker):
    """:class:`runtime.Tracker` behind the GOT-10k toolkit's ``Tracker`` interface.

    ``model`` defaults to the shipped ``models/default`` (found from the package, whatever the
    working directory); ``backend``, ``device``, ``seed``, ``params``, ``artifacts`` and
    keyword overrides of :class:`runtime.TrackerParams` go to :class:`runtime.Tracker`.
    The tracker is deterministic for a seed, so the toolkit runs each sequence once
    (``is_deterministic=True``); pass ``is_deterministic=False`` to get GOT-10k's three runs.
    """

    def __init__(self, model=None, backend: str = "mxnet", device: str = "cpu", seed: int = 0,
                 name: str = "mdtrack", is_deterministic: bool = True, params=None, artifacts=None,
                 **params_kw):
        super().__init__(name=name, is_deterministic=is_deterministic)
        from runtime.tracker import Tracker

        self.tracker = Tracker(model, backend=backend, device=device,
                               seed=seed, params=params, artifacts=artifacts, **params_kw)
        self.last = None  # the runtime's TrackResult of the last call (score, ok, ms, stages)

    def init(self, image, box):
        self.last = self.tracker.init(to_bgr(image), box)  # the runtime checks the box and names it

    def update(self, image) -> np.ndarray:
        self.last = self.tracker.update(to_bgr(image))
        return np.asarray(self.last.box, dtype=np.float64).copy()

    def track(self, img_files, box, visualize=False):
        """The toolkit's loop, timing ``init`` / ``update`` alone as it does, but handing them
        each frame as PIL opens it: the toolkit's own loop converts every frame to RGB first,
        which clips a 16-bit frame (thermal sequences) to white."""
        from got10k.utils.viz import show_frame
        from PIL import Image

        boxes = np.zeros((len(img_files), 4))
        boxes[0] = box
        times = np.zeros(len(img_files))
        for f, img_file in enumerate(img_files):
            image = Image.open(img_file)
            start = time.time()
            if f == 0:
                self.init(image, box)
            else:
                boxes[f, :] = self.update(image)
            times[f] = time.time() - start
            if visualize:
                show_frame(image if image.mode == "RGB" else image.convert("RGB"), boxes[f, :])
        return boxes, times
